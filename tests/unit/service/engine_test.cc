#include "service/engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/cms.h>
#include <openssl/pem.h>

#include <future>

#include "crypto/rsa.h"
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

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    backend_ = std::make_shared<FakeBackend>();
    hsm::KeyCapabilities softhsm_like;  // OAEP-SHA1 native, SHA-2 only by raw RSA
    softhsm_like.decrypt = {RsaPadding::kOaepSha1, RsaPadding::kPkcs1};
    softhsm_like.raw_rsa = true;
    backend_->AddKey("svc", 2048, softhsm_like);
    hsm::KeyCapabilities nss_like;
    nss_like.decrypt = {RsaPadding::kOaepSha1, RsaPadding::kOaepSha256, RsaPadding::kOaepSha384,
                        RsaPadding::kOaepSha512};
    nss_like.unwrap = nss_like.decrypt;
    backend_->AddKey("native", 2048, nss_like);
    backend_->AddKey("legacy", 2048, softhsm_like, /*allow_pkcs1=*/true);
    device_pem_ = testing::MakeRsaPrivateKeyPem(2048);
    device_spki_ = Str(testing::SpkiOfPrivatePem(device_pem_));
    MakeEngine(true);
  }

  void MakeEngine(bool allow_host_unpadding, Limits limits = {}) {
    engine_.reset();
    RewrapEngine::Options o;
    o.workers = 2;
    o.allow_host_unpadding = allow_host_unpadding;
    o.limits = limits;
    engine_ = std::make_unique<RewrapEngine>(backend_, o);
  }

  std::string Seal(const std::string& key, RsaPadding p, const std::string& secret) {
    auto pub = crypto::PublicKey::FromSpki(backend_->key(key).info.spki_der);
    EXPECT_TRUE(pub.ok());
    auto ct = crypto::RsaEncrypt(*pub, p, Span(secret));
    EXPECT_TRUE(ct.ok()) << ct.status();
    return Str(*ct);
  }

  v1::RewrapItem Item(const std::string& id, const std::string& key, v1::Padding p,
                      const std::string& ct, v1::OutputFormat f = v1::RSA_OAEP_SHA256) {
    v1::RewrapItem item;
    item.set_id(id);
    item.set_key_name(key);
    item.set_padding(p);
    item.set_ciphertext(ct);
    item.mutable_recipient()->set_public_key(device_spki_);
    item.set_format(f);
    return item;
  }

  std::string OpenBare(const v1::RewrapResult& r, RsaPadding p) {
    auto pt = crypto::RsaDecryptWithPrivateKey(Span(device_pem_), p, Span(r.ciphertext()));
    EXPECT_TRUE(pt.ok()) << pt.status();
    return pt.ok() ? std::string(pt->begin(), pt->end()) : "";
  }

  std::string OpenCms(const v1::RewrapResult& r) {
    BIO* kb = BIO_new_mem_buf(device_pem_.data(), static_cast<int>(device_pem_.size()));
    EVP_PKEY* pkey = PEM_read_bio_PrivateKey(kb, nullptr, nullptr, nullptr);
    const unsigned char* p = reinterpret_cast<const unsigned char*>(r.ciphertext().data());
    CMS_ContentInfo* cms =
        d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(r.ciphertext().size()));
    BIO* out = BIO_new(BIO_s_mem());
    std::string result;
    if (cms && CMS_decrypt(cms, pkey, nullptr, nullptr, out, 0) == 1) {
      char* data = nullptr;
      long n = BIO_get_mem_data(out, &data);
      result.assign(data, static_cast<size_t>(n));
    }
    CMS_ContentInfo_free(cms);
    BIO_free(out);
    BIO_free(kb);
    EVP_PKEY_free(pkey);
    return result;
  }

  v1::RewrapResponse RunBatch(const v1::RewrapRequest& req) {
    std::promise<v1::RewrapResponse> done;
    auto st = engine_->Submit(std::make_shared<v1::RewrapRequest>(req),
                              [&](v1::RewrapResponse r) { done.set_value(std::move(r)); });
    EXPECT_TRUE(st.ok()) << st;
    return done.get_future().get();
  }

  std::shared_ptr<FakeBackend> backend_;
  std::unique_ptr<RewrapEngine> engine_;
  std::string device_pem_, device_spki_;
};

