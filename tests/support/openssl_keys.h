// OpenSSL keys and key files the tests share, made and read by plain OpenSSL (not by
// hsmrewrap::crypto, the code under test): a multi-prime RSA key and Intune's test PFX.
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace hsmrewrap::test {

struct EvpPkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct X509Free {
  void operator()(X509* p) const { X509_free(p); }
};
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, EvpPkeyFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;

// An RSA key of `bits` with `primes` prime factors (3: the Wycheproof three-prime keys), or
// null when OpenSSL cannot make it.
EvpPkeyPtr GenerateMultiPrimeRsa(int bits, int primes);

// The private key and certificate of a PKCS#12 file.
struct PfxKeyAndCert {
  EvpPkeyPtr key;
  X509Ptr cert;
};
// Parses DER PKCS#12 with PKCS12_parse; InvalidArgument when it is not PKCS#12, the
// password does not open it, or it lacks the key or the certificate.
absl::StatusOr<PfxKeyAndCert> ParsePfx(const std::string& der, const std::string& password);

// Intune's own test PFX (microsoft/Intune-Resource-Access), in the shared vectors folder.
inline constexpr char kIntuneTestPfx[] = "vectors/intune/testcert.pfx";
inline constexpr char kIntuneTestPfxPassword[] = "TestCert";
// Reads and parses SHARED_DIR/vectors/intune/testcert.pfx; NotFound when it cannot be read.
absl::StatusOr<PfxKeyAndCert> LoadIntuneTestPfx(const std::string& shared_dir);

}  // namespace hsmrewrap::test
