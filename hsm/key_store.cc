// Pkcs11Backend, part 1: the key cache and the key lifecycle (load, list, create, import,
// enable/disable). Part 2, start-up and the rewrap operations: hsm/pkcs11_backend.cc.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "crypto/rsa.h"
#include "hsm/capability_probe.h"
#include "hsm/key_policy.h"
#include "hsm/mechanisms.h"
#include "hsm/pkcs11_backend.h"
#include "spdlog/spdlog.h"

namespace hsmrewrap::hsm {
namespace {

Template PrivateKeySearch(const std::string& name) {
  Template t;
  t.Ulong(CKA_CLASS, CKO_PRIVATE_KEY).Ulong(CKA_KEY_TYPE, CKK_RSA).Str(CKA_LABEL, name);
  return t;
}

absl::Status NoKey(const std::string& name) {
  return absl::NotFoundError(absl::StrCat("no key named '", name, "'"));
}

}  // namespace

absl::StatusOr<KeyRefPtr> Pkcs11Backend::LoadKey(const std::string& name, CK_OBJECT_HANDLE priv,
                                                 const KeyMetadata* known_md) {
  auto lease = Lease();
  if (!lease.ok()) return lease.status();
  if (priv == CK_INVALID_HANDLE) {
    Template t = PrivateKeySearch(name);
    auto found = lease->Find(t);
    if (!found.ok()) return found.status();
    if (found->empty()) return NoKey(name);
    if (found->size() > 1) {
      return absl::FailedPreconditionError(
          absl::StrCat(found->size(), " RSA private keys are labelled '", name, "'; refusing"));
    }
    priv = found->front();
  }

  auto n = lease->GetAttribute(priv, CKA_MODULUS);
  auto e = lease->GetAttribute(priv, CKA_PUBLIC_EXPONENT);
  if (!n.ok() || !e.ok() || n->empty() || e->empty()) {
    // Some tokens hide the modulus on private keys; use the public key object.
    Template pt;
    pt.Ulong(CKA_CLASS, CKO_PUBLIC_KEY).Ulong(CKA_KEY_TYPE, CKK_RSA).Str(CKA_LABEL, name);
    auto pubs = lease->Find(pt);
    if (!pubs.ok()) return pubs.status();
    if (pubs->empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("key '", name, "': modulus unreadable and no public key object"));
    }
    n = lease->GetAttribute(pubs->front(), CKA_MODULUS);
    e = lease->GetAttribute(pubs->front(), CKA_PUBLIC_EXPONENT);
    if (!n.ok()) return n.status();
    if (!e.ok()) return e.status();
  }
  auto pub = crypto::PublicKey::FromRsaComponents(*n, *e);
  if (!pub.ok()) return pub.status();

  KeyMetadata md;
  if (known_md != nullptr) {
    md = *known_md;
  } else {
    auto read = metadata_.Read(*lease, name);
    if (!read.ok()) return read.status();
    md = *read;
  }
  // The key's attributes must not allow more than rewraps.
  auto wrong = WrongKeyAttributes(*lease, priv, md.allow_pkcs1);
  if (!wrong.ok()) return wrong.status();
  if (!wrong->empty()) {
    const std::string why =
        absl::StrCat("key '", name, "' has unsafe attributes: ", absl::StrJoin(*wrong, "; "));
    if (options_.refuse_weak_keys) {
      spdlog::error("{}; refusing to serve it", why);
      return absl::FailedPreconditionError(absl::StrCat(why, "; refusing to serve it"));
    }
    spdlog::warn("{}; serving it because refuse_weak_keys is off", why);
  }
  lease->Release();

  auto caps = ProbeKey([this] { return Lease(); }, priv, *pub, md.allow_pkcs1,
                       options_.allow_host_unpadding);
  if (!caps.ok()) return caps.status();

