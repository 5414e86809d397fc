// crypto::CheckEncryptionUse: which certificates may be rewrap recipients (keyUsage,
// basicConstraints). Against the real rewrapd: tests/security/security_test.cc.
#include "crypto/cert_use.h"

#include <openssl/x509v3.h>

#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "tests/support/status_matchers.h"
#include "tests/unit/crypto/test_util.h"

namespace hsmrewrap::crypto {
namespace {

using ::hsmrewrap::test::StatusIs;
using testing::CertDer;
using testing::EcKey;
using testing::RsaKey;
using testing::SelfSignedCert;

// A copy of `x` with extensions added (OpenSSL config syntax per NID), self-signed again.
Bytes WithExtensions(X509* x, EVP_PKEY* key, const std::vector<std::pair<int, std::string>>& exts) {
  testing::X509Ptr c(X509_dup(x));
  for (const auto& [nid, value] : exts) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, c.get(), c.get(), nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
    EXPECT_NE(ext, nullptr) << value;
    X509_add_ext(c.get(), ext, -1);
    X509_EXTENSION_free(ext);
  }
  EXPECT_GT(X509_sign(c.get(), key, EVP_sha256()), 0);
  return CertDer(c.get());
}

TEST(CertUseTest, EncryptionUse) {
  auto rsa = RsaKey(2048);
  auto ec = EcKey("P-256");
  auto rsa_x = SelfSignedCert(rsa.get(), "rsa device", 1);
  auto ec_x = SelfSignedCert(ec.get(), "ec device", 2);
  struct Case {
    const char* what;
    Bytes der;
    const char* refusal;  // nullptr = fit
  };
  const Case cases[] = {
      {"rsa, no extensions", CertDer(rsa_x.get()), nullptr},
      {"ec, no extensions", CertDer(ec_x.get()), nullptr},
      {"rsa, keyEncipherment",
       WithExtensions(rsa_x.get(), rsa.get(),
                      {{NID_key_usage, "critical,digitalSignature,keyEncipherment"},
                       {NID_basic_constraints, "critical,CA:FALSE"}}),
       nullptr},
      {"ec, keyAgreement", WithExtensions(ec_x.get(), ec.get(), {{NID_key_usage, "keyAgreement"}}),
       nullptr},
      {"rsa, digitalSignature only",
       WithExtensions(rsa_x.get(), rsa.get(), {{NID_key_usage, "critical,digitalSignature"}}),
       "keyUsage (digitalSignature) lacks keyEncipherment"},
      {"rsa, keyAgreement only",
       WithExtensions(rsa_x.get(), rsa.get(), {{NID_key_usage, "keyAgreement"}}),
       "lacks keyEncipherment"},
      {"rsa, dataEncipherment only",
       WithExtensions(rsa_x.get(), rsa.get(), {{NID_key_usage, "dataEncipherment"}}),
       "lacks keyEncipherment"},
      {"ec, keyEncipherment only",
       WithExtensions(ec_x.get(), ec.get(), {{NID_key_usage, "keyEncipherment"}}),
       "lacks keyAgreement"},
      {"ec, digitalSignature only",
       WithExtensions(ec_x.get(), ec.get(), {{NID_key_usage, "digitalSignature,nonRepudiation"}}),
       "keyUsage (digitalSignature, nonRepudiation) lacks keyAgreement"},
      {"rsa CA",
       WithExtensions(rsa_x.get(), rsa.get(), {{NID_basic_constraints, "critical,CA:TRUE"}}),
       "basicConstraints CA:TRUE"},
      {"rsa CA with keyEncipherment",
       WithExtensions(
           rsa_x.get(), rsa.get(),
           {{NID_basic_constraints, "CA:TRUE"}, {NID_key_usage, "keyEncipherment,keyCertSign"}}),
       "basicConstraints CA:TRUE"},
      {"two keyUsage extensions",
       WithExtensions(rsa_x.get(), rsa.get(),
                      {{NID_key_usage, "keyEncipherment"}, {NID_key_usage, "keyEncipherment"}}),
       "two keyUsage extensions"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    auto cert = Certificate::Parse(c.der);
    ASSERT_TRUE(cert.ok()) << cert.status();
    if (c.refusal == nullptr) {
      EXPECT_TRUE(CheckEncryptionUse(*cert).ok()) << CheckEncryptionUse(*cert);
    } else {
      EXPECT_THAT(CheckEncryptionUse(*cert),
                  StatusIs(absl::StatusCode::kInvalidArgument, c.refusal));
    }
  }
}

}  // namespace
}  // namespace hsmrewrap::crypto
