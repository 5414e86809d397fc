// Shared set-up of every integration test binary: one rewrapd per binary (started on first
// use, stopped after the last test), and a fixture that skips when the token is missing.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "tests/integration/it_util.h"

namespace hsmrewrap::it {

// The binary's rewrapd, started on first call for CurrentToken(). Null if it failed to
// start; *error then says why (with rewrapd's stderr). Later calls return the same.
RewrapdHarness* SharedHarness(std::string* error);

class RewrapdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string skip = TokenUnavailableReason(CurrentToken());
    if (!skip.empty()) GTEST_SKIP() << "token " << TokenName(CurrentToken()) << ": " << skip;
    std::string error;
    h_ = SharedHarness(&error);
    ASSERT_NE(h_, nullptr) << error;
  }
  bool nss() const { return CurrentToken() == TokenKind::kNss; }
  RewrapdHarness* h_ = nullptr;
};

}  // namespace hsmrewrap::it
