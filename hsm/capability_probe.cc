#include "hsm/capability_probe.h"

#include <algorithm>
#include <optional>
#include <vector>

#include <openssl/ec.h>
#include <openssl/obj_mac.h>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "hsm/cms_in_token.h"
#include "crypto/cms_assemble.h"
#include "crypto/rsa.h"
#include "hsm/key_policy.h"
#include "hsm/mechanisms.h"
#include "spdlog/spdlog.h"

namespace hsmrewrap::hsm {
namespace {

bool Lost(const absl::Status& s) { return IsTokenLossRv(CkrOf(s)); }

// One in-token CMS form, end to end (see ProbeWrapPaddings), with the same calls the rewrap
// makes (BuildCmsParts) on a known secret. `open` gives the content key back from the
// parts, as the device would. Only a lost token is an error.
absl::StatusOr<bool> ProbeCmsForm(
    const LeaseSource& lease, const crypto::SecretBytes& value, const crypto::PublicKey& device,
    const crypto::CmsOptions& options, const std::string& what,
    const std::function<absl::StatusOr<crypto::SecretBytes>(const crypto::CmsTokenParts&)>& open) {
  auto l = lease();
  if (!l.ok()) return l.status();
  Template st = SessionSecretTemplate();
  st.SecretRef(CKA_VALUE, value);
  auto secret = l->Create(st);
  if (!secret.ok()) {
    spdlog::debug("in-token CMS probe {}: C_CreateObject: {}", what,
                  std::string(secret.status().message()));
    l->MarkBroken();
    if (Lost(secret.status())) return secret.status();
    return false;
  }
  auto parts = BuildCmsParts(*l, *secret, device, options, value.size());
  l->Destroy(*secret);
  if (!parts.ok()) {
    spdlog::debug("in-token CMS probe {}: {}", what, std::string(parts.status().message()));
    l->MarkBroken();
    if (Lost(parts.status())) return parts.status();
    return false;
  }
  auto key = open(*parts);
  if (!key.ok()) {
    spdlog::warn("in-token CMS probe {}: the content key did not come back: {}", what,
                 std::string(key.status().message()));
    return false;
  }
  auto back = crypto::CmsContentDecrypt(options.cipher, *key, parts->iv, parts->encrypted_content);
  if (!back.ok() || *back != value) {
    spdlog::warn("in-token CMS probe {}: the token's content did not decrypt to the secret", what);
    return false;
  }
  return true;
}

// Whether the key does implicit rejection for every kind of malformed PKCS#1 v1.5 block
// (see ProbeKey). With `decrypt`, by C_Decrypt (each block twice: the same message both
// times, at most k-11 bytes); otherwise by C_UnwrapKey (CKR_OK for each). Only a lost token
// is an error.
absl::StatusOr<bool> ProbeImplicitRejection(const LeaseSource& lease, CK_OBJECT_HANDLE priv,
                                            const crypto::PublicKey& pub, bool decrypt) {
  const size_t k = static_cast<size_t>((pub.bits() + 7) / 8);
  RsaMechanism mech(RsaPadding::kPkcs1);
  for (crypto::Pkcs1Malformation kind : crypto::kAllPkcs1Malformations) {
    const char* what = crypto::Pkcs1MalformationName(kind);
    auto bad = crypto::NonConformantPkcs1Ciphertext(pub, kind);
    if (!bad.ok()) {
      if (bad.status().code() == absl::StatusCode::kInvalidArgument) {
        spdlog::debug("PKCS#1 implicit-rejection probe ({}): {}", what,
                      std::string(bad.status().message()));
        continue;  // this modulus cannot carry that block; the other kinds decide
      }
      return bad.status();
    }
    if (decrypt) {
      std::optional<crypto::SecretBytes> first;
      for (int round = 0; round < 2; ++round) {
        auto l = lease();
        if (!l.ok()) return l.status();
        auto pt = l->Decrypt(mech.get(), priv, *bad, k);
        if (!pt.ok()) {
          spdlog::debug("PKCS#1 implicit-rejection probe ({}, C_Decrypt): {}", what,
                        std::string(pt.status().message()));
          if (Lost(pt.status())) return pt.status();
          return false;
        }
        if (pt->size() > k - 11) {
          spdlog::info("PKCS#1 implicit-rejection probe ({}): {} bytes out of a {}-byte key", what,
                       pt->size(), k);
          return false;
        }
        if (!first) {
          first = *std::move(pt);
        } else if (*first != *pt) {
          spdlog::info("PKCS#1 implicit-rejection probe ({}): not deterministic", what);
          return false;
        }
      }
    } else {
      auto l = lease();
      if (!l.ok()) return l.status();
      Template t = SessionSecretTemplate();
      auto h = l->Unwrap(mech.get(), priv, *bad, t);
      if (!h.ok()) {
        spdlog::debug("PKCS#1 implicit-rejection probe ({}, C_UnwrapKey): {}", what,
                      std::string(h.status().message()));
        if (Lost(h.status())) return h.status();
        return false;
      }
      l->Destroy(*h);
    }
  }
  return true;
}

}  // namespace

absl::Status ProbeWrapPaddings(const LeaseSource& lease, std::set<RsaPadding>* out,
                               CmsFormSet* cms, EcCmsFormSet* ec_cms) {
  auto host = crypto::HostRsaKey::Generate(2048);
  if (!host.ok()) return host.status();
  crypto::SecretBytes value;
  {
    crypto::Bytes r = crypto::RandomBytes(16);
    value.assign(r.begin(), r.end());
  }
  const size_t k = static_cast<size_t>((host->public_key().bits() + 7) / 8);
  for (RsaPadding p : kAllPaddings) {
    auto l = lease();
    if (!l.ok()) return l.status();
    auto pub = SessionPublicKey(*l, host->public_key());
    if (!pub.ok()) return pub.status();
    // Every probe object is destroyed explicitly on every path: closing the session is not
    // enough where a token keeps "session" objects (tpm2-pkcs11 stores every object).
    absl::Cleanup destroy_pub = [&] { l->Destroy(*pub); };
    Template t;
    t.Ulong(CKA_CLASS, CKO_SECRET_KEY)
        .Ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET)
        .Bool(CKA_TOKEN, false)
        .Bool(CKA_SENSITIVE, false)
        .Bool(CKA_EXTRACTABLE, true)
        .SecretRef(CKA_VALUE, value);
    auto secret = l->Create(t);
    if (!secret.ok()) {
      l->MarkBroken();
      return secret.status();
    }
    RsaMechanism mech(p);
    auto wrapped = l->Wrap(mech.get(), *pub, *secret, k);
    l->Destroy(*secret);
    std::move(destroy_pub).Invoke();
    if (!wrapped.ok()) {
      spdlog::debug("wrap probe {}: {}", PaddingName(p), std::string(wrapped.status().message()));
      if (Lost(wrapped.status())) return wrapped.status();
      continue;
    }
    auto back = host->Decrypt(p, *wrapped);
    if (back.ok() && back->size() == value.size() &&
        std::equal(back->begin(), back->end(), value.begin())) {
      out->insert(p);
    } else {
      spdlog::warn("wrap probe {}: token output did not decrypt to the secret", PaddingName(p));
    }
  }
  if (cms == nullptr) return absl::OkStatus();
  static constexpr std::pair<RsaPadding, crypto::CmsKeyTransport> kTransports[] = {
      {RsaPadding::kOaepSha256, crypto::CmsKeyTransport::kRsaOaepSha256},
      {RsaPadding::kPkcs1, crypto::CmsKeyTransport::kRsaPkcs1}};
  static constexpr crypto::CmsContentCipher kCiphers[] = {crypto::CmsContentCipher::kAes256Cbc,
                                                          crypto::CmsContentCipher::kAes128Cbc,
                                                          crypto::CmsContentCipher::kDes3Cbc};
  for (const auto& [padding, transport] : kTransports) {
    if (!out->count(padding)) continue;
    for (crypto::CmsContentCipher cipher : kCiphers) {
      const crypto::RsaPadding p = padding;
      auto ok = ProbeCmsForm(
          lease, value, host->public_key(), crypto::CmsOptions{transport, cipher},
          absl::StrCat(PaddingName(p), "/", CmsContentCipherName(cipher)),
          [&host, p](const crypto::CmsTokenParts& parts) {
            return host->Decrypt(p, parts.encrypted_key);
          });
      if (!ok.ok()) return ok.status();
      if (*ok) cms->insert({transport, cipher});
    }
  }
  if (ec_cms == nullptr) return absl::OkStatus();
  for (int curve : {NID_X9_62_prime256v1, NID_secp384r1}) {
    auto device = crypto::HostEcKey::Generate(curve);
    if (!device.ok()) return device.status();
    for (crypto::CmsContentCipher cipher :
         {crypto::CmsContentCipher::kAes256Cbc, crypto::CmsContentCipher::kAes128Cbc}) {
      const crypto::HostEcKey& d = *device;
      auto ok = ProbeCmsForm(
          lease, value, d.public_key(), crypto::CmsOptions{{}, cipher},
          absl::StrCat(EC_curve_nid2nist(curve), "/", CmsContentCipherName(cipher)),
          [&d, cipher](const crypto::CmsTokenParts& parts) {
            return d.UnwrapContentKey(cipher, parts.ephemeral_point, parts.encrypted_key);
          });
      if (!ok.ok()) return ok.status();
      if (*ok) ec_cms->insert({curve, cipher});
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<KeyCapabilities> ProbeKey(const LeaseSource& lease, CK_OBJECT_HANDLE priv,
                                         const crypto::PublicKey& pub, bool allow_pkcs1,
                                         bool host_unpadding) {
  KeyCapabilities caps;
  const size_t k = static_cast<size_t>((pub.bits() + 7) / 8);
  std::vector<RsaPadding> paddings(std::begin(kOaepPaddings), std::end(kOaepPaddings));
  if (allow_pkcs1) paddings.push_back(RsaPadding::kPkcs1);
  const crypto::Bytes probe = crypto::RandomBytes(16);
  auto same = [&probe](const crypto::SecretBytes& got) {
    return got.size() == probe.size() && std::equal(got.begin(), got.end(), probe.begin());
  };
  for (RsaPadding p : paddings) {
    if (crypto::MaxPlaintextLen(p, k) < probe.size()) continue;  // e.g. OAEP-SHA512 on 1024
    auto ct = crypto::RsaEncrypt(pub, p, probe);
    if (!ct.ok()) return ct.status();
    RsaMechanism mech(p);
    {
      auto l = lease();
      if (!l.ok()) return l.status();
      auto pt = l->Decrypt(mech.get(), priv, *ct, k);
      if (pt.ok() && same(*pt)) {
        // And the empty message (an empty PFX password is one): openCryptoki 3.8.1 decrypts
        // a PKCS#1 block of an empty message to one byte 00 (its decoder takes the separator
        // for the message), so every such item would come back rewrapped wrong. A padding the
        // token decrypts wrong is not TOKEN_DECRYPT (HOST_UNPADDING or UNSUPPORTED instead).
        auto empty_ct = crypto::RsaEncrypt(pub, p, {});
        if (!empty_ct.ok()) return empty_ct.status();
        auto e = l->Decrypt(mech.get(), priv, *empty_ct, k);
        if (e.ok() && e->empty()) {
          caps.decrypt.insert(p);
        } else {
          spdlog::warn("decrypt probe {}: the token decrypts an empty message to {}; C_Decrypt "
                       "with this padding is not used (TOKEN_DECRYPT not offered)",
                       PaddingName(p),
                       e.ok() ? std::to_string(e->size()) + " bytes"
                              : std::string(e.status().message()));
          if (!e.ok() && Lost(e.status())) return e.status();
        }
      } else if (!pt.ok()) {
        spdlog::debug("decrypt probe {}: {}", PaddingName(p), std::string(pt.status().message()));
        if (Lost(pt.status())) return pt.status();
      }
    }
    {
      auto l = lease();
      if (!l.ok()) return l.status();
      Template t = SessionSecretTemplate();
      auto h = l->Unwrap(mech.get(), priv, *ct, t);
      if (h.ok()) {
        // The secret must come out sensitive, as asked: a token that quietly makes it
        // readable (the issue saw openCryptoki force CKA_SENSITIVE=FALSE when unwrapping
        // with CKA_EXTRACTABLE=TRUE) would hand the plaintext to anyone with the PIN.
        auto sensitive = l->GetBool(*h, CKA_SENSITIVE);
        if (sensitive.ok() && *sensitive) {
          caps.unwrap.insert(p);
        } else {
          spdlog::warn("unwrap probe {}: the unwrapped secret is not sensitive ({}); IN_TOKEN "
                       "is not offered for it",
                       PaddingName(p),
                       sensitive.ok() ? "CKA_SENSITIVE=FALSE"
                                      : std::string(sensitive.status().message()));
        }
        l->Destroy(*h);
      } else {
        spdlog::debug("unwrap probe {}: {}", PaddingName(p), std::string(h.status().message()));
        if (Lost(h.status())) return h.status();
      }
    }
    // And the longest secret this key carries with this padding: a token may cap the
    // length of the secret objects it makes (NSS softoken 3.87: 256 bytes), so a valid
    // sealed secret longer than that would fail C_UnwrapKey like a bad ciphertext.
    if (caps.unwrap.count(p)) {
      const crypto::Bytes longest = crypto::RandomBytes(crypto::MaxPlaintextLen(p, k));
      auto long_ct = crypto::RsaEncrypt(pub, p, longest);
      if (!long_ct.ok()) return long_ct.status();
      auto l = lease();
      if (!l.ok()) return l.status();
      Template t = SessionSecretTemplate();
      auto h = l->Unwrap(mech.get(), priv, *long_ct, t);
      if (h.ok()) {
        l->Destroy(*h);
      } else {
        spdlog::debug("unwrap probe {} of {} bytes: {}", PaddingName(p), longest.size(),
                      std::string(h.status().message()));
        if (Lost(h.status())) return h.status();
        caps.unwrap_short_only.insert(p);
      }
    }
  }
  // Implicit rejection (the Marvin countermeasure, NSS softoken): does an invalid PKCS#1
  // v1.5 block come back as CKR_OK instead of an error? Not an error to us: it is reported
  // in KeyInfo, and a bad PKCS#1 ciphertext then gives a pseudo-random secret. Claimed only
  // when every kind of malformed block (no separator, wrong block type, short padding,
  // wrong leading byte) is answered so, with a message of a possible length (at most k-11
  // bytes) that is the same when asked again: a token that accepts some kinds and rejects
  // others (openCryptoki 3.8.1 returns the last byte of a block without a separator, and
  // refuses the rest) is a padding oracle at the API, and must not be reported as safe.
  if (allow_pkcs1 &&
      (caps.decrypt.count(RsaPadding::kPkcs1) || caps.unwrap.count(RsaPadding::kPkcs1))) {
    auto seen = ProbeImplicitRejection(lease, priv, pub, caps.decrypt.count(RsaPadding::kPkcs1));
    if (!seen.ok()) return seen.status();
    caps.pkcs1_implicit_rejection = *seen;
  }
  if (host_unpadding) {
    auto ct = crypto::RsaEncrypt(pub, RsaPadding::kPkcs1, probe);
    if (!ct.ok()) return ct.status();
    RsaMechanism mech = RsaMechanism::Raw();
    auto l = lease();
    if (!l.ok()) return l.status();
    auto em = l->Decrypt(mech.get(), priv, *ct, k);
    if (em.ok()) {
      auto pt = crypto::Pkcs1Unpad(*em, k);
      caps.raw_rsa = pt.ok() && same(*pt);
    } else {
      spdlog::debug("raw RSA probe: {}", std::string(em.status().message()));
    }
  }
  return caps;
}

}  // namespace hsmrewrap::hsm
