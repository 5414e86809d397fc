#include "clients/pfx-import/graph.h"

#include <algorithm>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"

namespace hsmrewrap::pfx_import {

using crypto::SecretString;

void Throttle::BackOff(absl::Duration d) {
  std::lock_guard<std::mutex> lock(mu_);
  until_ = std::max(until_, absl::Now() + d);
}

bool Throttle::Wait(const std::atomic<bool>* stop) const {
  for (;;) {
    absl::Time until;
    {
      std::lock_guard<std::mutex> lock(mu_);
      until = until_;
    }
    const absl::Duration left = until - absl::Now();
    if (left <= absl::ZeroDuration()) return true;
    if (stop != nullptr && stop->load()) return false;
    // Short slices, so a Ctrl-C or a longer back-off from another worker is seen.
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(std::min(left, absl::Milliseconds(100))));
  }
}

std::string DescribeGraphError(long status, const std::string& body,  // NOLINT(runtime/int)
                               const std::string& request_id) {
  std::string out = absl::StrCat("HTTP ", status);
  auto j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  std::string rid = request_id, date;
  if (j.is_object() && j.contains("error") && j["error"].is_object()) {
    const auto& e = j["error"];
    auto str = [](const nlohmann::json& o, const char* k) {
      return o.is_object() && o.contains(k) && o[k].is_string() ? o[k].get<std::string>()
                                                                  : std::string();
    };
    if (!str(e, "code").empty()) absl::StrAppend(&out, " ", str(e, "code"));
    if (!str(e, "message").empty()) absl::StrAppend(&out, ": ", str(e, "message"));
    std::vector<std::string> fields;
    if (!str(e, "target").empty()) fields.push_back(str(e, "target"));
    if (e.contains("details") && e["details"].is_array()) {
      for (const auto& d : e["details"]) {
        std::string t = str(d, "target"), m = str(d, "message");
        if (!t.empty() && !m.empty()) t = absl::StrCat(t, ": ", m);
        if (!t.empty() && std::find(fields.begin(), fields.end(), t) == fields.end()) {
          fields.push_back(t);
        }
      }
    }
    if (!fields.empty()) absl::StrAppend(&out, " (field ", absl::StrJoin(fields, "; "), ")");
    for (const char* inner : {"innerError", "innererror"}) {
      if (e.contains(inner)) {
        if (rid.empty()) rid = str(e[inner], "request-id");
        date = str(e[inner], "date");
      }
    }
  } else if (!body.empty()) {
    std::string s = body.substr(0, 200);
    std::replace(s.begin(), s.end(), '\n', ' ');
    std::replace(s.begin(), s.end(), '\r', ' ');
    absl::StrAppend(&out, ": ", s);
  }
  if (!rid.empty()) {
    absl::StrAppend(&out, " [request-id ", rid, date.empty() ? "" : ", date ", date, "]");
  }
  return out;
}

std::string ODataString(const std::string& s) {
  return absl::StrCat("'", absl::StrReplaceAll(s, {{"'", "''"}}), "'");
}

GraphClient::GraphClient(Options options, const HttpClient* http, TokenSource* tokens)
    : options_(std::move(options)), http_(http), tokens_(tokens) {
  base_ = options_.graph_url;
  while (!base_.empty() && base_.back() == '/') base_.pop_back();
}

