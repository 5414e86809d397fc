#include "clients/common/channel.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace hsmrewrap::clients {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

void AddChannelFlags(CLI::App& app, ChannelOptions& o) {
  app.add_option("--target", o.target,
                 "rewrapd address HOST:PORT[,HOST:PORT...] (default 127.0.0.1:50051)");
  app.add_option("--tls-cert", o.tls_cert, "client certificate (PEM) for mTLS");
  app.add_option("--tls-key", o.tls_key, "client private key (PEM) for mTLS");
  app.add_option("--ca", o.ca, "CA certificate (PEM) that signed rewrapd's certificate");
}

std::vector<std::string> SplitTargets(const std::string& target) {
  return absl::StrSplit(target, ',', absl::SkipWhitespace());
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ChannelOptions& o) {
  std::vector<std::string> targets = SplitTargets(o.target);
  if (targets.empty()) return absl::InvalidArgumentError("--target is empty");
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (!o.tls_cert.empty() || !o.tls_key.empty() || !o.ca.empty()) {
    grpc::SslCredentialsOptions ssl;
    if (!o.ca.empty()) {
      auto ca = ReadFile(o.ca);
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
    }
    if (!o.tls_cert.empty() || !o.tls_key.empty()) {
      auto cert = ReadFile(o.tls_cert);
      auto key = ReadFile(o.tls_key);
      if (!cert.ok()) return cert.status();
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
    }
    creds = grpc::SslCredentials(ssl);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  std::string uri = targets[0];
  if (targets.size() > 1) {
    // A static address list, balanced round-robin by the client.
    bool v6 = targets[0].front() == '[';
    uri = absl::StrCat(v6 ? "ipv6:" : "ipv4:", absl::StrJoin(targets, ","));
    args.SetLoadBalancingPolicyName("round_robin");
  }
  return grpc::CreateCustomChannel(uri, creds, args);
}

}  // namespace hsmrewrap::clients
