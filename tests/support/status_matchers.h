// gMock matchers for absl::Status and for anything with a status() (absl::StatusOr,
// hsm::OpResult): EXPECT_THAT(x, IsOk()), StatusIs(code), StatusIs(code, "substring").
// A mismatch prints the status.
#pragma once

#include <string>
#include <type_traits>

#include "absl/status/status.h"
#include "gmock/gmock.h"

namespace hsmrewrap::test {

inline absl::Status StatusOf(const absl::Status& s) { return s; }
template <typename T>
auto StatusOf(const T& v) -> std::decay_t<decltype(v.status())> {
  return v.status();
}

MATCHER(IsOk, "is OK") {
  const absl::Status s = StatusOf(arg);
  if (!s.ok()) *result_listener << s;
  return s.ok();
}
MATCHER_P(StatusIs, code, "has status code " + ::testing::PrintToString(code)) {
  const absl::Status s = StatusOf(arg);
  *result_listener << s;
  return s.code() == code;
}
MATCHER_P2(StatusIs, code, substr,
           "has status code " + ::testing::PrintToString(code) + " and message containing \"" +
               std::string(substr) + "\"") {
  const absl::Status s = StatusOf(arg);
  *result_listener << s;
  return s.code() == code && std::string(s.message()).find(substr) != std::string::npos;
}

}  // namespace hsmrewrap::test
