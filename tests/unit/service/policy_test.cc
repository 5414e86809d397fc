// Policy parsing and matching without a daemon: typed identities (uri: / cn:, and what a
// bare string means), one certificate matching two entries. The same rules
// against the real rewrapd: tests/security/security_test.cc.
#include "service/policy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
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

}  // namespace
}  // namespace hsmrewrap::service
