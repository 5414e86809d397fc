// Policy parsing and matching without a daemon: typed identities (uri: / cn:, and what a
// bare string means), one certificate matching two entries, require_eku. The same rules
// against the real rewrapd: tests/security/security_test.cc.
#include "service/policy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"

namespace hsmrewrap::service {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

class TempPolicy {
 public:
  explicit TempPolicy(const std::string& text) {
    char path[] = "/tmp/rewrapd-policy-XXXXXX";
    int fd = mkstemp(path);
    EXPECT_GE(fd, 0);
    close(fd);
    path_ = path;
    std::ofstream(path_) << text;
  }
  ~TempPolicy() { unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

absl::StatusOr<std::shared_ptr<const Policy>> LoadText(const std::string& text) {
  TempPolicy p(text);
  return Policy::Load(p.path());
}

Identity Cert(std::vector<std::string> uris, std::string cn) {
  Identity id;
  id.uris = std::move(uris);
  id.cn = std::move(cn);
  id.authenticated = true;
  return id;
}

TEST(PolicyIdentityTest, TypedAndBareForms) {
  struct Case {
    const char* text;
    const char* want;
  };
  for (const Case& c : {
           Case{"uri:spiffe://example.org/connector", "uri:spiffe://example.org/connector"},
           Case{"URI:spiffe://example.org/connector", "uri:spiffe://example.org/connector"},
           Case{"cn:connector.example.org", "cn:connector.example.org"},
           Case{"CN:Connector", "cn:Connector"},
           // A CN may spell a URI when it says so.
           Case{"cn:spiffe://example.org/connector", "cn:spiffe://example.org/connector"},
           // Bare: a scheme makes it a URI SAN ...
           Case{"spiffe://example.org/connector", "uri:spiffe://example.org/connector"},
           Case{"urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
                "uri:urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66"},
           Case{"svc+x.y-z:thing", "uri:svc+x.y-z:thing"},
           // ... anything else is a CN.
           Case{"connector.example.org", "cn:connector.example.org"},
           Case{"hsm-admin", "cn:hsm-admin"},
           Case{"1abc:def", "cn:1abc:def"},    // a scheme starts with a letter
           Case{"my_host:1", "cn:my_host:1"},  // '_' is not in a scheme
           Case{"Jane Doe: ops", "cn:Jane Doe: ops"},
       }) {
    auto got = Policy::ParseIdentity(c.text);
    ASSERT_TRUE(got.ok()) << c.text << ": " << got.status();
    EXPECT_EQ(*got, c.want) << c.text;
  }
  for (const char* bad : {"", "uri:", "cn:", "URI:"}) {
    EXPECT_FALSE(Policy::ParseIdentity(bad).ok()) << "'" << bad << "'";
  }
}

TEST(PolicyIdentityTest, BareAndTypedFormsOfOneIdentityAreOneIdentity) {
  auto p = LoadText(
      "clients:\n"
      "  - {name: a, identities: [\"spiffe://x/a\"], rpcs: [rewrap]}\n"
      "  - {name: b, identities: [\"uri:spiffe://x/a\"], rpcs: [rewrap]}\n");
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(std::string(p.status().message()),
              AllOf(HasSubstr("'uri:spiffe://x/a' is in two clients"), HasSubstr("'a' and 'b'")));
  // The same string as a CN and as a URI are two identities.
  EXPECT_TRUE(LoadText("clients:\n"
                       "  - {name: a, identities: [\"spiffe://x/a\"], rpcs: [rewrap]}\n"
                       "  - {name: b, identities: [\"cn:spiffe://x/a\"], rpcs: [rewrap]}\n")
                  .ok());
  auto empty = LoadText("clients:\n  - {name: a, identities: [\"cn:\"], rpcs: [rewrap]}\n");
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(std::string(empty.status().message()), HasSubstr("clients[0].identities"));
}

TEST(PolicyFindTest, MatchesPerKind) {
  auto p = LoadText(
      "clients:\n"
      "  - {name: connector, identities: [\"spiffe://x/connector\"], rpcs: [rewrap]}\n"
      "  - {name: reader, identities: [reader, \"uri:spiffe://x/reader\"], rpcs: [keys.read]}\n"
      "  - {name: admin, identities: [\"cn:admin\"], rpcs: [keys.admin]}\n"
      "  - {name: anon, anonymous: true, rpcs: [keys.read]}\n");
  ASSERT_TRUE(p.ok()) << p.status();
  const Policy& pol = **p;
  // The CN that spells the connector's URI SAN is nobody.
  auto m = pol.Find(Cert({}, "spiffe://x/connector"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->client, nullptr);
  // The URI SAN is the connector.
  m = pol.Find(Cert({"spiffe://x/connector"}, "host-17"));
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_NE(m->client, nullptr);
  EXPECT_EQ(m->client->name, "connector");
  EXPECT_EQ(m->matched, "uri:spiffe://x/connector");
  // A URI SAN that spells a bare CN entry is nobody either.
  m = pol.Find(Cert({"admin"}, ""));
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->client, nullptr);
  m = pol.Find(Cert({}, "admin"));
  ASSERT_TRUE(m.ok());
  ASSERT_NE(m->client, nullptr);
  EXPECT_EQ(m->matched, "cn:admin");
  // Two names of one entry: that entry, the URI SAN recorded.
  m = pol.Find(Cert({"spiffe://x/reader"}, "reader"));
  ASSERT_TRUE(m.ok());
  ASSERT_NE(m->client, nullptr);
  EXPECT_EQ(m->client->name, "reader");
  EXPECT_EQ(m->matched, "uri:spiffe://x/reader");
  // No certificate: the anonymous entry.
  m = pol.Find(Identity{});
  ASSERT_TRUE(m.ok());
  ASSERT_NE(m->client, nullptr);
  EXPECT_EQ(m->client->name, "anon");
  EXPECT_EQ(m->matched, "anonymous");
}

TEST(PolicyFindTest, CertificateMatchingTwoEntriesIsAmbiguous) {
  auto p = LoadText(
      "clients:\n"
      "  - {name: connector, identities: [\"spiffe://x/connector\"], rpcs: [rewrap]}\n"
      "  - {name: reader, identities: [reader], rpcs: [keys.read]}\n"
      "  - {name: admin, identities: [\"uri:spiffe://x/admin\"], rpcs: [keys.admin]}\n");
  ASSERT_TRUE(p.ok()) << p.status();
  // CN in one entry, URI SAN in another, in either order of the file.
  auto m = (*p)->Find(Cert({"spiffe://x/connector"}, "reader"));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(m.status().message()),
              AllOf(HasSubstr("ambiguous"), HasSubstr("'connector' (uri:spiffe://x/connector)"),
                    HasSubstr("'reader' (cn:reader)")));
  // Two URI SANs in two entries.
  m = (*p)->Find(Cert({"spiffe://x/admin", "spiffe://x/connector"}, ""));
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()),
              AllOf(HasSubstr("'connector'"), HasSubstr("'admin'")));
}

