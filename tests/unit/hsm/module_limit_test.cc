// Module::LimitConcurrency (config max_concurrency) on a real module (SoftHSM2, no token
// needed): calls wait for a slot, never more than the limit run at once, and a module retired
// under a stuck call releases the callers waiting for its slot.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "hsm/pkcs11.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tokens.h"

namespace hsmrewrap::hsm {
namespace {

std::atomic<int> g_inside{0}, g_most{0};
std::atomic<bool> g_release{false};

// Stands in for a module function: counts how many run at once.
CK_RV Counted() {
  const int now = ++g_inside;
  int most = g_most.load();
  while (now > most && !g_most.compare_exchange_weak(most, now)) {
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(3));
  --g_inside;
  return CKR_OK;
}

// A call that does not return until released (a module stuck on a dead device).
CK_RV Stuck() {
  while (!g_release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return CKR_OK;
}

std::shared_ptr<Module> LoadSoftHsm(const test::TempDir& dir) {
  test::SetUpSoftHsmConfig(dir.path());
  auto m = Module::Load(test::kSoftHsmPath, "");
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *m : nullptr;
}

TEST(ModuleLimitTest, NeverMoreCallsInsideThanTheLimit) {
  if (!test::ModuleMissingReason(test::TokenKind::kSoftHsm).empty()) GTEST_SKIP() << "no SoftHSM2";
  test::TempDir dir("module-limit");
  auto m = LoadSoftHsm(dir);
  ASSERT_NE(m, nullptr);
  auto run = [&m] {
    std::vector<std::thread> ts;
    for (int t = 0; t < 8; ++t) {
      ts.emplace_back([&m] {
        for (int i = 0; i < 10; ++i) EXPECT_TRUE(m->Call("C_Counted", &Counted).ok());
      });
    }
    for (auto& t : ts) t.join();
  };
  run();  // no limit: the calls overlap
  EXPECT_GT(g_most.load(), 2) << "8 threads never overlapped: the test shows nothing";
  g_most = 0;
  m->LimitConcurrency(2);
  m->LimitConcurrency(5);  // the lowest limit wins
  EXPECT_EQ(m->max_concurrency(), 2u);
  run();
  EXPECT_EQ(g_most.load(), 2);
  m->LimitConcurrency(1);
  g_most = 0;
  run();
  EXPECT_EQ(g_most.load(), 1);
}

TEST(ModuleLimitTest, RetiringTheModuleReleasesCallersWaitingForASlot) {
  if (!test::ModuleMissingReason(test::TokenKind::kSoftHsm).empty()) GTEST_SKIP() << "no SoftHSM2";
  test::TempDir dir("module-limit");
  auto m = LoadSoftHsm(dir);
  ASSERT_NE(m, nullptr);
  m->LimitConcurrency(1);
  g_release = false;
  std::thread stuck([&m] { (void)m->Call("C_Stuck", &Stuck); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // it holds the slot
  std::atomic<bool> answered{false};
  absl::Status waited;
  std::thread waiter([&] {
    waited = m->Call("C_Counted", &Counted);
    answered = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(answered.load()) << "the second call did not wait for the slot";
  m->Retire();
  waiter.join();
  EXPECT_TRUE(answered.load());
  EXPECT_EQ(CkrOf(waited), CKR_CRYPTOKI_NOT_INITIALIZED) << waited;
  g_release = true;
  stuck.join();
}

}  // namespace
}  // namespace hsmrewrap::hsm
