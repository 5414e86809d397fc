#include "clients/pfx-import/http.h"

#include <curl/curl.h>

#include <ctime>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace hsmrewrap::pfx_import {
namespace {

constexpr size_t kMaxBody = 1 << 20;

size_t WriteBody(char* ptr, size_t size, size_t n, void* user) {
  auto* r = static_cast<HttpResponse*>(user);
  if (r->body.size() < kMaxBody) r->body.append(ptr, size * n);
  return size * n;
}

size_t WriteHeader(char* ptr, size_t size, size_t n, void* user) {
  auto* r = static_cast<HttpResponse*>(user);
  const std::string line(ptr, size * n);
  const size_t colon = line.find(':');
  if (colon != std::string::npos) {
    const std::string name = absl::AsciiStrToLower(line.substr(0, colon));
    std::string value(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    if (name == "retry-after") r->retry_after = value;
    if (name == "x-ms-retry-after-ms") r->retry_after_ms = value;
    if (name == "request-id") r->request_id = value;
  }
  return size * n;
}

}  // namespace

absl::Duration RetryDelay(const HttpResponse& r, absl::Duration fallback) {
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

absl::StatusOr<std::unique_ptr<HttpClient>> HttpClient::Create(absl::Duration timeout) {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  return std::unique_ptr<HttpClient>(new HttpClient(timeout));
}

HttpClient::~HttpClient() {
  for (void* h : idle_) curl_easy_cleanup(static_cast<CURL*>(h));
}

void* HttpClient::Lease() const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!idle_.empty()) {
      void* h = idle_.back();
      idle_.pop_back();
      return h;
    }
  }
  return curl_easy_init();
}

void HttpClient::Return(void* handle) const {
  std::lock_guard<std::mutex> lock(mu_);
  idle_.push_back(handle);
}

HttpResponse HttpClient::Send(const std::string& method, const std::string& url,
                              const std::vector<std::string>& headers, std::string_view body,
                              const crypto::SecretString* bearer) const {
  HttpResponse resp;
  CURL* curl = static_cast<CURL*>(Lease());
  if (curl == nullptr) {
    resp.network_error = "curl_easy_init failed";
    return resp;
  }
  curl_easy_reset(curl);
  struct curl_slist* list = nullptr;
  for (const std::string& h : headers) list = curl_slist_append(list, h.c_str());
  if (bearer != nullptr) {
    crypto::SecretString line("Authorization: Bearer ");
    line.append(*bearer);
    list = curl_slist_append(list, line.c_str());
  }
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, list);
  if (method == "GET") {
    curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
  } else {
    if (method != "POST") curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method.c_str());
    if (method != "DELETE" || !body.empty()) {
      curl_easy_setopt(curl, CURLOPT_POST, 1L);
      curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.data());
      curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
    }
  }
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, WriteBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &resp);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, WriteHeader);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &resp);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(timeout_)));  // NOLINT
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_USERAGENT, "hsm-rewrap-pfx-import/2");
  const CURLcode rc = curl_easy_perform(curl);
  curl_slist_free_all(list);
  if (rc != CURLE_OK) {
    resp.network_error = absl::StrCat(method, " ", url, " failed: ", curl_easy_strerror(rc));
  } else {
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &resp.status);
  }
  curl_easy_reset(curl);  // drops the options that pointed at this call's data
  Return(curl);
  return resp;
}

}  // namespace hsmrewrap::pfx_import

namespace hsmrewrap::pfx_import {
std::string UrlEncode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}
}  // namespace hsmrewrap::pfx_import
