// CallRunner (hsm/call_runner.h): a caller never waits on a call that never returns.
#include "hsm/call_runner.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>

#include "absl/synchronization/notification.h"

namespace hsmrewrap::hsm {
namespace {

using std::chrono_literals::operator""ms;

absl::StatusOr<int> Failed(absl::Status s) { return s; }

// A call that blocks, as in a hung module, until `release`; its caller gives up at `deadline`.
absl::StatusOr<int> RunBlocked(CallRunner& r, absl::Notification& release, absl::Time deadline) {
  return r.Run<absl::StatusOr<int>>(
      [&release]() -> absl::StatusOr<int> {
        release.WaitForNotification();
        return 1;
      },
      1, Failed, deadline);
}

// Gives the stuck threads (1 s at most) to come back once their calls have returned.
void WaitUntilUnstuck(const CallRunner& r) {
  for (int i = 0; i < 200 && r.stuck() != 0; ++i) std::this_thread::sleep_for(5ms);
}

TEST(CallRunnerTest, RunsTheCallAndReturnsItsResult) {
  CallRunner r;
  std::thread::id ran_on;
  auto out = r.Run<absl::StatusOr<int>>(
      [&ran_on]() -> absl::StatusOr<int> {
        ran_on = std::this_thread::get_id();
        return 42;
      },
      1, Failed);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, 42);
  EXPECT_NE(ran_on, std::this_thread::get_id()) << "the call must not run on the caller's thread";
  EXPECT_EQ(r.stuck(), 0u);
}

// A call that blocks is answered by Abandon() at once; its thread counts as stuck until the
// call returns, and later calls with the same tag fail without running.
TEST(CallRunnerTest, AbandonAnswersABlockedCallerAtOnce) {
  CallRunner r;
  absl::Notification started, release;
  auto caller = std::async(std::launch::async, [&] {
    return r.Run<absl::StatusOr<int>>(
        [&]() -> absl::StatusOr<int> {
          started.Notify();
          release.WaitForNotification();
          return 1;
        },
        7, Failed);
  });
  started.WaitForNotification();
  EXPECT_EQ(caller.wait_for(50ms), std::future_status::timeout);
  EXPECT_EQ(r.OldestRunning(7) > absl::ZeroDuration(), true);
  EXPECT_EQ(r.Abandon(7, absl::UnavailableError("lost")), 1u);
  ASSERT_EQ(caller.wait_for(1000ms), std::future_status::ready);
  auto out = caller.get();
  EXPECT_EQ(out.status(), absl::UnavailableError("lost"));
  EXPECT_EQ(r.stuck(), 1u);
  EXPECT_EQ(r.abandoned_total(), 1u);
  EXPECT_EQ(r.OldestRunning(7), absl::ZeroDuration())
      << "an abandoned call is not running any more";

  // Other tags still run (a new thread: the stuck one is busy).
  std::atomic<bool> ran{false};
  EXPECT_TRUE(r.Run<absl::StatusOr<int>>(
                   [&]() -> absl::StatusOr<int> {
                     ran = true;
                     return 2;
                   },
                   8, Failed)
                  .ok());
  EXPECT_TRUE(ran);
  // The abandoned tag runs nothing more.
  ran = false;
  auto late = r.Run<absl::StatusOr<int>>(
      [&]() -> absl::StatusOr<int> {
        ran = true;
        return 3;
      },
      7, Failed);
  EXPECT_EQ(late.status(), absl::UnavailableError("lost"));
  EXPECT_FALSE(ran);

  release.Notify();  // the module returns: the thread rejoins
  WaitUntilUnstuck(r);
  EXPECT_EQ(r.stuck(), 0u);
}

TEST(CallRunnerTest, ADeadlineAbandonsTheCall) {
  CallRunner r;
  absl::Notification release;
  const absl::Time t0 = absl::Now();
  auto out = RunBlocked(r, release, absl::Now() + absl::Milliseconds(100));
  EXPECT_EQ(out.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(absl::Now() - t0, absl::Seconds(2));
  EXPECT_EQ(r.stuck(), 1u);
  release.Notify();
  WaitUntilUnstuck(r);
  EXPECT_EQ(r.stuck(), 0u);
}

// Past max_stuck no call is started (each would leave one more thread inside the module).
TEST(CallRunnerTest, BoundsStuckThreads) {
  CallRunner::Options o;
  o.max_stuck = 2;
  CallRunner r(o);
  absl::Notification release;
  for (int i = 0; i < 2; ++i) {
    auto out = RunBlocked(r, release, absl::Now() + absl::Milliseconds(20));
    EXPECT_EQ(out.status().code(), absl::StatusCode::kDeadlineExceeded);
  }
  EXPECT_EQ(r.stuck(), 2u);
  std::atomic<bool> ran{false};
  auto refused = r.Run<absl::StatusOr<int>>(
      [&]() -> absl::StatusOr<int> {
        ran = true;
        return 1;
      },
      2, Failed);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(ran);
  release.Notify();
  WaitUntilUnstuck(r);
  EXPECT_TRUE(
      r.Run<absl::StatusOr<int>>([]() -> absl::StatusOr<int> { return 1; }, 2, Failed).ok());
}

// Many concurrent callers: every one gets its own result, threads are reused.
TEST(CallRunnerTest, ConcurrentCallersGetTheirOwnResults) {
  CallRunner r;
  std::vector<std::future<bool>> callers;
  for (int t = 0; t < 8; ++t) {
    callers.push_back(std::async(std::launch::async, [&r, t] {
      for (int i = 0; i < 200; ++i) {
        auto out = r.Run<absl::StatusOr<int>>(
            [t, i]() -> absl::StatusOr<int> { return t * 1000 + i; }, 1, Failed);
        if (!out.ok() || *out != t * 1000 + i) return false;
      }
      return true;
    }));
  }
  for (auto& c : callers) EXPECT_TRUE(c.get());
  // At most one thread per caller: a thread started for a queued call counts as idle before
  // it runs, so a call queued meanwhile does not start another (it did, about 1 run in 10).
  EXPECT_LE(r.threads(), 8u);
}

}  // namespace
}  // namespace hsmrewrap::hsm
