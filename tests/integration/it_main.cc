// main() of the integration test binaries: `--token=softhsm|nss` (or HSMREWRAP_IT_TOKEN)
// picks the token; rewrapd is stopped (SIGTERM, waitpid) after the last test, and an
// unclean stop fails the run.
#include <gtest/gtest.h>

#include <cstdio>
#include <memory>

#include "tests/integration/it_env.h"
#include "tests/leakcheck/record.h"
#include "tests/support/test_token.h"

namespace hsmrewrap::it {
namespace {

std::unique_ptr<RewrapdHarness> g_harness;
std::string g_error;
bool g_started = false;

class StopRewrapd : public ::testing::Environment {
 public:
  void TearDown() override {
    if (!g_harness) return;
    std::string problem = g_harness->Stop();
    if (!problem.empty()) ADD_FAILURE() << problem;
    g_harness.reset();
  }
};

}  // namespace

RewrapdHarness* SharedHarness(std::string* error) {
  if (!g_started) {
    g_started = true;
    g_harness = RewrapdHarness::Start(CurrentToken(), &g_error);
    if (g_harness) {
      printf("[harness] rewrapd (%s) serving on %s, dir %s\n", TokenName(CurrentToken()),
             g_harness->address().c_str(), g_harness->dir().c_str());
      fflush(stdout);
    }
  }
  if (!g_harness) *error = g_error;
  return g_harness.get();
}

}  // namespace hsmrewrap::it

int main(int argc, char** argv) {
  std::string error;
  if (!hsmrewrap::it::ParseTokenFlag(&argc, argv, &error)) {
    fprintf(stderr, "%s\n", error.c_str());
    return 2;
  }
  ::testing::InitGoogleTest(&argc, argv);
  hsmrewrap::test::RegisterHarnessTokenMaker();  // openCryptoki and TPM tokens
  const auto token = hsmrewrap::it::CurrentToken();
  const std::string skip = hsmrewrap::it::TokenUnavailableReason(token);
  if (!skip.empty()) {
    // ctest's SKIP_REGULAR_EXPRESSION matches this line.
    printf("HSMREWRAP_IT_SKIP_ALL token %s unavailable: %s\n", hsmrewrap::it::TokenName(token),
           skip.c_str());
    hsmrewrap::leakcheck::MarkSkipped(std::string("token unavailable: ") + skip);
  }
  ::testing::AddGlobalTestEnvironment(new hsmrewrap::it::StopRewrapd());
  return RUN_ALL_TESTS();
}
