// End to end with the openssl command line as sealer and as device:
//   GetPublicKey(PEM) -> svc.pem
//   openssl pkeyutl -encrypt -pubin -inkey svc.pem (OAEP SHA-256 / SHA-512) seals a password
//   Rewrap to a device certificate from `openssl req -x509 -newkey rsa:2048` as CMS
//   openssl cms -decrypt -inform DER -in out.der -recip dev.crt -inkey dev.key == password
#include <gtest/gtest.h>

#include "tests/integration/it_env.h"
#include "tests/integration/it_util.h"
#include "tests/leakcheck/record.h"

namespace hsmrewrap::it {
namespace {

class E2eOpenSsl : public RewrapdTest {
 protected:
  void SetUp() override {
    RewrapdTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    tmp_ = std::make_unique<TempDir>("e2e-openssl");
  }
  std::string F(const std::string& name) const { return tmp_->File(name); }

  // The service key: the embedded default's `default` on SoftHSM2, a created one elsewhere.
  void ServiceKeyName(std::string* name) {
    static std::string cached;
    if (cached.empty()) {
      if (CurrentToken() == TokenKind::kSoftHsm) {
        cached = "default";
      } else {
        ServiceKey k;
        ASSERT_NO_FATAL_FAILURE(CreateServiceKey(h_, "e2e-service", 2048, false, &k));
        cached = k.name;
      }
    }
    *name = cached;
  }

  void Run(const std::vector<std::string>& argv, CommandResult* r) {
    *r = RunCommand(argv);
    ASSERT_EQ(r->exit_code, 0) << r->Describe(argv);
  }

  void Roundtrip(const std::string& md, v1::OutputFormat format) {
    std::string key;
    ASSERT_NO_FATAL_FAILURE(ServiceKeyName(&key));
    // 1. The service public key as PEM, as Export-IntunePublicKey -FileFormat PEM would give.
    {
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      v1::GetPublicKeyRequest req;
      req.set_name(key);
      req.set_format(v1::PEM_SPKI);
      v1::GetPublicKeyResponse resp;
      grpc::Status s = h_->keys().GetPublicKey(&ctx, req, &resp);
      ASSERT_TRUE(s.ok()) << "GetPublicKey: " << StatusText(s);
      ASSERT_TRUE(WriteFile(F("svc.pem"), resp.public_key()));
    }
    // 2. A random ASCII password sealed with openssl pkeyutl.
    const std::string password = RandomAscii(32);
    leakcheck::RecordSecret(password);  // sealed by openssl, not RsaEncrypt: record it here
    ASSERT_TRUE(WriteFile(F("password.txt"), password));
    CommandResult r;
    ASSERT_NO_FATAL_FAILURE(
        Run({"openssl", "pkeyutl", "-encrypt", "-pubin", "-inkey", F("svc.pem"), "-in",
             F("password.txt"), "-out", F("sealed.bin"), "-pkeyopt", "rsa_padding_mode:oaep",
             "-pkeyopt", "rsa_oaep_md:" + md, "-pkeyopt", "rsa_mgf1_md:" + md},
            &r));
    const std::string sealed = ReadFileOrEmpty(F("sealed.bin"));
    ASSERT_EQ(sealed.size(), 256u);
    // 3. The device: key and self-signed certificate from openssl req (an end-entity one:
    // by default openssl req -x509 makes a CA certificate, which rewrapd refuses).
    ASSERT_NO_FATAL_FAILURE(
        Run({"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", F("dev.key"),
             "-out", F("dev.crt"), "-subj", "/CN=e2e device", "-days", "2", "-addext",
             "basicConstraints=critical,CA:FALSE", "-addext", "keyUsage=critical,keyEncipherment"},
            &r));
    // 4. Rewrap to the certificate (PEM, as read from the file).
    v1::RewrapRequest req;
    v1::RewrapItem* item = req.add_items();
    item->set_id("e2e");
    item->set_key_name(key);
    item->set_padding(md == "sha512" ? v1::OAEP_SHA512 : v1::OAEP_SHA256);
    item->set_ciphertext(sealed);
    item->mutable_recipient()->set_certificate(ReadFileOrEmpty(F("dev.crt")));
    item->set_format(format);
    v1::RewrapResponse resp;
    ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, req, &resp));
    const auto& res = resp.results(0);
    ASSERT_FALSE(res.has_error()) << CodeName(res.error().code()) << " " << res.error().message();
    EXPECT_EQ(res.id(), "e2e");
    printf("[e2e] %s OAEP-%s -> %s: path %s, %zu bytes of CMS\n", TokenName(CurrentToken()),
           md.c_str(), FormatName(format), PathName(res.path()), res.ciphertext().size());
    ASSERT_TRUE(WriteFile(F("out.der"), res.ciphertext()));
    // 5. The device opens it with openssl cms.
    const std::vector<std::string> decrypt = {"openssl",    "cms",    "-decrypt",   "-inform",
                                              "DER",        "-in",    F("out.der"), "-recip",
                                              F("dev.crt"), "-inkey", F("dev.key")};
    ASSERT_NO_FATAL_FAILURE(Run(decrypt, &r));
    EXPECT_EQ(r.out, password) << r.Describe(decrypt);
    // And the key transport is what the format promises.
    CommandResult printed;
    ASSERT_NO_FATAL_FAILURE(Run(
        {"openssl", "cms", "-cmsout", "-print", "-inform", "DER", "-in", F("out.der")}, &printed));
    if (format == v1::CMS_ENVELOPED) {
      EXPECT_NE(printed.out.find("rsaesOaep"), std::string::npos) << printed.out;
      EXPECT_NE(printed.out.find("aes-256-cbc"), std::string::npos) << printed.out;
    } else {
      EXPECT_NE(printed.out.find("rsaEncryption"), std::string::npos) << printed.out;
    }
  }

  std::unique_ptr<TempDir> tmp_;
};

TEST_F(E2eOpenSsl, OaepSha256ToCms) { Roundtrip("sha256", v1::CMS_ENVELOPED); }
TEST_F(E2eOpenSsl, OaepSha512ToCms) { Roundtrip("sha512", v1::CMS_ENVELOPED); }
TEST_F(E2eOpenSsl, OaepSha256ToCmsPkcs1) { Roundtrip("sha256", v1::CMS_ENVELOPED_PKCS1); }
TEST_F(E2eOpenSsl, OaepSha512ToCmsPkcs1) { Roundtrip("sha512", v1::CMS_ENVELOPED_PKCS1); }

}  // namespace
}  // namespace hsmrewrap::it