TEST_F(EngineTest, PicksTheBestPathPerPaddingAndToken) {
  const std::string secret = "Pa55word!";
  // SoftHSM-like key: SHA-1 natively, SHA-256 by host unpadding.
  auto r1 = engine_->ProcessItem(
      Item("a", "svc", v1::OAEP_SHA1, Seal("svc", RsaPadding::kOaepSha1, secret)));
  EXPECT_EQ(r1.path(), v1::TOKEN_DECRYPT);
  EXPECT_EQ(OpenBare(r1, RsaPadding::kOaepSha256), secret);
  auto r2 = engine_->ProcessItem(
      Item("b", "svc", v1::OAEP_SHA256, Seal("svc", RsaPadding::kOaepSha256, secret)));
  EXPECT_EQ(r2.path(), v1::HOST_UNPADDING);
  EXPECT_EQ(OpenBare(r2, RsaPadding::kOaepSha256), secret);
  // NSS-like key with wrapping: bare output stays in the token; CMS needs the host.
  backend_->SetWrapPaddings({RsaPadding::kOaepSha256});
  auto r3 = engine_->ProcessItem(
      Item("c", "native", v1::OAEP_SHA512, Seal("native", RsaPadding::kOaepSha512, secret)));
  EXPECT_EQ(r3.path(), v1::IN_TOKEN);
  EXPECT_EQ(OpenBare(r3, RsaPadding::kOaepSha256), secret);
  auto r4 = engine_->ProcessItem(Item("d", "native", v1::OAEP_SHA512,
                                      Seal("native", RsaPadding::kOaepSha512, secret),
                                      v1::CMS_ENVELOPED));
  EXPECT_EQ(r4.path(), v1::TOKEN_DECRYPT);
  EXPECT_EQ(OpenCms(r4), secret);
  // An output padding the token cannot wrap with falls back to TOKEN_DECRYPT.
  auto r5 = engine_->ProcessItem(Item("e", "native", v1::OAEP_SHA512,
                                      Seal("native", RsaPadding::kOaepSha512, secret),
                                      v1::RSA_OAEP_SHA1));
  EXPECT_EQ(r5.path(), v1::TOKEN_DECRYPT);
  EXPECT_EQ(OpenBare(r5, RsaPadding::kOaepSha1), secret);
}

TEST_F(EngineTest, HostUnpaddingOnlyWhenAllowed) {
  MakeEngine(false);
  auto r = engine_->ProcessItem(
      Item("a", "svc", v1::OAEP_SHA256, Seal("svc", RsaPadding::kOaepSha256, "x")));
  EXPECT_EQ(r.error().code(), ItemError::UNSUPPORTED);
  EXPECT_THAT(r.error().message(), HasSubstr("host unpadding is not allowed"));
  EXPECT_EQ(backend_->decrypt_calls(), 0);
}

TEST_F(EngineTest, EveryDecryptFailureLooksTheSame) {
  const std::string ct = Seal("svc", RsaPadding::kOaepSha1, "secret");
  std::string tampered = ct;
  tampered[10] ^= 1;
  auto r1 = engine_->ProcessItem(Item("a", "svc", v1::OAEP_SHA1, tampered));
  std::string wrong_key = Seal("native", RsaPadding::kOaepSha256, "secret");
  auto r2 = engine_->ProcessItem(Item("b", "svc", v1::OAEP_SHA256, wrong_key));
  // The backend's typed decryption failure (whatever the token said: CKR_FUNCTION_FAILED,
  // CKR_ENCRYPTED_DATA_INVALID...).
  backend_->FailWith(hsm::Outcome::kDecryptFailed);
  auto r3 = engine_->ProcessItem(Item("c", "svc", v1::OAEP_SHA1, ct));
  auto r4 = engine_->ProcessItem(Item("d", "svc", v1::OAEP_SHA1, tampered));
  for (const auto* r : {&r1, &r2, &r3, &r4}) {
    EXPECT_EQ(r->error().code(), ItemError::DECRYPT_FAILED) << r->id();
    EXPECT_EQ(r->error().message(), hsm::kDecryptFailedText) << r->id();
    EXPECT_TRUE(r->ciphertext().empty());
    EXPECT_EQ(r->ByteSizeLong() - r->id().size(), r1.ByteSizeLong() - r1.id().size())
        << "response size differs";
  }
  // Token loss is not a decryption failure: it is retryable.
  backend_->FailWith(hsm::Outcome::kRetryable,
                     absl::UnavailableError("C_Decrypt: CKR_DEVICE_REMOVED"));
  auto r5 = engine_->ProcessItem(Item("e", "svc", v1::OAEP_SHA1, ct));
  EXPECT_EQ(r5.error().code(), ItemError::UNAVAILABLE);
}

