// Pkcs11Backend against NSS softoken: native OAEP-SHA2, so TOKEN_DECRYPT and IN_TOKEN
// work for the paddings Intune uses (TOKENS.md, NSS section).
#include <unistd.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/pkcs11_backend.h"
#include "hsm/token.h"
#include "tests/unit/hsm/hsm_test_util.h"

namespace hsmrewrap::hsm {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;
using testing::IsOk;
using testing::StatusIs;

constexpr char kUserPin[] = "nss-test-pin";

class NssBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access(testing::kNssSoftokenPath, R_OK) != 0) GTEST_SKIP() << "NSS softoken not installed";
    init_args_ =
        "configdir='sql:" + dir_.path() + "' certPrefix='' keyPrefix='' secmod='secmod.db' flags=";
    auto m = Module::Load(testing::kNssSoftokenPath, init_args_);
    ASSERT_THAT(m, IsOk());
    module_ = *m;
    auto tokens = ListTokens(*module_, /*include_uninitialized=*/true);
    ASSERT_THAT(tokens, IsOk());
    for (const auto& t : *tokens) {
      std::cout << "NSS slot " << t.slot << " token '" << t.label << "' flags 0x" << std::hex
                << t.flags << std::dec << "\n";
    }
    // The key database is the second token, "NSS Certificate DB" (TOKENS.md NSS §2).
    for (const auto& t : *tokens) {
      if (t.label == "NSS Certificate DB") {
        token_label_ = t.label;
        slot_ = t.slot;
      }
    }
    ASSERT_FALSE(token_label_.empty()) << "no NSS key token";
    ASSERT_THAT(InitNssUserPin(*module_, slot_, testing::Pin(kUserPin)), IsOk());
  }
  void TearDown() override {
    backend_.reset();
    module_.reset();
  }
  void Open() {
    Pkcs11Backend::Options o;
    o.module_path = testing::kNssSoftokenPath;
    o.init_args = init_args_;
    o.token.label = token_label_;
    o.user_pin = testing::Pin(kUserPin);
    o.pool_size = 2;
    o.allow_host_unpadding = false;
    auto b = Pkcs11Backend::Create(o);
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

  testing::TempDir dir_;
  std::string init_args_;
  std::string token_label_;
  CK_SLOT_ID slot_ = 0;
  std::shared_ptr<Module> module_;
  std::unique_ptr<Pkcs11Backend> backend_;
};

TEST_F(NssBackendTest, NativeOaepSha2AndInTokenRewrap) {
  Open();
  auto k = backend_->CreateKey("svc", 2048, /*allow_pkcs1=*/false);
  ASSERT_THAT(k, IsOk());
  for (RsaPadding p : {RsaPadding::kOaepSha1, RsaPadding::kOaepSha256, RsaPadding::kOaepSha384,
                       RsaPadding::kOaepSha512}) {
    EXPECT_THAT(k->caps.decrypt, Contains(p)) << static_cast<int>(p);
    EXPECT_THAT(k->caps.unwrap, Contains(p)) << static_cast<int>(p);
  }
  EXPECT_FALSE(k->caps.raw_rsa);
  EXPECT_THAT(backend_->WrapPaddings(), Contains(RsaPadding::kOaepSha256));
  std::cout << "NSS caps: decrypt " << k->caps.decrypt.size() << " unwrap " << k->caps.unwrap.size()
            << " wrap " << backend_->WrapPaddings().size() << "\n";

  const crypto::Bytes pt = testing::RandomBytes(32);
  auto dec = backend_->Decrypt("svc", RsaPadding::kOaepSha256,
                               Seal(*k, RsaPadding::kOaepSha256, pt), Path::kTokenDecrypt);
  ASSERT_THAT(dec, IsOk());
  EXPECT_EQ(crypto::Bytes(dec->begin(), dec->end()), pt);

  auto device = testing::GenerateHostRsa(2048);
  auto out =
      backend_->RewrapInToken("svc", RsaPadding::kOaepSha256, Seal(*k, RsaPadding::kOaepSha256, pt),
                              testing::HostPublicKey(device.get()), RsaPadding::kOaepSha256);
  ASSERT_THAT(out, IsOk());
  auto back = crypto::RsaDecryptWithPrivateKey(testing::HostKeyDer(device.get()),
                                               RsaPadding::kOaepSha256, *out);
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(crypto::Bytes(back->begin(), back->end()), pt);

  crypto::Bytes bad = Seal(*k, RsaPadding::kOaepSha256, pt);
  bad[10] ^= 0x80;
  EXPECT_TRUE(
      IsDecryptFailed(backend_->Decrypt("svc", RsaPadding::kOaepSha256, bad, Path::kTokenDecrypt)));
  EXPECT_TRUE(IsDecryptFailed(backend_->RewrapInToken("svc", RsaPadding::kOaepSha256, bad,
                                                      testing::HostPublicKey(device.get()),
                                                      RsaPadding::kOaepSha256)));
  // Still serving after the failures.
  auto again = backend_->Decrypt("svc", RsaPadding::kOaepSha512,
                                 Seal(*k, RsaPadding::kOaepSha512, pt), Path::kTokenDecrypt);
  ASSERT_THAT(again, IsOk());
  EXPECT_THAT(backend_->Decrypt("svc", RsaPadding::kOaepSha256, bad, Path::kHostUnpadding),
              StatusIs(absl::StatusCode::kUnimplemented));
}

