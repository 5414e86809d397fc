// The audit trail: one JSON object a line per rewrap item and per key RPC (time, identity,
// RPC, key, recipient fingerprint, outcome, path; never a plaintext or ciphertext). One
// write(2) per batch under a mutex (a single writer, no interleaving). If a write fails the
// log is broken for good: rewrapd stops serving rewraps and key RPCs (fail closed) until it
// restarts.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace hsmrewrap::service {

class AuditLog {
 public:
  // Opens (creates, mode 0600) `path` for appending.
  static absl::StatusOr<std::unique_ptr<AuditLog>> Open(const std::string& path);
  ~AuditLog();

  // Appends `lines` (complete lines, each ending in '\n'). Returns false, and breaks the log,
  // if they could not all be written.
  bool Append(const std::string& lines);
  bool ok() const { return ok_.load(); }
  const std::string& path() const { return path_; }

 private:
  AuditLog(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  const std::string path_;
  absl::Mutex mu_;  // one writer at a time
  int fd_;
  std::atomic<bool> ok_{true};
};

// The current time as RFC 3339 UTC with milliseconds (the audit records' "time").
std::string AuditTimeNow();

}  // namespace hsmrewrap::service