// Issue 14: only the token's answer about a ciphertext is DECRYPT_FAILED. Overload, time-outs
// and refusals keep their own (retryable or explanatory) codes, whatever their status says.
TEST_F(EngineTest, OnlyATypedDecryptFailureIsDecryptFailed) {
  const std::string ct = Seal("svc", RsaPadding::kOaepSha1, "secret");
  struct Case {
    hsm::Outcome outcome;
    absl::Status status;
    ItemError::Code want;
  };
  const Case cases[] = {
      {hsm::Outcome::kRetryable, absl::ResourceExhaustedError("no PKCS#11 session free"),
       ItemError::RESOURCE_EXHAUSTED},
      {hsm::Outcome::kRetryable, absl::DeadlineExceededError("the token did not answer in time"),
       ItemError::DEADLINE_EXCEEDED},
      {hsm::Outcome::kRetryable, absl::UnavailableError("the token was lost during the call"),
       ItemError::UNAVAILABLE},
      // A retryable outcome stays retryable even with a status code that is not.
      {hsm::Outcome::kRetryable, absl::InternalError("odd"), ItemError::UNAVAILABLE},
      {hsm::Outcome::kRefused, absl::InvalidArgumentError(hsm::kSecretTooLongText),
       ItemError::INVALID_ITEM},
      {hsm::Outcome::kRefused, absl::UnimplementedError("token cannot C_Decrypt"),
       ItemError::UNSUPPORTED},
      {hsm::Outcome::kRefused, absl::NotFoundError("no key"), ItemError::KEY_NOT_FOUND},
      {hsm::Outcome::kRefused, absl::InternalError("C_WrapKey failed: CKR_FUNCTION_FAILED"),
       ItemError::INTERNAL},
  };
  for (const Case& c : cases) {
    backend_->FailWith(c.outcome, c.status);
    auto r = engine_->ProcessItem(Item("x", "svc", v1::OAEP_SHA1, ct));
    EXPECT_EQ(r.error().code(), c.want) << c.status;
    EXPECT_TRUE(r.ciphertext().empty());
  }
}

TEST_F(EngineTest, BadItemsFailAloneWithTheirOwnErrorBeforeTheToken) {
  const std::string good = Seal("svc", RsaPadding::kOaepSha1, "good-secret");
  v1::RewrapRequest req;
  *req.add_items() = Item("ok1", "svc", v1::OAEP_SHA1, good);
  *req.add_items() = Item("", "svc", v1::OAEP_SHA1, good);                 // empty id
  *req.add_items() = Item("short", "svc", v1::OAEP_SHA1, good.substr(1));  // wrong length
  *req.add_items() = Item("nokey", "nope", v1::OAEP_SHA1, good);           // unknown key
  auto bad_enum = Item("enum", "svc", v1::OAEP_SHA1, good);
  bad_enum.set_padding(static_cast<v1::Padding>(42));
  *req.add_items() = bad_enum;
  auto bad_fmt = Item("fmt", "svc", v1::OAEP_SHA1, good);
  bad_fmt.set_format(static_cast<v1::OutputFormat>(99));
  *req.add_items() = bad_fmt;
  auto bad_rcp = Item("rcp", "svc", v1::OAEP_SHA1, good);
  bad_rcp.mutable_recipient()->set_certificate("not a certificate");
  *req.add_items() = bad_rcp;
  auto small = Item("small", "svc", v1::OAEP_SHA1, good);
  small.mutable_recipient()->set_public_key(
      Str(testing::SpkiOfPrivatePem(testing::MakeRsaPrivateKeyPem(1024))));
  *req.add_items() = small;
  *req.add_items() = Item("dup", "svc", v1::OAEP_SHA1, good);
  *req.add_items() = Item("dup", "svc", v1::OAEP_SHA1, good);
  *req.add_items() = Item("pkcs1", "svc", v1::PKCS1, good);  // key without allow_pkcs1
  auto norcp = Item("norcp", "svc", v1::OAEP_SHA1, good);
  norcp.clear_recipient();
  *req.add_items() = norcp;
  *req.add_items() = Item("ok2", "svc", v1::OAEP_SHA1, good, v1::CMS_ENVELOPED);

  auto resp = RunBatch(req);
  ASSERT_EQ(resp.results_size(), req.items_size());
  for (int i = 0; i < req.items_size(); ++i)
    EXPECT_EQ(resp.results(i).id(), req.items(i).id()) << i;
  auto expect = [&](int i, ItemError::Code code, const std::string& text) {
    EXPECT_EQ(resp.results(i).error().code(), code)
        << resp.results(i).id() << ": " << resp.results(i).error().message();
    EXPECT_THAT(resp.results(i).error().message(), HasSubstr(text)) << resp.results(i).id();
    EXPECT_TRUE(resp.results(i).ciphertext().empty());
  };
  EXPECT_EQ(OpenBare(resp.results(0), RsaPadding::kOaepSha256), "good-secret");
  expect(1, ItemError::INVALID_ITEM, "id is empty");
  expect(2, ItemError::INVALID_ITEM, "255 bytes");
  expect(3, ItemError::KEY_NOT_FOUND, "'nope'");
  expect(4, ItemError::INVALID_ITEM, "padding: unknown value 42");
  expect(5, ItemError::INVALID_ITEM, "format: unknown value 99");
  expect(6, ItemError::INVALID_ITEM, "certificate does not parse");
  expect(7, ItemError::INVALID_ITEM, "1024 bits");
  expect(8, ItemError::INVALID_ITEM, "more than once");
  expect(9, ItemError::INVALID_ITEM, "more than once");
  expect(10, ItemError::UNSUPPORTED, "allow_pkcs1");
  expect(11, ItemError::INVALID_ITEM, "recipient is not set");
  EXPECT_EQ(OpenCms(resp.results(12)), "good-secret");
  // Only the two good items reached the token.
  EXPECT_EQ(backend_->decrypt_calls(), 2);
}