  KeyInfo info;
  info.name = name;
  info.bits = pub->bits();
  info.created_unix = md.created_unix;
  info.enabled = md.enabled;
  info.allow_pkcs1 = md.allow_pkcs1;
  info.spki_der = pub->SpkiDer();
  info.caps = *std::move(caps);
  const size_t modulus_len = static_cast<size_t>((info.bits + 7) / 8);
  spdlog::info("key '{}' RSA-{}{}: decrypt {} unwrap {}{} raw_rsa {}{}{}", name, info.bits,
               md.present ? "" : " (no metadata: defaults)", PaddingSetName(info.caps.decrypt),
               PaddingSetName(info.caps.unwrap),
               info.caps.unwrap_short_only.empty()
                   ? ""
                   : " (not the longest secrets: " + PaddingSetName(info.caps.unwrap_short_only) +
                         ")",
               info.caps.raw_rsa,
               info.caps.pkcs1_implicit_rejection
                   ? " pkcs1_implicit_rejection (bad PKCS#1 padding gives a pseudo-random "
                     "secret, not DECRYPT_FAILED)"
                   : "",
               info.enabled ? "" : " DISABLED");
  auto ref = std::make_shared<const KeyRef>(
      KeyRef{std::move(info), *std::move(pub), modulus_len, uint64_t{priv}, id_});
  absl::MutexLock l(&mu_);
  // A re-check that refused the key while it was loading wins.
  if (auto r = refused_.find(name); r != refused_.end()) {
    return absl::FailedPreconditionError(r->second);
  }
  keys_[name] = Entry{ref, absl::Now()};
  return ref;
}

