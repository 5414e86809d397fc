#include "crypto/cms.h"

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include "absl/status/status.h"
#include "crypto/cms_assemble.h"
#include "crypto/openssl_util.h"

namespace hsmrewrap::crypto {

using internal::BioPtr;
using internal::CmsPtr;
using internal::OsslInternal;
using internal::OsslInvalidArgument;
using internal::X509Ptr;

const EVP_CIPHER* CmsEvpCipher(CmsContentCipher c) {
  switch (c) {
    case CmsContentCipher::kAes256Cbc:
      return EVP_aes_256_cbc();
    case CmsContentCipher::kAes128Cbc:
      return EVP_aes_128_cbc();
    case CmsContentCipher::kDes3Cbc:
      return EVP_des_ede3_cbc();
  }
  return nullptr;
}

namespace {

// Builds DER ContentInfo(EnvelopedData) with one recipient for `recipient`'s key.
// `id_flags` is 0 (issuerAndSerialNumber) or CMS_USE_KEYID (subjectKeyIdentifier).
absl::StatusOr<Bytes> Envelope(X509* recipient, const PublicKey& key,
                               absl::Span<const uint8_t> plaintext, const CmsOptions& options,
                               unsigned int id_flags) {
  const EVP_CIPHER* cipher = CmsEvpCipher(options.cipher);
  if (cipher == nullptr) return absl::InvalidArgumentError("unknown CMS content cipher");
  const bool rsa = key.is_rsa();
  if (!rsa && !key.is_ec()) {
    return absl::InvalidArgumentError("CMS recipient key must be RSA or EC");
  }
  bool oaep = false;
  if (rsa) {
    switch (options.key_transport) {
      case CmsKeyTransport::kRsaOaepSha256:
        oaep = true;
        break;
      case CmsKeyTransport::kRsaPkcs1:
        oaep = false;
        break;
      default:
        return absl::InvalidArgumentError("unknown CMS key transport");
    }
  }
  // CMS_BINARY: the content is bytes, never MIME-canonicalised. CMS_PARTIAL: recipients are
  // added and the structure finalised below.
  const unsigned int flags = CMS_BINARY | CMS_PARTIAL;
  CmsPtr cms(CMS_encrypt(nullptr, nullptr, cipher, flags));
  if (!cms) return OsslInternal("CMS_encrypt failed");
  // CMS_KEY_PARAM makes OpenSSL create the key-transport EVP_PKEY_CTX now so that OAEP
  // parameters can be set on it; it also writes them into keyEncryptionAlgorithm
  // (id-RSAES-OAEP with SHA-256 and MGF1-SHA-256).
  const unsigned int ri_flags = id_flags | (oaep ? CMS_KEY_PARAM : 0);
  CMS_RecipientInfo* ri = CMS_add1_recipient_cert(cms.get(), recipient, ri_flags);
  if (ri == nullptr) return OsslInvalidArgument("cannot add the CMS recipient");
  if (oaep) {
    EVP_PKEY_CTX* pctx = CMS_RecipientInfo_get0_pkey_ctx(ri);
    if (pctx == nullptr || EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(pctx, EVP_sha256()) <= 0 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()) <= 0) {
      return OsslInternal("cannot set RSA-OAEP-SHA256 key transport");
    }
  }
  // The content goes from the caller's buffer straight into the cipher BIO that
  // CMS_dataInit makes (a cipher BIO over a memory BIO that collects the ciphertext), in one
  // write, and nowhere else. Not CMS_final: it copies the content through a 1 KiB stack
  // buffer and a BIO_f_buffer whose heap buffer is freed unwiped, so every plaintext stayed
  // in rewrapd's memory. The cipher BIO hands the bytes to EVP_CipherUpdate directly; the
  // only plaintext OpenSSL keeps is the last partial block inside the cipher context, which
  // it wipes when the context is freed (OPENSSL_clear_free), as it does the content key.
  BIO* cms_bio = CMS_dataInit(cms.get(), nullptr);
  if (cms_bio == nullptr) return OsslInternal("CMS_dataInit failed");
  BioPtr chain(cms_bio);
  const bool written = plaintext.empty() || BIO_write(chain.get(), plaintext.data(),
                                                      static_cast<int>(plaintext.size())) ==
                                                static_cast<int>(plaintext.size());
  if (!written || BIO_flush(chain.get()) != 1 || CMS_dataFinal(cms.get(), chain.get()) != 1) {
    ERR_clear_error();  // errors here could only concern the content; keep them out
    return absl::InternalError("CMS encryption failed");
  }
  chain.reset();
  unsigned char* der = nullptr;
  const int len = i2d_CMS_ContentInfo(cms.get(), &der);
  if (len <= 0) return OsslInternal("CMS DER encoding failed");
  Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

constexpr size_t kMaxCmsPlaintext = 64 * 1024;

// OpenSSL caches a certificate's extensions (and so finds its SKI) only if the certificate
// can be DER-encoded, which needs a signature algorithm. The placeholder below is therefore
// signed with this process-wide throwaway P-256 key; the signature means nothing and the
// placeholder never leaves the process.
EVP_PKEY* PlaceholderSigningKey() {
  static EVP_PKEY* key = [] {
    EVP_PKEY* k = EVP_EC_gen("P-256");
    ERR_clear_error();
    return k;
  }();
  return key;
}

}  // namespace

absl::StatusOr<Bytes> CmsEnvelopeToCertificate(const Certificate& certificate,
                                               absl::Span<const uint8_t> plaintext,
                                               const CmsOptions& options) {
  if (plaintext.size() > kMaxCmsPlaintext) {
    return absl::InvalidArgumentError("CMS plaintext larger than 64 KiB");
  }
  return Envelope(certificate.get(), certificate.public_key(), plaintext, options, 0);
}

// OpenSSL's CMS API takes recipients as certificates. For a bare key we build a throwaway
// in-memory X509 that carries only the key and a subjectKeyIdentifier extension,
// and ask for CMS_USE_KEYID: OpenSSL then reads just the public key and the SKI from it, so
// the output names the recipient by SKI (RFC 5652 RecipientIdentifier subjectKeyIdentifier
// for key transport, rKeyId for key agreement). The X509 never leaves this function.
absl::StatusOr<Bytes> CmsEnvelopeToPublicKey(const PublicKey& key,
                                             absl::Span<const uint8_t> plaintext,
                                             const CmsOptions& options,
                                             absl::Span<const uint8_t> key_id) {
  if (plaintext.size() > kMaxCmsPlaintext) {
    return absl::InvalidArgumentError("CMS plaintext larger than 64 KiB");
  }
  X509Ptr x(X509_new());
  if (!x || X509_set_version(x.get(), X509_VERSION_3) != 1 ||
      X509_set_pubkey(x.get(), key.get()) != 1) {
    return OsslInternal("cannot build the recipient placeholder");
  }
  // SKI = SHA-1 of the subjectPublicKey BIT STRING contents (RFC 5280 4.2.1.2, method 1).
  absl::StatusOr<Bytes> ski =
      key_id.empty() ? CmsKeyId(key) : absl::StatusOr<Bytes>(Bytes(key_id.begin(), key_id.end()));
  if (!ski.ok()) return ski.status();
  internal::Asn1OctetStringPtr os(ASN1_OCTET_STRING_new());
  if (!os || ASN1_OCTET_STRING_set(os.get(), ski->data(), static_cast<int>(ski->size())) != 1 ||
      X509_add1_ext_i2d(x.get(), NID_subject_key_identifier, os.get(), 0, X509V3_ADD_DEFAULT) !=
          1) {
    return OsslInternal("cannot set subjectKeyIdentifier");
  }
  EVP_PKEY* signer = PlaceholderSigningKey();
  if (signer == nullptr || X509_sign(x.get(), signer, EVP_sha256()) <= 0) {
    return OsslInternal("cannot finish the recipient placeholder");
  }
  if (X509_get0_subject_key_id(x.get()) == nullptr) {
    return OsslInternal("subjectKeyIdentifier not visible to OpenSSL");
  }
  return Envelope(x.get(), key, plaintext, options, CMS_USE_KEYID);
}

}  // namespace hsmrewrap::crypto
