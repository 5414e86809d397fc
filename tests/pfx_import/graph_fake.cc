#include "tests/pfx_import/graph_fake.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <memory>
#include <regex>

#include "crypto/encoding.h"

namespace hsmrewrap::pfx_test {
namespace {

using ojson = nlohmann::ordered_json;

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string B64UrlDecode(std::string s) {
  for (char& c : s) {
    if (c == '-') c = '+';
    if (c == '_') c = '/';
  }
  while (s.size() % 4 != 0) s.push_back('=');
  auto d = crypto::Base64Decode(s);
  return d.ok() ? std::string(d->begin(), d->end()) : std::string("\x01invalid");
}

std::string B64Url(const unsigned char* p, size_t n) {
  std::string s = crypto::Base64Encode(absl::MakeConstSpan(p, n));
  while (!s.empty() && s.back() == '=') s.pop_back();
  for (char& c : s) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  return s;
}

// The value of `name eq '...'` (optionally inside tolower()) in an OData filter, or "".
bool FilterValue(const std::string& filter, const std::string& name, std::string* value) {
  const std::regex re("(?:tolower\\()?" + name + "\\)? eq '((?:[^']|'')*)'");
  std::smatch m;
  if (!std::regex_search(filter, m, re)) return false;
  *value = std::regex_replace(m[1].str(), std::regex("''"), "'");
  return true;
}

const char* kPurposes[] = {"unassigned", "smimeencryption", "smimesigning", "vpn", "wifi"};
const char* kPaddings[] = {"oaepsha256", "oaepsha384", "oaepsha512"};

}  // namespace

FakeGraph::FakeGraph() {
  Routes();
  port_ = server_.bind_to_any_port("127.0.0.1");
  thread_ = std::thread([this] { server_.listen_after_bind(); });
  while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
}

FakeGraph::~FakeGraph() {
  server_.stop();
  thread_.join();
}

std::string FakeGraph::base() const { return "http://127.0.0.1:" + std::to_string(port_); }
std::string FakeGraph::graph_url() const { return base() + "/beta"; }
std::string FakeGraph::token_url() const {
  return base() + "/" + app_.tenant + "/oauth2/v2.0/token";
}

void FakeGraph::SetApp(App app) {
  std::lock_guard<std::mutex> lock(mu_);
  app_ = std::move(app);
}
std::string FakeGraph::AddUser(const std::string& upn) {
  std::lock_guard<std::mutex> lock(mu_);
  char id[40];
  const unsigned n = static_cast<unsigned>(users_.size()) + 1;
  std::snprintf(id, sizeof(id), "%08x-aaaa-4bbb-8ccc-%012x", n * 0x1111u, n);
  users_[Lower(upn)] = id;
  return id;
}
void FakeGraph::AddToken(const std::string& token) {
  std::lock_guard<std::mutex> lock(mu_);
  tokens_[token] = true;
}
void FakeGraph::SetPageSize(size_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  page_size_ = n;
}
void FakeGraph::SetTokenLifetime(int seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  token_lifetime_ = seconds;
}
void FakeGraph::RejectFirstIssuedToken() {
  std::lock_guard<std::mutex> lock(mu_);
  reject_first_ = true;
}
void FakeGraph::ThrottleNext(int n, int seconds, int skip) {
  std::lock_guard<std::mutex> lock(mu_);
  throttle_skip_ = skip;
  throttle_left_ = n;
  throttle_seconds_ = seconds;
}
void FakeGraph::AddRecord(const std::string& upn, const std::string& thumbprint,
                          const std::string& key_name) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string uid = UserIdLocked(upn);
  uid.erase(std::remove(uid.begin(), uid.end(), '-'), uid.end());
  const std::string id = uid + "-" + Lower(thumbprint);
  records_[id] = ojson{{"id", id},
                       {"thumbprint", Lower(thumbprint)},
                       {"intendedPurpose", "smimeEncryption"},
                       {"userPrincipalName", upn},
                       {"startDateTime", "2026-01-01T00:00:00+00:00"},
                       {"expirationDateTime", "2027-01-01T00:00:00+00:00"},
                       {"providerName", "hsm-rewrap"},
                       {"keyName", key_name},
                       {"paddingScheme", "oaepSha512"},
                       {"encryptedPfxBlob", "MIIB"},
                       {"encryptedPfxPassword", "c2VhbGVk"}};
}

