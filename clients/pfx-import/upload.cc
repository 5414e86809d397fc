#include "clients/pfx-import/upload.h"

#include <curl/curl.h>

#include <cctype>
#include <ctime>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace hsmrewrap::pfx_import {
namespace {

struct Response {
  std::string body;
  std::string retry_after;
  std::string retry_after_ms;
};

size_t WriteBody(char* ptr, size_t size, size_t n, void* user) {
  auto* r = static_cast<Response*>(user);
  if (r->body.size() < (1 << 20)) r->body.append(ptr, size * n);
  return size * n;
}

size_t WriteHeader(char* ptr, size_t size, size_t n, void* user) {
  auto* r = static_cast<Response*>(user);
  std::string line(ptr, size * n);
  const size_t colon = line.find(':');
  if (colon != std::string::npos) {
    std::string name = absl::AsciiStrToLower(line.substr(0, colon));
    std::string value(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    if (name == "retry-after") r->retry_after = value;
    if (name == "x-ms-retry-after-ms") r->retry_after_ms = value;
  }
  return size * n;
}

// Retry-After is either delta-seconds or an HTTP-date (RFC 9110 §10.2.3).
absl::Duration RetryDelay(const Response& r, absl::Duration fallback) {
  int64_t v = 0;
  if (!r.retry_after.empty()) {
    if (absl::SimpleAtoi(r.retry_after, &v) && v >= 0) return absl::Seconds(v);
    struct tm tm = {};
    if (strptime(r.retry_after.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm) != nullptr) {
      const absl::Duration d = absl::FromTimeT(timegm(&tm)) - absl::Now();
      return d > absl::ZeroDuration() ? d : absl::ZeroDuration();
    }
  }
  if (!r.retry_after_ms.empty() && absl::SimpleAtoi(r.retry_after_ms, &v) && v >= 0) {
    return absl::Milliseconds(v);
  }
  return fallback;
}

// Graph error bodies: {"error":{"code":"...","message":"..."}}.
std::string GraphError(const std::string& body) {
  auto j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.contains("error") && j["error"].is_object()) {
    const auto& e = j["error"];
    std::string out;
    if (e.contains("code") && e["code"].is_string()) out = e["code"].get<std::string>();
    if (e.contains("message") && e["message"].is_string()) {
      absl::StrAppend(&out, out.empty() ? "" : ": ", e["message"].get<std::string>());
    }
    return out;
  }
  std::string s = body.substr(0, 200);
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

}  // namespace

GraphUploader::GraphUploader(Options o) : options_(std::move(o)) {
  std::string base = options_.graph_url;
  while (!base.empty() && base.back() == '/') base.pop_back();
  endpoint_ = absl::StrCat(base, "/deviceManagement/userPfxCertificates");
}

GraphUploader::~GraphUploader() {
  if (curl_ != nullptr) curl_easy_cleanup(static_cast<CURL*>(curl_));
}

absl::StatusOr<std::unique_ptr<GraphUploader>> GraphUploader::Create(Options o) {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (o.graph_url.empty()) return absl::InvalidArgumentError("--graph-url is empty");
  if (o.token.empty()) return absl::InvalidArgumentError("the bearer token is empty");
  std::unique_ptr<GraphUploader> u(new GraphUploader(std::move(o)));
  u->curl_ = curl_easy_init();
  if (u->curl_ == nullptr) return absl::InternalError("curl_easy_init failed");
  return u;
}

UploadResult GraphUploader::Post(const std::string& json_body) {
  UploadResult result;
  CURL* curl = static_cast<CURL*>(curl_);
  crypto::SecretString auth_header("Authorization: Bearer ");
  auth_header.append(options_.token);
  for (;;) {
    Response resp;
    curl_easy_reset(curl);
    struct curl_slist* headers = nullptr;
    headers = curl_slist_append(headers, "Content-Type: application/json");
    headers = curl_slist_append(headers, "Accept: application/json");
    headers = curl_slist_append(headers, auth_header.c_str());
    curl_easy_setopt(curl, CURLOPT_URL, endpoint_.c_str());
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_POST, 1L);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, json_body.data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(json_body.size()));
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, WriteBody);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &resp);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, WriteHeader);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &resp);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS,
                     static_cast<long>(absl::ToInt64Milliseconds(options_.timeout)));  // NOLINT
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "hsm-rewrap-pfx-import/1");
    const CURLcode rc = curl_easy_perform(curl);
    curl_slist_free_all(headers);
    ++result.attempts;
    if (rc != CURLE_OK) {
      result.reason = "upload-network";
      result.message = absl::StrCat("POST ", endpoint_, " failed: ", curl_easy_strerror(rc));
      return result;
    }
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &result.http_status);
    if (result.http_status >= 200 && result.http_status < 300) {
      result.ok = true;
      return result;
    }
    const bool throttled = result.http_status == 429 || result.http_status == 503;
    if (throttled && result.attempts < options_.max_attempts) {
      absl::Duration wait = RetryDelay(resp, options_.default_retry_after);
      if (wait > options_.max_retry_after) wait = options_.max_retry_after;
      if (options_.on_wait) options_.on_wait(wait);
      std::this_thread::sleep_for(absl::ToChronoMilliseconds(wait));
      continue;  // really send the request again (a fresh POST)
    }
    result.reason = absl::StrCat("upload-http-", result.http_status);
    result.message = absl::StrCat(
        "Graph answered HTTP ", result.http_status,
        throttled ? absl::StrCat(" after ", result.attempts, " attempts") : std::string(),
        resp.body.empty() ? "" : ": ", GraphError(resp.body));
    return result;
  }
}

// ---------------------------------------------------------------------------------------

std::string StateFile::Key(const std::string& upn, const std::string& thumbprint,
                           const std::string& target) {
  return absl::StrCat(absl::AsciiStrToLower(upn), "\n", absl::AsciiStrToLower(thumbprint), "\n",
                      target);
}

absl::StatusOr<std::unique_ptr<StateFile>> StateFile::Open(const std::string& path) {
  auto s = std::make_unique<StateFile>();
  s->path_ = path;
  {
    std::ifstream in(path);
    std::string line;
    while (in && std::getline(in, line)) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_object() || !j.contains("upn") || !j.contains("thumbprint") ||
          !j.contains("target") || !j["upn"].is_string() || !j["thumbprint"].is_string() ||
          !j["target"].is_string()) {
        continue;
      }
      s->done_.insert(Key(j["upn"].get<std::string>(), j["thumbprint"].get<std::string>(),
                          j["target"].get<std::string>()));
    }
  }
  s->out_.open(path, std::ios::app);
  if (!s->out_) return absl::PermissionDeniedError(absl::StrCat("cannot write state file ", path));
  return s;
}

bool StateFile::Done(const std::string& upn, const std::string& thumbprint,
                     const std::string& target) const {
  return done_.count(Key(upn, thumbprint, target)) != 0;
}

absl::Status StateFile::Record(const std::string& upn, const std::string& thumbprint,
                               const std::string& target) {
  nlohmann::json j{{"upn", upn},
                   {"thumbprint", thumbprint},
                   {"target", target},
                   {"time", absl::FormatTime(absl::RFC3339_sec, absl::Now(), absl::UTCTimeZone())}};
  out_ << j.dump() << "\n";
  out_.flush();
  if (!out_) return absl::DataLossError(absl::StrCat("cannot append to state file ", path_));
  done_.insert(Key(upn, thumbprint, target));
  return absl::OkStatus();
}

}  // namespace hsmrewrap::pfx_import
