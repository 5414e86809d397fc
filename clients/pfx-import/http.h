// A small HTTP client over libcurl for the Graph and token endpoints: a pool of easy
// handles (one per request in flight, so connections are reused and workers never share
// a handle), a timeout, and the headers pfx-import reads back (Retry-After and
// x-ms-retry-after-ms for throttling).
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "crypto/secret.h"

namespace hsmrewrap::pfx_import {

struct HttpResponse {
  long status = 0;  // NOLINT(runtime/int): libcurl's type; 0 = no HTTP response
  std::string body;  // the first MiB
  std::string retry_after, retry_after_ms, request_id;
  std::string network_error;  // curl's message when status == 0
};

// How long to wait before sending again after a 429/503: Retry-After (delta-seconds or an
// HTTP-date, RFC 9110 §10.2.3), else x-ms-retry-after-ms (milliseconds; the PowerShell
// module reads it as seconds), else `fallback`.
absl::Duration RetryDelay(const HttpResponse& r, absl::Duration fallback);

// Thread-safe: each Send leases its own handle from the pool.
class HttpClient final {
 public:
  static absl::StatusOr<std::unique_ptr<HttpClient>> Create(absl::Duration timeout);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;  // owns CURL handles
  HttpClient& operator=(const HttpClient&) = delete;

  // `bearer`: sent as "Authorization: Bearer ..." when non-null. `headers` are extra
  // "Name: value" lines. A body is sent for POST and PATCH (and DELETE when non-empty).
  HttpResponse Send(const std::string& method, const std::string& url,
                    const std::vector<std::string>& headers, std::string_view body,
                    const crypto::SecretString* bearer) const;

 private:
  explicit HttpClient(absl::Duration timeout) : timeout_(timeout) {}
  void* Lease() const;
  void Return(void* handle) const;
  absl::Duration timeout_;
  mutable std::mutex mu_;
  mutable std::vector<void*> idle_;  // CURL*, guarded by mu_
};

}  // namespace hsmrewrap::pfx_import

namespace hsmrewrap::pfx_import {
// Percent-encodes everything but RFC 3986 unreserved characters (for query values).
std::string UrlEncode(std::string_view s);
}  // namespace hsmrewrap::pfx_import
