// Pkcs11Backend behind the fault module (tests/fault_module) over a real token: answers no
// software token gives on demand (an init call's error, a device that stops answering
// while the module still answers C_GetTokenInfo, a refused template or secret object).
// The fault module loads its real module once per process, so the tests on NSS softoken
// (FaultBackendNss*) run in a ctest entry of their own (hsm_fault_nss_test).
#include <stdlib.h>

#include <cstdio>
#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/mechanisms.h"
#include "hsm/pkcs11_backend.h"
#include "hsm/token_supervisor.h"
#include "tests/support/files.h"
#include "tests/support/test_token.h"
#include "tests/unit/hsm/hsm_test_util.h"

namespace hsmrewrap::hsm {
namespace {

using ::hsmrewrap::test::TestToken;
using ::hsmrewrap::test::TokenKind;
using ::testing::HasSubstr;
using testing::IsOk;
using testing::StatusIs;

// Successful calls of `fn` through `m` so far.
uint64_t Succeeded(const Module& m, const std::string& fn) {
  for (const auto& s : m.CallStats()) {
    if (s.function == fn) return s.calls - s.errors;
  }
  return 0;
}

class FaultBackendTest : public ::testing::Test {
 protected:
  // One configuration file for the process: the fault module reads its path once.
  static const std::string& ConfPath() {
    static testing::TempDir* dir = new testing::TempDir("fault-backend");
    static const std::string* path = new std::string(dir->File("faults.conf"));
    return *path;
  }

  void SetUpToken(TokenKind kind) {
    const std::string missing = ::hsmrewrap::test::ModuleMissingReason(kind);
    if (!missing.empty()) GTEST_SKIP() << missing;
    auto t = TestToken::Create(kind);
    ASSERT_THAT(t, IsOk());
    token_ = std::move(*t);
    token_->ReleaseModule();  // the fault module loads it again
    Faults("");
    setenv("HSMREWRAP_FAULT_CONFIG", ConfPath().c_str(), 1);
    setenv("HSMREWRAP_FAULT_MODULE", token_->module_path(), 1);
  }

  void TearDown() override {
    supervisor_.reset();
    backend_.reset();
    token_.reset();
    Faults("");
  }

  // Replaces the rules (atomically; the module re-reads the file within 10 ms).
  void Faults(const std::string& rules) {
    const std::string tmp = ConfPath() + ".tmp";
    ::hsmrewrap::test::WriteFile(tmp, rules);
    ASSERT_EQ(std::rename(tmp.c_str(), ConfPath().c_str()), 0);
    absl::SleepFor(absl::Milliseconds(30));
  }

  Pkcs11Backend::Options Opts(bool host_unpadding = true) const {
    Pkcs11Backend::Options o = token_->BackendOptions();
    o.module_path = HSMREWRAP_FAULT_MODULE_PATH;
    o.allow_host_unpadding = host_unpadding;
    o.pool_size = 2;
    return o;
  }

  void Open(bool host_unpadding = true) {
    auto b = Pkcs11Backend::Create(Opts(host_unpadding));
    ASSERT_THAT(b, IsOk());
    backend_ = std::move(*b);
  }

  crypto::Bytes Seal(const KeyInfo& k, RsaPadding p, const crypto::Bytes& pt) {
    auto pub = crypto::PublicKey::FromSpki(k.spki_der);
    EXPECT_THAT(pub, IsOk());
    auto ct = crypto::RsaEncrypt(*pub, p, pt);
    EXPECT_THAT(ct, IsOk());
    return ct.ok() ? *ct : crypto::Bytes{};
  }

