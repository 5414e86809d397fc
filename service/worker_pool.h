// A fixed set of threads that run HSM work, so that no gRPC thread ever blocks on the
// token. Tasks are queued FIFO. The engine's queue is bounded by its in-flight limit (it
// uses Post); the Keys service's queues by TryPost.
#pragma once

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace hsmrewrap::service {

class WorkerPool final {
 public:
  explicit WorkerPool(unsigned threads);
  ~WorkerPool();                           // runs what is queued, then joins
  WorkerPool(const WorkerPool&) = delete;  // owns threads
  WorkerPool& operator=(const WorkerPool&) = delete;

  void Post(std::function<void()> task);
  // Queues `task` unless `max_queued` tasks are already waiting (not counting those
  // running); returns whether it was queued.
  bool TryPost(std::function<void()> task, size_t max_queued);
  size_t queued() const;

 private:
  void Run();
  bool HasWorkOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || !tasks_.empty();
  }
  mutable absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace hsmrewrap::service
