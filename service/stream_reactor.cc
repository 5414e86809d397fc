#include "service/stream_reactor.h"

#include "absl/strings/str_cat.h"
#include "service/grpc_status.h"
#include "service/rewrap_service.h"

namespace hsmrewrap::service {

absl::StatusOr<StreamCounter::Ticket> StreamCounter::Open(const std::string& who) {
  absl::MutexLock l(&mu_);
  if (total_ >= max_total_) {
    return absl::ResourceExhaustedError(absl::StrCat("rewrapd has ", total_,
                                                     " streams open and takes at most ", max_total_,
                                                     " (max_streams): retry later or use Rewrap"));
  }
  uint32_t& mine = per_identity_[who];
  if (mine >= max_per_identity_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("'", who, "' has ", mine, " streams open and may have at most ",
                     max_per_identity_, " (max_streams_per_identity): close one first"));
  }
  ++mine;
  ++total_;
  return Ticket(this, who);
}

void StreamCounter::Close(const std::string& who) {
  absl::MutexLock l(&mu_);
  --total_;
  auto it = per_identity_.find(who);
  if (it != per_identity_.end() && --it->second == 0) per_identity_.erase(it);
}

size_t StreamCounter::open() const {
  absl::MutexLock l(&mu_);
  return total_;
}

StreamReactor::StreamReactor(RewrapEngine* engine, Metrics* metrics, Security* security,
                             Security::Call call, StreamCounter::Ticket ticket,
                             const Limits& limits, std::chrono::system_clock::time_point deadline)
    : engine_(engine),
      metrics_(metrics),
      security_(security),
      call_(std::move(call)),
      ticket_(std::move(ticket)),
      max_buffer_bytes_(limits.max_stream_buffer_bytes),
      deadline_(deadline) {
  absl::MutexLock l(&mu_);
  MaybeReadLocked();
  lifetime_.Set(
      std::chrono::system_clock::now() + std::chrono::seconds(limits.max_stream_lifetime_s),
      [this](bool fired) { OnLifetimeOver(fired); });
}

void StreamReactor::OnDone() {
  ticket_.reset();
  lifetime_.Cancel();  // its callback still runs (fired = false) and releases its hold
  Release();
}

void StreamReactor::Release() {
  if (holds_.fetch_sub(1) == 1) delete this;
}

void StreamReactor::OnLifetimeOver(bool fired) {
  if (fired) {
    absl::MutexLock l(&mu_);
    if (!finished_) {
      expired_ = true;
      CloseReadLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                   "the stream reached its maximum lifetime "
                                   "(max_stream_lifetime_s): open a new one"));
    }
  }
  Release();
}

void StreamReactor::OnReadDone(bool ok) {
  absl::MutexLock l(&mu_);
  // reading_ stays true until this read is fully handled: while mu_ is released around
  // Submit, a batch may complete and OnWriteDone run, and it must not start a second
  // read (gRPC allows one outstanding read: GRPC_CALL_ERROR_TOO_MANY_OPERATIONS).
  if (!ok || read_closed_) {  // the client half-closed, the call broke, or we read no more
    reading_ = false;
    read_closed_ = true;
    MaybeFinishLocked();
    return;
  }
  std::shared_ptr<ItemGate> gate;
  if (security_ != nullptr) {
    // The policy in force now decides (a reload may have removed the right).
    auto call = security_->Reauthorize(call_, RpcClass::kRewrap);
    if (!call.ok()) {
      reading_ = false;
      CloseReadLocked(ToGrpc(call.status()));
      return;
    }
    gate = security_->GateFor(*std::move(call));
  }
  auto slot = std::make_shared<Slot>();
  slot->bytes = request_.ByteSizeLong();
  buffered_bytes_ += slot->bytes;
  pending_.push_back(slot);
  auto req = std::make_shared<const v1::RewrapRequest>(std::move(request_));
  request_.Clear();
  mu_.Unlock();
  const auto start = std::chrono::steady_clock::now();
  std::shared_ptr<std::atomic<bool>> cancelled = cancelled_;
  absl::Status st = engine_->Submit(
      req,
      [this, slot, req, start](v1::RewrapResponse resp) {
        // A stream's latency is per batch (the metrics interceptor times unary calls only).
        RecordBatch(metrics_, *engine_, "RewrapStream", *req, resp);
        metrics_->Observe("hsmrewrap_rpc_latency_seconds", {{"rpc", "RewrapStream"}},
                          SecondsSince(start));
        BatchDone(slot, std::move(resp));
      },
      std::move(gate), CallContext{deadline_, [cancelled] { return cancelled->load(); }});
  mu_.Lock();
  if (!st.ok()) {
    if (st.code() != absl::StatusCode::kResourceExhausted) {
      buffered_bytes_ -= slot->bytes;
      pending_.pop_back();
      reading_ = false;
      CloseReadLocked(ToGrpc(st));
      return;
    }
    RefuseBatchLocked(*req, st, slot.get());
  }
  reading_ = false;
  MaybeReadLocked();
}

