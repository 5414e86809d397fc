// The Apple payload plist: written by our own XML writer straight into wiped memory, it must
// be the text libplist's plist_to_xml writes for the same tree (libplist wrote it before
// and is the reference here), and the CMS around it must decrypt to it.
#include "crypto/apple_payload.h"

#include <plist/plist.h>

#include <string>

#include "gtest/gtest.h"
#include "tests/support/status_matchers.h"
#include "tests/unit/crypto/test_util.h"

namespace hsmrewrap::crypto {
namespace {

using ::hsmrewrap::test::StatusIs;
using testing::CmsDecrypt;
using testing::RsaKey;
using testing::SelfSignedCert;
using testing::ToBytes;

// What libplist writes for the payload tree (the code this project used to build it with).
std::string LibplistXml(const Bytes& pfx, const std::string& password_utf8,
                        const ApplePayloadOptions& o) {
  plist_t array = plist_new_array();
  plist_t dict = plist_new_dict();
  plist_array_append_item(array, dict);
  plist_dict_set_item(dict, "PayloadType", plist_new_string("com.apple.security.pkcs12"));
  plist_dict_set_item(dict, "PayloadVersion", plist_new_uint(1));
  plist_dict_set_item(dict, "PayloadUUID", plist_new_string(o.payload_uuid.c_str()));
  plist_dict_set_item(dict, "PayloadIdentifier", plist_new_string(o.payload_identifier.c_str()));
  plist_dict_set_item(dict, "PayloadDisplayName", plist_new_string(o.display_name.c_str()));
  plist_dict_set_item(dict, "PayloadContent",
                      plist_new_data(reinterpret_cast<const char*>(pfx.data()), pfx.size()));
  plist_dict_set_item(dict, "Password", plist_new_string(password_utf8.c_str()));
  char* xml = nullptr;
  uint32_t len = 0;
  plist_to_xml(array, &xml, &len);
  std::string out(xml, len);
  plist_to_xml_free(xml);
  plist_free(array);
  return out;
}

std::string Text(const SecretBytes& b) { return std::string(b.begin(), b.end()); }

ApplePayloadOptions Options(const std::string& uuid, const std::string& name) {
  ApplePayloadOptions o;
  o.payload_uuid = uuid;
  o.payload_identifier = "com.hsmrewrap.pkcs12." + uuid;
  o.display_name = name;
  return o;
}

TEST(ApplePayloadPlist, IsLibplistsTextForEveryDataLength) {
  // PFX lengths around the 45-byte base64 lines and the 3-byte groups.
  for (size_t n : {1u, 2u, 3u, 44u, 45u, 46u, 89u, 90u, 91u, 135u, 1000u, 2533u}) {
    Bytes pfx(n);
    for (size_t i = 0; i < n; ++i) pfx[i] = static_cast<uint8_t>(i * 37 + 11);
    const auto o = Options("0F3C6A2E-4D1B-4C5A-9E8F-7A6B5C4D3E2F", "Imported certificate");
    auto xml = BuildPkcs12PayloadPlist(pfx, ToBytes("pw-123"), o);
    ASSERT_TRUE(xml.ok()) << xml.status();
    EXPECT_EQ(Text(*xml), LibplistXml(pfx, "pw-123", o)) << n << " bytes";
  }
}

TEST(ApplePayloadPlist, EscapesAsLibplistDoes) {
  const Bytes pfx = ToBytes("not really a pfx");
  const auto o = Options("A&B<C>D\"E'F", "name <&> \"quoted\" 'x'");
  // &, <, > escaped; quotes, tab, CR and LF kept; UTF-8 kept; "]]>" is not special.
  const std::string pw = "p&w<1>]]>\"'\t\r\n \xC3\xA9\xE4\xB8\x96";
  auto xml = BuildPkcs12PayloadPlist(pfx, ToBytes(pw), o);
  ASSERT_TRUE(xml.ok()) << xml.status();
  EXPECT_EQ(Text(*xml), LibplistXml(pfx, pw, o));
}

TEST(ApplePayloadPlist, Latin1PasswordsBecomeUtf8) {
  const Bytes pfx = ToBytes("pfx");
  const auto o = Options("U", "N");
  auto xml = BuildPkcs12PayloadPlist(pfx, Bytes{'c', 'a', 'f', 0xE9, '!'}, o);  // "café!" Latin-1
  ASSERT_TRUE(xml.ok()) << xml.status();
  EXPECT_EQ(Text(*xml), LibplistXml(pfx, "caf\xC3\xA9!", o));
}

TEST(ApplePayloadPlist, DefaultsAreARandomUuidAndItsIdentifier) {
  auto xml = BuildPkcs12PayloadPlist(ToBytes("pfx"), ToBytes("pw"));
  ASSERT_TRUE(xml.ok()) << xml.status();
  const std::string text = Text(*xml);
  const std::string tag = "<key>PayloadUUID</key>\n\t\t<string>";
  const size_t at = text.find(tag);
  ASSERT_NE(at, std::string::npos) << text;
  const std::string uuid = text.substr(at + tag.size(), 36);
  EXPECT_THAT(uuid, ::testing::MatchesRegex(
                        "[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}"));
  EXPECT_NE(text.find("<string>com.hsmrewrap.pkcs12." + uuid + "</string>"), std::string::npos);
  EXPECT_NE(text.find("<string>Imported certificate</string>"), std::string::npos);
}

TEST(ApplePayloadPlist, RefusesWhatXmlCannotCarry) {
  EXPECT_THAT(BuildPkcs12PayloadPlist(ToBytes("pfx"), Bytes{'a', 0x01, 'b'}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "control character"));
  EXPECT_THAT(BuildPkcs12PayloadPlist(Bytes(), ToBytes("pw")).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "PFX is empty"));
}

TEST(ApplePayload, CmsDecryptsToThePlist) {
  auto key = RsaKey(2048);
  auto cert = SelfSignedCert(key.get(), "device", 7);
  auto device = Certificate::Parse(testing::CertDer(cert.get()));
  ASSERT_TRUE(device.ok()) << device.status();
  const Bytes pfx = ToBytes("the pfx bytes");
  const auto o = Options("11111111-2222-4333-8444-555555555555", "Imported certificate");
  CmsOptions cms;
  cms.key_transport = CmsKeyTransport::kRsaPkcs1;
  auto der = AppleEncryptedPkcs12Payload(*device, pfx, ToBytes("s3cret"), cms, o);
  ASSERT_TRUE(der.ok()) << der.status();
  auto plain = CmsDecrypt(*der, key.get(), cert.get());
  ASSERT_TRUE(plain.has_value());
  EXPECT_EQ(std::string(plain->begin(), plain->end()), LibplistXml(pfx, "s3cret", o));
}

}  // namespace
}  // namespace hsmrewrap::crypto
