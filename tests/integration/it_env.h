// Shared set-up of every integration test binary: one rewrapd per binary (started on first
// use, stopped after the last test), and a fixture that skips when the token is missing.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "tests/integration/it_util.h"
#include "tests/support/test_token.h"

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
  // rewrapd runs on its embedded SoftHSM2 default (host unpadding allowed, key `default`).
  bool embedded() const { return CurrentToken() == TokenKind::kSoftHsm; }
  // rewrapd was started with host unpadding allowed (the embedded default allows it; the
  // openCryptoki run allows it for PKCS#1).
  bool host_unpadding() const {
    return embedded() || h_->CommandLine().find("--allow-host-unpadding") != std::string::npos;
  }
  // What the token is measured to do (tests/support/test_token.h).
  const test::TokenFacts& facts() const { return test::FactsOf(CurrentToken()); }
  RewrapdHarness* h_ = nullptr;
};

}  // namespace hsmrewrap::it
