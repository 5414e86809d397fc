#include "service/stream_reactor.h"

#include "service/grpc_status.h"
#include "service/rewrap_service.h"

namespace hsmrewrap::service {

StreamReactor::StreamReactor(RewrapEngine* engine, Metrics* metrics, std::shared_ptr<ItemGate> gate,
                             std::chrono::system_clock::time_point deadline)
    : engine_(engine), metrics_(metrics), gate_(std::move(gate)), deadline_(deadline) {
  absl::MutexLock l(&mu_);
  ReadLocked();
}

void StreamReactor::OnReadDone(bool ok) {
  absl::MutexLock l(&mu_);
  // reading_ stays true until this read is fully handled: while mu_ is released around
  // Submit, a batch may complete and OnWriteDone run, and it must not start a second
  // read (gRPC allows one outstanding read: GRPC_CALL_ERROR_TOO_MANY_OPERATIONS).
  if (!ok) {  // the client half-closed, or the call broke
    reading_ = false;
    read_closed_ = true;
    MaybeFinishLocked();
    return;
  }
  auto slot = std::make_shared<Slot>();
  pending_.push_back(slot);
  auto req = std::make_shared<const v1::RewrapRequest>(std::move(request_));
  request_.Clear();
  mu_.Unlock();
  const auto start = std::chrono::steady_clock::now();
  absl::Status st = engine_->Submit(
      req,
      [this, slot, req, start](v1::RewrapResponse resp) {
        // A stream's latency is per batch (the metrics interceptor times unary calls only).
        RecordBatch(metrics_, "RewrapStream", *req, resp);
        metrics_->Observe("hsmrewrap_rpc_latency_seconds", {{"rpc", "RewrapStream"}},
                          SecondsSince(start));
        BatchDone(slot, std::move(resp));
      },
      gate_, deadline_);
  mu_.Lock();
  if (!st.ok()) {
    if (st.code() != absl::StatusCode::kResourceExhausted) {
      pending_.pop_back();
      final_status_ = ToGrpc(st);
      reading_ = false;
      read_closed_ = true;  // read no more
      MaybeFinishLocked();
      return;
    }
    RefuseBatchLocked(*req, st, slot.get());
  }
  reading_ = false;
  if (pending_.size() < kMaxPending) ReadLocked();
}

void StreamReactor::RefuseBatchLocked(const v1::RewrapRequest& req, const absl::Status& st,
                                      Slot* slot) {
  for (const auto& item : req.items()) {
    auto* r = slot->response.add_results();
    r->set_id(item.id());
    r->mutable_error()->set_code(v1::ItemError::RESOURCE_EXHAUSTED);
    r->mutable_error()->set_message(std::string(st.message()));
  }
  slot->ready = true;
  MaybeWriteLocked();
}

void StreamReactor::BatchDone(const std::shared_ptr<Slot>& slot, v1::RewrapResponse resp) {
  absl::MutexLock l(&mu_);
  slot->response = std::move(resp);
  slot->ready = true;
  MaybeWriteLocked();
  MaybeFinishLocked();
}

void StreamReactor::OnWriteDone(bool ok) {
  absl::MutexLock l(&mu_);
  writing_ = false;
  pending_.pop_front();
  if (!ok) {
    // The client went away: the outstanding batches still complete (their callbacks
    // reference this reactor), then the call ends.
    broken_ = true;
    read_closed_ = true;
    final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "the stream broke while writing");
  }
  MaybeWriteLocked();
  if (!read_closed_ && !reading_ && pending_.size() < kMaxPending) ReadLocked();
  MaybeFinishLocked();
}

void StreamReactor::ReadLocked() {
  reading_ = true;
  StartRead(&request_);
}

void StreamReactor::MaybeWriteLocked() {
  if (writing_ || pending_.empty() || !pending_.front()->ready) return;
  if (broken_) {  // nobody to write to: drop answered batches in order
    while (!pending_.empty() && pending_.front()->ready) pending_.pop_front();
    return;
  }
  writing_ = true;
  StartWrite(&pending_.front()->response);
}

void StreamReactor::MaybeFinishLocked() {
  if (finished_ || !read_closed_ || reading_ || writing_ || !pending_.empty()) return;
  finished_ = true;
  Finish(final_status_);
}

}  // namespace hsmrewrap::service
