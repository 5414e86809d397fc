// Helpers shared by the hsm token tests: the fixture of the suites parameterised over the
// tokens, OpenSSL keys, PINs, random bytes; the status matchers, TempDir, the token set-up and
// the multi-prime key come from tests/support (named here too).
#pragma once

#include <openssl/evp.h>

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "crypto/keys.h"
#include "crypto/rsa.h"
#include "crypto/secret.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/backend.h"
#include "hsm/pkcs11_backend.h"
#include "tests/support/openssl_keys.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"
#include "tests/support/test_token.h"
#include "tests/support/tokens.h"

namespace hsmrewrap::hsm {
// A rewrap operation's typed decryption failure.
template <typename T>
bool IsDecryptFailed(const OpResult<T>& r) {
  return r.outcome() == Outcome::kDecryptFailed;
}
}  // namespace hsmrewrap::hsm

namespace hsmrewrap::hsm::testing {

using ::hsmrewrap::test::IsOk;
using ::hsmrewrap::test::kNssSoftokenPath;
using ::hsmrewrap::test::kSoftHsmPath;
using ::hsmrewrap::test::SetUpSoftHsmConfig;
using ::hsmrewrap::test::StatusIs;
using ::hsmrewrap::test::TempDir;

using HostKey = ::hsmrewrap::test::EvpPkeyPtr;
using ::hsmrewrap::test::GenerateMultiPrimeRsa;

HostKey GenerateHostRsa(int bits);
// Full CRT parts (or n, e, d only when crt is false).
crypto::RsaPrivateKeyParts HostKeyParts(EVP_PKEY* key, bool crt);
crypto::Bytes HostKeyDer(EVP_PKEY* key);  // PKCS#8 DER
crypto::PublicKey HostPublicKey(EVP_PKEY* key);

crypto::SecretBytes ToSecret(const std::string& s);
crypto::SecretString Pin(const char* s);
crypto::Bytes RandomBytes(size_t n);

// The fixture of the suites that run once per token kind (backend_test.cc,
// key_attributes_test.cc): a fresh TestToken of the parameter's kind for every test (the test
// is skipped where the kind's module is not installed) and a backend on it, opened by Open.
// Instantiate with kTokenKinds and TokenParamName.
class TokenBackendTest : public ::testing::TestWithParam<::hsmrewrap::test::TokenKind> {
 protected:
  void SetUp() override;
  void TearDown() override;

  const ::hsmrewrap::test::TokenFacts& facts() const { return token_->facts(); }
  // The token's backend options with these two set.
  Pkcs11Backend::Options Opts(bool host_unpadding = true, size_t pool = 4) const;
  void Open(bool host_unpadding = true, size_t pool = 4);
  // A new process: the backend goes and the module is finalised (the token stays on disk),
  // then Open(host_unpadding, pool).
  void Reopen(bool host_unpadding = true, size_t pool = 4);

  std::unique_ptr<::hsmrewrap::test::TestToken> token_;
  std::unique_ptr<Pkcs11Backend> backend_;
};

// Every token kind, and a test name suffix of each ("softhsm", "nss", "opencryptoki", "tpm"):
//   INSTANTIATE_TEST_SUITE_P(Tokens, MyTest, ::testing::ValuesIn(kTokenKinds), TokenParamName);
// openCryptoki and the TPM run only under tests/support/hw_tokens.sh (their own ctest
// entries); elsewhere they are skipped (ModuleMissingReason).
inline constexpr ::hsmrewrap::test::TokenKind kTokenKinds[] = {
    ::hsmrewrap::test::TokenKind::kSoftHsm, ::hsmrewrap::test::TokenKind::kNss,
    ::hsmrewrap::test::TokenKind::kOpenCryptoki, ::hsmrewrap::test::TokenKind::kTpm};
std::string TokenParamName(const ::testing::TestParamInfo<::hsmrewrap::test::TokenKind>& p);

}  // namespace hsmrewrap::hsm::testing
