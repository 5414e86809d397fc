// Several tokens behind one engine (hsm/token_set.h): scheduling, failover, the public key
// check, per-token paths and health, on in-memory fakes (the real tokens:
// tests/reliability/multi_token_test.cc).
#include "hsm/token_set.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <future>
#include <map>

#include "crypto/rsa.h"
#include "service/engine.h"
#include "tests/unit/service/fake_backend.h"

namespace hsmrewrap::service {
namespace {

using crypto::RsaPadding;
using testing::FakeBackend;
using ::testing::HasSubstr;
using v1::ItemError;

std::string Str(const crypto::Bytes& b) { return std::string(b.begin(), b.end()); }
absl::Span<const uint8_t> Span(const std::string& s) {
  return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

hsm::KeyCapabilities NativeOaep() {
  hsm::KeyCapabilities c;
  c.decrypt = {RsaPadding::kOaepSha1, RsaPadding::kOaepSha256};
  return c;
}

class TokenSetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    key_pem_ = testing::MakeRsaPrivateKeyPem(2048);
    device_pem_ = testing::MakeRsaPrivateKeyPem(2048);
    device_spki_ = Str(testing::SpkiOfPrivatePem(device_pem_));
    a_ = std::make_shared<FakeBackend>();
    b_ = std::make_shared<FakeBackend>();
    a_->SetTokenLabel("label-a");
    b_->SetTokenLabel("label-b");
  }

  // The same key `name` (key_pem_) on both fakes, unless told otherwise.
  void Clone(const std::string& name, hsm::KeyCapabilities a_caps = NativeOaep(),
             hsm::KeyCapabilities b_caps = NativeOaep()) {
    a_->AddKeyPem(name, key_pem_, 2048, a_caps);
    b_->AddKeyPem(name, key_pem_, 2048, b_caps);
  }

  void MakeEngine(bool b_host_unpadding = false) {
    std::vector<hsm::TokenSet::Member> ms(2);
    ms[0].name = "a";
    ms[0].backend = a_;
    ms[0].sessions = 4;
    ms[1].name = "b";
    ms[1].backend = b_;
    ms[1].sessions = 4;
    ms[1].allow_host_unpadding = b_host_unpadding;
    set_ = std::make_shared<hsm::TokenSet>(std::move(ms));
    set_->LoadReferences();
    RewrapEngine::Options o;
    o.workers = 8;
    engine_ = std::make_unique<RewrapEngine>(set_, o);
  }

  v1::RewrapItem Item(const std::string& id, const std::string& key, const std::string& secret,
                      v1::Padding p = v1::OAEP_SHA256) {
    auto pub = crypto::PublicKey::FromSpki(testing::SpkiOfPrivatePem(key_pem_));
    EXPECT_TRUE(pub.ok());
    auto ct = crypto::RsaEncrypt(*pub,
                                 p == v1::OAEP_SHA1 ? RsaPadding::kOaepSha1 : RsaPadding::kOaepSha256,
                                 Span(secret));
    EXPECT_TRUE(ct.ok());
    v1::RewrapItem item;
    item.set_id(id);
    item.set_key_name(key);
    item.set_padding(p);
    item.set_ciphertext(Str(*ct));
    item.mutable_recipient()->set_public_key(device_spki_);
    item.set_format(v1::RSA_OAEP_SHA256);
    return item;
  }

  std::string Open(const v1::RewrapResult& r) {
    auto pt = crypto::RsaDecryptWithPrivateKey(Span(device_pem_), RsaPadding::kOaepSha256,
                                               Span(r.ciphertext()));
    return pt.ok() ? std::string(pt->begin(), pt->end()) : "<does not open>";
  }

  v1::RewrapResponse Batch(int n, const std::string& key = "k") {
    v1::RewrapRequest req;
    for (int i = 0; i < n; ++i) {
      *req.add_items() = Item("i" + std::to_string(i), key, "secret-" + std::to_string(i));
    }
    std::promise<v1::RewrapResponse> done;
    auto st = engine_->Submit(std::make_shared<v1::RewrapRequest>(req),
                              [&](v1::RewrapResponse r) { done.set_value(std::move(r)); });
    EXPECT_TRUE(st.ok()) << st;
    return done.get_future().get();
  }

