// Internal helpers shared by the crypto/ implementation files: unique_ptr types for
// OpenSSL objects, error-queue formatting, BIGNUM conversions and PEM armour handling.
// Not part of the public contract; other folders should not include it.
#pragma once

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/cms.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "crypto/keys.h"
#include "crypto/secret.h"

namespace hsmrewrap::crypto::internal {

template <typename T, void (*F)(T*)>
struct OsslDeleter {
  void operator()(T* p) const { F(p); }
};
template <typename T, void (*F)(T*)>
using OsslPtr = std::unique_ptr<T, OsslDeleter<T, F>>;

inline void BnClearFree(BIGNUM* b) { BN_clear_free(b); }

using BioPtr = OsslPtr<BIO, BIO_free_all>;
using BnPtr = OsslPtr<BIGNUM, BN_free>;
using SecretBnPtr = OsslPtr<BIGNUM, BnClearFree>;  // wipes on free
using BnCtxPtr = OsslPtr<BN_CTX, BN_CTX_free>;
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, EvpPkeyDeleter>;
using EvpPkeyCtxPtr = OsslPtr<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;
using EvpMdCtxPtr = OsslPtr<EVP_MD_CTX, EVP_MD_CTX_free>;
using X509Ptr = std::unique_ptr<X509, X509Deleter>;
using CmsPtr = OsslPtr<CMS_ContentInfo, CMS_ContentInfo_free>;
using Pkcs12Ptr = OsslPtr<PKCS12, PKCS12_free>;
using OsslParamBldPtr = OsslPtr<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>;
using OsslParamPtr = OsslPtr<OSSL_PARAM, OSSL_PARAM_free>;
using Asn1OctetStringPtr = OsslPtr<ASN1_OCTET_STRING, ASN1_OCTET_STRING_free>;

// Drains the thread's OpenSSL error queue into "lib:reason; ..." (at most a few entries).
// Only call where the errors cannot depend on secret data.
std::string DrainOpenSslErrors();
// `what` plus the drained OpenSSL errors, as an InvalidArgument / Internal status.
absl::Status OsslInvalidArgument(absl::string_view what);
absl::Status OsslInternal(absl::string_view what);

// Big-endian bytes of a non-negative BIGNUM, no leading zeros (empty for zero).
Bytes BnToBytes(const BIGNUM* bn);
SecretBytes BnToSecretBytes(const BIGNUM* bn);

// Skips a UTF-8 BOM and ASCII whitespace at the start of `data`.
absl::Span<const uint8_t> SkipBomAndWhitespace(absl::Span<const uint8_t> data);
// True if `data` (after SkipBomAndWhitespace) starts with "-----BEGIN ".
bool LooksLikePem(absl::Span<const uint8_t> data);
// Decodes the first PEM block labelled `label` (e.g. "PUBLIC KEY"). Tolerates a BOM,
// leading whitespace, CRLF line ends and whitespace inside the body; refuses PEM headers
// (e.g. Proc-Type) and anything that is not base64. The result is a SecretBytes because
// the same routine decodes private keys.
absl::StatusOr<SecretBytes> PemDecode(absl::Span<const uint8_t> data, absl::string_view label);
// The label of the first PEM block ("PUBLIC KEY", "CERTIFICATE", ...), or "" if none.
std::string PemLabel(absl::Span<const uint8_t> data);

// Base64 decoding into any byte container (shared by Base64Decode and PemDecode).
// Whitespace is skipped; padding is required; non-zero pad bits are refused.
template <typename Container>
bool Base64DecodeInto(absl::string_view b64, Container* out);

// Lowercase hex of a digest of `data`.
std::string DigestHex(const EVP_MD* md, absl::Span<const uint8_t> data);

// Loads OpenSSL's "default" and "legacy" providers into the default library context, once
// per process (RC2-40 and 3DES PKCS#12 files need "legacy"). Loading any provider
// explicitly switches off the implicit fallback to "default", so both are loaded. The
// handles are kept (in statics) for the life of the process: other threads may be using
// them. Returns whether both loaded.
bool EnsureLegacyProvider();

}  // namespace hsmrewrap::crypto::internal
