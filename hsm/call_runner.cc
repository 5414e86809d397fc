#include "hsm/call_runner.h"

#include <algorithm>
#include <deque>
#include <map>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace hsmrewrap::hsm {

struct CallRunner::State {
  explicit State(Options o) : options(o) {}
  const Options options;
  mutable absl::Mutex mu;
  std::deque<std::shared_ptr<Call>> queue ABSL_GUARDED_BY(mu);      // not started yet
  std::vector<std::shared_ptr<Call>> inflight ABSL_GUARDED_BY(mu);  // queued or running, not done
  size_t threads ABSL_GUARDED_BY(mu) = 0;
  size_t idle ABSL_GUARDED_BY(mu) = 0;
  size_t stuck ABSL_GUARDED_BY(mu) = 0;
  uint64_t abandoned_total ABSL_GUARDED_BY(mu) = 0;
  bool stop ABSL_GUARDED_BY(mu) = false;
  // Tags given up on by Abandon(): later calls with them fail at once with the status.
  std::map<uint64_t, absl::Status> retired ABSL_GUARDED_BY(mu);

  void Forget(Call* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it =
        std::find_if(inflight.begin(), inflight.end(), [c](const auto& p) { return p.get() == c; });
    if (it != inflight.end()) {
      std::swap(*it, inflight.back());
      inflight.pop_back();
    }
  }
  // Gives up on `c` (not done): its caller is answered with `why`.
  void AbandonLocked(Call* c, const absl::Status& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    c->abandoned = true;
    c->abandon_status = why;
    ++abandoned_total;
    if (c->started) {
      ++stuck;  // its thread stays inside the module until the module returns
    } else {
      queue.erase(
          std::remove_if(queue.begin(), queue.end(), [c](const auto& p) { return p.get() == c; }),
          queue.end());
      Forget(c);
    }
  }
};

CallRunner::CallRunner(Options options) : state_(std::make_shared<State>(options)) {}

CallRunner::~CallRunner() {
  State& st = *state_;
  absl::MutexLock l(&st.mu);
  st.stop = true;
  // Idle threads leave at once, running calls finish; stuck ones are not waited for.
  auto only_stuck = [&st]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(st.mu) { return st.threads <= st.stuck; };
  if (!st.mu.AwaitWithTimeout(absl::Condition(&only_stuck), absl::Seconds(5))) {
    spdlog::warn("token call runner: {} threads still running at shutdown", st.threads - st.stuck);
  }
}

absl::Status CallRunner::Submit(std::shared_ptr<Call> call, absl::Time deadline) {
  State& st = *state_;
  Call* c = call.get();
  absl::MutexLock l(&st.mu);
  if (st.stop) return absl::UnavailableError("the token call runner is stopping");
  if (auto it = st.retired.find(c->tag); it != st.retired.end()) return it->second;
  if (st.stuck >= st.options.max_stuck) {
    return absl::UnavailableError(
        absl::StrCat(st.stuck,
                     " token calls are stuck inside the PKCS#11 module; no more are "
                     "started until some return"));
  }
  if (st.inflight.size() - st.stuck >= st.options.max_threads) {
    return absl::ResourceExhaustedError(
        absl::StrCat("already ", st.options.max_threads, " token calls in flight: retry later"));
  }
  st.queue.push_back(call);
  st.inflight.push_back(std::move(call));
  if (st.queue.size() > st.idle) {
    ++st.threads;
    ++st.idle;  // see ThreadMain()
    std::thread(&CallRunner::ThreadMain, state_).detach();
  }
  auto finished = [c]() { return c->done || c->abandoned; };
  // Conditions are evaluated under st.mu, which guards done/abandoned.
  if (!st.mu.AwaitWithDeadline(absl::Condition(&finished), deadline)) {
    st.AbandonLocked(c, absl::DeadlineExceededError("the token did not answer in time"));
  }
  if (c->done && !c->abandoned) return absl::OkStatus();
  return c->abandon_status;
}

void CallRunner::ThreadMain(std::shared_ptr<State> state) {
  State& st = *state;
  st.mu.Lock();
  // Counted idle whenever it is not running a call, from the moment Submit() starts it: a
  // thread that has not run yet takes a queued call too, and leaving it out made Submit()
  // start more threads than there were calls in flight.
  while (true) {
    auto work = [&st]()
                    ABSL_EXCLUSIVE_LOCKS_REQUIRED(st.mu) { return !st.queue.empty() || st.stop; };
    const bool woken = st.mu.AwaitWithTimeout(absl::Condition(&work), st.options.idle_exit);
    --st.idle;
    if (st.queue.empty()) {
      if (st.stop || !woken) break;
      ++st.idle;
      continue;
    }
    std::shared_ptr<Call> call = std::move(st.queue.front());
    st.queue.pop_front();
    call->started = true;
    call->start = absl::Now();
    st.mu.Unlock();
    call->Execute();
    st.mu.Lock();
    call->done = true;
    st.Forget(call.get());
    if (call->abandoned) {
      --st.stuck;
      if (!st.stop) {
        spdlog::warn(
            "a token call abandoned as stuck returned after {:.1f} s; its thread is free again",
            absl::ToDoubleSeconds(absl::Now() - call->start));
      }
    }
    if (st.stop) break;
    ++st.idle;
  }
  --st.threads;
  st.mu.Unlock();
}

size_t CallRunner::Abandon(uint64_t tag, const absl::Status& why) {
  State& st = *state_;
  absl::MutexLock l(&st.mu);
  st.retired.emplace(tag, why);
  std::vector<Call*> victims;
  for (const auto& c : st.inflight) {
    if (c->tag == tag && !c->done && !c->abandoned) victims.push_back(c.get());
  }
  for (Call* c : victims) st.AbandonLocked(c, why);
  return victims.size();
}

absl::Duration CallRunner::OldestRunning(uint64_t tag) const {
  const State& st = *state_;
  absl::MutexLock l(&st.mu);
  absl::Duration oldest = absl::ZeroDuration();
  const absl::Time now = absl::Now();
  for (const auto& c : st.inflight) {
    if (c->tag == tag && c->started && !c->abandoned) oldest = std::max(oldest, now - c->start);
  }
  return oldest;
}

absl::Duration CallRunner::Overdue(uint64_t tag) const {
  const State& st = *state_;
  absl::MutexLock l(&st.mu);
  absl::Duration worst = absl::ZeroDuration(), age_of_worst = absl::ZeroDuration();
  const absl::Time now = absl::Now();
  for (const auto& c : st.inflight) {
    if (c->tag != tag || !c->started || c->abandoned) continue;
    const absl::Duration age = now - c->start;
    if (age > c->limit && age - c->limit > worst) {
      worst = age - c->limit;
      age_of_worst = age;
    }
  }
  return age_of_worst;
}

absl::Duration CallRunner::LongestLimit(uint64_t tag) const {
  const State& st = *state_;
  absl::MutexLock l(&st.mu);
  absl::Duration longest = absl::ZeroDuration();
  for (const auto& c : st.inflight) {
    if (c->tag == tag && c->started && !c->abandoned) longest = std::max(longest, c->limit);
  }
  return longest;
}

size_t CallRunner::stuck() const {
  absl::MutexLock l(&state_->mu);
  return state_->stuck;
}

uint64_t CallRunner::abandoned_total() const {
  absl::MutexLock l(&state_->mu);
  return state_->abandoned_total;
}

size_t CallRunner::threads() const {
  absl::MutexLock l(&state_->mu);
  return state_->threads;
}

}  // namespace hsmrewrap::hsm
