#include "proto/conversions.h"

#include <gtest/gtest.h>

namespace hsmrewrap::proto_crypto {
namespace {

using crypto::RsaPadding;

constexpr RsaPadding kAll[] = {RsaPadding::kOaepSha1, RsaPadding::kOaepSha256,
                               RsaPadding::kOaepSha384, RsaPadding::kOaepSha512,
                               RsaPadding::kPkcs1};

TEST(ProtoConversions, PaddingRoundTripsAndBareFormatsAgree) {
  for (RsaPadding p : kAll) {
    const v1::Padding proto = PaddingToProto(p);
    RsaPadding back = RsaPadding::kPkcs1;
    ASSERT_TRUE(PaddingFromProto(proto, &back)) << v1::Padding_Name(proto);
    EXPECT_EQ(back, p);
    const v1::OutputFormat bare = BareFormatFor(proto, v1::CMS_ENVELOPED);
    EXPECT_TRUE(IsBareFormat(bare));
    EXPECT_FALSE(IsCmsFormat(bare));
    EXPECT_EQ(BarePadding(bare), p) << v1::OutputFormat_Name(bare);
  }
  EXPECT_EQ(PaddingToProto(RsaPadding::kOaepSha512), v1::OAEP_SHA512);
  EXPECT_EQ(BareFormatFor(v1::PKCS1, v1::CMS_ENVELOPED), v1::RSA_PKCS1);
}

TEST(ProtoConversions, UnknownValuesGetTheDocumentedDefaults) {
  RsaPadding out = RsaPadding::kPkcs1;
  EXPECT_FALSE(PaddingFromProto(v1::PADDING_UNSPECIFIED, &out));
  EXPECT_FALSE(PaddingFromProto(static_cast<v1::Padding>(99), &out));
  EXPECT_EQ(out, RsaPadding::kPkcs1);  // untouched
  EXPECT_EQ(BareFormatFor(v1::PADDING_UNSPECIFIED, v1::RSA_OAEP_SHA512), v1::RSA_OAEP_SHA512);
  EXPECT_EQ(BarePadding(v1::CMS_ENVELOPED), RsaPadding::kOaepSha256);
  EXPECT_EQ(BarePadding(v1::APPLE_ENCRYPTED_PAYLOAD), RsaPadding::kOaepSha256);
  EXPECT_EQ(ContentCipherFromProto(static_cast<v1::ContentCipher>(99)),
            crypto::CmsContentCipher::kAes256Cbc);
  EXPECT_EQ(PaddingSchemeName(static_cast<RsaPadding>(99)), std::string());
}

TEST(ProtoConversions, FormatsCiphersAndNames) {
  EXPECT_TRUE(IsCmsFormat(v1::CMS_ENVELOPED));
  EXPECT_TRUE(IsCmsFormat(v1::CMS_ENVELOPED_PKCS1));
  EXPECT_FALSE(IsCmsFormat(v1::APPLE_ENCRYPTED_PAYLOAD));
  EXPECT_FALSE(IsBareFormat(v1::APPLE_ENCRYPTED_PAYLOAD));
  EXPECT_FALSE(IsBareFormat(v1::CMS_ENVELOPED_PKCS1));
  EXPECT_EQ(KeyTransportFor(v1::CMS_ENVELOPED), crypto::CmsKeyTransport::kRsaOaepSha256);
  EXPECT_EQ(KeyTransportFor(v1::CMS_ENVELOPED_PKCS1), crypto::CmsKeyTransport::kRsaPkcs1);
  EXPECT_EQ(KeyTransportFor(v1::APPLE_ENCRYPTED_PAYLOAD), crypto::CmsKeyTransport::kRsaPkcs1);
  EXPECT_EQ(ContentCipherFromProto(v1::AES_256_CBC), crypto::CmsContentCipher::kAes256Cbc);
  EXPECT_EQ(ContentCipherFromProto(v1::AES_128_CBC), crypto::CmsContentCipher::kAes128Cbc);
  EXPECT_EQ(ContentCipherFromProto(v1::DES_EDE3_CBC), crypto::CmsContentCipher::kDes3Cbc);
  EXPECT_EQ(std::string(PaddingSchemeName(RsaPadding::kOaepSha256)), "oaepSha256");
  EXPECT_EQ(std::string(PaddingSchemeName(RsaPadding::kPkcs1)), "pkcs1");
}

}  // namespace
}  // namespace hsmrewrap::proto_crypto
