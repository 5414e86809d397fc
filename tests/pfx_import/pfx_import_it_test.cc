// pfx-import against a real rewrapd started by the test (label integration): the key comes
// from GetPublicKey, --verify passes, and a record's encryptedPfxPassword decrypts through
// the service.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "crypto/encoding.h"
#include "crypto/keys.h"
#include "crypto/rsa.h"
#include "hsmrewrap/v1/rewrap.grpc.pb.h"
#include "tests/leakcheck/record.h"
#include "tests/pfx_import/test_util.h"
#include "tests/support/files.h"
#include "tests/support/rewrapd_harness.h"
#include "tests/support/temp_dir.h"

namespace hsmrewrap::pfx_test {
namespace {

namespace v1 = ::hsmrewrap::v1;
using ::testing::HasSubstr;

absl::Span<const uint8_t> Span(const std::string& s) {
  return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

class PfxImportService : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string error;
    rewrapd_ = test::RewrapdHarness::Start(test::TokenKind::kSoftHsm, &error).release();
    if (rewrapd_ == nullptr) start_error_ = new std::string(error);
  }
  static void TearDownTestSuite() {
    delete rewrapd_;
    rewrapd_ = nullptr;
    delete start_error_;
    start_error_ = nullptr;
  }
  void SetUp() override {
    if (start_error_ != nullptr) FAIL() << *start_error_;
  }

