#include "clients/pfx-import/auth.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "crypto/encoding.h"
#include "crypto/keys.h"

namespace hsmrewrap::pfx_import {
namespace {

using crypto::SecretString;

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

// application/x-www-form-urlencoded value (RFC 3986 unreserved kept, the rest %XX).
void AppendFormValue(SecretString* out, const char* s, size_t n) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~') {
      out->push_back(static_cast<char>(c));
    } else {
      const char esc[3] = {'%', kHex[c >> 4], kHex[c & 15]};
      out->append(esc, 3);
    }
  }
}
void AppendField(SecretString* out, const char* name, const char* value, size_t n) {
  if (!out->empty()) out->push_back('&');
  out->append(name, strlen(name));
  out->push_back('=');
  AppendFormValue(out, value, n);
}

std::string Base64UrlOf(const std::string& s) {
  return Base64Url(absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}

class StaticToken final : public TokenSource {
 public:
  StaticToken(std::string path, SecretString token) : path_(std::move(path)), token_(token) {}
  absl::StatusOr<SecretString> Get() override {
    std::lock_guard<std::mutex> lock(mu_);
    return token_;
  }
  bool Refresh(const SecretString& rejected) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (token_ != rejected) return true;  // another worker already read a new one
    if (path_.empty()) return false;
    auto t = crypto::ReadSecretFile(path_);
    if (!t.ok() || *t == token_) return false;
    token_ = std::move(*t);
    return true;
  }
  std::string Describe() const override {
    return path_.empty() ? "the token in $GRAPH_TOKEN" : absl::StrCat("the token in ", path_);
  }

 private:
  const std::string path_;
  std::mutex mu_;
  SecretString token_;  // guarded by mu_
};

class AppToken final : public TokenSource {
 public:
  AppToken(AppCredentials c, const HttpClient* http, std::function<absl::Time()> clock)
      : c_(std::move(c)), http_(http), clock_(std::move(clock)),
        endpoint_(TokenEndpoint(c_.authority, c_.tenant)) {}

  absl::StatusOr<SecretString> Get() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (token_.empty() || clock_() >= refresh_at_) {
      if (absl::Status s = FetchLocked(); !s.ok()) return s;
    }
    return token_;
  }
  bool Refresh(const SecretString& rejected) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!token_.empty() && token_ != rejected) return true;  // already renewed
    return FetchLocked().ok();
  }
  std::string Describe() const override {
    return absl::StrCat("app ", c_.client_id, " in tenant ", c_.tenant, " (",
                        c_.client_cert_pem.empty() ? "client secret" : "client certificate",
                        ")");
  }

 private:
  absl::Status FetchLocked() {
    SecretString form;
    AppendField(&form, "grant_type", "client_credentials", 18);
    AppendField(&form, "client_id", c_.client_id.data(), c_.client_id.size());
    AppendField(&form, "scope", c_.scope.data(), c_.scope.size());
    if (!c_.client_cert_pem.empty()) {
      auto jwt = MakeClientAssertion(c_.client_cert_pem, c_.client_key_pem, c_.client_id,
                                     endpoint_, clock_());
      if (!jwt.ok()) return jwt.status();
      static constexpr char kType[] = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
      AppendField(&form, "client_assertion_type", kType, sizeof(kType) - 1);
      AppendField(&form, "client_assertion", jwt->data(), jwt->size());
    } else {
      AppendField(&form, "client_secret", c_.client_secret.data(), c_.client_secret.size());
    }
    const absl::Time asked = clock_();
    HttpResponse r =
        http_->Send("POST", endpoint_,
                    {"Content-Type: application/x-www-form-urlencoded", "Accept: application/json"},
                    std::string_view(form.data(), form.size()), nullptr);
    if (r.status == 0) return absl::UnavailableError(absl::StrCat("sign-in: ", r.network_error));
    auto j = nlohmann::json::parse(r.body, nullptr, /*allow_exceptions=*/false);
    if (r.status != 200 || !j.is_object() || !j.contains("access_token") ||
        !j["access_token"].is_string()) {
      // Entra ID errors: {"error":"invalid_client","error_description":"AADSTS7000215: ..."}
      std::string why = absl::StrCat("HTTP ", r.status);
      if (j.is_object() && j.contains("error") && j["error"].is_string()) {
        absl::StrAppend(&why, ": ", j["error"].get<std::string>());
        if (j.contains("error_description") && j["error_description"].is_string()) {
          std::string d = j["error_description"].get<std::string>();
          d = d.substr(0, d.find_first_of("\r\n"));  // the first line has the AADSTS code
          absl::StrAppend(&why, ": ", d);
        }
      }
      return absl::UnauthenticatedError(
          absl::StrCat("sign-in as ", Describe(), " at ", endpoint_, " failed: ", why));
    }
    std::string& t = j["access_token"].get_ref<std::string&>();
    token_ = SecretString(t.data(), t.size());
    crypto::Cleanse(t.data(), t.size());
    int64_t lifetime = 3600;
    if (j.contains("expires_in")) {
      if (j["expires_in"].is_number_integer()) lifetime = j["expires_in"].get<int64_t>();
      if (j["expires_in"].is_string()) lifetime = std::atoll(j["expires_in"].get<std::string>().c_str());
    }
    const absl::Duration life = absl::Seconds(lifetime);
    refresh_at_ = asked + life - std::min(absl::Minutes(5), life / 2);
    return absl::OkStatus();
  }

  const AppCredentials c_;
  const HttpClient* http_;
  const std::function<absl::Time()> clock_;
  const std::string endpoint_;
  std::mutex mu_;  // guards token_ and refresh_at_; held while fetching so one worker asks
  SecretString token_;
  absl::Time refresh_at_ = absl::InfinitePast();
};

}  // namespace