GraphResult GraphClient::Call(const std::string& method, const std::string& target,
                              const std::string& json_body) {
  GraphResult result;
  const std::string url = target.rfind("http", 0) == 0 ? target : base_ + target;
  std::vector<std::string> headers = {"Accept: application/json"};
  if (!json_body.empty()) headers.push_back("Content-Type: application/json");
  bool refreshed = false;
  for (;;) {
    if (!throttle_.Wait(options_.stop)) {
      result.status = 0;
      result.error = "interrupted while Graph was throttling";
      return result;
    }
    auto token = tokens_->Get();
    if (!token.ok()) {
      result.status = 0;
      result.error = std::string(token.status().message());
      return result;
    }
    HttpResponse r = http_->Send(method, url, headers, json_body, &*token);
    ++result.attempts;
    result.status = r.status;
    result.body = std::move(r.body);
    if (r.status == 0) {
      result.error = r.network_error;
      return result;
    }
    if (result.ok()) return result;
    if (r.status == 401 && !refreshed) {
      // Expired or revoked: one new token, one re-send.
      refreshed = true;
      if (tokens_->Refresh(*token)) continue;
      result.error = absl::StrCat(DescribeGraphError(r.status, result.body, r.request_id),
                                  "; no new token could be had from ", tokens_->Describe());
      return result;
    }
    const bool throttled = r.status == 429 || r.status == 503;
    if (throttled && result.attempts < options_.max_attempts) {
      r.body = result.body;
      const absl::Duration wait =
          std::min(RetryDelay(r, options_.default_retry_after), options_.max_retry_after);
      throttle_.BackOff(wait);  // every worker waits, not only this one
      if (options_.on_throttle) options_.on_throttle(wait);
      continue;
    }
    result.error = DescribeGraphError(r.status, result.body, r.request_id);
    if (throttled) absl::StrAppend(&result.error, " after ", result.attempts, " attempts");
    if (r.status == 401) {
      absl::StrAppend(&result.error, " (after a new token from ", tokens_->Describe(), ")");
    }
    if (r.status == 403) {
      absl::StrAppend(&result.error,
                      " (the app or user needs DeviceManagementConfiguration.ReadWrite.All and "
                      "User.Read.All)");
    }
    return result;
  }
}

std::string GraphClient::RecordFilter(const std::string& upn, const std::string& thumbprint) {
  std::vector<std::string> terms;
  if (!upn.empty()) {
    terms.push_back(
        absl::StrCat("tolower(userPrincipalName) eq ", ODataString(absl::AsciiStrToLower(upn))));
  }
  if (!thumbprint.empty()) {
    terms.push_back(
        absl::StrCat("tolower(thumbprint) eq ", ODataString(absl::AsciiStrToLower(thumbprint))));
  }
  return absl::StrJoin(terms, " and ");
}

absl::StatusOr<std::vector<nlohmann::json>> GraphClient::ListRecords(const std::string& filter) {
  std::vector<nlohmann::json> out;
  std::string next = RecordsUrl();
  if (!filter.empty()) absl::StrAppend(&next, "?$filter=", UrlEncode(filter));
  for (int page = 0; !next.empty(); ++page) {
    if (page == 100000) return absl::InternalError("Graph's @odata.nextLink does not end");
    GraphResult r = Call("GET", next);
    if (!r.ok()) {
      return absl::UnavailableError(absl::StrCat("GET ", next, ": ", r.error));
    }
    auto j = nlohmann::json::parse(r.body, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("value") || !j["value"].is_array()) {
      return absl::DataLossError(absl::StrCat("GET ", next, ": the answer has no \"value\" array"));
    }
    for (auto& v : j["value"]) out.push_back(std::move(v));
    next = j.contains("@odata.nextLink") && j["@odata.nextLink"].is_string()
               ? j["@odata.nextLink"].get<std::string>()
               : "";
  }
  return out;
}

absl::StatusOr<std::optional<std::string>> GraphClient::UserId(const std::string& upn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = user_ids_.find(absl::AsciiStrToLower(upn)); it != user_ids_.end()) {
      return it->second;
    }
  }
  const std::string url =
      absl::StrCat(base_, "/users?$filter=",
                   UrlEncode(absl::StrCat("userPrincipalName eq ", ODataString(upn))),
                   "&$select=id,userPrincipalName");
  GraphResult r = Call("GET", url);
  if (!r.ok()) {
    return absl::UnavailableError(absl::StrCat("looking up the user id of ", upn, ": ", r.error));
  }
  auto j = nlohmann::json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("value") || !j["value"].is_array()) {
    return absl::DataLossError(absl::StrCat("looking up ", upn, ": the answer has no \"value\""));
  }
  std::optional<std::string> id;
  if (!j["value"].empty() && j["value"][0].contains("id") && j["value"][0]["id"].is_string()) {
    id = absl::StrReplaceAll(j["value"][0]["id"].get<std::string>(), {{"-", ""}});
  }
  std::lock_guard<std::mutex> lock(mu_);
  user_ids_[absl::AsciiStrToLower(upn)] = id;
  return id;
}

}  // namespace hsmrewrap::pfx_import
