// Runs token calls on threads of its own, so that no caller ever waits on a call that
// never returns. A PKCS#11 module can block a thread forever: a p11-kit client
// waiting for an answer from a dead server, a vendor library stuck on a device. The caller
// (an engine worker, a gRPC thread, the supervisor) hands the call to a runner thread and
// waits for either its result or the call being abandoned; abandoning answers the caller at
// once and leaves the runner thread inside the module ("stuck") until the module returns,
// when the thread rejoins the pool. New calls get new threads, so capacity comes back as
// soon as the token does, without waiting for stuck threads.
//
// Threads are created on demand (one per concurrent call, kept idle for reuse up to
// `idle_exit`), at most `max_threads` running calls and `max_stuck` stuck ones; past those
// a call fails ResourceExhausted without running.
//
// Thread safety: every method may be called from any thread. The runner's state outlives
// it (shared with its threads): destroying it does not wait for stuck threads.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace hsmrewrap::hsm {

class CallRunner final {
 public:
  struct Options {
    size_t max_threads = 256;  // calls running at once (idle threads not counted)
    size_t max_stuck = 64;     // abandoned calls still inside a module
    absl::Duration idle_exit = absl::Seconds(30);
  };

  // One call in flight, as the runner tracks it (type-erased; see Run()).
  struct Call {
    virtual ~Call() = default;
    virtual void Execute() = 0;
    // Guarded by CallRunner's state mutex.
    bool started = false, done = false, abandoned = false;
    absl::Status abandon_status;
    absl::Time start;
    uint64_t tag = 0;  // the caller's grouping (the supervisor: which backend generation)
    absl::Duration limit = absl::InfiniteDuration();  // running longer than this is overdue
  };

  CallRunner() : CallRunner(Options{}) {}
  explicit CallRunner(Options options);
  ~CallRunner();  // no new calls; idle threads exit; stuck ones exit when they return
  CallRunner(const CallRunner&) = delete;
  CallRunner& operator=(const CallRunner&) = delete;

  // Runs `fn` on a runner thread and returns its result, or `abandon_status` of the
  // Abandon() that gave up on it, or DeadlineExceeded if it has not returned by `deadline`
  // (the call is then abandoned). A call abandoned before it started never runs. `limit`:
  // how long the call may run before Overdue() reports it (the caller keeps waiting).
  template <typename T>
  T Run(std::function<T()> fn, uint64_t tag, std::function<T(absl::Status)> on_abandon,
        absl::Time deadline = absl::InfiniteFuture(),
        absl::Duration limit = absl::InfiniteDuration()) {
    auto call = std::make_shared<TypedCall<T>>(std::move(fn));
    call->tag = tag;
    call->limit = limit;
    absl::Status gave_up = Submit(call, deadline);
    if (!gave_up.ok()) return on_abandon(std::move(gave_up));
    return *std::move(call->result);
  }

  // Gives up on every call with `tag` that has not returned: each caller returns `why` at
  // once, and so does every later call with `tag`. Returns how many were abandoned.
  size_t Abandon(uint64_t tag, const absl::Status& why);
  // The longest any call with `tag` has been running (0 if none).
  absl::Duration OldestRunning(uint64_t tag) const;
  // The age of the call with `tag` that has run longest past its limit (0 if none is past it).
  absl::Duration Overdue(uint64_t tag) const;
  // The largest limit of the calls with `tag` now running (0 if none).
  absl::Duration LongestLimit(uint64_t tag) const;

  // Abandoned calls whose thread is still inside the module.
  size_t stuck() const;
  // Every call ever abandoned.
  uint64_t abandoned_total() const;
  // Runner threads alive (idle, running or stuck).
  size_t threads() const;

 private:
  template <typename T>
  struct TypedCall final : Call {
    explicit TypedCall(std::function<T()> f) : fn(std::move(f)) {}
    void Execute() override {
      result.emplace(fn());
      fn = nullptr;  // drop what the call captured on this thread, not the caller's
    }
    std::function<T()> fn;
    std::optional<T> result;
  };
  struct State;

  // Queues `call`, waits; OK when it completed, else why it was given up.
  absl::Status Submit(std::shared_ptr<Call> call, absl::Time deadline);
  static void ThreadMain(std::shared_ptr<State> state);

  std::shared_ptr<State> state_;
};

}  // namespace hsmrewrap::hsm
