// The PKCS#11 modules the tests run against, and a SoftHSM2 token directory of a test's own.
#pragma once

#include <string>

namespace hsmrewrap::test {

inline constexpr char kSoftHsmPath[] = "/usr/lib/softhsm/libsofthsm2.so";
inline constexpr char kNssSoftokenPath[] = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so";

// DIR/softhsm2.conf with the token directory DIR/tokens (made here); sets SOFTHSM2_CONF for
// this process and so for every child it starts (set it before any Module::Load). Returns
// the configuration file's path.
std::string SetUpSoftHsmConfig(const std::string& dir);

}  // namespace hsmrewrap::test