std::unique_ptr<TokenSource> StaticTokenFromFile(std::string path, SecretString token) {
  return std::make_unique<StaticToken>(std::move(path), std::move(token));
}
std::unique_ptr<TokenSource> StaticTokenFromEnv(SecretString token) {
  return std::make_unique<StaticToken>("", std::move(token));
}

std::string TokenEndpoint(const std::string& authority, const std::string& tenant) {
  return absl::StrCat(absl::StripSuffix(authority, "/"), "/", tenant, "/oauth2/v2.0/token");
}

std::string GraphScope(const std::string& graph_url) {
  const size_t scheme = graph_url.find("://");
  const size_t path = graph_url.find('/', scheme == std::string::npos ? 0 : scheme + 3);
  return absl::StrCat(graph_url.substr(0, path), "/.default");
}

std::string Base64Url(absl::Span<const uint8_t> b) {
  std::string s = crypto::Base64Encode(b);
  while (!s.empty() && s.back() == '=') s.pop_back();
  for (char& c : s) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  return s;
}

absl::StatusOr<SecretString> MakeClientAssertion(const std::string& cert_pem,
                                                 const SecretString& key_pem,
                                                 const std::string& client_id,
                                                 const std::string& audience, absl::Time now) {
  std::unique_ptr<BIO, BioFree> cb(BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size())));
  std::unique_ptr<X509, crypto::X509Deleter> cert(
      PEM_read_bio_X509(cb.get(), nullptr, nullptr, nullptr));
  if (cert == nullptr) return absl::InvalidArgumentError("--client-cert: no PEM certificate in it");
  std::unique_ptr<BIO, BioFree> kb(BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())));
  std::unique_ptr<EVP_PKEY, crypto::EvpPkeyDeleter> key(
      PEM_read_bio_PrivateKey(kb.get(), nullptr, nullptr, nullptr));
  if (key == nullptr) {
    return absl::InvalidArgumentError("--client-key: no unencrypted PEM private key in it");
  }
  if (EVP_PKEY_is_a(key.get(), "RSA") != 1) {
    return absl::InvalidArgumentError("--client-key: RS256 needs an RSA key");
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    return absl::InvalidArgumentError("--client-key does not belong to --client-cert");
  }
  unsigned char sha1[EVP_MAX_MD_SIZE];
  unsigned int sha1_len = 0;
  X509_digest(cert.get(), EVP_sha1(), sha1, &sha1_len);
  uint8_t id[16];
  RAND_bytes(id, sizeof(id));
  const std::string jti = crypto::HexEncode(id);
  const int64_t t = absl::ToUnixSeconds(now);
  nlohmann::ordered_json header = {
      {"alg", "RS256"}, {"typ", "JWT"}, {"x5t", Base64Url(absl::MakeConstSpan(sha1, sha1_len))}};
  nlohmann::ordered_json claims = {{"aud", audience}, {"iss", client_id}, {"sub", client_id},
                                   {"jti", jti},      {"nbf", t},         {"iat", t},
                                   {"exp", t + 600}};
  const std::string signing_input =
      absl::StrCat(Base64UrlOf(header.dump()), ".", Base64UrlOf(claims.dump()));
  std::unique_ptr<EVP_MD_CTX, MdCtxFree> md(EVP_MD_CTX_new());
  size_t sig_len = 0;
  if (EVP_DigestSignInit(md.get(), nullptr, EVP_sha256(), nullptr, key.get()) != 1 ||
      EVP_DigestSign(md.get(), nullptr, &sig_len,
                     reinterpret_cast<const unsigned char*>(signing_input.data()),
                     signing_input.size()) != 1) {
    return absl::InternalError("cannot sign the client assertion");
  }
  std::vector<uint8_t> sig(sig_len);
  if (EVP_DigestSign(md.get(), sig.data(), &sig_len,
                     reinterpret_cast<const unsigned char*>(signing_input.data()),
                     signing_input.size()) != 1) {
    return absl::InternalError("cannot sign the client assertion");
  }
  sig.resize(sig_len);
  const std::string jwt = absl::StrCat(signing_input, ".", Base64Url(sig));
  return SecretString(jwt);
}

absl::StatusOr<std::unique_ptr<TokenSource>> AppTokenSource(AppCredentials credentials,
                                                            const HttpClient* http,
                                                            std::function<absl::Time()> clock) {
  if (credentials.tenant.empty() || credentials.client_id.empty()) {
    return absl::InvalidArgumentError("app sign-in needs --tenant and --client-id");
  }
  if (credentials.client_secret.empty() == credentials.client_cert_pem.empty()) {
    return absl::InvalidArgumentError(
        "app sign-in needs one of --client-secret-file or --client-cert (with --client-key)");
  }
  if (credentials.scope.empty()) return absl::InvalidArgumentError("no scope");
  if (!clock) clock = [] { return absl::Now(); };
  return std::unique_ptr<TokenSource>(
      new AppToken(std::move(credentials), http, std::move(clock)));
}

}  // namespace hsmrewrap::pfx_import
