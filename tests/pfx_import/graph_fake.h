// A local stand-in for Microsoft Graph's userPFXCertificate endpoints and the Entra ID
// token endpoint (INTEROP.md §4.3), for pfx-import's tests and docs. cpp-httplib on
// 127.0.0.1 and a port the kernel picks; state in memory.
//
// Token endpoint: POST /{tenant}/oauth2/v2.0/token, client-credentials grant for one
// registered app, with its client secret or an RFC 7523 assertion that is verified here
// with OpenSSL (RS256 signature with the registered certificate's key, x5t = base64url
// SHA-1 of the certificate, aud = the token URL, iss = sub = client id, not expired).
// Graph (under /beta; every call needs a bearer token it issued or one added with
// AddToken): userPfxCertificates POST (201; 409 for a duplicate; 400 naming the field for
// an unknown user or a bad enum), GET with the module's $filter forms and @odata.nextLink
// paging (blob and password come back empty, as from Graph), PATCH ('{key}') and DELETE
// /{key} (204 or 404), and GET /users?$filter=userPrincipalName eq '...'.
#pragma once

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

namespace hsmrewrap::pfx_test {

class FakeGraph final {
 public:
  struct Request {
    std::string method, path, authorization, body;
    std::chrono::steady_clock::time_point arrived;
  };
  struct App {
    std::string tenant = "contoso.example";
    std::string client_id = "11111111-2222-3333-4444-555555555555";
    std::string client_secret;  // accepted when non-empty
    std::string client_cert_pem;  // assertions signed by its key accepted when non-empty
  };

  FakeGraph();
  ~FakeGraph();
  FakeGraph(const FakeGraph&) = delete;
  FakeGraph& operator=(const FakeGraph&) = delete;

  int port() const { return port_; }
  std::string base() const;       // http://127.0.0.1:PORT
  std::string graph_url() const;  // base()/beta
  std::string authority() const { return base(); }
  std::string token_url() const;  // base()/{tenant}/oauth2/v2.0/token

  // Set-up (before requests).
  void SetApp(App app);
  std::string AddUser(const std::string& upn);  // returns the object id (with hyphens)
  void AddToken(const std::string& token);      // a bearer token Graph accepts
  void SetPageSize(size_t n);
  void SetTokenLifetime(int seconds);
  // Graph answers 401 to the first token the token endpoint issues (an expired token).
  void RejectFirstIssuedToken();
  // After `skip` more Graph requests, the next `n` are answered 429 with Retry-After
  // `seconds`.
  void ThrottleNext(int n, int seconds, int skip = 0);
  // Inserts a record as if imported earlier (thumbprint lower-cased).
  void AddRecord(const std::string& upn, const std::string& thumbprint,
                 const std::string& key_name = "default");

  // Observations.
  std::vector<Request> requests();  // Graph requests, in arrival order
  int token_requests();             // successful and failed
  std::vector<std::string> assertions();  // client assertions received
  std::vector<std::string> token_errors();
  std::vector<std::chrono::steady_clock::time_point> throttled_at();  // 429s sent
  std::map<std::string, nlohmann::ordered_json> records();  // by id

 private:
  void Routes();
  bool Authorized(const httplib::Request& req, httplib::Response& res);
  void Token(const httplib::Request& req, httplib::Response& res);
  std::string CheckAssertion(const std::string& jwt);  // "" when valid, else why
  std::string UserIdLocked(const std::string& upn);    // "" when unknown
  static void Error(httplib::Response& res, int status, const std::string& code,
                    const std::string& message, const std::string& target = "");

  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;  // guards everything below
  App app_;
  std::map<std::string, std::string> users_;  // lower-cased UPN -> object id
  std::map<std::string, bool> tokens_;         // token -> accepted
  std::map<std::string, nlohmann::ordered_json> records_;
  size_t page_size_ = 100;
  int token_lifetime_ = 3599;
  int issued_ = 0;
  bool reject_first_ = false;
  int throttle_skip_ = 0, throttle_left_ = 0, throttle_seconds_ = 1;
  std::vector<Request> requests_;
  int token_requests_ = 0;
  std::vector<std::string> assertions_, token_errors_;
  std::vector<std::chrono::steady_clock::time_point> throttled_at_;
};

}  // namespace hsmrewrap::pfx_test