// --- require_eku ---

struct CertKey {
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key{nullptr, EVP_PKEY_free};
  std::unique_ptr<X509, decltype(&X509_free)> x509{nullptr, X509_free};
};

// A self-signed end-entity certificate with extendedKeyUsage `eku` (OpenSSL syntax; "" =
// none), valid now.
crypto::Certificate DeviceCert(const std::string& eku) {
  CertKey c;
  c.key.reset(EVP_EC_gen("P-256"));
  c.x509.reset(X509_new());
  X509* x = c.x509.get();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("device"), -1, -1, 0);
  X509_set_issuer_name(x, X509_get_subject_name(x));
  X509_set_pubkey(x, c.key.get());
  if (!eku.empty()) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, NID_ext_key_usage, eku.c_str());
    EXPECT_NE(ext, nullptr) << eku;
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
  }
  EXPECT_GT(X509_sign(x, c.key.get(), EVP_sha256()), 0);
  unsigned char* der = nullptr;
  const int len = i2d_X509(x, &der);
  auto cert = crypto::Certificate::Parse(absl::MakeConstSpan(der, static_cast<size_t>(len)));
  OPENSSL_free(der);
  EXPECT_TRUE(cert.ok()) << cert.status();
  return *std::move(cert);
}

TEST(PolicyEkuTest, RequireEkuParsing) {
  auto with = [](const std::string& list) {
    return LoadText(absl::StrCat("clients:\n  - name: c\n    identities: [c]\n",
                                 "    recipients: {require_eku: ", list, "}\n"));
  };
  for (const char* ok : {"[emailProtection]", "[\"1.3.6.1.5.5.7.3.4\"]",
                         "[emailProtection, \"1.3.6.1.4.1.99999.1\"]", "emailProtection"}) {
    auto p = with(ok);
    ASSERT_TRUE(p.ok()) << ok << ": " << p.status();
  }
  auto p = with("[emailProtection, \"1.3.6.1.4.1.99999.1\"]");
  ASSERT_TRUE(p.ok());
  const auto& req = (*p)->clients()[0].recipients.require_eku;
  ASSERT_EQ(req.size(), 2u);
  EXPECT_EQ(req[0].name, "emailProtection (1.3.6.1.5.5.7.3.4)");
  EXPECT_EQ(req[1].name, "1.3.6.1.4.1.99999.1");
  struct Bad {
    const char* list;
    const char* says;
  };
  for (const Bad& b : {Bad{"[emailProtektion]", "neither a dotted OID"},
                       Bad{"[anyExtendedKeyUsage]", "anyExtendedKeyUsage cannot be required"},
                       Bad{"[\"2.5.29.37.0\"]", "anyExtendedKeyUsage cannot be required"},
                       Bad{"[]", "at least one"}}) {
    auto bad = with(b.list);
    ASSERT_FALSE(bad.ok()) << b.list;
    EXPECT_THAT(std::string(bad.status().message()),
                AllOf(HasSubstr("recipients.require_eku"), HasSubstr(b.says)));
  }
}

