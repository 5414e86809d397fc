// The PKCS#11 modules the tests run against, and a SoftHSM2 token directory of a test's own.
// A whole fresh token (module loaded, token initialised) with its measured facts:
// tests/support/test_token.h.
#pragma once

#include <string>

namespace hsmrewrap::test {

inline constexpr char kSoftHsmPath[] = "/usr/lib/softhsm/libsofthsm2.so";
inline constexpr char kNssSoftokenPath[] = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so";

// NSS softoken's token with the key database (the second of its two slots).
inline constexpr char kNssKeyTokenLabel[] = "NSS Certificate DB";
// NSS softoken's C_Initialize arguments (pReserved) for the SQL database in `db_dir`; the
// module creates the database there if there is none.
std::string NssInitArgs(const std::string& db_dir);

enum class TokenKind { kSoftHsm, kNss };

const char* TokenName(TokenKind kind);   // "softhsm" / "nss"
const char* ModulePath(TokenKind kind);  // kSoftHsmPath / kNssSoftokenPath
// Empty when the kind's module is installed; otherwise why not (for GTEST_SKIP).
std::string ModuleMissingReason(TokenKind kind);

// DIR/softhsm2.conf with the token directory DIR/tokens (made here); sets SOFTHSM2_CONF for
// this process and so for every child it starts (set it before any Module::Load). Returns
// the configuration file's path.
std::string SetUpSoftHsmConfig(const std::string& dir);

}  // namespace hsmrewrap::test