std::vector<FakeGraph::Request> FakeGraph::requests() {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}
int FakeGraph::token_requests() {
  std::lock_guard<std::mutex> lock(mu_);
  return token_requests_;
}
std::vector<std::string> FakeGraph::assertions() {
  std::lock_guard<std::mutex> lock(mu_);
  return assertions_;
}
std::vector<std::string> FakeGraph::token_errors() {
  std::lock_guard<std::mutex> lock(mu_);
  return token_errors_;
}
std::vector<std::chrono::steady_clock::time_point> FakeGraph::throttled_at() {
  std::lock_guard<std::mutex> lock(mu_);
  return throttled_at_;
}
std::map<std::string, nlohmann::ordered_json> FakeGraph::records() {
  std::lock_guard<std::mutex> lock(mu_);
  return records_;
}

std::string FakeGraph::UserIdLocked(const std::string& upn) {
  auto it = users_.find(Lower(upn));
  return it == users_.end() ? "" : it->second;
}

void FakeGraph::Error(httplib::Response& res, int status, const std::string& code,
                      const std::string& message, const std::string& target) {
  ojson e = {{"code", code}, {"message", message}};
  if (!target.empty()) e["target"] = target;
  e["innerError"] = {{"request-id", "0000aaaa-1111-2222-3333-444455556666"},
                     {"date", "2026-01-01T00:00:00"}};
  res.status = status;
  res.set_content(ojson{{"error", e}}.dump(), "application/json");
}

bool FakeGraph::Authorized(const httplib::Request& req, httplib::Response& res) {
  std::lock_guard<std::mutex> lock(mu_);
  requests_.push_back({req.method, req.path, req.get_header_value("Authorization"), req.body,
                       std::chrono::steady_clock::now()});
  if (throttle_skip_ > 0) {
    --throttle_skip_;
  } else if (throttle_left_ > 0) {
    --throttle_left_;
    throttled_at_.push_back(std::chrono::steady_clock::now());
    res.set_header("Retry-After", std::to_string(throttle_seconds_));
    Error(res, 429, "TooManyRequests", "Too many requests");
    return false;
  }
  const std::string auth = req.get_header_value("Authorization");
  const std::string token = auth.rfind("Bearer ", 0) == 0 ? auth.substr(7) : "";
  auto it = tokens_.find(token);
  if (it == tokens_.end() || !it->second) {
    Error(res, 401, "InvalidAuthenticationToken",
          token.empty() ? "Access token is empty." : "Access token has expired or is not yet valid.");
    return false;
  }
  return true;
}

void FakeGraph::Token(const httplib::Request& req, httplib::Response& res) {
  httplib::Params form;
  httplib::detail::parse_query_text(req.body, form);
  auto get = [&](const char* k) {
    auto it = form.find(k);
    return it == form.end() ? std::string() : it->second;
  };
  std::lock_guard<std::mutex> lock(mu_);
  ++token_requests_;
  auto fail = [&](const std::string& error, const std::string& why) {
    token_errors_.push_back(why);
    res.status = error == "invalid_client" ? 401 : 400;
    res.set_content(ojson{{"error", error},
                          {"error_description", why + "\r\nTrace ID: 0\r\nCorrelation ID: 0"}}
                        .dump(),
                    "application/json");
  };
  if (req.path != "/" + app_.tenant + "/oauth2/v2.0/token") {
    return fail("invalid_request", "AADSTS90002: Tenant not found.");
  }
  if (get("grant_type") != "client_credentials") {
    return fail("unsupported_grant_type", "AADSTS70003: grant_type must be client_credentials");
  }
  if (get("client_id") != app_.client_id) {
    return fail("unauthorized_client", "AADSTS700016: Application not found in the directory.");
  }
  if (get("scope") != base() + "/.default") {
    return fail("invalid_scope", "AADSTS70011: The provided value for scope is not valid: " +
                                     get("scope"));
  }
  if (!get("client_secret").empty()) {
    if (app_.client_secret.empty() || get("client_secret") != app_.client_secret) {
      return fail("invalid_client", "AADSTS7000215: Invalid client secret provided.");
    }
  } else if (get("client_assertion_type") ==
             "urn:ietf:params:oauth:client-assertion-type:jwt-bearer") {
    assertions_.push_back(get("client_assertion"));
    const std::string why = CheckAssertion(get("client_assertion"));
    if (!why.empty()) return fail("invalid_client", "AADSTS700027: " + why);
  } else {
    return fail("invalid_client", "AADSTS7000216: client_assertion or client_secret required.");
  }
  const std::string token = "tok-" + std::to_string(++issued_);
  tokens_[token] = !(reject_first_ && issued_ == 1);
  res.set_content(ojson{{"token_type", "Bearer"},
                        {"expires_in", token_lifetime_},
                        {"ext_expires_in", token_lifetime_},
                        {"access_token", token}}
                      .dump(),
                  "application/json");
}

