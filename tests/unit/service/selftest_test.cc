// The known-answer self-test (service/selftest.h) on a fake backend: it tests each key with
// a padding the key serves on its token, not with OAEP-SHA256 whatever the token can do.
#include "service/selftest.h"

#include <memory>

#include "gtest/gtest.h"
#include "service/engine.h"
#include "service/metrics.h"
#include "tests/unit/service/fake_backend.h"

namespace hsmrewrap::service {
namespace {

using crypto::RsaPadding;
using testing::FakeBackend;

std::unique_ptr<RewrapEngine> Engine(std::shared_ptr<FakeBackend> backend, bool host_unpadding) {
  RewrapEngine::Options o;
  o.workers = 1;
  o.allow_host_unpadding = host_unpadding;
  return std::make_unique<RewrapEngine>(std::move(backend), o);
}

SelfTestResult Only(const std::vector<SelfTestResult>& results) {
  EXPECT_EQ(results.size(), 1u);
  return results.empty() ? SelfTestResult{} : results[0];
}

// A token without OAEP-SHA2 (SoftHSM2's C_Decrypt does OAEP-SHA1 only) and without host
// unpadding: the key serves OAEP-SHA1 items, so its self-test must pass (it failed with
// UNSUPPORTED, OAEP-SHA256 being hard-coded).
TEST(SelfTestTest, UsesAPaddingTheKeyServes) {
  auto backend = std::make_shared<FakeBackend>();
  hsm::KeyCapabilities sha1_only;
  sha1_only.decrypt = {RsaPadding::kOaepSha1};
  backend->AddKey("sha1", 2048, sha1_only);
  auto engine = Engine(backend, /*host_unpadding=*/false);
  Metrics metrics;
  SelfTester tester(engine.get(), &metrics, std::chrono::seconds(0));
  const SelfTestResult r = Only(tester.RunNow("sha1"));
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_EQ(r.path, v1::TOKEN_DECRYPT);
  EXPECT_GE(backend->decrypt_calls(), 1);
}

// With host unpadding and raw RSA, OAEP-SHA256 is served (HOST_UNPADDING) and preferred.
TEST(SelfTestTest, PrefersOaepSha256WhereServed) {
  auto backend = std::make_shared<FakeBackend>();
  hsm::KeyCapabilities softhsm_like;
  softhsm_like.decrypt = {RsaPadding::kOaepSha1};
  softhsm_like.raw_rsa = true;
  backend->AddKey("svc", 2048, softhsm_like);
  auto engine = Engine(backend, /*host_unpadding=*/true);
  Metrics metrics;
  SelfTester tester(engine.get(), &metrics, std::chrono::seconds(0));
  const SelfTestResult r = Only(tester.RunNow("svc"));
  EXPECT_TRUE(r.ok) << r.message;
  EXPECT_EQ(r.path, v1::HOST_UNPADDING);
}

// A key the token can do nothing with fails, saying so.
TEST(SelfTestTest, KeyWithoutAnyPathFails) {
  auto backend = std::make_shared<FakeBackend>();
  backend->AddKey("none", 2048, hsm::KeyCapabilities{});
  auto engine = Engine(backend, /*host_unpadding=*/false);
  Metrics metrics;
  SelfTester tester(engine.get(), &metrics, std::chrono::seconds(0));
  const SelfTestResult r = Only(tester.RunNow("none"));
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.message.find("no padding"), std::string::npos) << r.message;
  EXPECT_EQ(backend->decrypt_calls(), 0);
}

}  // namespace
}  // namespace hsmrewrap::service
