#include "crypto/cms_assemble.h"

#include <openssl/err.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "absl/strings/str_cat.h"
#include "crypto/der.h"
#include "crypto/openssl_util.h"

namespace hsmrewrap::crypto {

using internal::OsslInternal;
using internal::OsslParamBldPtr;
using internal::OsslParamPtr;

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

// AlgorithmIdentifier { <cipher OID>, OCTET STRING iv } (RFC 3565 / RFC 3370 §5.1).
absl::StatusOr<Bytes> ContentAlgorithm(CmsContentCipher c, const Bytes& iv) {
  const EVP_CIPHER* cipher = CmsEvpCipher(c);
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

// IssuerAndSerialNumber ::= SEQUENCE { issuer Name, serialNumber INTEGER }
absl::StatusOr<Bytes> IssuerAndSerial(const Certificate& certificate) {
  auto issuer = ToDer<X509_NAME>(i2d_X509_NAME, X509_get_issuer_name(certificate.get()),
                                 "the issuer name");
  if (!issuer.ok()) return issuer.status();
  auto serial = ToDer<ASN1_INTEGER>(i2d_ASN1_INTEGER, X509_get0_serialNumber(certificate.get()),
                                    "the serial number");
  if (!serial.ok()) return serial.status();
  return der::Wrap(der::kSequence, {*issuer, *serial});
}

absl::Status CheckParts(const PublicKey& key, const CmsOptions& options,
                        const CmsTokenParts& parts) {
  if (!key.is_rsa()) {
    return absl::InvalidArgumentError("key transport needs an RSA recipient key");
  }
  const size_t k = static_cast<size_t>((key.bits() + 7) / 8);
  const EVP_CIPHER* cipher = CmsEvpCipher(options.cipher);
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

// ContentInfo { envelopedData, [0] EnvelopedData { version, SET { recipient_info },
// EncryptedContentInfo { data, <cipher, IV>, [0] encryptedContent } } }.
absl::StatusOr<Bytes> Frame(uint8_t version, const Bytes& recipient_info, CmsContentCipher cipher,
                            const CmsTokenParts& parts) {
  auto cea = ContentAlgorithm(cipher, parts.iv);
  if (!cea.ok()) return cea.status();
  auto data_oid = Oid(NID_pkcs7_data);
  auto enveloped_oid = Oid(NID_pkcs7_enveloped);
  if (!data_oid.ok()) return data_oid.status();
  if (!enveloped_oid.ok()) return enveloped_oid.status();
  const Bytes eci = der::Wrap(
      der::kSequence,
      {*data_oid, *cea, der::Tlv(der::ContextPrimitive(0), parts.encrypted_content)});
  const Bytes enveloped = der::Wrap(
      der::kSequence, {der::SmallInteger(version), der::Wrap(der::kSet, {recipient_info}), eci});
  return der::Wrap(der::kSequence,
                   {*enveloped_oid, der::Wrap(der::ContextConstructed(0), {enveloped})});
}

// AlgorithmIdentifier with absent parameters.
absl::StatusOr<Bytes> BareAlgorithm(int nid) {
  AlgorPtr alg(X509_ALGOR_new());
  if (!alg || X509_ALGOR_set0(alg.get(), OBJ_nid2obj(nid), V_ASN1_UNDEF, nullptr) != 1) {
    return OsslInternal("cannot build an AlgorithmIdentifier");
  }
  return ToDer<X509_ALGOR>(i2d_X509_ALGOR, alg.get(), "an AlgorithmIdentifier");
}

// The AES key wrap of a KEK as long as the content key.
absl::StatusOr<int> WrapNid(CmsContentCipher c) {
  switch (c) {
    case CmsContentCipher::kAes256Cbc:
      return NID_id_aes256_wrap;
    case CmsContentCipher::kAes128Cbc:
      return NID_id_aes128_wrap;
    default:
      return absl::InvalidArgumentError(
          "EC recipients take AES content encryption only (AES key wrap of the content key)");
  }
}

// KeyAgreeRecipientInfo (RFC 5652 §6.2.2, RFC 5753): [1] { 3, originator [0] { [1] {
// id-ecPublicKey, BIT STRING point } }, { dhSinglePass-stdDH-sha1kdf-scheme, { aes-wrap } },
// { { rid, encryptedKey } } }.
absl::StatusOr<Bytes> AssembleKeyAgree(const PublicKey& key, CmsContentCipher cipher,
                                       const CmsTokenParts& parts, const Bytes& rid) {
  if (!key.is_ec()) return absl::InvalidArgumentError("key agreement needs an EC recipient key");
  auto wrap_nid = WrapNid(cipher);
  if (!wrap_nid.ok()) return wrap_nid.status();
  const size_t kek = CmsContentKeyLen(cipher);
  auto mine = EcPointOf(key);
  if (!mine.ok()) return mine.status();
  if (parts.iv.size() != CmsContentIvLen(cipher) || parts.encrypted_key.size() != kek + 8 ||
      parts.encrypted_content.empty() || parts.encrypted_content.size() % 16 != 0 ||
      parts.ephemeral_point.size() != mine->point.size() || parts.ephemeral_point[0] != 0x04) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CMS key-agreement parts of the wrong size (IV ", parts.iv.size(), ", encrypted key ",
        parts.encrypted_key.size(), ", content ", parts.encrypted_content.size(), ", point ",
        parts.ephemeral_point.size(), ")"));
  }
  auto ec_alg = BareAlgorithm(NID_X9_62_id_ecPublicKey);
  auto wrap_alg = BareAlgorithm(*wrap_nid);
  auto scheme = Oid(NID_dhSinglePass_stdDH_sha1kdf_scheme);
  if (!ec_alg.ok()) return ec_alg.status();
  if (!wrap_alg.ok()) return wrap_alg.status();
  if (!scheme.ok()) return scheme.status();
  Bytes bits = {0x00};  // no unused bits
  bits.insert(bits.end(), parts.ephemeral_point.begin(), parts.ephemeral_point.end());
  const Bytes originator = der::Wrap(
      der::ContextConstructed(0),
      {der::Wrap(der::ContextConstructed(1), {*ec_alg, der::Tlv(0x03, bits)})});
  const Bytes kari = der::Wrap(
      der::ContextConstructed(1),
      {der::SmallInteger(3), originator, der::Wrap(der::kSequence, {*scheme, *wrap_alg}),
       der::Wrap(der::kSequence, {der::Wrap(der::kSequence, {rid, der::Tlv(der::kOctetString,
                                                                          parts.encrypted_key)})})});
  return Frame(2, kari, cipher, parts);
}

// ContentInfo { envelopedData, [0] EnvelopedData { version, SET { ktri },
// EncryptedContentInfo } } with KeyTransRecipientInfo { ktri_version, rid, algorithm, key }.
absl::StatusOr<Bytes> Assemble(const PublicKey& key, const CmsOptions& options,
                               const CmsTokenParts& parts, const Bytes& rid,
                               uint8_t ktri_version) {
  if (auto s = CheckParts(key, options, parts); !s.ok()) return s;
  auto kea = KeyTransportAlgorithm(options.key_transport);
  if (!kea.ok()) return kea.status();
  const Bytes ktri =
      der::Wrap(der::kSequence, {der::SmallInteger(ktri_version), rid, *kea,
                                 der::Tlv(der::kOctetString, parts.encrypted_key)});
  // RFC 5652 §6.1: version 0 when every RecipientInfo is version 0 (and there is no
  // originatorInfo or unprotectedAttrs), else 2.
  return Frame(ktri_version == 0 ? 0 : 2, ktri, options.cipher, parts);
}

}  // namespace

