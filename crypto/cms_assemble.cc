#include "crypto/cms_assemble.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "absl/strings/str_cat.h"
#include "crypto/der.h"
#include "crypto/openssl_util.h"

namespace hsmrewrap::crypto {

using internal::OsslInternal;

namespace {

using AlgorPtr = internal::OsslPtr<X509_ALGOR, X509_ALGOR_free>;
using OaepParamsPtr = internal::OsslPtr<RSA_OAEP_PARAMS, RSA_OAEP_PARAMS_free>;

template <typename T>
absl::StatusOr<Bytes> ToDer(int (*i2d)(const T*, unsigned char**), const T* v, const char* what) {
  unsigned char* der = nullptr;
  const int len = v == nullptr ? -1 : i2d(v, &der);
  if (len <= 0) return OsslInternal(absl::StrCat("cannot encode ", what));
  Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

const EVP_CIPHER* Cipher(CmsContentCipher c) {
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

// AlgorithmIdentifier { <cipher OID>, OCTET STRING iv } (RFC 3565 / RFC 3370 §5.1).
absl::StatusOr<Bytes> ContentAlgorithm(CmsContentCipher c, const Bytes& iv) {
  const EVP_CIPHER* cipher = Cipher(c);
  if (cipher == nullptr) return absl::InvalidArgumentError("unknown CMS content cipher");
  internal::Asn1OctetStringPtr os(ASN1_OCTET_STRING_new());
  AlgorPtr alg(X509_ALGOR_new());
  if (!os || !alg || ASN1_OCTET_STRING_set(os.get(), iv.data(), static_cast<int>(iv.size())) != 1 ||
      X509_ALGOR_set0(alg.get(), OBJ_nid2obj(EVP_CIPHER_get_type(cipher)), V_ASN1_OCTET_STRING,
                      os.get()) != 1) {
    return OsslInternal("cannot build the content-encryption AlgorithmIdentifier");
  }
  os.release();  // owned by alg
  return ToDer<X509_ALGOR>(i2d_X509_ALGOR, alg.get(), "the content-encryption algorithm");
}

// AlgorithmIdentifier of the key transport: rsaEncryption with NULL parameters, or
// id-RSAES-OAEP with SHA-256 and MGF1-SHA-256 (RFC 8017 A.2.1; default pSource omitted).
absl::StatusOr<Bytes> KeyTransportAlgorithm(CmsKeyTransport t) {
  AlgorPtr alg(X509_ALGOR_new());
  if (!alg) return OsslInternal("X509_ALGOR_new failed");
  if (t == CmsKeyTransport::kRsaPkcs1) {
    if (X509_ALGOR_set0(alg.get(), OBJ_nid2obj(NID_rsaEncryption), V_ASN1_NULL, nullptr) != 1) {
      return OsslInternal("cannot build the rsaEncryption AlgorithmIdentifier");
    }
    return ToDer<X509_ALGOR>(i2d_X509_ALGOR, alg.get(), "the key-transport algorithm");
  }
  if (t != CmsKeyTransport::kRsaOaepSha256) return absl::InvalidArgumentError("unknown key transport");
  OaepParamsPtr params(RSA_OAEP_PARAMS_new());
  AlgorPtr mgf1_hash(X509_ALGOR_new());
  if (!params || !mgf1_hash) return OsslInternal("RSA_OAEP_PARAMS_new failed");
  params->hashFunc = X509_ALGOR_new();
  params->maskGenFunc = X509_ALGOR_new();
  if (params->hashFunc == nullptr || params->maskGenFunc == nullptr) {
    return OsslInternal("X509_ALGOR_new failed");
  }
  X509_ALGOR_set_md(params->hashFunc, EVP_sha256());
  X509_ALGOR_set_md(mgf1_hash.get(), EVP_sha256());
  ASN1_STRING* mgf1_param = ASN1_item_pack(mgf1_hash.get(), ASN1_ITEM_rptr(X509_ALGOR), nullptr);
  if (mgf1_param == nullptr ||
      X509_ALGOR_set0(params->maskGenFunc, OBJ_nid2obj(NID_mgf1), V_ASN1_SEQUENCE, mgf1_param) !=
          1) {
    ASN1_STRING_free(mgf1_param);
    return OsslInternal("cannot build the MGF1 parameters");
  }
  ASN1_STRING* oaep = ASN1_item_pack(params.get(), ASN1_ITEM_rptr(RSA_OAEP_PARAMS), nullptr);
  if (oaep == nullptr ||
      X509_ALGOR_set0(alg.get(), OBJ_nid2obj(NID_rsaesOaep), V_ASN1_SEQUENCE, oaep) != 1) {
    ASN1_STRING_free(oaep);
    return OsslInternal("cannot build the RSAES-OAEP parameters");
  }
  return ToDer<X509_ALGOR>(i2d_X509_ALGOR, alg.get(), "the key-transport algorithm");
}

absl::StatusOr<Bytes> Oid(int nid) {
  return ToDer<ASN1_OBJECT>(i2d_ASN1_OBJECT, OBJ_nid2obj(nid), "an OID");
}

absl::Status CheckParts(const PublicKey& key, const CmsOptions& options,
                        const CmsKeyTransParts& parts) {
  if (!key.is_rsa()) {
    return absl::InvalidArgumentError("key transport needs an RSA recipient key");
  }
  const size_t k = static_cast<size_t>((key.bits() + 7) / 8);
  const EVP_CIPHER* cipher = Cipher(options.cipher);
  if (cipher == nullptr) return absl::InvalidArgumentError("unknown CMS content cipher");
  const size_t block = static_cast<size_t>(EVP_CIPHER_get_block_size(cipher));
  if (parts.iv.size() != CmsContentIvLen(options.cipher) || parts.encrypted_key.size() != k ||
      parts.encrypted_content.empty() || parts.encrypted_content.size() % block != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("CMS parts of the wrong size (IV ", parts.iv.size(), ", encrypted key ",
                     parts.encrypted_key.size(), ", content ", parts.encrypted_content.size(),
                     ") for a ", key.bits(), "-bit recipient"));
  }
  return absl::OkStatus();
}

// ContentInfo { envelopedData, [0] EnvelopedData { version, SET { ktri },
// EncryptedContentInfo } } with KeyTransRecipientInfo { ktri_version, rid, algorithm, key }.
absl::StatusOr<Bytes> Assemble(const PublicKey& key, const CmsOptions& options,
                               const CmsKeyTransParts& parts, const Bytes& rid,
                               uint8_t ktri_version) {
  if (auto s = CheckParts(key, options, parts); !s.ok()) return s;
  auto kea = KeyTransportAlgorithm(options.key_transport);
  if (!kea.ok()) return kea.status();
  auto cea = ContentAlgorithm(options.cipher, parts.iv);
  if (!cea.ok()) return cea.status();
  auto data_oid = Oid(NID_pkcs7_data);
  auto enveloped_oid = Oid(NID_pkcs7_enveloped);
  if (!data_oid.ok()) return data_oid.status();
  if (!enveloped_oid.ok()) return enveloped_oid.status();

  const Bytes ktri =
      der::Wrap(der::kSequence, {der::SmallInteger(ktri_version), rid, *kea,
                                 der::Tlv(der::kOctetString, parts.encrypted_key)});
  const Bytes eci = der::Wrap(
      der::kSequence,
      {*data_oid, *cea, der::Tlv(der::ContextPrimitive(0), parts.encrypted_content)});
  // RFC 5652 §6.1: version 0 when every RecipientInfo is version 0 (and there is no
  // originatorInfo or unprotectedAttrs), else 2.
  const Bytes enveloped =
      der::Wrap(der::kSequence, {der::SmallInteger(ktri_version == 0 ? 0 : 2),
                                 der::Wrap(der::kSet, {ktri}), eci});
  return der::Wrap(der::kSequence,
                   {*enveloped_oid, der::Wrap(der::ContextConstructed(0), {enveloped})});
}

}  // namespace

size_t CmsContentKeyLen(CmsContentCipher cipher) {
  const EVP_CIPHER* c = Cipher(cipher);
  return c == nullptr ? 0 : static_cast<size_t>(EVP_CIPHER_get_key_length(c));
}

size_t CmsContentIvLen(CmsContentCipher cipher) {
  const EVP_CIPHER* c = Cipher(cipher);
  return c == nullptr ? 0 : static_cast<size_t>(EVP_CIPHER_get_iv_length(c));
}

absl::StatusOr<SecretBytes> CmsContentDecrypt(CmsContentCipher cipher,
                                              absl::Span<const uint8_t> key,
                                              absl::Span<const uint8_t> iv,
                                              absl::Span<const uint8_t> encrypted) {
  const EVP_CIPHER* c = Cipher(cipher);
  if (c == nullptr || key.size() != CmsContentKeyLen(cipher) || iv.size() != CmsContentIvLen(cipher)) {
    return absl::InvalidArgumentError("wrong content cipher, key or IV");
  }
  internal::OsslPtr<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free> ctx(EVP_CIPHER_CTX_new());
  SecretBytes out(encrypted.size() + 32);
  int n = 0, m = 0;
  if (!ctx || EVP_DecryptInit_ex(ctx.get(), c, nullptr, key.data(), iv.data()) != 1 ||
      EVP_DecryptUpdate(ctx.get(), out.data(), &n, encrypted.data(),
                        static_cast<int>(encrypted.size())) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), out.data() + n, &m) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("the content does not decrypt");
  }
  out.resize(static_cast<size_t>(n + m));
  return out;
}

