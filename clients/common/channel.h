// What every client shares: the channel to one or several rewrapd replicas.
#pragma once

#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace hsmrewrap::clients {

struct ChannelOptions {
  std::string target = "127.0.0.1:50051";  // HOST:PORT[,HOST:PORT...]
  std::string tls_cert;                    // client certificate (mTLS)
  std::string tls_key;
  std::string ca;  // CA that signed rewrapd's certificate
};

// Adds --target, --tls-cert, --tls-key, --ca to `app`.
void AddChannelFlags(CLI::App& app, ChannelOptions& options);

// One address: a plain channel. Several: "ipv4:" / "ipv6:" static list with client-side
// round_robin. TLS when any of the TLS flags is given.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ChannelOptions& options);

std::vector<std::string> SplitTargets(const std::string& target);

}  // namespace hsmrewrap::clients