std::string FakeGraph::CheckAssertion(const std::string& jwt) {
  if (app_.client_cert_pem.empty()) return "no certificate registered for the app";
  const size_t a = jwt.find('.'), b = jwt.find('.', a + 1);
  if (a == std::string::npos || b == std::string::npos) return "not a JWT";
  auto header = nlohmann::json::parse(B64UrlDecode(jwt.substr(0, a)), nullptr, false);
  auto claims = nlohmann::json::parse(B64UrlDecode(jwt.substr(a + 1, b - a - 1)), nullptr, false);
  const std::string sig = B64UrlDecode(jwt.substr(b + 1));
  if (!header.is_object() || !claims.is_object()) return "header or claims are not JSON";
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(app_.client_cert_pem.data(), static_cast<int>(app_.client_cert_pem.size())),
      BIO_free);
  std::unique_ptr<X509, decltype(&X509_free)> cert(
      PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr), X509_free);
  if (!cert) return "registered certificate unreadable";
  unsigned char sha1[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  X509_digest(cert.get(), EVP_sha1(), sha1, &n);
  if (header.value("alg", "") != "RS256") return "alg is not RS256";
  if (header.value("x5t", "") != B64Url(sha1, n)) {
    return "Client assertion contains an invalid signature (x5t does not name the certificate)";
  }
  EVP_PKEY* pub = X509_get0_pubkey(cert.get());
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> md(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  const std::string signed_part = jwt.substr(0, b);
  if (EVP_DigestVerifyInit(md.get(), nullptr, EVP_sha256(), nullptr, pub) != 1 ||
      EVP_DigestVerify(md.get(), reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                       reinterpret_cast<const unsigned char*>(signed_part.data()),
                       signed_part.size()) != 1) {
    return "Client assertion contains an invalid signature";
  }
  if (claims.value("aud", "") != token_url()) return "aud is not the token endpoint";
  if (claims.value("iss", "") != app_.client_id || claims.value("sub", "") != app_.client_id) {
    return "iss and sub must be the client id";
  }
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  if (!claims.contains("exp") || claims["exp"].get<int64_t>() < now) return "assertion expired";
  if (!claims.contains("jti")) return "no jti";
  return "";
}

void FakeGraph::Routes() {
  server_.Post(R"(/[^/]+/oauth2/v2\.0/token)",
               [this](const httplib::Request& req, httplib::Response& res) { Token(req, res); });
  const std::string records = "/beta/deviceManagement/userPfxCertificates";

  server_.Get("/beta/users", [this](const httplib::Request& req, httplib::Response& res) {
    if (!Authorized(req, res)) return;
    std::string upn;
    if (!FilterValue(req.get_param_value("$filter"), "userPrincipalName", &upn)) {
      return Error(res, 400, "BadRequest", "Invalid filter clause");
    }
    std::lock_guard<std::mutex> lock(mu_);
    ojson value = ojson::array();
    if (const std::string id = UserIdLocked(upn); !id.empty()) {
      value.push_back({{"id", id}, {"userPrincipalName", upn}});
    }
    res.set_content(ojson{{"value", value}}.dump(), "application/json");
  });

  server_.Get(records, [this, records](const httplib::Request& req, httplib::Response& res) {
    if (!Authorized(req, res)) return;
    const std::string filter = req.get_param_value("$filter");
    std::string upn, tp;
    const bool by_upn = FilterValue(filter, "userPrincipalName", &upn);
    const bool by_tp = FilterValue(filter, "thumbprint", &tp);
    if (!filter.empty() && !by_upn && !by_tp) {
      return Error(res, 400, "BadRequest", "Invalid filter clause");
    }
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<ojson> match;
    for (const auto& [id, r] : records_) {
      if (by_upn && Lower(r["userPrincipalName"].get<std::string>()) != upn) continue;
      if (by_tp && Lower(r["thumbprint"].get<std::string>()) != tp) continue;
      ojson shown = r;  // Graph never returns these two on GET
      shown["encryptedPfxBlob"] = "";
      shown["encryptedPfxPassword"] = "";
      match.push_back(std::move(shown));
    }
    size_t skip = 0;
    if (req.has_param("$skiptoken")) skip = std::stoul(req.get_param_value("$skiptoken"));
    ojson page = {{"@odata.context", base() + "/beta/$metadata#deviceManagement/userPfxCertificates"},
                  {"value", ojson::array()}};
    for (size_t i = skip; i < match.size() && i < skip + page_size_; ++i) {
      page["value"].push_back(match[i]);
    }
    if (skip + page_size_ < match.size()) {
      std::string next = base() + records + "?";
      if (!filter.empty()) next += "$filter=" + httplib::detail::encode_query_param(filter) + "&";
      page["@odata.nextLink"] = next + "$skiptoken=" + std::to_string(skip + page_size_);
    }
    res.set_content(page.dump(), "application/json");
  });

  server_.Post(records, [this](const httplib::Request& req, httplib::Response& res) {
    if (!Authorized(req, res)) return;
    ojson r = ojson::parse(req.body, nullptr, false);
    if (!r.is_object()) return Error(res, 400, "BadRequest", "The request body is not JSON");
    auto str = [&](const char* k) { return r.contains(k) && r[k].is_string() ? r[k].get<std::string>() : ""; };
    const std::string tp = Lower(str("thumbprint"));
    if (!std::regex_match(tp, std::regex("[0-9a-f]{40}"))) {
      return Error(res, 400, "BadRequest", "Invalid thumbprint", "thumbprint");
    }
    const std::string purpose = Lower(str("intendedPurpose"));
    if (std::find(std::begin(kPurposes), std::end(kPurposes), purpose) == std::end(kPurposes)) {
      return Error(res, 400, "BadRequest",
                   "Requested value '" + str("intendedPurpose") + "' was not found.",
                   "intendedPurpose");
    }
    const std::string padding = Lower(str("paddingScheme"));
    if (std::find(std::begin(kPaddings), std::end(kPaddings), padding) == std::end(kPaddings)) {
      return Error(res, 400, "BadRequest", "Invalid padding scheme", "paddingScheme");
    }
    if (str("encryptedPfxPassword").empty() || str("encryptedPfxBlob").empty()) {
      return Error(res, 400, "BadRequest", "The blob and the password are required",
                   "encryptedPfxPassword");
    }
    std::lock_guard<std::mutex> lock(mu_);
    std::string uid = UserIdLocked(str("userPrincipalName"));
    if (uid.empty()) {
      return Error(res, 400, "BadRequest",
                   "User '" + str("userPrincipalName") + "' was not found in the tenant.",
                   "userPrincipalName");
    }
    uid.erase(std::remove(uid.begin(), uid.end(), '-'), uid.end());
    const std::string id = uid + "-" + tp;
    if (records_.count(id) != 0) {
      return Error(res, 409, "Conflict", "A record with this user and thumbprint exists.");
    }
    ojson stored = {{"id", id}};
    for (const auto& [k, v] : r.items()) stored[k] = v;
    records_[id] = stored;
    res.status = 201;
    res.set_content(stored.dump(), "application/json");
  });

  server_.Patch(records + R"(\('([^']*)'\))",
                [this](const httplib::Request& req, httplib::Response& res) {
                  if (!Authorized(req, res)) return;
                  ojson r = ojson::parse(req.body, nullptr, false);
                  if (!r.is_object()) return Error(res, 400, "BadRequest", "Body is not JSON");
                  std::lock_guard<std::mutex> lock(mu_);
                  auto it = records_.find(req.matches[1].str());
                  if (it == records_.end()) {
                    return Error(res, 404, "ResourceNotFound", "No such userPfxCertificate.");
                  }
                  for (const auto& [k, v] : r.items()) {
                    if (k != "id") it->second[k] = v;
                  }
                  res.status = 204;
                });

  server_.Delete(records + "/([^/]+)", [this](const httplib::Request& req,
                                             httplib::Response& res) {
    if (!Authorized(req, res)) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (records_.erase(req.matches[1].str()) == 0) {
      return Error(res, 404, "ResourceNotFound", "No such userPfxCertificate.");
    }
    res.status = 204;
  });
}

}  // namespace hsmrewrap::pfx_test
