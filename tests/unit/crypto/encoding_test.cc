#include "crypto/encoding.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/support/status_matchers.h"
#include "tests/unit/crypto/test_util.h"

namespace hsmrewrap::crypto {
namespace {

using ::hsmrewrap::test::StatusIs;
using testing::ToBytes;

TEST(HexTest, EncodesLowercaseAndRoundTripsAllBytes) {
  std::vector<uint8_t> all(256);
  for (int i = 0; i < 256; ++i) all[i] = static_cast<uint8_t>(i);
  const std::string hex = HexEncode(all);
  ASSERT_EQ(hex.size(), 512u);
  EXPECT_EQ(hex.substr(0, 8), "00010203");
  EXPECT_EQ(hex.substr(504), "fcfdfeff");
  auto back = HexDecode(hex);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, all);
}

TEST(HexTest, DecodesUppercaseAndEmpty) {
  auto b = HexDecode("F5E1acB8");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, (std::vector<uint8_t>{0xf5, 0xe1, 0xac, 0xb8}));
  auto empty = HexDecode("");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

TEST(HexTest, RejectsBadInput) {
  for (const char* bad : {"0", "abc", "zz", "0g", " 00", "00 ", "0x00", "-1"}) {
    EXPECT_THAT(HexDecode(bad).status(), StatusIs(absl::StatusCode::kInvalidArgument)) << bad;
  }
}

TEST(Base64Test, Rfc4648Vectors) {
  const std::pair<const char*, const char*> kVectors[] = {
      {"", ""},
      {"f", "Zg=="},
      {"fo", "Zm8="},
      {"foo", "Zm9v"},
      {"foob", "Zm9vYg=="},
      {"fooba", "Zm9vYmE="},
      {"foobar", "Zm9vYmFy"},
  };
  for (const auto& [plain, encoded] : kVectors) {
    EXPECT_EQ(Base64Encode(ToBytes(plain)), encoded);
    auto decoded = Base64Decode(encoded);
    ASSERT_TRUE(decoded.ok()) << encoded;
    EXPECT_EQ(*decoded, ToBytes(plain));
  }
}

TEST(Base64Test, RoundTripsEveryLengthAndAllBytes) {
  for (size_t len = 0; len < 300; ++len) {
    std::vector<uint8_t> data(len);
    for (size_t i = 0; i < len; ++i) data[i] = static_cast<uint8_t>(i * 37 + len);
    const std::string enc = Base64Encode(data);
    EXPECT_EQ(enc.size(), 4 * ((len + 2) / 3));
    EXPECT_EQ(enc.find('\n'), std::string::npos);
    auto dec = Base64Decode(enc);
    ASSERT_TRUE(dec.ok()) << len;
    EXPECT_EQ(*dec, data);
  }
  // An RSA-2048 ciphertext is 344 characters (base64 of 256 bytes, with padding).
  EXPECT_EQ(Base64Encode(std::vector<uint8_t>(256, 0xA5)).size(), 344u);
}

TEST(Base64Test, ToleratesWhitespace) {
  auto dec = Base64Decode("  Zm9v\r\nYmFy\n\tZg= =\n");
  ASSERT_TRUE(dec.ok()) << dec.status();
  EXPECT_EQ(*dec, ToBytes("foobarf"));
}

TEST(Base64Test, RejectsBadInput) {
  for (const char* bad : {"Zg", "Zg=", "Zg===", "Z", "Zm9", "Zm9v=", "Zg==Zg==", "Zm-v", "Zm_v",
                          "Zm9v!", "====", "Zh==", "Zm9=", "Zm8=Zg=="}) {
    EXPECT_THAT(Base64Decode(bad).status(), StatusIs(absl::StatusCode::kInvalidArgument)) << bad;
  }
}

}  // namespace
}  // namespace hsmrewrap::crypto
