// Microsoft Graph calls for userPFXCertificate records (INTEROP.md §4.3), shared by every
// pfx-import command: bearer token from a TokenSource (one refresh and re-send on 401),
// 429/503 answered by a back-off shared by every worker (Retry-After honoured), Graph's
// error bodies turned into a message that names the code, the message and the field.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "clients/pfx-import/auth.h"
#include "clients/pfx-import/http.h"

namespace hsmrewrap::pfx_import {

// A back-off every worker honours: after a 429 nobody sends until it has passed.
class Throttle final {
 public:
  // Nobody sends before now + d (an earlier, longer back-off stays).
  void BackOff(absl::Duration d);
  // Sleeps until the back-off has passed. False when *stop became true meanwhile.
  bool Wait(const std::atomic<bool>* stop) const;

 private:
  mutable std::mutex mu_;
  absl::Time until_ = absl::InfinitePast();  // guarded by mu_
};

struct GraphResult {
  long status = 0;  // NOLINT(runtime/int): 0 = no HTTP response (network, sign-in, stop)
  int attempts = 0;  // requests sent
  std::string body;
  std::string error;  // for the admin when !ok(): Graph's code, message, field, request id
  bool ok() const { return status >= 200 && status < 300; }
};

// "HTTP 400 BadRequest: <message> (field: encryptedPfxPassword) [request-id ..., date ...]"
// from a Graph error body {"error":{"code","message","target","details":[...],
// "innerError":{"request-id","date"}}}; non-JSON bodies are shown cut to one line.
std::string DescribeGraphError(long status, const std::string& body,  // NOLINT(runtime/int)
                               const std::string& request_id);

// An OData string literal: quoted, single quotes doubled.
std::string ODataString(const std::string& s);

class GraphClient final {
 public:
  struct Options {
    std::string graph_url;  // e.g. https://graph.microsoft.com/beta
    int max_attempts = 6;   // per call, counting throttled re-sends
    absl::Duration default_retry_after = absl::Seconds(60);
    absl::Duration max_retry_after = absl::Seconds(300);
    std::function<void(absl::Duration)> on_throttle;  // each 429/503, before the wait
    const std::atomic<bool>* stop = nullptr;           // Ctrl-C: stop waiting
  };
  GraphClient(Options options, const HttpClient* http, TokenSource* tokens);

  // `target` is a path below graph_url ("/deviceManagement/...") or an absolute URL.
  GraphResult Call(const std::string& method, const std::string& target,
                   const std::string& json_body = "");

  const std::string& base() const { return base_; }
  std::string RecordsUrl() const { return base_ + "/deviceManagement/userPfxCertificates"; }

  // GET the records matching an OData $filter ("" = all), following @odata.nextLink.
  absl::StatusOr<std::vector<nlohmann::json>> ListRecords(const std::string& filter);
  // The filter the module uses: tolower(userPrincipalName) eq '{upn}' [and tolower(thumbprint)
  // eq '{tp}'], values lower-cased here.
  static std::string RecordFilter(const std::string& upn, const std::string& thumbprint);
  // The user's object id without hyphens (the form record ids use), or nullopt when no user
  // has this UPN. Cached.
  absl::StatusOr<std::optional<std::string>> UserId(const std::string& upn);

 private:
  Options options_;
  std::string base_;
  const HttpClient* http_;
  TokenSource* tokens_;
  Throttle throttle_;
  std::mutex mu_;
  std::map<std::string, std::optional<std::string>> user_ids_;  // guarded by mu_
};

}  // namespace hsmrewrap::pfx_import