size_t CmsContentKeyLen(CmsContentCipher cipher) {
  const EVP_CIPHER* c = CmsEvpCipher(cipher);
  return c == nullptr ? 0 : static_cast<size_t>(EVP_CIPHER_get_key_length(c));
}

size_t CmsContentIvLen(CmsContentCipher cipher) {
  const EVP_CIPHER* c = CmsEvpCipher(cipher);
  return c == nullptr ? 0 : static_cast<size_t>(EVP_CIPHER_get_iv_length(c));
}

absl::StatusOr<SecretBytes> CmsContentDecrypt(CmsContentCipher cipher,
                                              absl::Span<const uint8_t> key,
                                              absl::Span<const uint8_t> iv,
                                              absl::Span<const uint8_t> encrypted) {
  const EVP_CIPHER* c = CmsEvpCipher(cipher);
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
                                               const CmsTokenParts& parts) {
  auto rid = IssuerAndSerial(certificate);
  if (!rid.ok()) return rid.status();
  return Assemble(certificate.public_key(), options, parts, *rid, 0);
}

namespace {
// `key_id` when given, else the key's SHA-1 key id.
absl::StatusOr<Bytes> KeyIdOr(const PublicKey& key, absl::Span<const uint8_t> key_id) {
  if (key_id.empty()) return CmsKeyId(key);
  return Bytes(key_id.begin(), key_id.end());
}
}  // namespace

