// RSA padding helpers on the host: encryption to device/public keys and constant-time
// padding removal for the HOST_UNPADDING path.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "crypto/keys.h"
#include "crypto/secret.h"

namespace hsmrewrap::crypto {

enum class HashAlg { kSha1, kSha256, kSha384, kSha512 };
size_t HashLen(HashAlg h);
const EVP_MD* HashMd(HashAlg h);

enum class RsaPadding { kOaepSha1, kOaepSha256, kOaepSha384, kOaepSha512, kPkcs1 };
// The OAEP hash (MGF1 uses the same); not valid for kPkcs1.
HashAlg OaepHash(RsaPadding p);
// Largest plaintext this padding can carry for a key of modulus_len bytes (0 if none).
size_t MaxPlaintextLen(RsaPadding p, size_t modulus_len);

// Encrypts `plaintext` to an RSA public key (OAEP: MGF1 hash = OAEP hash, empty label).
absl::StatusOr<Bytes> RsaEncrypt(const PublicKey& key, RsaPadding padding,
                                 absl::Span<const uint8_t> plaintext);

// Test helper: decrypts with an OpenSSL private key (PEM/DER). Not used by the service.
absl::StatusOr<SecretBytes> RsaDecryptWithPrivateKey(
    absl::Span<const uint8_t> private_key_pem_or_der, RsaPadding padding,
    absl::Span<const uint8_t> ciphertext);

// Removes EME-OAEP padding from a raw RSA output `em` (I2OSP'd to modulus_len bytes or
// shorter; leading zeros may be missing) in constant time with respect to the padding's
// validity. Every failure returns the same status: InvalidArgument("decryption failed").
absl::StatusOr<SecretBytes> OaepUnpad(absl::Span<const uint8_t> em, size_t modulus_len,
                                      HashAlg hash, HashAlg mgf1_hash);
// Same for EME-PKCS1-v1_5 (constant time; same single failure status).
absl::StatusOr<SecretBytes> Pkcs1Unpad(absl::Span<const uint8_t> em, size_t modulus_len);

// Cryptographically secure random bytes. Aborts the process if the RNG fails: nothing
// that needs randomness can go on safely without it.
Bytes RandomBytes(size_t n);

// Big-endian unsigned integers as PKCS#11 and the CNG blobs carry them.
Bytes StripLeadingZeros(absl::Span<const uint8_t> v);  // keeps at least one byte
int BitLength(absl::Span<const uint8_t> big_endian);

// A throwaway RSA key pair in host memory, used to check what a token produces (the
// capability probe wraps a known secret to its public half and decrypts the result here).
// Never used for a service key or a secret.
class HostRsaKey final {
 public:
  static absl::StatusOr<HostRsaKey> Generate(int bits);
  const PublicKey& public_key() const { return public_key_; }
  absl::StatusOr<SecretBytes> Decrypt(RsaPadding padding,
                                      absl::Span<const uint8_t> ciphertext) const;

 private:
  HostRsaKey(std::shared_ptr<EVP_PKEY> pkey, PublicKey pub)
      : pkey_(std::move(pkey)), public_key_(std::move(pub)) {}
  std::shared_ptr<EVP_PKEY> pkey_;
  PublicKey public_key_;
};

// How a PKCS#1 v1.5 encryption block (00 02 PS 00 M, PS >= 8 non-zero bytes) is broken.
enum class Pkcs1Malformation {
  kNoSeparator,       // 00 02 and non-zero random bytes to the end: no 00 after PS
  kWrongBlockType,    // 00 01 PS 00 M: the signature block type
  kShortPadding,      // 00 02 PS 00 M with a 7-byte PS
  kWrongLeadingByte,  // 01 02 PS 00 M
};
inline constexpr Pkcs1Malformation kAllPkcs1Malformations[] = {
    Pkcs1Malformation::kNoSeparator, Pkcs1Malformation::kWrongBlockType,
    Pkcs1Malformation::kShortPadding, Pkcs1Malformation::kWrongLeadingByte};
const char* Pkcs1MalformationName(Pkcs1Malformation kind);

// A modulus-length RSA ciphertext whose plaintext block is NOT PKCS#1 v1.5 conformant in
// the way `kind` says (PS random non-zero bytes, M 16 random bytes), raw-RSA encrypted
// (m^e mod n). A token that answers C_Decrypt(CKM_RSA_PKCS) of every kind with CKR_OK and
// a deterministic message does implicit rejection (the Marvin countermeasure); one that
// answers only some kinds so is a padding oracle for the others. InvalidArgument when the
// block does not fit below the modulus (kWrongLeadingByte on a modulus whose top byte is 1).
absl::StatusOr<Bytes> NonConformantPkcs1Ciphertext(
    const PublicKey& key, Pkcs1Malformation kind = Pkcs1Malformation::kNoSeparator);

}  // namespace hsmrewrap::crypto