absl::StatusOr<Bytes> CmsKeyId(const PublicKey& key) {
  X509_PUBKEY* xpk = nullptr;
  if (key.get() == nullptr || X509_PUBKEY_set(&xpk, key.get()) != 1) {
    return OsslInternal("cannot read the public key");
  }
  internal::OsslPtr<X509_PUBKEY, X509_PUBKEY_free> owned(xpk);
  const unsigned char* pk = nullptr;
  int pk_len = 0;
  if (X509_PUBKEY_get0_param(nullptr, &pk, &pk_len, nullptr, xpk) != 1) {
    return OsslInternal("cannot read the public key bits");
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  if (EVP_Digest(pk, static_cast<size_t>(pk_len), md, &md_len, EVP_sha1(), nullptr) != 1) {
    return OsslInternal("SHA-1 failed");
  }
  return Bytes(md, md + md_len);
}

absl::StatusOr<Bytes> CmsAssembleToCertificate(const Certificate& certificate,
                                               const CmsOptions& options,
                                               const CmsKeyTransParts& parts) {
  // IssuerAndSerialNumber ::= SEQUENCE { issuer Name, serialNumber INTEGER }
  auto issuer = ToDer<X509_NAME>(i2d_X509_NAME, X509_get_issuer_name(certificate.get()),
                                 "the issuer name");
  if (!issuer.ok()) return issuer.status();
  auto serial = ToDer<ASN1_INTEGER>(i2d_ASN1_INTEGER, X509_get0_serialNumber(certificate.get()),
                                    "the serial number");
  if (!serial.ok()) return serial.status();
  return Assemble(certificate.public_key(), options, parts,
                  der::Wrap(der::kSequence, {*issuer, *serial}), 0);
}

absl::StatusOr<Bytes> CmsAssembleToPublicKey(const PublicKey& key, const CmsOptions& options,
                                             const CmsKeyTransParts& parts) {
  auto ski = CmsKeyId(key);
  if (!ski.ok()) return ski.status();
  // RecipientIdentifier subjectKeyIdentifier [0] IMPLICIT OCTET STRING; ktri version 2.
  return Assemble(key, options, parts, der::Tlv(der::ContextPrimitive(0), *ski), 2);
}

}  // namespace hsmrewrap::crypto
