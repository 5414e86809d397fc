// Per-key metadata kept in the token, so that replicas sharing a token agree: a CKO_DATA
// token object per key (CKA_APPLICATION "hsm-rewrap", CKA_LABEL = the key name, private,
// CKA_VALUE = JSON {"v":1,"seq":N,"created":unix,"enabled":bool,"allow_pkcs1":bool}).
//
// A write replaces the object: the new version is created first, then the old ones are
// destroyed. A failed create leaves the old state (the caller gets the error); a failed
// destroy leaves an older version beside the new one, and readers take the highest `seq`.
//
// Tokens that refuse CKO_DATA token objects (NSS softoken 3.87 answers CKA_TOKEN=TRUE with
// CKR_ATTRIBUTE_VALUE_INVALID) keep metadata in this process only; that is logged as an
// error once, since it is then not shared with other replicas.
//
// Thread safety: all methods are thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "hsm/session_pool.h"

namespace hsmrewrap::hsm {

struct KeyMetadata {
  int64_t created_unix = 0;
  bool enabled = true;
  bool allow_pkcs1 = false;
  bool present = false;  // a metadata object exists (else: the defaults above)
  uint64_t seq = 0;      // version: raised by every write; the highest object wins
};

class MetadataStore final {
 public:
  explicit MetadataStore(std::string token_label) : token_label_(std::move(token_label)) {}

  // The key's current metadata; *objects (if given) gets every metadata object of the key,
  // the current one first.
  absl::StatusOr<KeyMetadata> Read(SessionPool::Lease& lease, const std::string& name,
                                   std::vector<CK_OBJECT_HANDLE>* objects = nullptr);
  // Reads the current state once, applies `change` and writes the result (seq + 1).
  // Returns what was stored.
  absl::StatusOr<KeyMetadata> Update(SessionPool::Lease& lease, const std::string& name,
                                     const std::function<void(KeyMetadata&)>& change);
  // Destroys every metadata object of `name` (a deleted key's, before a new key takes the
  // name). Best effort.
  absl::Status Drop(SessionPool::Lease& lease, const std::string& name);

 private:
  const std::string token_label_;
  std::atomic<bool> in_token_{true};
  absl::Mutex local_mu_;
  std::map<std::string, KeyMetadata> local_ ABSL_GUARDED_BY(local_mu_);
};

}  // namespace hsmrewrap::hsm
