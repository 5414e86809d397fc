// Per-identity rate limits: an items-per-second token bucket and a budget of decryption
// failures per hour (a sliding hour). Limits come from the policy at each call, so a
// reloaded policy applies at once; the state (tokens, failure times) is kept per identity.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <string>
#include <unordered_map>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace hsmrewrap::service {

struct RateLimits {
  double items_per_second = 0;             // 0 = unlimited
  double burst = 0;                        // bucket size; 0 = max(1, items_per_second)
  uint32_t decrypt_failures_per_hour = 0;  // 0 = unlimited
  bool any() const { return items_per_second > 0 || decrypt_failures_per_hour > 0; }
};

class RateLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  // Takes one item from `identity`'s bucket, unless the bucket is empty or the identity has
  // used its decryption-failure budget: then RESOURCE_EXHAUSTED saying which. The refusal
  // is logged as a warning at most once per identity per 10 s.
  absl::Status Admit(const std::string& identity, const RateLimits& limits,
                     Clock::time_point now = Clock::now());
  // Counts one decryption failure of `identity`.
  void RecordDecryptFailure(const std::string& identity, const RateLimits& limits,
                            Clock::time_point now = Clock::now());

 private:
  struct State {
    double tokens = -1;  // < 0: not started (a full bucket)
    Clock::time_point refilled;
    std::deque<Clock::time_point> failures;  // within the last hour, oldest first
    Clock::time_point last_warning;
    bool warned = false;
  };
  void WarnLocked(State& s, const std::string& identity, const std::string& why,
                  Clock::time_point now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  std::unordered_map<std::string, State> state_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hsmrewrap::service
