// Upload of records to Microsoft Graph (POST {graph}/deviceManagement/userPfxCertificates)
// with libcurl, and the state file that lets a re-run skip what already succeeded.
#pragma once

#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "crypto/secret.h"

namespace hsmrewrap::pfx_import {

struct UploadResult {
  bool ok = false;
  long http_status = 0;  // NOLINT(runtime/int): libcurl's type; 0 = no HTTP response
  int attempts = 0;      // requests actually sent
  std::string reason;    // failure class for the summary, e.g. "upload-http-400"
  std::string message;   // for the admin: HTTP status and Graph's error code/message
};

class GraphUploader final {
 public:
  struct Options {
    std::string graph_url;       // e.g. https://graph.microsoft.com/beta
    crypto::SecretString token;  // bearer token
    int max_attempts = 6;        // per record, counting 429/503 re-sends
    absl::Duration default_retry_after = absl::Seconds(60);
    absl::Duration max_retry_after = absl::Seconds(300);
    absl::Duration timeout = absl::Seconds(30);
    // Called before each wait (for the progress display); may be empty.
    std::function<void(absl::Duration)> on_wait;
  };
  static absl::StatusOr<std::unique_ptr<GraphUploader>> Create(Options options);
  ~GraphUploader();
  GraphUploader(const GraphUploader&) = delete;  // owns a CURL handle
  GraphUploader& operator=(const GraphUploader&) = delete;

  // POSTs `json_body`. On 429 (and 503) waits Retry-After (seconds or an HTTP date) or
  // x-ms-retry-after-ms (milliseconds), default 60 s, and sends the request again.
  UploadResult Post(const std::string& json_body);
  const std::string& endpoint() const { return endpoint_; }

 private:
  explicit GraphUploader(Options o);
  Options options_;
  std::string endpoint_;
  void* curl_ = nullptr;  // CURL*
};

// The state file: JSON Lines, one object per success {"upn","thumbprint","target","time"}.
// A row is skipped when (lower-cased upn, thumbprint, target) is already there. `target` is
// the Graph endpoint for uploads, else "records" (a record was written).
class StateFile final {
 public:
  // Loads `path` if it exists (unreadable lines are ignored) and opens it for appending.
  static absl::StatusOr<std::unique_ptr<StateFile>> Open(const std::string& path);
  bool Done(const std::string& upn, const std::string& thumbprint, const std::string& target) const;
  // Appends and flushes one line.
  absl::Status Record(const std::string& upn, const std::string& thumbprint,
                      const std::string& target);

 private:
  static std::string Key(const std::string& upn, const std::string& thumbprint,
                         const std::string& target);
  std::set<std::string> done_;
  std::ofstream out_;
  std::string path_;
};

}  // namespace hsmrewrap::pfx_import
