// gRPC server interceptors of the Rewrap and Keys services, so that no handler authorizes
// or times itself:
//  - authorization: maps the method to its policy class (service/policy.h), authorizes the
//    caller when the call's metadata has arrived (refusals are audited there, as before) and
//    leaves the decision in AuthorizedCalls, where the handler takes it: the authorized
//    Security::Call, or the refusal to finish the call with;
//  - metrics: hsmrewrap_rpc_latency_seconds{rpc} per unary call, from the request read to
//    the status sent. RewrapStream is timed per batch by its reactor instead.
// Other methods (health, reflection) are not intercepted.
#pragma once

#include <grpcpp/support/server_interceptor.h>

#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "service/metrics.h"
#include "service/policy.h"

namespace hsmrewrap::service {

// An RPC of the Rewrap or Keys service.
struct RpcMethod {
  const char* full_name;  // "/hsmrewrap.v1.Keys/CreateKey"
  const char* name;       // "CreateKey": audit records, messages, metric labels
  RpcClass rpc_class;
  bool streaming;
};
// The method named `full_name` (ServerRpcInfo::method()), or null.
const RpcMethod* FindRpcMethod(const char* full_name);

// The authorization decision per call, from the interceptor to the handler.
class AuthorizedCalls final {
 public:
  // `security` may be null: every call is allowed and nothing is audited.
  explicit AuthorizedCalls(Security* security) : security_(security) {}
  AuthorizedCalls(const AuthorizedCalls&) = delete;
  AuthorizedCalls& operator=(const AuthorizedCalls&) = delete;

  Security* security() const { return security_; }

  // Interceptor side: authorizes the call of `ctx` (auditing a refusal) and keeps the result
  // for it under `owner` until taken or forgotten.
  void Authorize(const grpc::ServerContextBase* ctx, const RpcMethod& method, const void* owner);
  // Drops what `owner` left for `ctx` and the handler did not take.
  void Forget(const grpc::ServerContextBase* ctx, const void* owner);

  // Handler side, once per call: the authorized call, or why it is refused (already audited:
  // finish the call with it). Without a decision for `ctx` (no interceptor ran) the call is
  // refused, INTERNAL; without `security` it is allowed.
  absl::StatusOr<Security::Call> Take(const grpc::ServerContextBase* ctx, const char* rpc);

  size_t pending() const;  // decisions not taken yet (for tests)

 private:
  struct Decision {
    const void* owner;
    absl::StatusOr<Security::Call> call;
  };
  Security* const security_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<const grpc::ServerContextBase*, Decision> decisions_ ABSL_GUARDED_BY(mu_);
};

class AuthorizationInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit AuthorizationInterceptorFactory(AuthorizedCalls* calls) : calls_(calls) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

 private:
  AuthorizedCalls* const calls_;
};

class MetricsInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit MetricsInterceptorFactory(Metrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

 private:
  Metrics* const metrics_;
};

}  // namespace hsmrewrap::service
