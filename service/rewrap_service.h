// The Rewrap service (gRPC callback API) over RewrapEngine: translates, hands batches to
// the engine's workers, translates back. No business logic here; authorization and the
// latency of Rewrap calls are the interceptors' (service/interceptors.h).
#pragma once

#include <chrono>

#include "hsmrewrap/v1/rewrap.grpc.pb.h"
#include "service/engine.h"
#include "service/interceptors.h"
#include "service/metrics.h"
#include "service/stream_reactor.h"

namespace hsmrewrap::service {

class RewrapServiceImpl final : public v1::Rewrap::CallbackService {
 public:
  // `calls` holds each call's authorization (AuthorizationInterceptorFactory's).
  // `limits` bound the streams (max_streams, max_streams_per_identity, ...).
  RewrapServiceImpl(RewrapEngine* engine, Metrics* metrics, AuthorizedCalls* calls,
                    const Limits& limits);
  size_t open_streams() const { return streams_.open(); }
  grpc::ServerUnaryReactor* Rewrap(grpc::CallbackServerContext* ctx, const v1::RewrapRequest* req,
                                   v1::RewrapResponse* resp) override;
  grpc::ServerBidiReactor<v1::RewrapRequest, v1::RewrapResponse>* RewrapStream(
      grpc::CallbackServerContext* ctx) override;

 private:
  RewrapEngine* engine_;
  Metrics* metrics_;
  AuthorizedCalls* calls_;
  const Limits limits_;
  StreamCounter streams_;
};

// Declares the metric families the services record.
void DeclareServiceMetrics(Metrics& metrics);

// Per batch: its size and one count per item by key, outcome and path.
void RecordBatch(Metrics* metrics, const RewrapEngine& engine, const char* rpc,
                 const v1::RewrapRequest& req, const v1::RewrapResponse& resp);

inline double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace hsmrewrap::service