  static test::RewrapdHarness* rewrapd_;
  static std::string* start_error_;
  test::TempDir tmp_;
};
test::RewrapdHarness* PfxImportService::rewrapd_ = nullptr;
std::string* PfxImportService::start_error_ = nullptr;

// Decrypts a record's sealed password through the service: rewrap to our own key, then
// decrypt locally.
std::string UnsealThroughService(const std::string& address, const nlohmann::json& record,
                                 v1::Padding padding) {
  EVP_PKEY* device = NewRsaKey(2048);
  const std::string device_pub = PublicKeyPem(device);
  const std::string device_key = KeyPem(device);
  EVP_PKEY_free(device);
  auto sealed = crypto::Base64Decode(record["encryptedPfxPassword"].get<std::string>());
  if (!sealed.ok()) return "<bad base64>";
  auto stub = v1::Rewrap::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  v1::RewrapRequest req;
  auto* item = req.add_items();
  item->set_id("t");
  item->set_key_name(record["keyName"].get<std::string>());
  item->set_padding(padding);
  item->set_ciphertext(sealed->data(), sealed->size());
  item->mutable_recipient()->set_public_key(device_pub);
  item->set_format(v1::RSA_OAEP_SHA256);
  v1::RewrapResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  grpc::Status s = stub->Rewrap(&ctx, req, &resp);
  if (!s.ok()) return "<rpc: " + s.error_message() + ">";
  if (resp.results_size() != 1 || resp.results(0).has_error()) {
    return "<item error: " + resp.results(0).error().message() + ">";
  }
  auto plain = crypto::RsaDecryptWithPrivateKey(Span(device_key), crypto::RsaPadding::kOaepSha256,
                                                Span(resp.results(0).ciphertext()));
  if (!plain.ok()) return "<decrypt failed>";
  return std::string(plain->begin(), plain->end());
}

TEST_F(PfxImportService, VerifyPassesAndRecordDecryptsThroughTheService) {
  const std::string testcert = SharedDir() + "/vectors/intune/testcert.pfx";
  std::string pfx_path = testcert;
  std::string password = "TestCert";
  leakcheck::RecordSecret(password);  // the vector's PFX password, sealed by pfx-import
  if (test::ReadFileOrEmpty(testcert)
          .empty()) {  // no shared vectors: a generated PFX does the same job
    KeyCert kc = MakeKeyCert("it", -3600, 86400, "critical,digitalSignature,keyEncipherment");
    pfx_path = tmp_.File("it.pfx");
    test::WriteFile(pfx_path, MakePfx(kc.key, kc.cert, {}, password));
  }
  test::WriteFile(tmp_.File("pw"), password + "\n");
  test::CommandResult r =
      RunPfxImport({"--service", rewrapd_->address(), "--pfx", pfx_path, "--password-file",
                    tmp_.File("pw"), "--upn", "alice@contoso.example", "--purpose",
                    "smimeEncryption", "--verify", "--out", tmp_.File("out.jsonl")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("verified through the service: 1"));
  auto j = nlohmann::json::parse(test::ReadFileOrEmpty(tmp_.File("out.jsonl")));
  EXPECT_EQ(j["keyName"], "default");
  EXPECT_EQ(j["providerName"], "hsm-rewrap");
  EXPECT_EQ(j["paddingScheme"], "oaepSha512");
  EXPECT_EQ(UnsealThroughService(rewrapd_->address(), j, v1::OAEP_SHA512), password);
}

TEST_F(PfxImportService, BulkCsvWithVerifyAndOaepSha256) {
  KeyCert a = MakeKeyCert("a", -3600, 86400, "");
  KeyCert b = MakeKeyCert("b", -3600, 86400, "");
  // Passwords of 8 bytes or more, so that the leak check searches the logs for them.
  test::WriteFile(tmp_.File("a.pfx"), MakePfx(a.key, a.cert, {}, "pa\xC3\xA9-Secret-A"));
  test::WriteFile(tmp_.File("b.pfx"), MakePfx(b.key, b.cert, {}, "pb-Secret-B"));
  leakcheck::RecordSecret("pa\xE9-Secret-A");  // what pfx-import seals for a (see the end)
  test::WriteFile(tmp_.File("bad.pfx"), "garbage");
  test::WriteFile(tmp_.File("m.csv"),
                  "userPrincipalName,pfxPath,password\n"
                  "a@x,a.pfx,pa\xC3\xA9-Secret-A\n"
                  "b@x,b.pfx,pb-Secret-B\n"
                  "c@x,bad.pfx,pc\n");
  test::CommandResult r =
      RunPfxImport({"--service", rewrapd_->address(), "--csv", tmp_.File("m.csv"), "--padding",
                    "oaepSha256", "--verify", "--out", tmp_.File("out.jsonl")});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("2 imported, 0 skipped, 1 failed"));
  EXPECT_THAT(r.err, HasSubstr("verified through the service: 2"));
  std::istringstream lines(test::ReadFileOrEmpty(tmp_.File("out.jsonl")));
  std::string line;
  std::vector<std::string> got;
  while (std::getline(lines, line)) {
    got.push_back(
        UnsealThroughService(rewrapd_->address(), nlohmann::json::parse(line), v1::OAEP_SHA256));
  }
  EXPECT_THAT(got, ::testing::ElementsAre("pa\xE9-Secret-A", "pb-Secret-B"));
}

TEST_F(PfxImportService, UnknownKeyAndUnreachableServiceFailAtStartup) {
  KeyCert kc = MakeKeyCert("x", -3600, 86400, "");
  test::WriteFile(tmp_.File("x.pfx"), MakePfx(kc.key, kc.cert, {}, "p"));
  test::CommandResult r = RunPfxImport({"--service", rewrapd_->address(), "--key-name",
                                        "no-such-key", "--pfx", tmp_.File("x.pfx"), "--upn", "x@x"},
                                       {{"PFX_PASSWORD", "p"}});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_THAT(r.err, HasSubstr("no-such-key"));
  r = RunPfxImport(
      {"--service", "127.0.0.1:1", "--timeout", "2", "--pfx", tmp_.File("x.pfx"), "--upn", "x@x"},
      {{"PFX_PASSWORD", "p"}});
  EXPECT_EQ(r.exit_code, 3);
}

}  // namespace
}  // namespace hsmrewrap::pfx_test
