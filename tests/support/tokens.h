// The PKCS#11 modules the tests run against, and a SoftHSM2 token directory of a test's own.
// A whole fresh token (module loaded, token initialised) with its measured facts:
// tests/support/test_token.h.
#pragma once

#include <string>

namespace hsmrewrap::test {

inline constexpr char kSoftHsmPath[] = "/usr/lib/softhsm/libsofthsm2.so";
inline constexpr char kNssSoftokenPath[] = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so";
// openCryptoki 3.8.1 (its software token, swtok, behind pkcsslotd): the versioned name; the
// unversioned libopencryptoki.so comes with the -dev package only.
inline constexpr char kOpenCryptokiPath[] =
    "/usr/lib/x86_64-linux-gnu/opencryptoki/libopencryptoki.so.0";
// tpm2-pkcs11 1.9.0 (a TPM 2.0; in the tests swtpm behind tpm2-abrmd).
inline constexpr char kTpm2Pkcs11Path[] = "/usr/lib/x86_64-linux-gnu/libtpm2_pkcs11.so.1";

// NSS softoken's token with the key database (the second of its two slots).
inline constexpr char kNssKeyTokenLabel[] = "NSS Certificate DB";
// NSS softoken's C_Initialize arguments (pReserved) for the SQL database in `db_dir`; the
// module creates the database there if there is none.
std::string NssInitArgs(const std::string& db_dir);

// kOpenCryptoki and kTpm need a stack brought up around the test process: run the test
// under tests/support/hw_tokens.sh opencryptoki|tpm (pkcsslotd in a private namespace; swtpm
// + tpm2-abrmd + a tpm2-pkcs11 store), which exports HSMREWRAP_OPENCRYPTOKI_SLOT /
// TPM2_PKCS11_STORE.
enum class TokenKind { kSoftHsm, kNss, kOpenCryptoki, kTpm };

const char* TokenName(TokenKind kind);   // "softhsm" / "nss" / "opencryptoki" / "tpm"
const char* ModulePath(TokenKind kind);  // kSoftHsmPath / kNssSoftokenPath / ...
// Empty when the kind's module is installed (and, for openCryptoki and the TPM, its stack is
// up); otherwise why not (for GTEST_SKIP).
std::string ModuleMissingReason(TokenKind kind);

// DIR/softhsm2.conf with the token directory DIR/tokens (made here); sets SOFTHSM2_CONF for
// this process and so for every child it starts (set it before any Module::Load). Returns
// the configuration file's path.
std::string SetUpSoftHsmConfig(const std::string& dir);

}  // namespace hsmrewrap::test
