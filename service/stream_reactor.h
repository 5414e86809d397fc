// The reactor of one Rewrap.RewrapStream call, and the count of open streams.
//
// Bidirectional stream: each request is one batch and gets exactly one response, in
// request order. Up to kMaxPending batches of one stream are in the engine or waiting to be
// written at once (so one stream keeps several workers busy), and at most
// `max_stream_buffer_bytes` of answers (batches in the engine count with their request's
// size); beyond either the stream stops reading, which is gRPC flow control pushing back on
// the client: a caller that never reads its answers holds a bounded amount of memory.
//
// Every batch is authorized again against the policy in force (a right a SIGHUP reload
// removed ends the stream with PERMISSION_DENIED once the batches before are answered). A
// batch refused for the service's in-flight limit is answered with RESOURCE_EXHAUSTED per
// item (retryable) and the stream goes on; a malformed batch (empty, too large) ends the
// stream with that status once the batches before it are answered. A stream open longer
// than `max_stream_lifetime_s` reads no more and ends UNAVAILABLE once its batches are
// answered (a batch that arrives after that is not answered: retry it on a new stream). A
// cancelled stream's unstarted items never reach the token.
#pragma once

#include <grpcpp/alarm.h>
#include <grpcpp/support/server_callback.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "hsmrewrap/v1/rewrap.pb.h"
#include "service/config.h"
#include "service/engine.h"
#include "service/metrics.h"
#include "service/policy.h"

namespace hsmrewrap::service {

// Open RewrapStream calls, in all and per caller identity (the policy's client name, else the
// certificate's name, else "anonymous"). Thread-safe.
class StreamCounter final {
 public:
  StreamCounter(uint32_t max_total, uint32_t max_per_identity)
      : max_total_(max_total), max_per_identity_(max_per_identity) {}

  // One open stream; closes it when destroyed.
  class Ticket final {
   public:
    Ticket(StreamCounter* counter, std::string who) : counter_(counter), who_(std::move(who)) {}
    Ticket(Ticket&& o) noexcept : counter_(o.counter_), who_(std::move(o.who_)) {
      o.counter_ = nullptr;
    }
    Ticket& operator=(Ticket&&) = delete;
    Ticket(const Ticket&) = delete;  // one count, released once
    ~Ticket() {
      if (counter_) counter_->Close(who_);
    }

   private:
    StreamCounter* counter_;
    std::string who_;
  };

  // RESOURCE_EXHAUSTED (saying which limit) when `who` or the service has as many open
  // streams as allowed.
  absl::StatusOr<Ticket> Open(const std::string& who);
  size_t open() const;

 private:
  void Close(const std::string& who);

  const uint32_t max_total_, max_per_identity_;
  mutable absl::Mutex mu_;
  size_t total_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, uint32_t> per_identity_ ABSL_GUARDED_BY(mu_);
};

class StreamReactor final : public grpc::ServerBidiReactor<v1::RewrapRequest, v1::RewrapResponse> {
 public:
  static constexpr size_t kMaxPending = 8;

  // `security` may be null (no policy checks); `call` is the stream's authorization;
  // `deadline` is the stream's (max if none).
  StreamReactor(RewrapEngine* engine, Metrics* metrics, Security* security, Security::Call call,
                StreamCounter::Ticket ticket, const Limits& limits,
                std::chrono::system_clock::time_point deadline);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override { cancelled_->store(true); }
  void OnDone() override;

 private:
  struct Slot {
    bool ready = false;
    size_t bytes = 0;  // what it holds: its request's size until answered, then the answer's
    v1::RewrapResponse response;
  };

  // Answers a batch the engine refused for its in-flight limit: RESOURCE_EXHAUSTED per item.
  void RefuseBatchLocked(const v1::RewrapRequest& req, const absl::Status& st, Slot* slot)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void BatchDone(const std::shared_ptr<Slot>& slot, v1::RewrapResponse resp)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Ends reading: the stream finishes with `status` once the batches before are answered.
  void CloseReadLocked(grpc::Status status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnLifetimeOver(bool fired) ABSL_LOCKS_EXCLUDED(mu_);
  // The reactor is deleted when both OnDone and the lifetime alarm's callback have run.
  void Release();

  RewrapEngine* const engine_;
  Metrics* const metrics_;
  Security* const security_;  // may be null
  const Security::Call call_;
  // Released in OnDone: the alarm's callback may delete the reactor later, when the service
  // that owns the counter may be gone (shutdown).
  std::optional<StreamCounter::Ticket> ticket_;
  const size_t max_buffer_bytes_;
  const std::chrono::system_clock::time_point deadline_;  // the stream's (max if none)
  const std::shared_ptr<std::atomic<bool>> cancelled_ = std::make_shared<std::atomic<bool>>(false);
  grpc::Alarm lifetime_;
  std::atomic<int> holds_{2};  // OnDone + the lifetime alarm's callback

  absl::Mutex mu_;
  v1::RewrapRequest request_ ABSL_GUARDED_BY(mu_);
  std::deque<std::shared_ptr<Slot>> pending_ ABSL_GUARDED_BY(mu_);  // batches in request order
  size_t buffered_bytes_ ABSL_GUARDED_BY(mu_) = 0;                  // sum of pending_ bytes
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool read_closed_ ABSL_GUARDED_BY(mu_) = false;
  bool expired_ ABSL_GUARDED_BY(mu_) = false;  // past its lifetime: finish without the read
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_) = grpc::Status::OK;
};

}  // namespace hsmrewrap::service
