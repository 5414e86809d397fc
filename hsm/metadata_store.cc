#include "hsm/metadata_store.h"

#include <optional>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace hsmrewrap::hsm {
namespace {

constexpr char kApplication[] = "hsm-rewrap";

Template Search(const std::string& name) {
  Template t;
  t.Ulong(CKA_CLASS, CKO_DATA).Str(CKA_APPLICATION, kApplication).Str(CKA_LABEL, name);
  return t;
}

}  // namespace

absl::StatusOr<KeyMetadata> MetadataStore::Read(SessionPool::Lease& lease, const std::string& name,
                                                std::vector<CK_OBJECT_HANDLE>* objects) {
  Template t = Search(name);
  auto found = lease.Find(t);
  if (!found.ok()) return found.status();
  if (objects) objects->clear();
  if (found->empty()) {
    if (!in_token_.load()) {
      absl::MutexLock l(&local_mu_);
      if (auto it = local_.find(name); it != local_.end()) return it->second;
    }
    return KeyMetadata{};
  }
  // More than one object: a write that created the new version but could not destroy the
  // old one. The highest `seq` is the current state.
  std::optional<KeyMetadata> best;
  CK_OBJECT_HANDLE best_handle = CK_INVALID_HANDLE;
  for (CK_OBJECT_HANDLE h : *found) {
    auto value = lease.GetAttribute(h, CKA_VALUE);
    if (!value.ok()) return value.status();
    auto j = nlohmann::json::parse(value->begin(), value->end(), nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      spdlog::warn("key '{}': a metadata object is not JSON; ignoring it", name);
      continue;
    }
    KeyMetadata md;
    md.present = true;
    md.created_unix = j.value("created", int64_t{0});
    md.enabled = j.value("enabled", true);
    md.allow_pkcs1 = j.value("allow_pkcs1", false);
    md.seq = j.value("seq", uint64_t{0});
    if (!best || md.seq > best->seq) {
      best = md;
      best_handle = h;
    }
  }
  if (objects) {
    if (best_handle != CK_INVALID_HANDLE) objects->push_back(best_handle);
    for (CK_OBJECT_HANDLE h : *found) {
      if (h != best_handle) objects->push_back(h);
    }
  }
  if (!best) return KeyMetadata{};
  return *best;
}

absl::StatusOr<KeyMetadata> MetadataStore::Update(SessionPool::Lease& lease,
                                                  const std::string& name,
                                                  const std::function<void(KeyMetadata&)>& change) {
  std::vector<CK_OBJECT_HANDLE> existing;  // the current object first
  auto old = Read(lease, name, &existing);
  if (!old.ok()) return old.status();
  KeyMetadata md = *old;
  change(md);
  md.present = true;
  md.seq = old->seq + 1;
  nlohmann::json j = {{"v", 1},
                      {"seq", md.seq},
                      {"created", md.created_unix},
                      {"enabled", md.enabled},
                      {"allow_pkcs1", md.allow_pkcs1}};
  const std::string text = j.dump();
  // Always a new object, then the old ones destroyed; never C_SetAttributeValue in place:
  // tpm2-pkcs11 1.9.0 answers CKR_OK and shows the new value in this process, but its store
  // keeps the old one, so a restart brought the previous state back (a disabled key served
  // again).
  Template t;
  t.Ulong(CKA_CLASS, CKO_DATA)
      .Bool(CKA_TOKEN, true)
      .Bool(CKA_PRIVATE, true)  // only a logged-in user can read or change it
      .Bool(CKA_MODIFIABLE, true)
      .Str(CKA_APPLICATION, kApplication)
      .Str(CKA_LABEL, name)
      .Str(CKA_VALUE, text);
  auto created = lease.Create(t);
  if (created.ok()) {
    for (CK_OBJECT_HANDLE o : existing) {
      if (auto d = lease.TryDestroy(o); !d.ok()) {
        spdlog::warn(
            "key '{}': the previous metadata object stays beside the new one ({}); the newer one "
            "is used",
            name, std::string(d.message()));
      }
    }
    return md;
  }
  const absl::Status& s = created.status();
  const CK_RV rv = CkrOf(s);
  if (!existing.empty() || (rv != CKR_ATTRIBUTE_VALUE_INVALID && rv != CKR_ATTRIBUTE_TYPE_INVALID &&
                            rv != CKR_TEMPLATE_INCONSISTENT)) {
    return absl::Status(s.code(), absl::StrCat("key '", name, "': metadata not written (",
                                               s.message(), "); the key keeps its previous state"));
  }
  if (in_token_.exchange(false)) {
    spdlog::error(
        "token '{}' cannot store data objects ({}): key metadata (enabled, allow_pkcs1, "
        "created) is kept in this process only and is NOT shared with other replicas",
        token_label_, std::string(s.message()));
  }
  absl::MutexLock l(&local_mu_);
  local_[name] = md;
  return md;
}

absl::Status MetadataStore::Drop(SessionPool::Lease& lease, const std::string& name) {
  std::vector<CK_OBJECT_HANDLE> objects;
  if (auto r = Read(lease, name, &objects); !r.ok()) return r.status();
  for (CK_OBJECT_HANDLE h : objects) (void)lease.TryDestroy(h);
  absl::MutexLock l(&local_mu_);
  local_.erase(name);
  return absl::OkStatus();
}

}  // namespace hsmrewrap::hsm
