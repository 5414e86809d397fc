// Transport security of rewrapd: gRPC server credentials from the configuration (plaintext,
// TLS, or mTLS with client certificates verified against client_ca) and the caller's
// identity as gRPC's AuthContext reports it.
#pragma once

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_context.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "service/config.h"

namespace hsmrewrap::service {

// Who is calling. With mTLS: the names of the verified client certificate, its URI SANs
// (e.g. spiffe://example.org/connector) and its subject CN, kept apart: a CN that spells a
// URI is still a CN. Without a client certificate the caller is anonymous.
struct Identity {
  bool authenticated = false;
  std::vector<std::string> uris;  // every URI SAN
  std::string cn;                 // the subject CN ("" if it has none)

  // The names as the policy writes them: "uri:<SAN>" for each URI SAN, then "cn:<CN>".
  std::vector<std::string> names() const;
  // The name logs, audit records and rate limits use when no policy entry names the caller:
  // "uri:" the first URI SAN, else "cn:" the CN, else "anonymous".
  std::string primary() const;
};

// Reads the identity from a call's AuthContext (properties peer_uri and x509_common_name,
// set only when the TLS layer verified the client certificate).
Identity IdentityOf(const grpc::ServerContextBase& ctx);

// Plaintext, TLS, or mTLS (client_ca set: the client must present a certificate that chains
// to it; gRPC refuses the handshake otherwise). Reads the files; errors name the file.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const Config& config);

}  // namespace hsmrewrap::service
