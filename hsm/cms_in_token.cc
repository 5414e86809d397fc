#include "hsm/cms_in_token.h"

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "crypto/rsa.h"
#include "hsm/key_policy.h"
#include "hsm/mechanisms.h"

namespace hsmrewrap::hsm {
namespace {

// The point of CKA_EC_POINT: DER OCTET STRING (PKCS#11 2.40; NSS, SoftHSM2) or, from some
// tokens, the raw uncompressed point.
crypto::Bytes RawPoint(crypto::Bytes v) {
  if (v.size() > 2 && v[0] == 0x04 && v[1] == v.size() - 2 && v[2] == 0x04) {
    return crypto::Bytes(v.begin() + 2, v.end());
  }
  if (v.size() > 3 && v[0] == 0x04 && v[1] == 0x81 && v[2] == v.size() - 3) {
    return crypto::Bytes(v.begin() + 3, v.end());
  }
  return v;
}

// The EC half: ephemeral key, KEK, wrapped content key; fills encrypted_key and
// ephemeral_point.
absl::Status AgreeAndWrap(SessionPool::Lease& lease, CK_OBJECT_HANDLE cek,
                          const crypto::PublicKey& device, crypto::CmsContentCipher cipher,
                          crypto::CmsTokenParts& parts) {
  auto mine = crypto::EcPointOf(device);
  if (!mine.ok()) return mine.status();
  auto shared_info = crypto::CmsEccSharedInfo(cipher);
  if (!shared_info.ok()) return shared_info.status();
  CK_OBJECT_HANDLE eph_pub = CK_INVALID_HANDLE, eph_priv = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE kek = CK_INVALID_HANDLE;
  absl::Cleanup cleanup = [&] {
    lease.Destroy(kek);
    lease.Destroy(eph_priv);
    lease.Destroy(eph_pub);
  };
  Template pub, priv;
  EphemeralEcTemplates(mine->curve_oid_der, pub, priv);
  CK_MECHANISM gen{CKM_EC_KEY_PAIR_GEN, nullptr, 0};
  if (auto s = lease.GenerateKeyPair(&gen, pub, priv, &eph_pub, &eph_priv); !s.ok()) {
    lease.MarkBroken();  // a half-made pair may be left in the session
    return s;
  }
  auto point = lease.GetAttribute(eph_pub, CKA_EC_POINT);
  if (!point.ok()) return point.status();
  parts.ephemeral_point = RawPoint(*std::move(point));
  CK_ECDH1_DERIVE_PARAMS params{CKD_SHA1_KDF, static_cast<CK_ULONG>(shared_info->size()),
                                shared_info->data(), static_cast<CK_ULONG>(mine->point.size()),
                                mine->point.data()};
  CK_MECHANISM derive{CKM_ECDH1_DERIVE, &params, sizeof(params)};
  Template kek_template = KekTemplate(crypto::CmsContentKeyLen(cipher));
  auto k = lease.DeriveKey(&derive, eph_priv, kek_template);
  if (!k.ok()) return k.status();
  kek = *k;
  CK_MECHANISM wrap{CKM_AES_KEY_WRAP, nullptr, 0};
  auto wrapped = lease.Wrap(&wrap, kek, cek, crypto::CmsContentKeyLen(cipher) + 8);
  if (!wrapped.ok()) return wrapped.status();
  parts.encrypted_key = *std::move(wrapped);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<crypto::CmsTokenParts> BuildCmsParts(SessionPool::Lease& lease,
                                                    CK_OBJECT_HANDLE secret,
                                                    const crypto::PublicKey& device,
                                                    const crypto::CmsOptions& options,
                                                    size_t max_secret_len) {
  if (!device.is_rsa() && !device.is_ec()) {
    return absl::InvalidArgumentError("in-token CMS needs an RSA or EC device key");
  }
  CK_OBJECT_HANDLE cek = CK_INVALID_HANDLE, device_key = CK_INVALID_HANDLE;
  absl::Cleanup cleanup = [&] {
    lease.Destroy(cek);
    lease.Destroy(device_key);
  };
  CK_MECHANISM gen{ContentKeyGenMechanism(options.cipher), nullptr, 0};
  Template cek_template = ContentKeyTemplate(options.cipher);
  auto k = lease.GenerateKey(&gen, cek_template);
  if (!k.ok()) return k.status();
  cek = *k;
  crypto::CmsTokenParts parts;
  parts.iv = crypto::RandomBytes(crypto::CmsContentIvLen(options.cipher));
  CK_MECHANISM cbc{ContentWrapMechanism(options.cipher), parts.iv.data(),
                   static_cast<CK_ULONG>(parts.iv.size())};
  auto content = lease.Wrap(&cbc, cek, secret, max_secret_len + 16);
  if (!content.ok()) return content.status();
  parts.encrypted_content = *std::move(content);
  if (device.is_ec()) {
    if (auto s = AgreeAndWrap(lease, cek, device, options.cipher, parts); !s.ok()) return s;
    return parts;
  }
  auto dev = SessionPublicKey(lease, device);
  if (!dev.ok()) return dev.status();
  device_key = *dev;
  RsaMechanism transport(options.key_transport == crypto::CmsKeyTransport::kRsaPkcs1
                             ? RsaPadding::kPkcs1
                             : RsaPadding::kOaepSha256);
  const size_t device_len = static_cast<size_t>((device.bits() + 7) / 8);
  auto wrapped = lease.Wrap(transport.get(), device_key, cek, device_len);
  if (!wrapped.ok()) return wrapped.status();
  parts.encrypted_key = *std::move(wrapped);
  return parts;
}

}  // namespace hsmrewrap::hsm
