// Thin gRPC adapters (callback API) over RewrapEngine and the key backend. No business
// logic here: translate, hand off to worker threads, translate back.
#pragma once

#include <memory>

#include "hsmrewrap/v1/rewrap.grpc.pb.h"
#include "service/engine.h"
#include "service/metrics.h"
#include "service/policy.h"
#include "service/selftest.h"
#include "service/worker_pool.h"

namespace hsmrewrap::service {

class RewrapServiceImpl final : public v1::Rewrap::CallbackService {
 public:
  // `security` (may be null: everything allowed, no audit) authorizes each call.
  RewrapServiceImpl(RewrapEngine* engine, Metrics* metrics, Security* security = nullptr);
  grpc::ServerUnaryReactor* Rewrap(grpc::CallbackServerContext* ctx, const v1::RewrapRequest* req,
                                   v1::RewrapResponse* resp) override;
  grpc::ServerBidiReactor<v1::RewrapRequest, v1::RewrapResponse>* RewrapStream(
      grpc::CallbackServerContext* ctx) override;

 private:
  RewrapEngine* engine_;
  Metrics* metrics_;
  Security* security_;
};

class KeysServiceImpl final : public v1::Keys::CallbackService {
 public:
  KeysServiceImpl(RewrapEngine* engine, std::string token_label, Metrics* metrics,
                  SelfTester* selftest, Security* security = nullptr);
  grpc::ServerUnaryReactor* CreateKey(grpc::CallbackServerContext*, const v1::CreateKeyRequest*,
                                      v1::KeyInfo*) override;
  grpc::ServerUnaryReactor* ImportKey(grpc::CallbackServerContext*, const v1::ImportKeyRequest*,
                                      v1::KeyInfo*) override;
  grpc::ServerUnaryReactor* ListKeys(grpc::CallbackServerContext*, const v1::ListKeysRequest*,
                                     v1::ListKeysResponse*) override;
  grpc::ServerUnaryReactor* GetPublicKey(grpc::CallbackServerContext*,
                                         const v1::GetPublicKeyRequest*,
                                         v1::GetPublicKeyResponse*) override;
  grpc::ServerUnaryReactor* DisableKey(grpc::CallbackServerContext*, const v1::DisableKeyRequest*,
                                       v1::KeyInfo*) override;
  grpc::ServerUnaryReactor* EnableKey(grpc::CallbackServerContext*, const v1::EnableKeyRequest*,
                                      v1::KeyInfo*) override;
  grpc::ServerUnaryReactor* SelfTest(grpc::CallbackServerContext*, const v1::SelfTestRequest*,
                                     v1::SelfTestResponse*) override;

  // Fills the API form of a key (shared with the start-up banner).
  void ToProto(const hsm::KeyInfo& info, v1::KeyInfo* out);

 private:
  // Runs `fn` on the admin thread (key generation can take seconds) and finishes the call.
  // Authorizes the call (`rpc_class`; `key` when the RPC names one), then runs `fn` with the
  // caller's rights and audits the outcome.
  grpc::ServerUnaryReactor* OffThread(grpc::CallbackServerContext* ctx, const char* rpc,
                                      RpcClass rpc_class, const std::string& key,
                                      std::function<grpc::Status(const Security::Call&)> fn);
  grpc::Status SetEnabled(const std::string& name, bool enabled, v1::KeyInfo* out);

  RewrapEngine* engine_;
  std::string token_label_;
  Metrics* metrics_;
  SelfTester* selftest_;
  Security* security_;
  WorkerPool admin_{1};  // key administration is serialised
};

// Declares the metric families the adapters record.
void DeclareServiceMetrics(Metrics& metrics);

// absl::Status -> grpc::Status (the codes share numbers).
grpc::Status ToGrpc(const absl::Status& s);

}  // namespace hsmrewrap::service