absl::Status Pkcs11Backend::LoadAllKeys() {
  std::vector<std::string> names;
  {
    auto lease = Lease();
    if (!lease.ok()) return lease.status();
    Template t;
    t.Ulong(CKA_CLASS, CKO_PRIVATE_KEY).Ulong(CKA_KEY_TYPE, CKK_RSA);
    auto found = lease->Find(t);
    if (!found.ok()) return found.status();
    for (CK_OBJECT_HANDLE h : *found) {
      auto label = lease->GetAttribute(h, CKA_LABEL);
      if (!label.ok() || label->empty()) continue;
      names.emplace_back(label->begin(), label->end());
    }
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  for (const auto& name : names) {
    {
      absl::MutexLock l(&mu_);
      if (keys_.count(name)) continue;     // loaded and probed before; metadata has a TTL
      if (refused_.count(name)) continue;  // its attributes changed while it was served
    }
    auto ref = LoadKey(name);
    if (!ref.ok()) {
      if (ref.status().code() == absl::StatusCode::kUnavailable) return ref.status();
      spdlog::warn("key '{}' not served: {}", name, std::string(ref.status().message()));
    }
  }
  // Forget keys that vanished from the token (and the refusals of keys that did).
  absl::MutexLock l(&mu_);
  for (auto it = keys_.begin(); it != keys_.end();) {
    it =
        std::binary_search(names.begin(), names.end(), it->first) ? std::next(it) : keys_.erase(it);
  }
  for (auto it = refused_.begin(); it != refused_.end();) {
    it = std::binary_search(names.begin(), names.end(), it->first) ? std::next(it)
                                                                   : refused_.erase(it);
  }
  return absl::OkStatus();
}

KeyRefPtr Pkcs11Backend::Cached(const std::string& name) {
  absl::MutexLock l(&mu_);
  auto it = keys_.find(name);
  if (it == keys_.end() || absl::Now() - it->second.metadata_read >= options_.metadata_ttl) {
    return nullptr;
  }
  return it->second.ref;
}

absl::StatusOr<KeyRefPtr> Pkcs11Backend::Resolve(const std::string& name) {
  bool cached;
  {
    absl::MutexLock l(&mu_);
    if (auto r = refused_.find(name); r != refused_.end()) {
      return absl::FailedPreconditionError(r->second);
    }
    auto it = keys_.find(name);
    cached = it != keys_.end();
    if (cached && absl::Now() - it->second.metadata_read < options_.metadata_ttl) {
      return it->second.ref;
    }
  }
  if (!cached) {
    if (auto s = CheckKeyName(name); !s.ok()) return s;
    return LoadKey(name);
  }
  // Another replica may have changed the shared metadata: re-read it.
  auto lease = Lease();
  if (!lease.ok()) return lease.status();
  auto md = metadata_.Read(*lease, name);
  if (!md.ok()) return md.status();
  lease->Release();
  absl::MutexLock l(&mu_);
  auto it = keys_.find(name);
  if (it == keys_.end()) return NoKey(name);
  if (md->present && (md->enabled != it->second.ref->info.enabled ||
                      md->created_unix != it->second.ref->info.created_unix)) {
    auto updated = std::make_shared<KeyRef>(*it->second.ref);
    updated->info.enabled = md->enabled;
    updated->info.created_unix = md->created_unix;
    it->second.ref = std::move(updated);
  }
  it->second.metadata_read = absl::Now();
  return it->second.ref;
}

absl::Status Pkcs11Backend::RecheckKey(const std::string& name) {
  KeyRefPtr ref;
  {
    absl::MutexLock l(&mu_);
    if (auto r = refused_.find(name); r != refused_.end()) {
      return absl::FailedPreconditionError(r->second);
    }
    if (auto it = keys_.find(name); it != keys_.end()) ref = it->second.ref;
  }
  // Not loaded: loading it from the token checks its attributes.
  if (ref == nullptr) {
    if (auto s = CheckKeyName(name); !s.ok()) return s;
    return LoadKey(name).status();
  }
  auto lease = Lease();
  if (!lease.ok()) return lease.status();
  Template t = PrivateKeySearch(name);
  auto found = lease->Find(t);
  if (!found.ok()) return found.status();
  if (found->size() != 1 || found->front() != static_cast<CK_OBJECT_HANDLE>(ref->object)) {
    // Gone, labelled twice or replaced since it was loaded: load (and check) it afresh.
    lease->Release();
    {
      absl::MutexLock l(&mu_);
      keys_.erase(name);
    }
    spdlog::warn("key '{}': its object in the token changed since it was loaded; loading it again",
                 name);
    return LoadKey(name).status();
  }
  auto wrong = WrongKeyAttributes(*lease, found->front(), ref->info.allow_pkcs1);
  if (!wrong.ok()) return wrong.status();
  lease->Release();
  if (wrong->empty()) return absl::OkStatus();
  const std::string why = absl::StrCat(
      "key '", name,
      "' has unsafe attributes (changed since it was loaded): ", absl::StrJoin(*wrong, "; "));
  if (!options_.refuse_weak_keys) {
    spdlog::warn("{}; serving it because refuse_weak_keys is off", why);
    return absl::OkStatus();
  }
  const std::string refusal = absl::StrCat(why, "; refusing to serve it");
  spdlog::error("{} (until rewrapd restarts or re-opens the token, which checks it again)",
                refusal);
  absl::MutexLock l(&mu_);
  keys_.erase(name);
  refused_[name] = refusal;
  return absl::FailedPreconditionError(refusal);
}

absl::StatusOr<CK_OBJECT_HANDLE> Pkcs11Backend::Reresolve(const std::string& name) {
  auto lease = Lease();
  if (!lease.ok()) return lease.status();
  Template t = PrivateKeySearch(name);
  auto found = lease->Find(t);
  if (!found.ok()) return found.status();
  if (found->size() != 1) {
    return absl::NotFoundError(absl::StrCat("key '", name, "' is no longer in the token"));
  }
  spdlog::info("key '{}': object handle re-resolved", name);
  absl::MutexLock l(&mu_);
  auto it = keys_.find(name);
  if (it != keys_.end()) {
    auto updated = std::make_shared<KeyRef>(*it->second.ref);
    updated->object = found->front();
    it->second.ref = std::move(updated);
  }
  return found->front();
}

absl::StatusOr<CK_OBJECT_HANDLE> Pkcs11Backend::PrivateKeyHandle(const std::string& name) {
  auto ref = Resolve(name);
  if (!ref.ok()) return ref.status();
  return static_cast<CK_OBJECT_HANDLE>((*ref)->object);
}

absl::StatusOr<std::vector<KeyInfo>> Pkcs11Backend::ListKeys() {
  if (auto s = LoadAllKeys(); !s.ok()) return s;
  std::vector<std::string> names;
  {
    absl::MutexLock l(&mu_);
    for (const auto& [name, entry] : keys_) names.push_back(name);
  }
  std::vector<KeyInfo> out;
  for (const auto& name : names) {
    auto ref = Resolve(name);
    if (ref.ok()) out.push_back((*ref)->info);
  }
  return out;
}

absl::Status Pkcs11Backend::CheckNewName(SessionPool::Lease& lease, const std::string& name) {
  for (CK_OBJECT_CLASS cls : {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY}) {
    Template t;
    t.Ulong(CKA_CLASS, cls).Str(CKA_LABEL, name);
    auto found = lease.Find(t);
    if (!found.ok()) return found.status();
    if (!found->empty()) {
      return absl::AlreadyExistsError(absl::StrCat("a key named '", name, "' already exists"));
    }
  }
  // Metadata of a deleted key: drop it so the new key starts clean.
  return metadata_.Drop(lease, name);
}

absl::StatusOr<KeyInfo> Pkcs11Backend::FinishNewKey(SessionPool::Lease& lease,
                                                    const std::string& name, bool allow_pkcs1,
                                                    CK_OBJECT_HANDLE hpriv, CK_OBJECT_HANDLE hpub) {
  {
    // A refused key of this name is gone from the token (CheckNewName): its refusal too.
    absl::MutexLock l(&mu_);
    refused_.erase(name);
  }
  const int64_t now = absl::ToUnixSeconds(absl::Now());
  auto md = metadata_.Update(lease, name, [&](KeyMetadata& m) {
    m.created_unix = now;
    m.enabled = true;
    m.allow_pkcs1 = allow_pkcs1;
  });
  if (!md.ok()) {
    // Without its metadata the key would be served with defaults: remove it again.
    lease.Destroy(hpriv);
    lease.Destroy(hpub);
    return md.status();
  }
  lease.Release();
  auto ref = LoadKey(name, hpriv, &*md);
  if (!ref.ok()) return ref.status();
  const KeyCapabilities& caps = (*ref)->info.caps;
  if (caps.decrypt.empty() && caps.unwrap.empty() && !caps.raw_rsa) {
    spdlog::warn("key '{}': the token can do nothing with it", name);
  }
  return (*ref)->info;
}

absl::Status Pkcs11Backend::RenewLease(absl::StatusOr<SessionPool::Lease>& lease) {
  lease->MarkBroken();
  lease->Release();
  lease = Lease();
  return lease.status();
}

absl::Status Pkcs11Backend::CheckKeySize(CK_MECHANISM_TYPE mech, int bits, const char* what) {
  const Module& m = module();
  CK_MECHANISM_INFO mi{};
  absl::Status s = m.Call("C_GetMechanismInfo", m.fl()->C_GetMechanismInfo, token_.slot, mech, &mi);
  if (CkrOf(s) == CKR_MECHANISM_INVALID) {
    return absl::FailedPreconditionError(
        absl::StrCat("token '", token_.label, "' cannot ", what, " (it has no ",
                     mech == CKM_RSA_PKCS_KEY_PAIR_GEN ? "CKM_RSA_PKCS_KEY_PAIR_GEN"
                                                       : "CKM_RSA_PKCS_OAEP",
                     ")"));
  }
  if (!s.ok()) {
    if (IsTokenLossRv(CkrOf(s))) return s;
    spdlog::debug("C_GetMechanismInfo: {}; key size not checked", std::string(s.message()));
    return absl::OkStatus();
  }
  CK_ULONG lo = mi.ulMinKeySize, hi = mi.ulMaxKeySize;
  if (hi == 0) return absl::OkStatus();  // not said
  // RSA sizes are in bits; a few modules give bytes (no RSA key is 256 bits or less).
  if (hi <= 256) {
    lo *= 8;
    hi *= 8;
  }
  const CK_ULONG b = static_cast<CK_ULONG>(bits);
  if (b < lo || b > hi) {
    return absl::InvalidArgumentError(absl::StrCat("token '", token_.label, "' cannot ", what,
                                                   ": it takes RSA keys of ", lo, " to ", hi,
                                                   " bits, not ", bits));
  }
  return absl::OkStatus();
}

absl::Status Pkcs11Backend::KeyRefusal(const absl::Status& s, const char* what) {
  const CK_RV rv = CkrOf(s);
  switch (rv) {
    case CKR_KEY_SIZE_RANGE:
      return absl::InvalidArgumentError(absl::StrCat("token '", token_.label, "' cannot ", what,
                                                     ": the key size is out of its range (",
                                                     s.message(), ")"));
    case CKR_TEMPLATE_INCOMPLETE:
    case CKR_TEMPLATE_INCONSISTENT:
    case CKR_ATTRIBUTE_TYPE_INVALID:
    case CKR_ATTRIBUTE_VALUE_INVALID:
    case CKR_ATTRIBUTE_READ_ONLY:
    case CKR_MECHANISM_INVALID:
    case CKR_MECHANISM_PARAM_INVALID:
    case CKR_FUNCTION_NOT_SUPPORTED:
      return absl::FailedPreconditionError(absl::StrCat("token '", token_.label,
                                                        "' refuses to ", what, " (",
                                                        s.message(), ")"));
    case CKR_GENERAL_ERROR:
    case CKR_FUNCTION_FAILED:
      if (Healthy()) {
        return absl::FailedPreconditionError(
            absl::StrCat("token '", token_.label, "' refuses to ", what, " (", s.message(),
                         "; the token still answers, so it is not lost)"));
      }
      return absl::UnavailableError(s.message());
    default:
      return s;
  }
}

absl::StatusOr<KeyInfo> Pkcs11Backend::CreateKey(const std::string& name, int bits,
                                                 bool allow_pkcs1) {
  if (auto s = CheckKeyName(name); !s.ok()) return s;
  if (bits != 2048 && bits != 3072 && bits != 4096) {
    return absl::InvalidArgumentError("RSA key size must be 2048, 3072 or 4096");
  }
  if (auto s = CheckKeySize(CKM_RSA_PKCS_KEY_PAIR_GEN, bits, "generate this RSA key");
      !s.ok()) {
    return s;
  }
  absl::MutexLock admin(&admin_mu_);
  auto lease = Lease();
  if (!lease.ok()) return lease.status();
  if (auto s = CheckNewName(*lease, name); !s.ok()) return s;

  const crypto::Bytes id = crypto::RandomBytes(20);
  Template pub = ServicePublicKeyTemplate(name, id);
  pub.Ulong(CKA_MODULUS_BITS, CK_ULONG(bits))
      .Data(CKA_PUBLIC_EXPONENT, crypto::Bytes{0x01, 0x00, 0x01});
  Template priv = ServicePrivateKeyTemplate(name, id, options_.allow_host_unpadding, allow_pkcs1);
  CK_MECHANISM mech{CKM_RSA_PKCS_KEY_PAIR_GEN, nullptr, 0};
  CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
  auto renew = [&] { return RenewLease(lease); };
  absl::Status s = CreateWithOptionalAttrs(
      token_.label, priv, [&] { return lease->GenerateKeyPair(&mech, pub, priv, &hpub, &hpriv); },
      renew, &pub);
  if (!s.ok()) {
    if (!lease.ok()) return s;
    lease->MarkBroken();
    lease->Release();
    return KeyRefusal(s, "generate this RSA key");
  }
  return FinishNewKey(*lease, name, allow_pkcs1, hpriv, hpub);
}

absl::StatusOr<KeyInfo> Pkcs11Backend::ImportKey(const std::string& name,
                                                 const crypto::RsaPrivateKeyParts& parts,
                                                 bool allow_pkcs1) {
  if (auto s = CheckKeyName(name); !s.ok()) return s;
  const crypto::Bytes n = crypto::StripLeadingZeros(parts.n);
  const crypto::Bytes e = crypto::StripLeadingZeros(parts.e);
  const int bits = crypto::BitLength(n);
  if (bits < 1024 || bits > 16384) {
    return absl::InvalidArgumentError("RSA key size must be 1024..16384 bits");
  }
  if (e.empty() || parts.d.empty()) {
    return absl::InvalidArgumentError("RSA private key needs n, e and d");
  }
  const bool crt = !parts.p.empty() && !parts.q.empty() && !parts.dp.empty() && !parts.dq.empty() &&
                   !parts.qinv.empty();
  if (auto s = CheckKeySize(CKM_RSA_PKCS_OAEP, bits, "serve this RSA key"); !s.ok()) return s;
  absl::MutexLock admin(&admin_mu_);
  auto lease = Lease();
  if (!lease.ok()) return lease.status();
  if (auto s = CheckNewName(*lease, name); !s.ok()) return s;

  const crypto::Bytes id = crypto::RandomBytes(20);
  Template priv = ServicePrivateKeyTemplate(name, id, options_.allow_host_unpadding, allow_pkcs1);
  priv.Data(CKA_MODULUS, n).Data(CKA_PUBLIC_EXPONENT, e).SecretRef(CKA_PRIVATE_EXPONENT, parts.d);
  if (crt) {
    // Three-prime keys (Wycheproof has some) have no two-prime CRT form: then n, e, d only.
    priv.SecretRef(CKA_PRIME_1, parts.p)
        .SecretRef(CKA_PRIME_2, parts.q)
        .SecretRef(CKA_EXPONENT_1, parts.dp)
        .SecretRef(CKA_EXPONENT_2, parts.dq)
        .SecretRef(CKA_COEFFICIENT, parts.qinv);
  }
  CK_OBJECT_HANDLE hpriv = CK_INVALID_HANDLE;
  auto renew = [&] { return RenewLease(lease); };
  absl::Status s = CreateWithOptionalAttrs(
      token_.label, priv,
      [&]() -> absl::Status {
        auto h = lease->Create(priv);
        if (h.ok()) hpriv = *h;
        return h.status();
      },
      renew);
  if (!s.ok()) {
    if (!lease.ok()) return s;
    lease->MarkBroken();
    const CK_RV rv = CkrOf(s);
    if (!crt && (rv == CKR_TEMPLATE_INCOMPLETE || rv == CKR_ATTRIBUTE_VALUE_INVALID)) {
      // NSS softoken 3.87 derives p and q from n, e, d only for two-prime keys; a
      // three-prime key (no two-prime CRT form) is CKR_TEMPLATE_INCOMPLETE.
      spdlog::info("token '{}' cannot import key '{}' without CRT parameters: {}", token_.label,
                   name, std::string(s.message()));
      return absl::FailedPreconditionError(
          "this token needs the CRT parameters (p, q, dP, dQ, qInv) of a two-prime RSA key; "
          "a multi-prime key cannot be imported into it");
    }
    lease->Release();
    return KeyRefusal(s, "import this RSA private key");
  }

  Template pub = ServicePublicKeyTemplate(name, id);
  pub.Data(CKA_MODULUS, n).Data(CKA_PUBLIC_EXPONENT, e);
  if (!priv.Has(CKA_MODIFIABLE)) pub.Remove(CKA_MODIFIABLE);  // the token refused it above
  CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE;
  // A public key object is made whole or not at all: the retry stays in this session, which
  // holds the new private key's handle for its clean-up.
  s = CreateWithOptionalAttrs(
      token_.label, pub,
      [&]() -> absl::Status {
        auto h = lease->Create(pub);
        if (h.ok()) hpub = *h;
        return h.status();
      },
      [] { return absl::OkStatus(); });
  if (!s.ok()) {
    lease->Destroy(hpriv);
    lease->Release();
    return KeyRefusal(s, "import this RSA public key");
  }
  return FinishNewKey(*lease, name, allow_pkcs1, hpriv, hpub);
}

absl::StatusOr<KeyInfo> Pkcs11Backend::SetEnabled(const std::string& name, bool enabled) {
  absl::MutexLock admin(&admin_mu_);
  auto ref = Resolve(name);
  if (!ref.ok()) return ref.status();
  auto lease = Lease();
  if (!lease.ok()) return lease.status();
  const bool allow_pkcs1 = (*ref)->info.allow_pkcs1;
  auto md = metadata_.Update(*lease, name, [&](KeyMetadata& m) {
    if (!m.present) m.allow_pkcs1 = allow_pkcs1;
    m.enabled = enabled;
  });
  if (!md.ok()) return md.status();
  lease->Release();
  absl::MutexLock l(&mu_);
  auto it = keys_.find(name);
  if (it == keys_.end()) return NoKey(name);
  auto updated = std::make_shared<KeyRef>(*it->second.ref);
  updated->info.enabled = enabled;
  it->second = Entry{std::move(updated), absl::Now()};
  spdlog::info("key '{}' {}", name, enabled ? "enabled" : "disabled");
  return it->second.ref->info;
}

}  // namespace hsmrewrap::hsm