TEST(PolicyEkuTest, RequiredEkuOnListedCertificate) {
  const crypto::Certificate email = DeviceCert("emailProtection");
  const crypto::Certificate tls = DeviceCert("clientAuth");
  const crypto::Certificate both = DeviceCert("clientAuth,emailProtection");
  const crypto::Certificate any = DeviceCert("anyExtendedKeyUsage");
  const crypto::Certificate none = DeviceCert("");
  std::string fps;
  for (const auto* c : {&email, &tls, &both, &any, &none})
    absl::StrAppend(&fps, fps.empty() ? "" : ", ", "\"", c->Sha256Hex(), "\"");
  auto p = LoadText(absl::StrCat(
      "clients:\n  - name: mdm\n    identities: [c]\n", "    recipients: {fingerprints: [", fps,
      "], require_eku: [emailProtection]}\n", "  - name: plain\n    identities: [d]\n",
      "    recipients: {fingerprints: [", fps, "]}\n"));
  ASSERT_TRUE(p.ok()) << p.status();
  const Policy::Client& mdm = (*p)->clients()[0];
  const Policy::Client& plain = (*p)->clients()[1];
  EXPECT_TRUE(mdm.CheckCertificate(email).ok());
  EXPECT_TRUE(mdm.CheckCertificate(both).ok());
  for (const auto* c : {&tls, &any, &none}) {
    absl::Status st = mdm.CheckCertificate(*c);
    EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied);
    EXPECT_THAT(std::string(st.message()),
                AllOf(HasSubstr("lacks the extendedKeyUsage 'mdm' requires"),
                      HasSubstr("emailProtection (1.3.6.1.5.5.7.3.4)")));
  }
  EXPECT_THAT(std::string(mdm.CheckCertificate(tls).message()), HasSubstr("it has clientAuth"));
  EXPECT_THAT(std::string(mdm.CheckCertificate(none).message()),
              HasSubstr("it has no extendedKeyUsage"));
  // Without require_eku every listed certificate passes.
  for (const auto* c : {&email, &tls, &both, &any, &none})
    EXPECT_TRUE(plain.CheckCertificate(*c).ok());
}

TEST(PolicyKeysTest, RequireInTokenPerKey) {
  auto p = LoadText(
      "clients: [{name: a, anonymous: true, rpcs: [rewrap], keys: ['*']}]\n"
      "keys:\n  intune-2024: {require_in_token: true}\n  old: {require_in_token: false}\n");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE((*p)->RequireInToken("intune-2024"));
  EXPECT_FALSE((*p)->RequireInToken("old"));
  EXPECT_FALSE((*p)->RequireInToken("other"));
  auto all = LoadText("clients: []\nkeys: {'*': {require_in_token: true}}\n");
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_TRUE((*all)->RequireInToken("any"));
  // Mistakes name the entry.
  EXPECT_THAT(LoadText("clients: []\nkeys: {k: {require_in_tokn: true}}\n").status().message(),
              HasSubstr("keys.k.require_in_tokn"));
  EXPECT_THAT(LoadText("clients: []\nkeys: {k: {require_in_token: maybe}}\n").status().message(),
              HasSubstr("expected true or false"));
  EXPECT_THAT(LoadText("clients: []\nkeys: [k]\n").status().message(),
              HasSubstr("expected a mapping"));
}

}  // namespace
}  // namespace hsmrewrap::service