TEST_F(NssBackendTest, ImportAndMetadata) {
  Open();
  auto host = testing::GenerateHostRsa(3072);
  auto k = backend_->ImportKey("imported", testing::HostKeyParts(host.get(), true), false);
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ(k->bits, 3072);
  EXPECT_THAT(k->caps.decrypt, Contains(RsaPadding::kOaepSha256));
  ASSERT_THAT(backend_->SetEnabled("imported", false), IsOk());
  auto now = backend_->GetKey("imported");
  ASSERT_THAT(now, IsOk());
  EXPECT_FALSE(now->enabled);
  // NSS softoken refuses CKO_DATA token objects, so the metadata lives in the process only:
  // a new backend serves the key with defaults.
  backend_.reset();
  module_.reset();
  Open();
  auto again = backend_->GetKey("imported");
  ASSERT_THAT(again, IsOk());
  EXPECT_TRUE(again->enabled);
  EXPECT_EQ(again->spki_der, k->spki_der);
}

// NSS softoken does implicit rejection for PKCS#1 v1.5 (Marvin countermeasure): an invalid
// padding "decrypts" to a deterministic pseudo-random message. The probe must learn it.
TEST_F(NssBackendTest, Pkcs1ImplicitRejectionIsProbed) {
  Open();
  auto k = backend_->CreateKey("p1", 2048, /*allow_pkcs1=*/true);
  ASSERT_THAT(k, IsOk());
  EXPECT_THAT(k->caps.decrypt, Contains(RsaPadding::kPkcs1));
  EXPECT_TRUE(k->caps.pkcs1_implicit_rejection);
  const crypto::Bytes pt = testing::RandomBytes(32);
  const crypto::Bytes ct = Seal(*k, RsaPadding::kPkcs1, pt);
  auto good = backend_->Decrypt("p1", RsaPadding::kPkcs1, ct, Path::kTokenDecrypt);
  ASSERT_THAT(good, IsOk());
  EXPECT_EQ(crypto::Bytes(good->begin(), good->end()), pt);
  crypto::Bytes bad = ct;
  bad[200] ^= 0x40;  // a low byte: stays < n
  auto r1 = backend_->Decrypt("p1", RsaPadding::kPkcs1, bad, Path::kTokenDecrypt);
  auto r2 = backend_->Decrypt("p1", RsaPadding::kPkcs1, bad, Path::kTokenDecrypt);
  if (r1.ok()) {
    ASSERT_THAT(r2, IsOk());
    EXPECT_EQ(crypto::Bytes(r1->begin(), r1->end()), crypto::Bytes(r2->begin(), r2->end()))
        << "implicit rejection must be deterministic";
    EXPECT_NE(crypto::Bytes(r1->begin(), r1->end()), pt);
  } else {
    EXPECT_TRUE(IsDecryptFailed(r1)) << r1.status();
  }
  // OAEP is never affected; a key without PKCS#1 is not probed.
  crypto::Bytes bad_oaep = Seal(*k, RsaPadding::kOaepSha256, pt);
  bad_oaep[200] ^= 0x40;
  EXPECT_TRUE(IsDecryptFailed(
      backend_->Decrypt("p1", RsaPadding::kOaepSha256, bad_oaep, Path::kTokenDecrypt)));
  auto strict = backend_->CreateKey("strict", 2048, /*allow_pkcs1=*/false);
  ASSERT_THAT(strict, IsOk());
  EXPECT_FALSE(strict->caps.pkcs1_implicit_rejection);
}

// NSS derives p and q from n, e, d only for two-prime keys: a three-prime key (no CRT
// parts) is a clear FAILED_PRECONDITION, not an internal error.
TEST_F(NssBackendTest, ThreePrimeKeyWithoutCrtIsFailedPrecondition) {
  Open();
  auto three = testing::GenerateMultiPrimeRsa(2048, 3);
  ASSERT_TRUE(three);
  auto r = backend_->ImportKey("three", testing::HostKeyParts(three.get(), false), false);
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("multi-prime key cannot be imported"));
  // Nothing was left behind: the name is still free.
  auto two = testing::GenerateHostRsa(2048);
  EXPECT_THAT(backend_->ImportKey("three", testing::HostKeyParts(two.get(), true), false), IsOk());
}

}  // namespace
}  // namespace hsmrewrap::hsm