TEST_F(EngineTest, Pkcs1OnlyOnKeysThatAllowIt) {
  auto r = engine_->ProcessItem(
      Item("a", "legacy", v1::PKCS1, Seal("legacy", RsaPadding::kPkcs1, "legacy-pw")));
  EXPECT_EQ(r.path(), v1::TOKEN_DECRYPT);
  EXPECT_EQ(OpenBare(r, RsaPadding::kOaepSha256), "legacy-pw");
}

TEST_F(EngineTest, RotationToAnotherServiceKey) {
  auto item = Item("rot", "svc", v1::OAEP_SHA256, Seal("svc", RsaPadding::kOaepSha256, "rotate-me"),
                   v1::CMS_ENVELOPED);
  item.mutable_recipient()->set_service_key("native");
  auto r = engine_->ProcessItem(item);
  ASSERT_FALSE(r.has_error()) << r.error().message();
  // The default for a service key is OAEP-SHA512 (Intune's default), and it opens with "native".
  auto back = engine_->ProcessItem(Item("back", "native", v1::OAEP_SHA512, r.ciphertext()));
  ASSERT_FALSE(back.has_error()) << back.error().message();
  EXPECT_EQ(OpenBare(back, RsaPadding::kOaepSha256), "rotate-me");
  item.mutable_recipient()->set_service_key("missing");
  EXPECT_EQ(engine_->ProcessItem(item).error().code(), ItemError::KEY_NOT_FOUND);
}

TEST_F(EngineTest, DisabledKeyIsRefused) {
  auto info = backend_->SetEnabled("svc", false);
  ASSERT_TRUE(info.ok());
  auto r = engine_->ProcessItem(
      Item("a", "svc", v1::OAEP_SHA1, Seal("svc", RsaPadding::kOaepSha1, "x")));
  EXPECT_EQ(r.error().code(), ItemError::KEY_DISABLED);
  EXPECT_EQ(backend_->decrypt_calls(), 0);
}

TEST_F(EngineTest, BatchLimits) {
  Limits limits;
  limits.max_batch_items = 3;
  limits.max_inflight_items = 3;
  MakeEngine(true, limits);
  v1::RewrapRequest empty;
  auto st = engine_->Submit(std::make_shared<v1::RewrapRequest>(empty),
                            [](v1::RewrapResponse) { FAIL(); });
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("empty"));
  v1::RewrapRequest big;
  for (int i = 0; i < 4; ++i) *big.add_items() = Item(std::to_string(i), "svc", v1::OAEP_SHA1, "x");
  st =
      engine_->Submit(std::make_shared<v1::RewrapRequest>(big), [](v1::RewrapResponse) { FAIL(); });
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(st.message()), HasSubstr("limit is 3"));
  EXPECT_EQ(engine_->inflight(), 0u);
}

