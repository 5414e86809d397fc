// crypto/cms_assemble.h: the DER assembled from token-made parts is what OpenSSL's CMS API
// builds on the host for the same recipient and options, byte for byte apart from the random
// parts, and it decrypts with OpenSSL.
#include "crypto/cms_assemble.h"

#include <openssl/evp.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <string>
#include <tuple>

#include "crypto/cms.h"
#include "crypto/rsa.h"
#include "gtest/gtest.h"
#include "tests/support/status_matchers.h"
#include "tests/unit/crypto/test_util.h"

namespace hsmrewrap::crypto {
namespace {

using ::hsmrewrap::test::StatusIs;
using testing::CertDer;
using testing::CmsDecrypt;
using testing::EcKey;
using testing::RsaKey;
using testing::SelfSignedCert;
using testing::SpkiDer;
using testing::ToBytes;

// What a token makes for in-token CMS, made here with OpenSSL: a random content key and IV,
// the content under them (CBC, PKCS#7 padding), the key encrypted to the recipient.
struct TestParts : CmsTokenParts {
  Bytes content_key_for_test;
};

TestParts MakeParts(const PublicKey& recipient, const CmsOptions& o, const Bytes& content,
                    bool wrap_key = true) {
  const EVP_CIPHER* cipher = CmsEvpCipher(o.cipher);
  Bytes key = RandomBytes(static_cast<size_t>(EVP_CIPHER_get_key_length(cipher)));
  if (o.cipher == CmsContentCipher::kDes3Cbc) {  // DES parity, as a token's key generator sets it
    for (auto& b : key) {
      b = static_cast<uint8_t>(b & 0xfe);
      b = static_cast<uint8_t>(b | (__builtin_popcount(b) % 2 == 0 ? 1 : 0));
    }
  }
  TestParts parts;
  parts.content_key_for_test = key;
  parts.iv = RandomBytes(static_cast<size_t>(EVP_CIPHER_get_iv_length(cipher)));
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  parts.encrypted_content.resize(content.size() + 16);
  int n = 0, m = 0;
  EXPECT_EQ(EVP_EncryptInit_ex(ctx, cipher, nullptr, key.data(), parts.iv.data()), 1);
  EXPECT_EQ(EVP_EncryptUpdate(ctx, parts.encrypted_content.data(), &n, content.data(),
                              static_cast<int>(content.size())),
            1);
  EXPECT_EQ(EVP_EncryptFinal_ex(ctx, parts.encrypted_content.data() + n, &m), 1);
  EVP_CIPHER_CTX_free(ctx);
  parts.encrypted_content.resize(static_cast<size_t>(n + m));
  if (!wrap_key) return parts;
  const RsaPadding padding = o.key_transport == CmsKeyTransport::kRsaPkcs1 ? RsaPadding::kPkcs1
                                                                            : RsaPadding::kOaepSha256;
  auto ek = RsaEncrypt(recipient, padding, key);
  EXPECT_TRUE(ek.ok()) << ek.status();
  if (ek.ok()) parts.encrypted_key = *ek;
  return parts;
}

// Offsets of `needle` in `hay` (first occurrence), or npos.
size_t Find(const Bytes& hay, const Bytes& needle) {
  auto it = std::search(hay.begin(), hay.end(), needle.begin(), needle.end());
  return it == hay.end() ? std::string::npos : static_cast<size_t>(it - hay.begin());
}

// `host` equals `assembled` byte for byte outside the random parts (whose places are found
// in `assembled`; the same places in `host` since every length must match).
void ExpectSameApartFromRandomParts(const Bytes& host, const Bytes& assembled,
                                    const CmsTokenParts& parts) {
  ASSERT_EQ(host.size(), assembled.size());
  std::vector<bool> random(assembled.size(), false);
  for (const Bytes* part :
       {&parts.iv, &parts.encrypted_key, &parts.encrypted_content, &parts.ephemeral_point}) {
    if (part->empty()) continue;
    const size_t at = Find(assembled, *part);
    ASSERT_NE(at, std::string::npos);
    for (size_t i = 0; i < part->size(); ++i) random[at + i] = true;
  }
  size_t compared = 0;
  for (size_t i = 0; i < assembled.size(); ++i) {
    if (random[i]) continue;
    ++compared;
    ASSERT_EQ(host[i], assembled[i]) << "first difference at byte " << i;
  }
  EXPECT_GT(compared, 60u);  // frames, OIDs, parameters, recipient id
}

class CmsAssembleTest
    : public ::testing::TestWithParam<std::tuple<CmsKeyTransport, CmsContentCipher, int>> {};

TEST_P(CmsAssembleTest, CertificateRecipientMatchesHostBuildAndDecrypts) {
  const auto [kt, cipher, bits] = GetParam();
  auto pkey = RsaKey(bits);
  auto x = SelfSignedCert(pkey.get(), "device", 0x1234567);
  auto cert = Certificate::Parse(CertDer(x.get()));
  ASSERT_TRUE(cert.ok());
  const CmsOptions o{kt, cipher};
  const Bytes secret = ToBytes("pfx-password-\xc3\xa9t\xc3\xa9 42");
  const CmsTokenParts parts = MakeParts(cert->public_key(), o, secret);
  auto assembled = CmsAssembleToCertificate(*cert, o, parts);
  ASSERT_TRUE(assembled.ok()) << assembled.status();
  auto host = CmsEnvelopeToCertificate(*cert, secret, o);
  ASSERT_TRUE(host.ok()) << host.status();
  ExpectSameApartFromRandomParts(*host, *assembled, parts);
  auto back = CmsDecrypt(*assembled, pkey.get(), x.get());
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(*back, secret);
}

TEST_P(CmsAssembleTest, BareKeyRecipientMatchesHostBuildAndDecrypts) {
  const auto [kt, cipher, bits] = GetParam();
  auto pkey = RsaKey(bits);
  auto key = PublicKey::FromSpki(SpkiDer(pkey.get()));
  ASSERT_TRUE(key.ok());
  const CmsOptions o{kt, cipher};
  const Bytes secret = ToBytes("0123456789abcdef");  // a whole block: a full padding block
  const CmsTokenParts parts = MakeParts(*key, o, secret);
  auto assembled = CmsAssembleToPublicKey(*key, o, parts);
  ASSERT_TRUE(assembled.ok()) << assembled.status();
  auto host = CmsEnvelopeToPublicKey(*key, secret, o);
  ASSERT_TRUE(host.ok()) << host.status();
  ExpectSameApartFromRandomParts(*host, *assembled, parts);
  // OpenSSL finds a key-id recipient by trying the key when no certificate is given.
  auto back = CmsDecrypt(*assembled, pkey.get(), nullptr);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(*back, secret);
}

INSTANTIATE_TEST_SUITE_P(
    AllOptions, CmsAssembleTest,
    ::testing::Combine(::testing::Values(CmsKeyTransport::kRsaOaepSha256,
                                         CmsKeyTransport::kRsaPkcs1),
                       ::testing::Values(CmsContentCipher::kAes256Cbc,
                                         CmsContentCipher::kAes128Cbc, CmsContentCipher::kDes3Cbc),
                       ::testing::Values(2048, 3072)));

// EC recipients: parts as a token makes them (ephemeral key, KEK by ECDH + X9.63 KDF, AES
// key wrap), made here with HostEcKey; the assembled DER is OpenSSL's apart from the random
// parts (the ephemeral point too) and decrypts with OpenSSL.
class CmsAssembleEcTest
    : public ::testing::TestWithParam<std::tuple<const char*, CmsContentCipher>> {};

TestParts MakeEcParts(const PublicKey& recipient, CmsContentCipher cipher, const Bytes& content) {
  TestParts parts = MakeParts(recipient, CmsOptions{CmsKeyTransport::kRsaOaepSha256, cipher},
                                  content, /*wrap_key=*/false);
  auto mine = EcPointOf(recipient);
  EXPECT_TRUE(mine.ok());
  auto eph = HostEcKey::Generate(mine->curve_nid);
  EXPECT_TRUE(eph.ok());
  parts.ephemeral_point = EcPointOf(eph->public_key())->point;
  auto wrapped = eph->WrapContentKey(cipher, mine->point, parts.content_key_for_test);
  EXPECT_TRUE(wrapped.ok()) << wrapped.status();
  parts.encrypted_key = *wrapped;
  return parts;
}

TEST_P(CmsAssembleEcTest, MatchesHostBuildAndDecrypts) {
  const auto [curve, cipher] = GetParam();
  auto pkey = EcKey(curve);
  auto x = SelfSignedCert(pkey.get(), "ec-device", 77);
  auto cert = Certificate::Parse(CertDer(x.get()));
  ASSERT_TRUE(cert.ok());
  const Bytes secret = ToBytes("ec-pfx-password");
  const CmsOptions o{CmsKeyTransport::kRsaOaepSha256, cipher};
  for (bool by_cert : {true, false}) {
    const CmsTokenParts parts = MakeEcParts(cert->public_key(), cipher, secret);
    auto assembled = by_cert ? CmsAssembleKeyAgreeToCertificate(*cert, cipher, parts)
                             : CmsAssembleKeyAgreeToPublicKey(cert->public_key(), cipher, parts);
    ASSERT_TRUE(assembled.ok()) << assembled.status();
    auto host = by_cert ? CmsEnvelopeToCertificate(*cert, secret, o)
                        : CmsEnvelopeToPublicKey(cert->public_key(), secret, o);
    ASSERT_TRUE(host.ok()) << host.status();
    ExpectSameApartFromRandomParts(*host, *assembled, parts);
    auto back = CmsDecrypt(*assembled, pkey.get(), by_cert ? x.get() : nullptr);
    ASSERT_TRUE(back.has_value()) << (by_cert ? "certificate" : "key id");
    EXPECT_EQ(*back, secret);
  }
}

INSTANTIATE_TEST_SUITE_P(Curves, CmsAssembleEcTest,
                         ::testing::Combine(::testing::Values("P-256", "P-384"),
                                            ::testing::Values(CmsContentCipher::kAes256Cbc,
                                                              CmsContentCipher::kAes128Cbc)));

TEST(CmsAssemble, KeyAgreementRefuses3desAndWrongParts) {
  auto pkey = EcKey("P-256");
  auto key = PublicKey::FromSpki(SpkiDer(pkey.get()));
  ASSERT_TRUE(key.ok());
  CmsTokenParts parts = MakeEcParts(*key, CmsContentCipher::kAes256Cbc, ToBytes("x"));
  ASSERT_TRUE(CmsAssembleKeyAgreeToPublicKey(*key, CmsContentCipher::kAes256Cbc, parts).ok());
  EXPECT_THAT(CmsAssembleKeyAgreeToPublicKey(*key, CmsContentCipher::kDes3Cbc, parts).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  CmsTokenParts bad = parts;
  bad.ephemeral_point.pop_back();
  EXPECT_THAT(CmsAssembleKeyAgreeToPublicKey(*key, CmsContentCipher::kAes256Cbc, bad).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  bad = parts;
  bad.encrypted_key.pop_back();
  EXPECT_THAT(CmsAssembleKeyAgreeToPublicKey(*key, CmsContentCipher::kAes256Cbc, bad).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  auto rsa = PublicKey::FromSpki(SpkiDer(RsaKey(2048).get()));
  EXPECT_THAT(CmsAssembleKeyAgreeToPublicKey(*rsa, CmsContentCipher::kAes256Cbc, parts).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// A caller-given key id (the device certificate's SKI) names a bare-key recipient, in the
// host build and the assembly alike, for key transport and key agreement.
TEST(CmsAssemble, CallerKeyIdNamesTheRecipient) {
  const Bytes id = {0xc0, 0xff, 0xee, 0x42};
  const Bytes secret = ToBytes("named-by-the-ca");
  for (bool ec : {false, true}) {
    auto pkey = ec ? EcKey("P-256") : RsaKey(2048);
    auto key = PublicKey::FromSpki(SpkiDer(pkey.get()));
    ASSERT_TRUE(key.ok());
    const CmsOptions o;
    const TestParts parts = ec ? MakeEcParts(*key, o.cipher, secret) : MakeParts(*key, o, secret);
    auto assembled = ec ? CmsAssembleKeyAgreeToPublicKey(*key, o.cipher, parts, id)
                        : CmsAssembleToPublicKey(*key, o, parts, id);
    ASSERT_TRUE(assembled.ok()) << assembled.status();
    auto host = CmsEnvelopeToPublicKey(*key, secret, o, id);
    ASSERT_TRUE(host.ok()) << host.status();
    ExpectSameApartFromRandomParts(*host, *assembled, parts);
    // [0] IMPLICIT OCTET STRING (ktri) or OCTET STRING inside rKeyId (kari): 04 04 c0 ff ee 42
    // or 80 04 c0 ff ee 42.
    const Bytes tail = {0x04, 0xc0, 0xff, 0xee, 0x42};
    EXPECT_NE(Find(*assembled, tail), std::string::npos) << (ec ? "EC" : "RSA");
    EXPECT_EQ(Find(*assembled, *CmsKeyId(*key)), std::string::npos) << "the SHA-1 id is not used";
    auto back = CmsDecrypt(*assembled, pkey.get(), nullptr);
    ASSERT_TRUE(back.has_value());
    EXPECT_EQ(*back, secret);
  }
}

TEST(CmsAssemble, RefusesPartsOfTheWrongSizeAndEcRecipients) {
  auto pkey = RsaKey(2048);
  auto key = PublicKey::FromSpki(SpkiDer(pkey.get()));
  ASSERT_TRUE(key.ok());
  const CmsOptions o;
  CmsTokenParts good = MakeParts(*key, o, ToBytes("pw"));
  ASSERT_TRUE(CmsAssembleToPublicKey(*key, o, good).ok());
  CmsTokenParts bad = good;
  bad.iv.pop_back();
  EXPECT_THAT(CmsAssembleToPublicKey(*key, o, bad).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  bad = good;
  bad.encrypted_key.push_back(0);
  EXPECT_THAT(CmsAssembleToPublicKey(*key, o, bad).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  bad = good;
  bad.encrypted_content.pop_back();  // not whole blocks
  EXPECT_THAT(CmsAssembleToPublicKey(*key, o, bad).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  bad.encrypted_content.clear();
  EXPECT_THAT(CmsAssembleToPublicKey(*key, o, bad).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  auto ec = PublicKey::FromSpki(SpkiDer(EcKey("P-256").get()));
  ASSERT_TRUE(ec.ok());
  EXPECT_THAT(CmsAssembleToPublicKey(*ec, o, good).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(CmsAssemble, KeyIdIsSha1OfThePublicKeyBits) {
  auto pkey = RsaKey(2048);
  auto key = PublicKey::FromSpki(SpkiDer(pkey.get()));
  ASSERT_TRUE(key.ok());
  auto id = CmsKeyId(*key);
  ASSERT_TRUE(id.ok());
  // The BIT STRING's contents are the DER RSAPublicKey (i2d_PublicKey).
  unsigned char* der = nullptr;
  const int len = i2d_PublicKey(pkey.get(), &der);
  ASSERT_GT(len, 0);
  unsigned char md[20];
  EVP_Digest(der, static_cast<size_t>(len), md, nullptr, EVP_sha1(), nullptr);
  OPENSSL_free(der);
  EXPECT_EQ(*id, Bytes(md, md + 20));
}

}  // namespace
}  // namespace hsmrewrap::crypto
