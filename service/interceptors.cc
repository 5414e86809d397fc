#include "service/interceptors.h"

#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace hsmrewrap::service {
namespace {

using grpc::experimental::InterceptionHookPoints;
using grpc::experimental::InterceptorBatchMethods;

constexpr RpcMethod kMethods[] = {
    {"/hsmrewrap.v1.Rewrap/Rewrap", "Rewrap", RpcClass::kRewrap, false},
    {"/hsmrewrap.v1.Rewrap/RewrapStream", "RewrapStream", RpcClass::kRewrap, true},
    {"/hsmrewrap.v1.Keys/ListKeys", "ListKeys", RpcClass::kKeysRead, false},
    {"/hsmrewrap.v1.Keys/GetPublicKey", "GetPublicKey", RpcClass::kKeysRead, false},
    {"/hsmrewrap.v1.Keys/SelfTest", "SelfTest", RpcClass::kKeysRead, false},
    {"/hsmrewrap.v1.Keys/CreateKey", "CreateKey", RpcClass::kKeysAdmin, false},
    {"/hsmrewrap.v1.Keys/ImportKey", "ImportKey", RpcClass::kKeysAdmin, false},
    {"/hsmrewrap.v1.Keys/EnableKey", "EnableKey", RpcClass::kKeysAdmin, false},
    {"/hsmrewrap.v1.Keys/DisableKey", "DisableKey", RpcClass::kKeysAdmin, false},
};

// Authorizes when the client's metadata is in (before the handler runs); what the handler
// did not take goes when the call is over.
class AuthorizationInterceptor final : public grpc::experimental::Interceptor {
 public:
  AuthorizationInterceptor(AuthorizedCalls* calls, const RpcMethod* method,
                           const grpc::ServerContextBase* ctx)
      : calls_(calls), method_(method), ctx_(ctx) {}
  ~AuthorizationInterceptor() override { calls_->Forget(ctx_, this); }

  void Intercept(InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      calls_->Authorize(ctx_, *method_, this);
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      calls_->Forget(ctx_, this);
    }
    methods->Proceed();
  }

 private:
  AuthorizedCalls* const calls_;
  const RpcMethod* const method_;
  const grpc::ServerContextBase* const ctx_;
};

// Times a unary call from its request to its status.
class MetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  MetricsInterceptor(Metrics* metrics, const RpcMethod* method)
      : metrics_(metrics), method_(method) {}

  void Intercept(InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE)) {
      start_ = std::chrono::steady_clock::now();
      started_ = true;
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS) && started_) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      metrics_->Observe("hsmrewrap_rpc_latency_seconds", {{"rpc", method_->name}}, seconds);
    }
    methods->Proceed();
  }

 private:
  Metrics* const metrics_;
  const RpcMethod* const method_;
  std::chrono::steady_clock::time_point start_;
  bool started_ = false;
};

}  // namespace

const RpcMethod* FindRpcMethod(const char* full_name) {
  if (full_name == nullptr) return nullptr;
  for (const auto& m : kMethods) {
    if (std::strcmp(m.full_name, full_name) == 0) return &m;
  }
  return nullptr;
}

void AuthorizedCalls::Authorize(const grpc::ServerContextBase* ctx, const RpcMethod& method,
                                const void* owner) {
  if (security_ == nullptr) return;
  Decision d{owner, security_->Authorize(*ctx, method.rpc_class, method.name)};
  absl::MutexLock l(&mu_);
  decisions_.insert_or_assign(ctx, std::move(d));
}

void AuthorizedCalls::Forget(const grpc::ServerContextBase* ctx, const void* owner) {
  absl::MutexLock l(&mu_);
  auto it = decisions_.find(ctx);
  if (it != decisions_.end() && it->second.owner == owner) decisions_.erase(it);
}

absl::StatusOr<Security::Call> AuthorizedCalls::Take(const grpc::ServerContextBase* ctx,
                                                     const char* rpc) {
  if (security_ == nullptr) {
    Security::Call call;
    call.rpc = rpc;
    return call;
  }
  absl::MutexLock l(&mu_);
  auto it = decisions_.find(ctx);
  if (it == decisions_.end()) {
    return absl::InternalError(
        absl::StrCat(rpc, " was not authorized (no authorization interceptor): refused"));
  }
  absl::StatusOr<Security::Call> call = std::move(it->second.call);
  decisions_.erase(it);
  return call;
}

size_t AuthorizedCalls::pending() const {
  absl::MutexLock l(&mu_);
  return decisions_.size();
}

grpc::experimental::Interceptor* AuthorizationInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  const RpcMethod* method = FindRpcMethod(info->method());
  if (method == nullptr) return nullptr;
  return new AuthorizationInterceptor(calls_, method, info->server_context());
}

grpc::experimental::Interceptor* MetricsInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  const RpcMethod* method = FindRpcMethod(info->method());
  if (method == nullptr || method->streaming) return nullptr;
  return new MetricsInterceptor(metrics_, method);
}

}  // namespace hsmrewrap::service
