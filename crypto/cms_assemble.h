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

#include "absl/status/statusor.h"
#include "crypto/cms.h"
#include "crypto/keys.h"
#include "crypto/secret.h"

namespace hsmrewrap::crypto {

struct CmsKeyTransParts {
  Bytes iv;                 // the content cipher's IV (CmsContentIvLen)
  Bytes encrypted_content;  // CBC with PKCS#7 padding of the secret under the content key
  Bytes encrypted_key;      // the content key encrypted to the recipient's RSA key
};

// Key and IV lengths of a content cipher (AES-256: 32/16, AES-128: 16/16, 3DES: 24/8).
size_t CmsContentKeyLen(CmsContentCipher cipher);
size_t CmsContentIvLen(CmsContentCipher cipher);

// DER ContentInfo(EnvelopedData), one KeyTransRecipientInfo naming the recipient by issuer
// and serial number, as CmsEnvelopeToCertificate does. RSA recipients only.
absl::StatusOr<Bytes> CmsAssembleToCertificate(const Certificate& certificate,
                                               const CmsOptions& options,
                                               const CmsKeyTransParts& parts);
// The same for a bare RSA public key, named by subjectKeyIdentifier (CmsKeyId), as
// CmsEnvelopeToPublicKey does.
absl::StatusOr<Bytes> CmsAssembleToPublicKey(const PublicKey& key, const CmsOptions& options,
                                             const CmsKeyTransParts& parts);

// Decrypts CBC content with PKCS#7 padding under `key` (the start-up probe's check of what a
// token built; never used on a secret). InvalidArgument when it does not decrypt.
absl::StatusOr<SecretBytes> CmsContentDecrypt(CmsContentCipher cipher,
                                              absl::Span<const uint8_t> key,
                                              absl::Span<const uint8_t> iv,
                                              absl::Span<const uint8_t> encrypted);

// SHA-1 of the subjectPublicKey BIT STRING's contents (RFC 5280 §4.2.1.2, method 1): how a
// bare public key recipient is named.
absl::StatusOr<Bytes> CmsKeyId(const PublicKey& key);

}  // namespace hsmrewrap::crypto