TEST_F(EngineTest, ManyItemsComeBackInOrder) {
  v1::RewrapRequest req;
  std::vector<std::string> secrets;
  for (int i = 0; i < 200; ++i) {
    secrets.push_back("secret-" + std::to_string(i));
    *req.add_items() = Item("id" + std::to_string(i), "svc", v1::OAEP_SHA1,
                            Seal("svc", RsaPadding::kOaepSha1, secrets.back()));
  }
  auto resp = RunBatch(req);
  ASSERT_EQ(resp.results_size(), 200);
  for (int i = 0; i < 200; ++i) {
    ASSERT_EQ(resp.results(i).id(), "id" + std::to_string(i));
    EXPECT_EQ(OpenBare(resp.results(i), RsaPadding::kOaepSha256), secrets[static_cast<size_t>(i)]);
  }
  EXPECT_EQ(engine_->inflight(), 0u);
}

// require_in_token: per key through the gate (the policy file's keys: section) and for every
// key through the engine option (config require_in_token). The fake token builds no CMS.
class RequireInTokenGate final : public ItemGate {
 public:
  explicit RequireInTokenGate(std::string key) : key_(std::move(key)) {}
  absl::Status Admit() override { return absl::OkStatus(); }
  absl::Status CheckKey(const std::string&) override { return absl::OkStatus(); }
  absl::Status CheckRecipient(const v1::Recipient&, const RecipientCache::Parsed*) override {
    return absl::OkStatus();
  }
  bool RequireInToken(const std::string& key) override { return key == key_; }
  void ItemDone(const v1::RewrapResult&) override {}
  void BatchDone(const v1::RewrapRequest&, v1::RewrapResponse*,
                 const std::vector<std::string>&) override {}

 private:
  std::string key_;
};

TEST_F(EngineTest, RequireInTokenRefusesInsteadOfFallingBack) {
  backend_->SetWrapPaddings({RsaPadding::kOaepSha256});
  RequireInTokenGate gate("native");
  const std::string secret = "in-token-only";
  auto ct = Seal("native", RsaPadding::kOaepSha512, secret);
  // A bare output the token wraps: IN_TOKEN, required or not.
  auto bare = engine_->ProcessItem(Item("a", "native", v1::OAEP_SHA512, ct), &gate);
  EXPECT_EQ(bare.path(), v1::IN_TOKEN);
  EXPECT_EQ(OpenBare(bare, RsaPadding::kOaepSha256), secret);
  // CMS: this token builds none in the token; the required key fails, naming the mechanisms.
  const int before = backend_->decrypt_calls();
  auto cms = engine_->ProcessItem(Item("b", "native", v1::OAEP_SHA512, ct, v1::CMS_ENVELOPED),
                                  &gate);
  EXPECT_EQ(cms.error().code(), ItemError::UNSUPPORTED);
  EXPECT_THAT(cms.error().message(),
              AllOf(HasSubstr("require_in_token"), HasSubstr("CKM_AES_CBC_PAD"),
                    HasSubstr("CMS_ENVELOPED with AES-256-CBC")));
  EXPECT_EQ(backend_->decrypt_calls(), before) << "refused before any token call";
  // Another key is not required to: it falls back to TOKEN_DECRYPT.
  auto other = engine_->ProcessItem(
      Item("c", "svc", v1::OAEP_SHA1, Seal("svc", RsaPadding::kOaepSha1, secret),
           v1::CMS_ENVELOPED),
      &gate);
  EXPECT_EQ(other.path(), v1::TOKEN_DECRYPT);
  EXPECT_EQ(OpenCms(other), secret);

  // The engine option requires it of every key, gate or not.
  RewrapEngine::Options o;
  o.allow_host_unpadding = true;
  o.require_in_token = true;
  RewrapEngine strict(backend_, o);
  auto r = strict.ProcessItem(Item("d", "svc", v1::OAEP_SHA1, Seal("svc", RsaPadding::kOaepSha1,
                                                                   secret), v1::CMS_ENVELOPED));
  EXPECT_EQ(r.error().code(), ItemError::UNSUPPORTED);
  EXPECT_THAT(r.error().message(), HasSubstr("require_in_token"));
  // in_token_cms off: never built in the token, and the message says why.
  o.require_in_token = true;
  o.in_token_cms = false;
  RewrapEngine off(backend_, o);
  auto r2 = off.ProcessItem(Item("e", "svc", v1::OAEP_SHA1, Seal("svc", RsaPadding::kOaepSha1,
                                                                 secret), v1::CMS_ENVELOPED));
  EXPECT_THAT(r2.error().message(), HasSubstr("in_token_cms: false"));
}

}  // namespace
}  // namespace hsmrewrap::service