  std::unique_ptr<TestToken> token_;
  std::unique_ptr<Pkcs11Backend> backend_;
  std::unique_ptr<TokenSupervisor> supervisor_;
};

class FaultBackendSoftHsmTest : public FaultBackendTest {
 protected:
  void SetUp() override { SetUpToken(TokenKind::kSoftHsm); }
};

// The wrap probe at start-up makes a session public key, then a session secret. When the
// token refuses the secret, the public key must still be destroyed: a token that keeps
// "session" objects (tpm2-pkcs11 stores every object) would keep one per start.
TEST_F(FaultBackendSoftHsmTest, WrapProbeDestroysItsObjectsWhenTheSecretIsRefused) {
  Faults("fail C_CreateObject CKR_TEMPLATE_INCONSISTENT calls=2-2\n");
  Open();
  const Module& m = backend_->module();
  EXPECT_EQ(Succeeded(m, "C_CreateObject"), 1u);
  EXPECT_EQ(Succeeded(m, "C_DestroyObject"), Succeeded(m, "C_CreateObject"))
      << "every object the probe made is destroyed";
  EXPECT_TRUE(backend_->WrapPaddings().empty());
}

// An error of C_DecryptInit (a call that never saw the ciphertext) is the token's, never a
// decryption failure, whatever its code; the same code from C_Decrypt (which saw it) is one.
TEST_F(FaultBackendSoftHsmTest, InitCallErrorsAreNeverDecryptFailed) {
  Open();
  auto k = backend_->CreateKey("k", 2048, /*allow_pkcs1=*/false);
  ASSERT_THAT(k, IsOk());
  const crypto::Bytes pt = testing::RandomBytes(32);
  const crypto::Bytes sha1 = Seal(*k, RsaPadding::kOaepSha1, pt);
  const crypto::Bytes sha256 = Seal(*k, RsaPadding::kOaepSha256, pt);
  for (const char* rv : {"CKR_GENERAL_ERROR", "CKR_FUNCTION_FAILED", "CKR_ARGUMENTS_BAD",
                         "CKR_KEY_FUNCTION_NOT_PERMITTED", "CKR_DEVICE_ERROR"}) {
    Faults(std::string("fail C_DecryptInit ") + rv + "\n");
    auto r1 = backend_->Decrypt("k", RsaPadding::kOaepSha1, sha1, Path::kTokenDecrypt);
    EXPECT_FALSE(r1.ok()) << rv;
    EXPECT_NE(r1.outcome(), Outcome::kDecryptFailed) << rv << ": " << r1.status();
    auto r2 = backend_->Decrypt("k", RsaPadding::kOaepSha256, sha256, Path::kHostUnpadding);
    EXPECT_FALSE(r2.ok()) << rv;
    EXPECT_NE(r2.outcome(), Outcome::kDecryptFailed) << rv << ": " << r2.status();
  }
  Faults("fail C_Decrypt CKR_GENERAL_ERROR\n");
  EXPECT_EQ(backend_->Decrypt("k", RsaPadding::kOaepSha1, sha1, Path::kTokenDecrypt).outcome(),
            Outcome::kDecryptFailed);
  Faults("");
  auto good = backend_->Decrypt("k", RsaPadding::kOaepSha1, sha1, Path::kTokenDecrypt);
  ASSERT_THAT(good, IsOk());
  EXPECT_EQ(crypto::Bytes(good->begin(), good->end()), pt);
}

// Health is judged by a call that reaches the device (C_GenerateRandom), not by
// C_GetTokenInfo alone, which a module may answer from memory (tpm2-pkcs11 with a broken
// TPM connection). And a decryption failure from a token whose device does not answer is
// UNAVAILABLE, not DECRYPT_FAILED (the supervisor's re-check).
TEST_F(FaultBackendSoftHsmTest, HealthReachesTheDevice) {
  Open();
  EXPECT_TRUE(backend_->Healthy());
  Faults("fail C_GenerateRandom CKR_GENERAL_ERROR\n");
  EXPECT_FALSE(backend_->Healthy()) << "C_GetTokenInfo answers, the device does not";
  Faults("");
  EXPECT_TRUE(backend_->Healthy());
  backend_.reset();

  TokenSupervisor::Options so;
  so.check_interval = absl::Seconds(30);  // only the re-check after the failure runs
  auto sup = TokenSupervisor::Create(
      [this]() -> absl::StatusOr<std::unique_ptr<Pkcs11Backend>> {
        auto b = Pkcs11Backend::Create(Opts());
        if (!b.ok()) return b.status();
        return std::move(*b);
      },
      so);
  ASSERT_THAT(sup, IsOk());
  supervisor_ = std::move(*sup);
  auto k = supervisor_->CreateKey("k", 2048, /*allow_pkcs1=*/false);
  ASSERT_THAT(k, IsOk());
  const crypto::Bytes ct = Seal(*k, RsaPadding::kOaepSha1, testing::RandomBytes(32));
  Faults("fail C_UnwrapKey,C_Decrypt CKR_GENERAL_ERROR\nfail C_GenerateRandom CKR_GENERAL_ERROR\n");
  auto r = supervisor_->Decrypt("k", RsaPadding::kOaepSha1, ct, Path::kTokenDecrypt);
  EXPECT_EQ(r.outcome(), Outcome::kRetryable) << r.status();
  EXPECT_THAT(r.status(), StatusIs(absl::StatusCode::kUnavailable));
}

// A key template the token refuses is the request's (FAILED_PRECONDITION with the token's
// answer), never UNAVAILABLE or INTERNAL; so is CKR_GENERAL_ERROR from a token whose device
// still answers (tpm2-pkcs11's answer to attributes the TPM sets itself). A size outside
// the token's range is INVALID_ARGUMENT; a token without RSA key generation is
// FAILED_PRECONDITION before any C_GenerateKeyPair.
TEST_F(FaultBackendSoftHsmTest, RefusedKeyTemplatesAreNotUnavailable) {
  Open();
  Faults("fail C_GenerateKeyPair CKR_TEMPLATE_INCONSISTENT\n");
  auto a = backend_->CreateKey("a", 2048, false);
  EXPECT_THAT(a.status(), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(std::string(a.status().message()), HasSubstr("refuses to generate"));

  Faults("fail C_GenerateKeyPair CKR_GENERAL_ERROR\n");
  auto b = backend_->CreateKey("b", 2048, false);
  EXPECT_THAT(b.status(), StatusIs(absl::StatusCode::kFailedPrecondition));

  Faults("fail C_GenerateKeyPair CKR_GENERAL_ERROR\nfail C_GenerateRandom CKR_GENERAL_ERROR\n");
  auto c = backend_->CreateKey("c", 2048, false);
  EXPECT_THAT(c.status(), StatusIs(absl::StatusCode::kUnavailable)) << "the device is gone";

  Faults("fail C_GenerateKeyPair CKR_KEY_SIZE_RANGE\n");
  auto d = backend_->CreateKey("d", 4096, false);
  EXPECT_THAT(d.status(), StatusIs(absl::StatusCode::kInvalidArgument));

  Faults("fail C_GetMechanismInfo CKR_MECHANISM_INVALID\n");
  auto e = backend_->CreateKey("e", 2048, false);
  EXPECT_THAT(e.status(), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("CKM_RSA_PKCS_KEY_PAIR_GEN"));

  // Import: the private key object refused.
  Faults("fail C_CreateObject CKR_TEMPLATE_INCONSISTENT\n");
  auto host = testing::GenerateHostRsa(2048);
  auto f = backend_->ImportKey("f", testing::HostKeyParts(host.get(), /*crt=*/true), false);
  EXPECT_THAT(f.status(), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("refuses to import"));

  Faults("");
  EXPECT_THAT(backend_->CreateKey("g", 2048, false), IsOk());
}

class FaultBackendNssTest : public FaultBackendTest {
 protected:
  void SetUp() override { SetUpToken(TokenKind::kNss); }
};

// Implicit rejection is claimed only when every kind of malformed PKCS#1 block is answered
// with CKR_OK (and the same message twice). NSS softoken answers all of them so; here the
// fault module makes it refuse every C_Decrypt from the second malformed kind on, as
// openCryptoki 3.8.1 refuses all kinds but "no separator". The key's probe decrypts twice
// per padding, a secret and the empty message (OAEP-SHA1/256/384/512, PKCS#1: C_Decrypt
// 1-10), then each malformed kind twice (11-12 the first kind, 13- the others).
TEST_F(FaultBackendNssTest, ImplicitRejectionNeedsEveryMalformedKind) {
  Open(/*host_unpadding=*/false);
  auto whole = backend_->CreateKey("whole", 2048, /*allow_pkcs1=*/true);
  ASSERT_THAT(whole, IsOk());
  EXPECT_TRUE(whole->caps.pkcs1_implicit_rejection) << "NSS softoken rejects implicitly";

  Faults("fail C_Decrypt CKR_ENCRYPTED_DATA_INVALID calls=13-\n");
  auto partial = backend_->CreateKey("partial", 2048, /*allow_pkcs1=*/true);
  ASSERT_THAT(partial, IsOk());
  ASSERT_EQ(partial->caps.decrypt.size(), 5u) << "the call numbering above assumes 5 probes";
  EXPECT_FALSE(partial->caps.pkcs1_implicit_rejection)
      << "one malformed kind answered CKR_OK, the next refused: a padding oracle";
}

}  // namespace
}  // namespace hsmrewrap::hsm
