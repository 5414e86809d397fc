// Parsing and encoding of RSA/EC public keys, certificates and RSA private keys in the
// forms the ecosystem uses: SPKI DER/PEM, X.509 DER/PEM, CNG
// BCRYPT_RSAPUBLIC_BLOB / BCRYPT_RSAFULLPRIVATE_BLOB, PKCS#8, PKCS#12.
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "crypto/secret.h"

namespace hsmrewrap::crypto {

using Bytes = std::vector<uint8_t>;

struct EvpPkeyDeleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct X509Deleter {
  void operator()(X509* p) const { X509_free(p); }
};

// An immutable, thread-safe-to-share public key (RSA or EC).
class PublicKey final {
 public:
  // DER or PEM ("BEGIN PUBLIC KEY") SubjectPublicKeyInfo.
  static absl::StatusOr<PublicKey> FromSpki(absl::Span<const uint8_t> der_or_pem);
  // BCRYPT_RSAPUBLIC_BLOB ("RSA1"); a full private blob ("RSA3") is refused here.
  static absl::StatusOr<PublicKey> FromCngPublicBlob(absl::Span<const uint8_t> blob);
  // Big-endian modulus and exponent.
  static absl::StatusOr<PublicKey> FromRsaComponents(absl::Span<const uint8_t> n,
                                                     absl::Span<const uint8_t> e);
  // Detects PEM SPKI, DER SPKI or CNG RSAPUBLICBLOB (Export-IntunePublicKey's two forms).
  static absl::StatusOr<PublicKey> FromAnyPublicKeyFile(absl::Span<const uint8_t> bytes);
  // Wraps an existing OpenSSL key (takes its own reference; the caller keeps theirs). A key
  // that carries private parts is reduced to its public half first.
  static absl::StatusOr<PublicKey> FromEvpPkey(EVP_PKEY* pkey);

  // Every factory accepts only: RSA (rsaEncryption; 1024..16384 bits, odd e >= 3) and EC on
  // P-256, P-384 or P-521. DER input is parsed once with d2i_PUBKEY (no PEM probing), so
  // per-request parsing of device keys costs one ASN.1 decode.

  bool is_rsa() const;
  bool is_ec() const;
  int bits() const;
  // RSA only: big-endian, no leading zeros.
  Bytes modulus() const;
  Bytes public_exponent() const;

  Bytes SpkiDer() const;
  std::string SpkiPem() const;
  Bytes CngPublicBlob() const;    // RSA only
  std::string Sha256Hex() const;  // lowercase hex SHA-256 of SpkiDer()
  // Same algorithm and same public key.
  bool Equals(const PublicKey& other) const;

  EVP_PKEY* get() const { return pkey_.get(); }

 private:
  explicit PublicKey(std::shared_ptr<EVP_PKEY> p) : pkey_(std::move(p)) {}
  // Takes ownership of `owned` (a public-only key), validates it and wraps it.
  static absl::StatusOr<PublicKey> Adopt(EVP_PKEY* owned);
  friend class Certificate;  // wraps the key it parsed without re-encoding it
  std::shared_ptr<EVP_PKEY> pkey_;
};

// An immutable X.509 certificate.
class Certificate final {
 public:
  static absl::StatusOr<Certificate> Parse(absl::Span<const uint8_t> der_or_pem);
  const PublicKey& public_key() const { return public_key_; }
  std::string Sha1Hex() const;  // thumbprint: lowercase hex SHA-1 of the DER
  std::string Sha256Hex() const;
  X509* get() const { return x509_.get(); }

 private:
  Certificate(std::shared_ptr<X509> x, PublicKey k)
      : x509_(std::move(x)), public_key_(std::move(k)) {}
  std::shared_ptr<X509> x509_;
  PublicKey public_key_;
};

// RSA private key parts, big-endian, for import into a token. Secret parts wipe.
struct RsaPrivateKeyParts {
  Bytes n, e;
  SecretBytes d, p, q, dp, dq, qinv;  // p..qinv may be empty (then import as n, e, d)
  int bits = 0;
};

// PKCS#8 PrivateKeyInfo or PKCS#1 RSAPrivateKey, DER or PEM (unencrypted). Integers are
// returned without leading zeros by every parser below.
absl::StatusOr<RsaPrivateKeyParts> ParseRsaPrivateKey(absl::Span<const uint8_t> der_or_pem);
// The RSA private key of a PKCS#12 file. Loads OpenSSL's "legacy" provider (with
// "default") into the default library context the first time a file needs it (RC2-40,
// as `openssl pkcs12 -export` 1.x and Windows write); that stays loaded process-wide.
// A file with a MAC or PBE iteration count above kMaxPkcs12Iterations, or counts adding
// up to more than kMaxPkcs12TotalIterations (crypto/pkcs12_parse.h), is InvalidArgument
// (the message names the count and the limit) before any of them is run.
absl::StatusOr<RsaPrivateKeyParts> ParseRsaPrivateKeyFromPfx(absl::Span<const uint8_t> pfx,
                                                             const SecretString& password);
// BCRYPT_RSAFULLPRIVATE_BLOB ("RSA3"), as Export-IntunePrivateKey writes it.
absl::StatusOr<RsaPrivateKeyParts> ParseCngFullPrivateBlob(absl::Span<const uint8_t> blob);

// Reads a whole file (PIN, password) into a SecretString, stripping one trailing "\n" or
// "\r\n". Files over 1 MiB are refused. No permission check is made here.
absl::StatusOr<SecretString> ReadSecretFile(const std::string& path);

}  // namespace hsmrewrap::crypto