absl::StatusOr<EcPublicPoint> EcPointOf(const PublicKey& key) {
  if (!key.is_ec()) return absl::InvalidArgumentError("not an EC key");
  EcPublicPoint out;
  char group[64] = {0};
  size_t len = 0;
  unsigned char point[200];
  size_t point_len = 0;
  if (EVP_PKEY_get_utf8_string_param(key.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                     &len) != 1 ||
      EVP_PKEY_get_octet_string_param(key.get(), OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point,
                                      sizeof(point), &point_len) != 1) {
    return OsslInternal("cannot read the EC key");
  }
  out.curve_nid = OBJ_sn2nid(group);
  if (out.curve_nid == NID_undef) out.curve_nid = EC_curve_nist2nid(group);
  auto oid = Oid(out.curve_nid);
  if (!oid.ok()) return oid.status();
  out.curve_oid_der = *std::move(oid);
  out.point.assign(point, point + point_len);
  if (out.point.empty() || out.point[0] != 0x04) {
    return absl::InvalidArgumentError("EC point is not uncompressed");
  }
  return out;
}

absl::StatusOr<Bytes> CmsEccSharedInfo(CmsContentCipher cipher) {
  auto wrap_nid = WrapNid(cipher);
  if (!wrap_nid.ok()) return wrap_nid.status();
  auto wrap_alg = BareAlgorithm(*wrap_nid);
  if (!wrap_alg.ok()) return wrap_alg.status();
  const uint32_t bits = static_cast<uint32_t>(CmsContentKeyLen(cipher) * 8);
  const uint8_t len[4] = {static_cast<uint8_t>(bits >> 24), static_cast<uint8_t>(bits >> 16),
                          static_cast<uint8_t>(bits >> 8), static_cast<uint8_t>(bits)};
  return der::Wrap(der::kSequence,
                   {*wrap_alg, der::Wrap(der::ContextConstructed(2),
                                         {der::Tlv(der::kOctetString, len)})});
}

absl::StatusOr<Bytes> CmsAssembleKeyAgreeToCertificate(const Certificate& certificate,
                                                       CmsContentCipher cipher,
                                                       const CmsTokenParts& parts) {
  auto rid = IssuerAndSerial(certificate);
  if (!rid.ok()) return rid.status();
  return AssembleKeyAgree(certificate.public_key(), cipher, parts, *rid);
}

absl::StatusOr<Bytes> CmsAssembleKeyAgreeToPublicKey(const PublicKey& key, CmsContentCipher cipher,
                                                     const CmsTokenParts& parts,
                                                     absl::Span<const uint8_t> key_id) {
  auto ski = KeyIdOr(key, key_id);
  if (!ski.ok()) return ski.status();
  // KeyAgreeRecipientIdentifier rKeyId [0] IMPLICIT RecipientKeyIdentifier { OCTET STRING }.
  return AssembleKeyAgree(
      key, cipher, parts,
      der::Wrap(der::ContextConstructed(0), {der::Tlv(der::kOctetString, *ski)}));
}

absl::StatusOr<HostEcKey> HostEcKey::Generate(int curve_nid) {
  EVP_PKEY* k = EVP_EC_gen(OBJ_nid2sn(curve_nid));
  if (k == nullptr) return OsslInternal("EC key generation failed");
  std::shared_ptr<EVP_PKEY> pkey(k, EVP_PKEY_free);
  auto pub = PublicKey::FromEvpPkey(k);
  if (!pub.ok()) return pub.status();
  return HostEcKey(std::move(pkey), *std::move(pub));
}

