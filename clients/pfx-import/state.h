// The state file that lets a re-run skip what already succeeded.
#pragma once

#include <fstream>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace hsmrewrap::pfx_import {

// JSON Lines, one object per success {"upn","thumbprint","target","time"}. A row is
// skipped when (lower-cased upn, thumbprint, target) is already there. `target` is the
// Graph endpoint for uploads, else "records" (a record was written). Thread-safe.
class StateFile final {
 public:
  // Loads `path` if it exists (unreadable lines are ignored) and opens it for appending.
  static absl::StatusOr<std::unique_ptr<StateFile>> Open(const std::string& path);
  bool Done(const std::string& upn, const std::string& thumbprint, const std::string& target) const;
  // For parallel rows: false when the record is done or another row of this run holds it
  // (the same PFX twice in a manifest is then sent once). Release() if the row fails.
  bool Claim(const std::string& upn, const std::string& thumbprint, const std::string& target);
  void Release(const std::string& upn, const std::string& thumbprint, const std::string& target);
  // Appends and flushes one line.
  absl::Status Record(const std::string& upn, const std::string& thumbprint,
                      const std::string& target);

 private:
  static std::string Key(const std::string& upn, const std::string& thumbprint,
                         const std::string& target);
  mutable std::mutex mu_;
  std::set<std::string> done_, claimed_;  // guarded by mu_
  std::ofstream out_;                     // guarded by mu_
  std::string path_;
};

}  // namespace hsmrewrap::pfx_import