  std::string key_pem_, device_pem_, device_spki_;
  std::shared_ptr<FakeBackend> a_, b_;
  std::shared_ptr<hsm::TokenSet> set_;
  std::unique_ptr<RewrapEngine> engine_;
};

TEST_F(TokenSetTest, ItemsSpreadOverTheTokensAndSayWhichOneRanThem) {
  Clone("k");
  MakeEngine();
  auto resp = Batch(200);
  std::map<std::string, int> by_token;
  for (int i = 0; i < resp.results_size(); ++i) {
    const auto& r = resp.results(i);
    ASSERT_FALSE(r.has_error()) << r.error().message();
    EXPECT_EQ(Open(r), "secret-" + std::to_string(i));
    by_token[r.token()]++;
  }
  EXPECT_EQ(by_token["a"] + by_token["b"], 200);
  EXPECT_GT(by_token["a"], 20) << "token a got almost nothing";
  EXPECT_GT(by_token["b"], 20) << "token b got almost nothing";
  EXPECT_EQ(a_->op_calls(), by_token["a"]);
  EXPECT_EQ(b_->op_calls(), by_token["b"]);
  EXPECT_EQ(set_->stats(0).items.load() + set_->stats(1).items.load(), 200u);
  EXPECT_EQ(set_->stats(0).inflight.load(), 0u);
}

TEST_F(TokenSetTest, ARetryableFailureMovesTheItemToAnotherTokenInTheSameCall) {
  Clone("k");
  MakeEngine();
  a_->FailWith(hsm::Outcome::kRetryable, absl::UnavailableError("CKR_DEVICE_REMOVED"));
  auto resp = Batch(100);
  for (int i = 0; i < resp.results_size(); ++i) {
    const auto& r = resp.results(i);
    ASSERT_FALSE(r.has_error()) << r.error().message();
    EXPECT_EQ(r.token(), "b");
    EXPECT_EQ(Open(r), "secret-" + std::to_string(i));
  }
  EXPECT_GT(a_->op_calls(), 0) << "token a was never tried: the test shows nothing";
  EXPECT_EQ(set_->stats(0).failovers.load(), static_cast<uint64_t>(a_->op_calls()));
}

TEST_F(TokenSetTest, ATokenThatIsDownIsNotTriedWhileAnotherIsUp) {
  Clone("k");
  MakeEngine();
  a_->SetHealthy(false);
  auto resp = Batch(50);
  for (const auto& r : resp.results()) {
    ASSERT_FALSE(r.has_error()) << r.error().message();
    EXPECT_EQ(r.token(), "b");
  }
  EXPECT_EQ(a_->op_calls(), 0);
  EXPECT_EQ(set_->KeysWithoutUpToken(), std::vector<std::string>{});
  b_->SetHealthy(false);
  EXPECT_EQ(set_->KeysWithoutUpToken(), std::vector<std::string>{"k"});
  auto down = Batch(3);
  for (const auto& r : down.results()) EXPECT_EQ(r.error().code(), ItemError::UNAVAILABLE);
}

TEST_F(TokenSetTest, ADecryptFailureIsFinalAndNeverTriedOnAnotherToken) {
  Clone("k");
  MakeEngine();
  a_->FailWith(hsm::Outcome::kDecryptFailed);
  auto resp = Batch(100);
  int failed = 0;
  for (const auto& r : resp.results()) {
    if (r.token() == "a") {
      EXPECT_EQ(r.error().code(), ItemError::DECRYPT_FAILED);
      ++failed;
    } else {
      EXPECT_FALSE(r.has_error()) << r.error().message();
    }
  }
  EXPECT_GT(failed, 0) << "token a was never chosen: the test shows nothing";
  // Every item reached exactly one token.
  EXPECT_EQ(a_->op_calls() + b_->op_calls(), 100);
}

TEST_F(TokenSetTest, AKeyOnlyOnATokenThatIsDownIsUnavailableNotUnknown) {
  a_->AddKeyPem("k", key_pem_, 2048, NativeOaep());
  b_->AddKey("other", 2048, NativeOaep());
  MakeEngine();
  a_->SetHealthy(false);
  auto resp = Batch(4);
  for (const auto& r : resp.results()) EXPECT_EQ(r.error().code(), ItemError::UNAVAILABLE);
  auto unknown = Batch(2, "nowhere");
  for (const auto& r : unknown.results()) EXPECT_EQ(r.error().code(), ItemError::KEY_NOT_FOUND);
}

TEST_F(TokenSetTest, ATokenWhoseKeyDiffersIsRefusedForItNamingBothHashes) {
  a_->AddKeyPem("k", key_pem_, 2048, NativeOaep());
  b_->AddKey("k", 2048, NativeOaep());  // same name, another key
  MakeEngine();
  auto refused = set_->ResolveOn(1, "k");
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  const std::string a_hash = hsm::SpkiSha256Hex(a_->key("k").info.spki_der);
  const std::string b_hash = hsm::SpkiSha256Hex(b_->key("k").info.spki_der);
  EXPECT_THAT(refused.status().message(), HasSubstr(a_hash));
  EXPECT_THAT(refused.status().message(), HasSubstr(b_hash));
  EXPECT_THAT(refused.status().message(), HasSubstr("token 'b'"));
  auto resp = Batch(60);
  for (const auto& r : resp.results()) {
    ASSERT_FALSE(r.has_error()) << r.error().message();
    EXPECT_EQ(r.token(), "a");
  }
  EXPECT_EQ(b_->op_calls(), 0) << "the token with the other key was used";
  EXPECT_EQ(set_->Holders()["k"], (std::set<size_t>{0}));
  // The token with the right key down: unavailable, and still never the other key.
  a_->SetHealthy(false);
  auto down = Batch(5);
  for (const auto& r : down.results()) EXPECT_EQ(r.error().code(), ItemError::UNAVAILABLE);
  EXPECT_EQ(b_->op_calls(), 0);
}

TEST_F(TokenSetTest, EachTokenGivesItsOwnBestPath) {
  hsm::KeyCapabilities raw_only;  // SoftHSM2-like for OAEP-SHA256: raw RSA only
  raw_only.decrypt = {RsaPadding::kOaepSha1};
  raw_only.raw_rsa = true;
  Clone("k", NativeOaep(), raw_only);
  MakeEngine(/*b_host_unpadding=*/true);
  auto resp = Batch(100);
  std::map<std::string, std::set<int>> paths;
  for (const auto& r : resp.results()) {
    ASSERT_FALSE(r.has_error()) << r.error().message();
    paths[r.token()].insert(r.path());
  }
  EXPECT_EQ(paths["a"], (std::set<int>{v1::TOKEN_DECRYPT}));
  EXPECT_EQ(paths["b"], (std::set<int>{v1::HOST_UNPADDING}));
}

TEST_F(TokenSetTest, APaddingOneTokenCannotDoRunsOnTheOther) {
  hsm::KeyCapabilities sha1_only;
  sha1_only.decrypt = {RsaPadding::kOaepSha1};
  Clone("k", sha1_only, NativeOaep());
  MakeEngine(/*b_host_unpadding=*/false);
  auto resp = Batch(40);
  for (const auto& r : resp.results()) {
    ASSERT_FALSE(r.has_error()) << r.error().message();
    EXPECT_EQ(r.token(), "b");
  }
}

TEST_F(TokenSetTest, EnableAndDisableWriteEveryTokenAndSayWhichMissedIt) {
  Clone("k");
  MakeEngine();
  auto off = set_->SetEnabled("k", false);
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_FALSE(a_->key("k").info.enabled);
  EXPECT_FALSE(b_->key("k").info.enabled);
  b_->SetHealthy(false);
  auto on = set_->SetEnabled("k", true);
  EXPECT_EQ(on.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(on.status().message(), HasSubstr("'b'"));
  EXPECT_TRUE(a_->key("k").info.enabled);
}

TEST_F(TokenSetTest, ASetOfOneIsItsToken) {
  a_->AddKeyPem("k", key_pem_, 2048, NativeOaep());
  auto one = hsm::TokenSet::Of(a_);
  EXPECT_EQ(one->member(0).name, "label-a");
  EXPECT_EQ(one->TokenLabel(), "label-a");
  RewrapEngine::Options o;
  engine_ = std::make_unique<RewrapEngine>(a_, o);
  auto resp = Batch(3);
  for (const auto& r : resp.results()) {
    ASSERT_FALSE(r.has_error()) << r.error().message();
    EXPECT_EQ(r.token(), "label-a");
  }
  a_->SetHealthy(false);
  auto down = Batch(1);
  EXPECT_EQ(down.results(0).error().code(), ItemError::UNAVAILABLE);
}

}  // namespace
}  // namespace hsmrewrap::service
