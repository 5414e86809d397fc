#include "service/rewrap_service.h"

#include "service/grpc_status.h"
#include "service/stream_reactor.h"

namespace hsmrewrap::service {
namespace {

// A stream the caller may not open: ends at once with the status.
class RefusedStream final : public grpc::ServerBidiReactor<v1::RewrapRequest, v1::RewrapResponse> {
 public:
  explicit RefusedStream(grpc::Status st) { Finish(std::move(st)); }
  void OnDone() override { delete this; }
};

}  // namespace

void DeclareServiceMetrics(Metrics& m) {
  m.DeclareCounter("hsmrewrap_items_total", "Rewrap items by service key, outcome and path");
  m.DeclareHistogram("hsmrewrap_batch_items", "Items per Rewrap batch",
                     {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000});
  m.DeclareHistogram("hsmrewrap_rpc_latency_seconds",
                     "Latency per RPC (per batch for Rewrap/RewrapStream)", LatencyBuckets());
}

// The key label is a key's name only for keys that exist (RewrapEngine::KeyLabel), so
// callers cannot grow the label set; other names count under "other".
void RecordBatch(Metrics* metrics, const RewrapEngine& engine, const char* rpc,
                 const v1::RewrapRequest& req, const v1::RewrapResponse& resp) {
  metrics->Observe("hsmrewrap_batch_items", {{"rpc", rpc}}, req.items_size());
  for (int i = 0; i < resp.results_size() && i < req.items_size(); ++i) {
    const auto& r = resp.results(i);
    metrics->Add("hsmrewrap_items_total",
                 {{"key", engine.KeyLabel(req.items(i).key_name())},
                  {"outcome", r.has_error() ? v1::ItemError::Code_Name(r.error().code()) : "OK"},
                  {"path", v1::Path_Name(r.path())}});
  }
}

RewrapServiceImpl::RewrapServiceImpl(RewrapEngine* engine, Metrics* metrics, AuthorizedCalls* calls,
                                     const Limits& limits)
    : engine_(engine),
      metrics_(metrics),
      calls_(calls),
      limits_(limits),
      streams_(limits.max_streams, limits.max_streams_per_identity) {}

grpc::ServerUnaryReactor* RewrapServiceImpl::Rewrap(grpc::CallbackServerContext* ctx,
                                                    const v1::RewrapRequest* req,
                                                    v1::RewrapResponse* resp) {
  auto* reactor = ctx->DefaultReactor();
  auto call = calls_->Take(ctx, "Rewrap");
  if (!call.ok()) {
    reactor->Finish(ToGrpc(call.status()));
    return reactor;
  }
  std::shared_ptr<ItemGate> gate;
  if (Security* security = calls_->security()) gate = security->GateFor(*std::move(call));
  // The request outlives the batch: gRPC keeps it until Finish.
  std::shared_ptr<const v1::RewrapRequest> alias(std::shared_ptr<void>(), req);
  absl::Status st = engine_->Submit(
      alias,
      [this, reactor, req, resp](v1::RewrapResponse r) {
        RecordBatch(metrics_, *engine_, "Rewrap", *req, r);
        *resp = std::move(r);
        reactor->Finish(grpc::Status::OK);
      },
      std::move(gate), CallContext{ctx->deadline(), [ctx] { return ctx->IsCancelled(); }});
  if (!st.ok()) reactor->Finish(ToGrpc(st));
  return reactor;
}

grpc::ServerBidiReactor<v1::RewrapRequest, v1::RewrapResponse>* RewrapServiceImpl::RewrapStream(
    grpc::CallbackServerContext* ctx) {
  auto call = calls_->Take(ctx, "RewrapStream");
  if (!call.ok()) return new RefusedStream(ToGrpc(call.status()));
  auto ticket = streams_.Open(call->who.empty() ? "anonymous" : call->who);
  if (!ticket.ok()) return new RefusedStream(ToGrpc(ticket.status()));
  return new StreamReactor(engine_, metrics_, calls_->security(), *std::move(call),
                           *std::move(ticket), limits_, ctx->deadline());
}

}  // namespace hsmrewrap::service
