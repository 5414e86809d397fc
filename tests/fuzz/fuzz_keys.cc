// libFuzzer target: every parser of key material a caller or an import file can hand us:
// device certificates and public keys (X.509, SPKI DER/PEM, CNG BCRYPT_RSAPUBLIC_BLOB) and
// private keys for ImportKey (PKCS#8 / PKCS#1 DER or PEM, CNG RSAFULLPRIVATEBLOB).
// Whatever parses must survive a round trip through our own encoders unchanged.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "crypto/cert_use.h"
#include "crypto/keys.h"

namespace {

namespace crypto = hsmrewrap::crypto;

void Check(bool condition) {
  if (!condition) std::abort();
}

void CheckRoundTrip(const crypto::PublicKey& key) {
  const crypto::Bytes spki = key.SpkiDer();
  auto again = crypto::PublicKey::FromSpki(spki);
  Check(again.ok() && again->Equals(key) && again->Sha256Hex() == key.Sha256Hex());
  if (key.is_rsa()) {
    Check(key.bits() >= 1024 && key.bits() <= 16384);
    auto blob = crypto::PublicKey::FromCngPublicBlob(key.CngPublicBlob());
    Check(blob.ok() && blob->Equals(key));
    auto parts = crypto::PublicKey::FromRsaComponents(key.modulus(), key.public_exponent());
    Check(parts.ok() && parts->Equals(key));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::Span<const uint8_t> in(data, size);

  if (auto k = crypto::PublicKey::FromSpki(in); k.ok()) CheckRoundTrip(*k);
  if (auto k = crypto::PublicKey::FromCngPublicBlob(in); k.ok()) CheckRoundTrip(*k);
  if (auto k = crypto::PublicKey::FromAnyPublicKeyFile(in); k.ok()) CheckRoundTrip(*k);
  if (auto c = crypto::Certificate::Parse(in); c.ok()) {
    CheckRoundTrip(c->public_key());
    Check(c->Sha1Hex().size() == 40 && c->Sha256Hex().size() == 64);
    // Fit for encryption or refused with a reason; never anything else.
    const absl::Status use = crypto::CheckEncryptionUse(*c);
    Check(use.ok() || (use.code() == absl::StatusCode::kInvalidArgument && !use.message().empty()));
  }

  for (auto parts : {crypto::ParseRsaPrivateKey(in), crypto::ParseCngFullPrivateBlob(in)}) {
    if (!parts.ok()) continue;
    // The public half of what parsed is a valid public key of the stated size.
    auto pub = crypto::PublicKey::FromRsaComponents(parts->n, parts->e);
    Check(pub.ok() && pub->bits() == parts->bits);
    Check(!parts->d.empty());
  }
  return 0;
}
