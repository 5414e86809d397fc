// Sign-in to Microsoft Graph. Either a bearer token the admin brings (--token-file or
// $GRAPH_TOKEN), or app-only sign-in with the OAuth2 client-credentials grant
// (--tenant, --client-id and --client-secret-file or --client-cert/--client-key) at
// {authority}/{tenant}/oauth2/v2.0/token with scope {graph}/.default. With a certificate
// the client authenticates with an RFC 7523 assertion: a JWT signed RS256 whose header
// names the certificate by x5t (base64url SHA-1 of its DER), as Entra ID requires.
// Secrets are read from files, held in SecretString and never logged.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "clients/pfx-import/http.h"
#include "crypto/secret.h"

namespace hsmrewrap::pfx_import {

// Where Graph calls get their bearer token. Thread-safe.
class TokenSource {
 public:
  virtual ~TokenSource() = default;
  // A token that is valid now (cached; refreshed before it expires where possible).
  virtual absl::StatusOr<crypto::SecretString> Get() = 0;
  // Graph refused `rejected` with 401. Returns true when Get() will now return another
  // token (a new one was fetched, or the token file changed), false when there is none.
  virtual bool Refresh(const crypto::SecretString& rejected) = 0;
  // For messages: how the token was obtained (never the token).
  virtual std::string Describe() const = 0;
};

// A token from a file (read again on Refresh, so an external renewer can replace it) or
// from the environment.
std::unique_ptr<TokenSource> StaticTokenFromFile(std::string path, crypto::SecretString token);
std::unique_ptr<TokenSource> StaticTokenFromEnv(crypto::SecretString token);

struct AppCredentials {
  std::string authority = "https://login.microsoftonline.com";
  std::string tenant;
  std::string client_id;
  std::string scope;                  // {graph}/.default
  crypto::SecretString client_secret;  // or:
  std::string client_cert_pem;         // certificate (PEM) and its private key (PEM)
  crypto::SecretString client_key_pem;
};

// The token endpoint URL: {authority}/{tenant}/oauth2/v2.0/token.
std::string TokenEndpoint(const std::string& authority, const std::string& tenant);
// "{scheme}://{host}/.default" of a Graph base URL such as https://graph.microsoft.us/beta.
std::string GraphScope(const std::string& graph_url);
std::string Base64Url(absl::Span<const uint8_t> b);

// RFC 7523 §2.2 client assertion: header {"alg":"RS256","typ":"JWT","x5t":...}, claims
// aud = token endpoint, iss = sub = client id, jti, nbf = iat = now, exp = now + 10 min.
absl::StatusOr<crypto::SecretString> MakeClientAssertion(const std::string& cert_pem,
                                                         const crypto::SecretString& key_pem,
                                                         const std::string& client_id,
                                                         const std::string& audience,
                                                         absl::Time now);

// Client-credentials grant with a cache: Get() fetches a token when there is none or the
// cached one expires within min(5 min, half its lifetime); Refresh() fetches a new one.
// `clock` is for tests (default absl::Now).
absl::StatusOr<std::unique_ptr<TokenSource>> AppTokenSource(
    AppCredentials credentials, const HttpClient* http,
    std::function<absl::Time()> clock = nullptr);

}  // namespace hsmrewrap::pfx_import
