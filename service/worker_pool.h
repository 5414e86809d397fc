// A fixed set of threads that run HSM work, so that no gRPC thread ever blocks on the
// token. Tasks are queued FIFO; the queue is bounded by the engine's in-flight limit.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace hsmrewrap::service {

class WorkerPool final {
 public:
  explicit WorkerPool(unsigned threads);
  ~WorkerPool();                           // runs what is queued, then joins
  WorkerPool(const WorkerPool&) = delete;  // owns threads
  WorkerPool& operator=(const WorkerPool&) = delete;

  void Post(std::function<void()> task);
  size_t queued() const;

 private:
  void Run();
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  std::vector<std::thread> threads_;
};

}  // namespace hsmrewrap::service
