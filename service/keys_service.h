// The Keys service (gRPC callback API) over KeyAdmin (service/key_admin.h): takes secrets
// out of the request, checks the key the call names against the caller's rights, runs the
// work off the gRPC thread, translates the answer and audits the outcome. Every key RPC fails
// closed with the audit log (Security::BeginKeyCall): UNAVAILABLE, with nothing done, while
// the log cannot be written (a change also needs the record of its attempt written first),
// and an answer whose record cannot be written is withheld. The RPC itself is authorized,
// and timed, by the interceptors (service/interceptors.h).
#pragma once

#include <functional>
#include <string>

#include "hsmrewrap/v1/rewrap.grpc.pb.h"
#include "service/interceptors.h"
#include "service/key_admin.h"
#include "service/worker_pool.h"

namespace hsmrewrap::service {

class KeysServiceImpl final : public v1::Keys::CallbackService {
 public:
  // `calls` holds each call's authorization (AuthorizationInterceptorFactory's).
  // `max_queued` bounds each queue (writes, reads): calls waiting for a thread, not counting
  // those running (limits.max_queued_key_calls).
  KeysServiceImpl(KeyAdmin* admin, std::string token_label, AuthorizedCalls* calls,
                  size_t max_queued);
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

 private:
  // kWrite: CreateKey, ImportKey, EnableKey, DisableKey (on writes_); kRead: the others.
  enum class Kind { kRead, kWrite };
  // Takes the call's authorization and checks `key` (when the RPC names one) against it,
  // then on writes_ or reads_ (per `kind`): Security::BeginKeyCall, `fn` with the caller's
  // rights, the record of the outcome; finishes the call. A full queue is RESOURCE_EXHAUSTED
  // at once; a call whose deadline passed while it waited is DEADLINE_EXCEEDED without
  // running `fn`.
  grpc::ServerUnaryReactor* OffThread(grpc::CallbackServerContext* ctx, const char* rpc,
                                      const std::string& key, Kind kind,
                                      std::function<absl::Status(const Security::Call&)> fn);
  // SetEnabled's answer into `out`.
  absl::Status SetEnabled(const std::string& name, bool enabled, v1::KeyInfo* out);

  KeyAdmin* admin_;
  std::string token_label_;
  AuthorizedCalls* calls_;
  size_t max_queued_;
  // Writes (CreateKey, ImportKey, EnableKey, DisableKey) run one at a time; reads (ListKeys,
  // GetPublicKey, SelfTest) on threads of their own, so that a key generation, which can take
  // many seconds, does not hold them up.
  WorkerPool writes_{1};
  WorkerPool reads_{2};
};

// The API form of a key (also the start-up banner's source).
void KeyToProto(const KeyDescription& key, const std::string& token_label, v1::KeyInfo* out);

}  // namespace hsmrewrap::service
