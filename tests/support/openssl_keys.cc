#include "tests/support/openssl_keys.h"

#include <openssl/pkcs12.h>
#include <openssl/rsa.h>

#include "absl/status/status.h"
#include "tests/support/files.h"

namespace hsmrewrap::test {

EvpPkeyPtr GenerateMultiPrimeRsa(int bits, int primes) {
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_RSA, nullptr);
  EVP_PKEY* k = nullptr;
  if (ctx == nullptr || EVP_PKEY_keygen_init(ctx) != 1 ||
      EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, bits) != 1 ||
      EVP_PKEY_CTX_set_rsa_keygen_primes(ctx, primes) != 1 || EVP_PKEY_keygen(ctx, &k) != 1) {
    k = nullptr;
  }
  EVP_PKEY_CTX_free(ctx);
  return EvpPkeyPtr(k);
}

absl::StatusOr<PfxKeyAndCert> ParsePfx(const std::string& der, const std::string& password) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  PKCS12* p12 = d2i_PKCS12(nullptr, &p, static_cast<long>(der.size()));  // NOLINT
  if (p12 == nullptr) return absl::InvalidArgumentError("not DER PKCS#12");
  EVP_PKEY* key = nullptr;
  X509* cert = nullptr;
  const int parsed = PKCS12_parse(p12, password.c_str(), &key, &cert, nullptr);
  PKCS12_free(p12);
  PfxKeyAndCert out{EvpPkeyPtr(key), X509Ptr(cert)};
  if (parsed != 1) return absl::InvalidArgumentError("PKCS12_parse failed (wrong password?)");
  if (!out.key || !out.cert) return absl::InvalidArgumentError("no private key or no certificate");
  return out;
}

absl::StatusOr<PfxKeyAndCert> LoadIntuneTestPfx(const std::string& shared_dir) {
  const std::string path = shared_dir + "/" + kIntuneTestPfx;
  const std::string der = ReadFileOrEmpty(path);
  if (der.empty()) return absl::NotFoundError("cannot read " + path);
  return ParsePfx(der, kIntuneTestPfxPassword);
}

}  // namespace hsmrewrap::test
