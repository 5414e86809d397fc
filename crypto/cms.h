// CMS EnvelopedData for device recipients (RFC 5652), built with OpenSSL's CMS API.
#pragma once

#include <openssl/types.h>

#include <optional>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "crypto/keys.h"

namespace hsmrewrap::crypto {

enum class CmsKeyTransport { kRsaOaepSha256, kRsaPkcs1 };
enum class CmsContentCipher { kAes256Cbc, kAes128Cbc, kDes3Cbc };

// OpenSSL's cipher of a content cipher (null for values the enum does not define).
const EVP_CIPHER* CmsEvpCipher(CmsContentCipher c);

struct CmsOptions {
  CmsKeyTransport key_transport = CmsKeyTransport::kRsaOaepSha256;
  CmsContentCipher cipher = CmsContentCipher::kAes256Cbc;
};

// DER ContentInfo(EnvelopedData) with one recipient: identified by issuer+serial of
// `certificate`. RSA recipients use key transport; EC (P-256/P-384) use ECDH key agreement
// with AES key wrap (key_transport is then ignored).
absl::StatusOr<Bytes> CmsEnvelopeToCertificate(const Certificate& certificate,
                                               absl::Span<const uint8_t> plaintext,
                                               const CmsOptions& options = {});
// Same for a bare public key: the recipient is identified by a key identifier
// (subjectKeyIdentifier for key transport, rKeyId for key agreement): `key_id` when given
// (the SKI the device's certificate carries), else SHA-1 of the key's BIT STRING (RFC 5280
// §4.2.1.2 method 1).
absl::StatusOr<Bytes> CmsEnvelopeToPublicKey(const PublicKey& key,
                                             absl::Span<const uint8_t> plaintext,
                                             const CmsOptions& options = {},
                                             absl::Span<const uint8_t> key_id = {});

}  // namespace hsmrewrap::crypto
