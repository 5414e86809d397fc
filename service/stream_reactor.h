// The reactor of one Rewrap.RewrapStream call.
//
// Bidirectional stream: each request is one batch and gets exactly one response, in
// request order. Up to kMaxPending batches of one stream are in the engine at once (so one
// stream keeps several workers busy); beyond that the stream stops reading, which is
// gRPC flow control pushing back on the client. A batch refused for the service's
// in-flight limit is answered with RESOURCE_EXHAUSTED per item (retryable) and the stream
// goes on; a malformed batch (empty, too large) ends the stream with that status once
// the batches before it are answered.
#pragma once

#include <grpcpp/support/server_callback.h>

#include <chrono>
#include <deque>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "hsmrewrap/v1/rewrap.pb.h"
#include "service/engine.h"
#include "service/metrics.h"

namespace hsmrewrap::service {

class StreamReactor final : public grpc::ServerBidiReactor<v1::RewrapRequest, v1::RewrapResponse> {
 public:
  static constexpr size_t kMaxPending = 8;

  // `gate` may be null (no policy checks); `deadline` is the stream's (max if none).
  StreamReactor(RewrapEngine* engine, Metrics* metrics, std::shared_ptr<ItemGate> gate,
                std::chrono::system_clock::time_point deadline);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnDone() override { delete this; }

 private:
  struct Slot {
    bool ready = false;
    v1::RewrapResponse response;
  };

  // Answers a batch the engine refused for its in-flight limit: RESOURCE_EXHAUSTED per item.
  void RefuseBatchLocked(const v1::RewrapRequest& req, const absl::Status& st, Slot* slot)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void BatchDone(const std::shared_ptr<Slot>& slot, v1::RewrapResponse resp)
      ABSL_LOCKS_EXCLUDED(mu_);
  void ReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  RewrapEngine* const engine_;
  Metrics* const metrics_;
  const std::shared_ptr<ItemGate> gate_;                  // may be null
  const std::chrono::system_clock::time_point deadline_;  // the stream's (max if none)
  absl::Mutex mu_;
  v1::RewrapRequest request_ ABSL_GUARDED_BY(mu_);
  std::deque<std::shared_ptr<Slot>> pending_ ABSL_GUARDED_BY(mu_);  // batches in request order
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool read_closed_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_) = grpc::Status::OK;
};

}  // namespace hsmrewrap::service