void StreamReactor::RefuseBatchLocked(const v1::RewrapRequest& req, const absl::Status& st,
                                      Slot* slot) {
  for (const auto& item : req.items()) {
    auto* r = slot->response.add_results();
    r->set_id(item.id());
    r->mutable_error()->set_code(v1::ItemError::RESOURCE_EXHAUSTED);
    r->mutable_error()->set_message(std::string(st.message()));
  }
  buffered_bytes_ = buffered_bytes_ - slot->bytes + slot->response.ByteSizeLong();
  slot->bytes = slot->response.ByteSizeLong();
  slot->ready = true;
  MaybeWriteLocked();
}

void StreamReactor::BatchDone(const std::shared_ptr<Slot>& slot, v1::RewrapResponse resp) {
  absl::MutexLock l(&mu_);
  slot->response = std::move(resp);
  buffered_bytes_ = buffered_bytes_ - slot->bytes + slot->response.ByteSizeLong();
  slot->bytes = slot->response.ByteSizeLong();
  slot->ready = true;
  MaybeWriteLocked();
  MaybeFinishLocked();
}

void StreamReactor::OnWriteDone(bool ok) {
  absl::MutexLock l(&mu_);
  writing_ = false;
  buffered_bytes_ -= pending_.front()->bytes;
  pending_.pop_front();
  if (!ok) {
    // The client went away: the outstanding batches still complete (their callbacks
    // reference this reactor), then the call ends.
    broken_ = true;
    read_closed_ = true;
    final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "the stream broke while writing");
  }
  MaybeWriteLocked();
  MaybeReadLocked();
  MaybeFinishLocked();
}

void StreamReactor::CloseReadLocked(grpc::Status status) {
  if (!read_closed_) {
    read_closed_ = true;
    if (final_status_.ok()) final_status_ = std::move(status);
  }
  MaybeFinishLocked();
}

void StreamReactor::MaybeReadLocked() {
  // Unread answers (and batches still in the engine) hold memory: past the bounds, read no
  // further batch until the client has taken some.
  if (read_closed_ || reading_ || pending_.size() >= kMaxPending ||
      buffered_bytes_ >= max_buffer_bytes_) {
    return;
  }
  reading_ = true;
  StartRead(&request_);
}

void StreamReactor::MaybeWriteLocked() {
  if (writing_ || pending_.empty() || !pending_.front()->ready) return;
  if (broken_) {  // nobody to write to: drop answered batches in order
    while (!pending_.empty() && pending_.front()->ready) {
      buffered_bytes_ -= pending_.front()->bytes;
      pending_.pop_front();
    }
    return;
  }
  writing_ = true;
  StartWrite(&pending_.front()->response);
}

void StreamReactor::MaybeFinishLocked() {
  // A read still outstanding is not waited for once the stream is past its lifetime or was
  // refused: the client may never send again, and Finish completes that read (ok = false).
  if (finished_ || !read_closed_ || writing_ || !pending_.empty()) return;
  if (reading_ && !expired_ && final_status_.ok()) return;
  finished_ = true;
  Finish(final_status_);
}

}  // namespace hsmrewrap::service
