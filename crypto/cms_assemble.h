// CMS EnvelopedData assembled on the host from parts a token made (in-token CMS,
// hsm::KeyBackend::EnvelopeInToken): the content-encryption key never left the token, and
// neither did the secret. The host holds only ciphertexts and public values.
//
// The DER is what crypto/cms.h builds with OpenSSL's CMS API for the same recipient and
// options, byte for byte apart from the random parts (IV, encrypted key, encrypted content):
// same versions, same recipient identifier, same OIDs and parameter encodings (checked by
// tests/unit/crypto/cms_assemble_test.cc). OpenSSL encodes the leaves (OIDs, AlgorithmIdentifiers
// with their parameters, the issuer Name, the serial); the SEQUENCE/SET frames around them
// come from a small DER writer (crypto/der.h), because OpenSSL's CMS types are opaque and
// take no precomputed encrypted key.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "crypto/cms.h"
#include "crypto/keys.h"
#include "crypto/secret.h"

namespace hsmrewrap::crypto {

struct CmsTokenParts {
  Bytes iv;                 // the content cipher's IV (CmsContentIvLen)
  Bytes encrypted_content;  // CBC with PKCS#7 padding of the secret under the content key
  // RSA recipients: the content key encrypted to the recipient's key (key transport).
  // EC recipients: the content key AES-key-wrapped (RFC 3394) under the KEK (key agreement).
  Bytes encrypted_key;
  // EC recipients only: the ephemeral (originator) public key, an uncompressed point.
  Bytes ephemeral_point;
};

// Key and IV lengths of a content cipher (AES-256: 32/16, AES-128: 16/16, 3DES: 24/8).
size_t CmsContentKeyLen(CmsContentCipher cipher);
size_t CmsContentIvLen(CmsContentCipher cipher);

// DER ContentInfo(EnvelopedData), one KeyTransRecipientInfo naming the recipient by issuer
// and serial number, as CmsEnvelopeToCertificate does. RSA recipients only.
absl::StatusOr<Bytes> CmsAssembleToCertificate(const Certificate& certificate,
                                               const CmsOptions& options,
                                               const CmsTokenParts& parts);
// The same for a bare RSA public key, named by subjectKeyIdentifier (`key_id`, else
// CmsKeyId), as CmsEnvelopeToPublicKey does.
absl::StatusOr<Bytes> CmsAssembleToPublicKey(const PublicKey& key, const CmsOptions& options,
                                             const CmsTokenParts& parts,
                                             absl::Span<const uint8_t> key_id = {});

// Decrypts CBC content with PKCS#7 padding under `key` (the start-up probe's check of what a
// token built; never used on a secret). InvalidArgument when it does not decrypt.
absl::StatusOr<SecretBytes> CmsContentDecrypt(CmsContentCipher cipher,
                                              absl::Span<const uint8_t> key,
                                              absl::Span<const uint8_t> iv,
                                              absl::Span<const uint8_t> encrypted);

// --- EC recipients (RFC 5753 key agreement, as crypto/cms.h builds it with OpenSSL):
// ephemeral-static ECDH with the recipient's key, the ANSI X9.63 KDF with SHA-1 over
// ECC-CMS-SharedInfo (dhSinglePass-stdDH-sha1kdf-scheme), and a KEK as long as the content
// key wrapping it with AES key wrap (id-aes128-wrap / id-aes256-wrap). AES content only.

// An EC public key's curve (the DER OID, the token's CKA_EC_PARAMS; the NID) and its
// uncompressed point (04 || X || Y). InvalidArgument for a key that is not EC.
struct EcPublicPoint {
  int curve_nid = 0;
  Bytes curve_oid_der;
  Bytes point;
};
absl::StatusOr<EcPublicPoint> EcPointOf(const PublicKey& key);
// The DER ECC-CMS-SharedInfo the KDF of `cipher`'s KEK takes (no ukm): keyInfo = the AES wrap
// algorithm, suppPubInfo = the KEK length in bits.
absl::StatusOr<Bytes> CmsEccSharedInfo(CmsContentCipher cipher);
// DER ContentInfo(EnvelopedData) with one KeyAgreeRecipientInfo (originator = the ephemeral
// point), naming the recipient by issuer and serial number / by key id (CmsKeyId).
absl::StatusOr<Bytes> CmsAssembleKeyAgreeToCertificate(const Certificate& certificate,
                                                       CmsContentCipher cipher,
                                                       const CmsTokenParts& parts);
absl::StatusOr<Bytes> CmsAssembleKeyAgreeToPublicKey(const PublicKey& key, CmsContentCipher cipher,
                                                     const CmsTokenParts& parts,
                                                     absl::Span<const uint8_t> key_id = {});

// An EC key pair on the host, for checking what a token built (the start-up probe).
class HostEcKey final {
 public:
  static absl::StatusOr<HostEcKey> Generate(int curve_nid);
  const PublicKey& public_key() const { return public_key_; }
  // The content key of an EC recipient's parts: ECDH with `ephemeral_point`, the KDF, the
  // AES key unwrap.
  absl::StatusOr<SecretBytes> UnwrapContentKey(CmsContentCipher cipher,
                                               absl::Span<const uint8_t> ephemeral_point,
                                               absl::Span<const uint8_t> encrypted_key) const;
  // The other side (this key as the ephemeral one): the content key wrapped for the
  // recipient whose point is `recipient_point` (tests build parts with it).
  absl::StatusOr<Bytes> WrapContentKey(CmsContentCipher cipher,
                                       absl::Span<const uint8_t> recipient_point,
                                       absl::Span<const uint8_t> content_key) const;

 private:
  // ECDH with `peer_point`, then the X9.63 KDF (SHA-1) over ECC-CMS-SharedInfo.
  absl::StatusOr<SecretBytes> Kek(CmsContentCipher cipher,
                                  absl::Span<const uint8_t> peer_point) const;
  HostEcKey(std::shared_ptr<EVP_PKEY> pkey, PublicKey pub)
      : pkey_(std::move(pkey)), public_key_(std::move(pub)) {}
  std::shared_ptr<EVP_PKEY> pkey_;
  PublicKey public_key_;
};

// SHA-1 of the subjectPublicKey BIT STRING's contents (RFC 5280 §4.2.1.2, method 1): how a
// bare public key recipient is named.
absl::StatusOr<Bytes> CmsKeyId(const PublicKey& key);

}  // namespace hsmrewrap::crypto
