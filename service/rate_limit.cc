#include "service/rate_limit.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace hsmrewrap::service {

void RateLimiter::WarnLocked(State& s, const std::string& identity, const std::string& why,
                             Clock::time_point now) {
  if (s.warned && now - s.last_warning < std::chrono::seconds(10)) return;
  s.warned = true;
  s.last_warning = now;
  spdlog::warn(
      "rate limit: identity '{}': {}; its items get RESOURCE_EXHAUSTED (this warning repeats at "
      "most every 10 s)",
      identity, why);
}

absl::Status RateLimiter::Admit(const std::string& identity, const RateLimits& limits,
                                Clock::time_point now) {
  if (!limits.any()) return absl::OkStatus();
  absl::MutexLock l(&mu_);
  State& s = state_[identity];
  if (limits.decrypt_failures_per_hour > 0) {
    while (!s.failures.empty() && now - s.failures.front() >= std::chrono::hours(1))
      s.failures.pop_front();
    if (s.failures.size() >= limits.decrypt_failures_per_hour) {
      std::string why = absl::StrCat("decryption-failure budget of ",
                                     limits.decrypt_failures_per_hour, " per hour is used up");
      WarnLocked(s, identity, why, now);
      return absl::ResourceExhaustedError(
          absl::StrCat(why, " (decrypt_failures_per_hour): retry later"));
    }
  }
  if (limits.items_per_second > 0) {
    const double burst = limits.burst > 0 ? limits.burst : std::max(1.0, limits.items_per_second);
    if (s.tokens < 0) {
      s.tokens = burst;
    } else {
      const double dt = std::chrono::duration<double>(now - s.refilled).count();
      s.tokens = std::min(burst, s.tokens + dt * limits.items_per_second);
    }
    s.refilled = now;
    if (s.tokens < 1.0) {
      std::string why =
          absl::StrCat("more than ", limits.items_per_second, " items/s (burst ", burst, ")");
      WarnLocked(s, identity, why, now);
      return absl::ResourceExhaustedError(absl::StrCat(why, " (items_per_second): retry later"));
    }
    s.tokens -= 1.0;
  }
  return absl::OkStatus();
}

void RateLimiter::RecordDecryptFailure(const std::string& identity, const RateLimits& limits,
                                       Clock::time_point now) {
  if (limits.decrypt_failures_per_hour == 0) return;
  absl::MutexLock l(&mu_);
  State& s = state_[identity];
  s.failures.push_back(now);
  // Keep no more than the budget needs (a flood of failures must not grow memory).
  while (s.failures.size() > limits.decrypt_failures_per_hour) s.failures.pop_front();
}

}  // namespace hsmrewrap::service