absl::StatusOr<SecretBytes> HostEcKey::Kek(CmsContentCipher cipher,
                                           absl::Span<const uint8_t> ephemeral_point) const {
  auto mine = EcPointOf(public_key_);
  if (!mine.ok()) return mine.status();
  auto shared_info = CmsEccSharedInfo(cipher);
  if (!shared_info.ok()) return shared_info.status();
  // The peer: the ephemeral point on this key's curve.
  OsslParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld ||
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME,
                                      OBJ_nid2sn(mine->curve_nid), 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, ephemeral_point.data(),
                                       ephemeral_point.size()) != 1) {
    return OsslInternal("cannot describe the ephemeral key");
  }
  OsslParamPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
  internal::EvpPkeyCtxPtr fctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* peer_raw = nullptr;
  if (!params || !fctx || EVP_PKEY_fromdata_init(fctx.get()) != 1 ||
      EVP_PKEY_fromdata(fctx.get(), &peer_raw, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
    return internal::OsslInvalidArgument("the ephemeral point is not on the curve");
  }
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> peer(peer_raw, EVP_PKEY_free);
  internal::EvpPkeyCtxPtr dctx(EVP_PKEY_CTX_new(pkey_.get(), nullptr));
  size_t z_len = 0;
  if (!dctx || EVP_PKEY_derive_init(dctx.get()) != 1 ||
      EVP_PKEY_derive_set_peer(dctx.get(), peer.get()) != 1 ||
      EVP_PKEY_derive(dctx.get(), nullptr, &z_len) != 1) {
    return OsslInternal("ECDH failed");
  }
  SecretBytes z(z_len);
  if (EVP_PKEY_derive(dctx.get(), z.data(), &z_len) != 1) return OsslInternal("ECDH failed");
  z.resize(z_len);
  // ANSI X9.63 KDF with SHA-1 (OpenSSL's "X963KDF").
  const size_t kek_len = CmsContentKeyLen(cipher);
  SecretBytes kek(kek_len);
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "X963KDF", nullptr);
  EVP_KDF_CTX* kctx = kdf == nullptr ? nullptr : EVP_KDF_CTX_new(kdf);
  EVP_KDF_free(kdf);
  std::unique_ptr<EVP_KDF_CTX, decltype(&EVP_KDF_CTX_free)> kdf_ctx(kctx, EVP_KDF_CTX_free);
  char digest[] = "SHA1";
  OSSL_PARAM kp[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, z.data(), z.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, shared_info->data(),
                                        shared_info->size()),
      OSSL_PARAM_construct_end()};
  if (!kdf_ctx || EVP_KDF_derive(kdf_ctx.get(), kek.data(), kek.size(), kp) != 1) {
    return OsslInternal("X9.63 KDF failed");
  }
  return kek;
}

absl::StatusOr<Bytes> HostEcKey::WrapContentKey(CmsContentCipher cipher,
                                                absl::Span<const uint8_t> recipient_point,
                                                absl::Span<const uint8_t> content_key) const {
  auto kek = Kek(cipher, recipient_point);
  if (!kek.ok()) return kek.status();
  const EVP_CIPHER* wrap = kek->size() == 16 ? EVP_aes_128_wrap() : EVP_aes_256_wrap();
  internal::OsslPtr<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free> c(EVP_CIPHER_CTX_new());
  Bytes out(content_key.size() + 16);
  int n = 0, m = 0;
  if (!c || EVP_EncryptInit_ex(c.get(), wrap, nullptr, kek->data(), nullptr) != 1 ||
      EVP_EncryptUpdate(c.get(), out.data(), &n, content_key.data(),
                        static_cast<int>(content_key.size())) != 1 ||
      EVP_EncryptFinal_ex(c.get(), out.data() + n, &m) != 1) {
    return OsslInternal("AES key wrap failed");
  }
  out.resize(static_cast<size_t>(n + m));
  return out;
}

absl::StatusOr<SecretBytes> HostEcKey::UnwrapContentKey(CmsContentCipher cipher,
                                                        absl::Span<const uint8_t> ephemeral_point,
                                                        absl::Span<const uint8_t> encrypted_key) const {
  auto kek_or = Kek(cipher, ephemeral_point);
  if (!kek_or.ok()) return kek_or.status();
  const SecretBytes& kek = *kek_or;
  const size_t kek_len = kek.size();
  // AES key unwrap (RFC 3394).
  const EVP_CIPHER* wrap = kek_len == 16 ? EVP_aes_128_wrap() : EVP_aes_256_wrap();
  internal::OsslPtr<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free> c(EVP_CIPHER_CTX_new());
  SecretBytes out(encrypted_key.size() + 16);
  int n = 0, m = 0;
  if (!c || EVP_DecryptInit_ex(c.get(), wrap, nullptr, kek.data(), nullptr) != 1 ||
      EVP_DecryptUpdate(c.get(), out.data(), &n, encrypted_key.data(),
                        static_cast<int>(encrypted_key.size())) != 1 ||
      EVP_DecryptFinal_ex(c.get(), out.data() + n, &m) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("the content key does not unwrap");
  }
  out.resize(static_cast<size_t>(n + m));
  return out;
}

absl::StatusOr<Bytes> CmsAssembleToPublicKey(const PublicKey& key, const CmsOptions& options,
                                             const CmsTokenParts& parts,
                                             absl::Span<const uint8_t> key_id) {
  auto ski = KeyIdOr(key, key_id);
  if (!ski.ok()) return ski.status();
  // RecipientIdentifier subjectKeyIdentifier [0] IMPLICIT OCTET STRING; ktri version 2.
  return Assemble(key, options, parts, der::Tlv(der::ContextPrimitive(0), *ski), 2);
}

}  // namespace hsmrewrap::crypto
