#include "service/tls.h"

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/auth_context.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace hsmrewrap::service {
namespace {

absl::StatusOr<std::string> ReadPem(const char* what, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::FailedPreconditionError(absl::StrCat(what, " ", path, ": cannot read it"));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  if (s.find("-----BEGIN ") == std::string::npos) {
    return absl::FailedPreconditionError(absl::StrCat(what, " ", path, ": not a PEM file"));
  }
  return s;
}

}  // namespace

std::vector<std::string> Identity::names() const {
  std::vector<std::string> out;
  out.reserve(uris.size() + 1);
  for (const auto& u : uris) out.push_back(absl::StrCat("uri:", u));
  if (!cn.empty()) out.push_back(absl::StrCat("cn:", cn));
  return out;
}

std::string Identity::primary() const {
  if (!uris.empty()) return absl::StrCat("uri:", uris.front());
  if (!cn.empty()) return absl::StrCat("cn:", cn);
  return "anonymous";
}

Identity IdentityOf(const grpc::ServerContextBase& ctx) {
  Identity id;
  std::shared_ptr<const grpc::AuthContext> auth = ctx.auth_context();
  if (!auth || !auth->IsPeerAuthenticated()) return id;
  // gRPC marks a TLS peer authenticated only when its certificate was verified. It reports
  // the subject's first CN (x509_common_name) and each URI SAN (peer_uri).
  for (const auto& v : auth->FindPropertyValues(GRPC_PEER_URI_PROPERTY_NAME))
    id.uris.emplace_back(v.data(), v.size());
  for (const auto& v : auth->FindPropertyValues(GRPC_X509_CN_PROPERTY_NAME)) {
    if (id.cn.empty()) id.cn.assign(v.data(), v.size());
  }
  id.authenticated = !id.uris.empty() || !id.cn.empty();
  return id;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const Config& c) {
  if (!c.tls()) return grpc::InsecureServerCredentials();
  auto cert = ReadPem("tls_cert", c.tls_cert);
  if (!cert.ok()) return cert.status();
  auto key = ReadPem("tls_key", c.tls_key);
  if (!key.ok()) return key.status();
  grpc::SslServerCredentialsOptions opts(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  if (!c.client_ca.empty()) {
    auto ca = ReadPem("client_ca", c.client_ca);
    if (!ca.ok()) return ca.status();
    opts.pem_root_certs = *ca;
    opts.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  opts.pem_key_cert_pairs.push_back({*key, *cert});
  return grpc::SslServerCredentials(opts);
}

}  // namespace hsmrewrap::service
