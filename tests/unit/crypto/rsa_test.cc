#include "crypto/rsa.h"

#include <openssl/evp.h>

#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "tests/support/status_matchers.h"
#include "tests/unit/crypto/test_util.h"

namespace hsmrewrap::crypto {
namespace {

using ::hsmrewrap::test::StatusIs;
using testing::OpenSslRsaEncrypt;
using testing::Pkcs1Der;
using testing::Pkcs8Der;
using testing::Pkcs8Pem;
using testing::RawRsaDecrypt;
using testing::RsaKey;
using testing::ToBytes;

const absl::Status kDecryptionFailed = absl::InvalidArgumentError("decryption failed");

Bytes Message(size_t len, uint8_t seed) {
  Bytes m(len);
  for (size_t i = 0; i < len; ++i) m[i] = static_cast<uint8_t>(seed + 13 * i + 1);
  return m;
}

Bytes Plain(const SecretBytes& s) { return Bytes(s.begin(), s.end()); }

TEST(RsaTest, HashLenAndMd) {
  EXPECT_EQ(HashLen(HashAlg::kSha1), 20u);
  EXPECT_EQ(HashLen(HashAlg::kSha256), 32u);
  EXPECT_EQ(HashLen(HashAlg::kSha384), 48u);
  EXPECT_EQ(HashLen(HashAlg::kSha512), 64u);
  for (HashAlg h : {HashAlg::kSha1, HashAlg::kSha256, HashAlg::kSha384, HashAlg::kSha512}) {
    ASSERT_NE(HashMd(h), nullptr);
    EXPECT_EQ(static_cast<size_t>(EVP_MD_get_size(HashMd(h))), HashLen(h));
  }
  EXPECT_EQ(OaepHash(RsaPadding::kOaepSha1), HashAlg::kSha1);
  EXPECT_EQ(OaepHash(RsaPadding::kOaepSha384), HashAlg::kSha384);
  EXPECT_EQ(OaepHash(RsaPadding::kOaepSha512), HashAlg::kSha512);
}

// The OAEP plaintext limit: k - 2*hLen - 2 bytes.
TEST(RsaTest, MaxPlaintextLenMatchesInteropTable) {
  struct Row {
    size_t bits, sha256, sha384, sha512;
  };
  const Row kTable[] = {
      {1024, 62, 30, 0}, {2048, 190, 158, 126}, {3072, 318, 286, 254}, {4096, 446, 414, 382}};
  for (const Row& r : kTable) {
    const size_t k = r.bits / 8;
    EXPECT_EQ(MaxPlaintextLen(RsaPadding::kOaepSha256, k), r.sha256) << r.bits;
    EXPECT_EQ(MaxPlaintextLen(RsaPadding::kOaepSha384, k), r.sha384) << r.bits;
    EXPECT_EQ(MaxPlaintextLen(RsaPadding::kOaepSha512, k), r.sha512) << r.bits;
    EXPECT_EQ(MaxPlaintextLen(RsaPadding::kOaepSha1, k), k - 42) << r.bits;
    EXPECT_EQ(MaxPlaintextLen(RsaPadding::kPkcs1, k), k - 11) << r.bits;
  }
  EXPECT_EQ(MaxPlaintextLen(RsaPadding::kPkcs1, 10), 0u);
  EXPECT_EQ(MaxPlaintextLen(RsaPadding::kOaepSha512, 130), 0u);
}

class RsaPaddingTest : public ::testing::TestWithParam<RsaPadding> {};

TEST_P(RsaPaddingTest, EncryptThenDecryptRoundTrips) {
  auto key = RsaKey(2048);
  ASSERT_NE(key, nullptr);
  auto pub = PublicKey::FromEvpPkey(key.get());
  ASSERT_TRUE(pub.ok()) << pub.status();
  const Bytes pem = ToBytes(Pkcs8Pem(key.get()));
  const Bytes der = Pkcs1Der(key.get());
  const size_t max = MaxPlaintextLen(GetParam(), 256);
  for (size_t len : {size_t{0}, size_t{1}, size_t{8}, max}) {
    const Bytes msg = Message(len, static_cast<uint8_t>(len));
    auto ct = RsaEncrypt(*pub, GetParam(), msg);
    ASSERT_TRUE(ct.ok()) << ct.status();
    EXPECT_EQ(ct->size(), 256u);
    for (const Bytes* priv : {&pem, &der}) {
      auto pt = RsaDecryptWithPrivateKey(*priv, GetParam(), *ct);
      ASSERT_TRUE(pt.ok()) << pt.status();
      EXPECT_EQ(Plain(*pt), msg);
    }
  }
  // One byte over the limit is refused before any RSA operation.
  EXPECT_THAT(RsaEncrypt(*pub, GetParam(), Message(max + 1, 1)).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "exceeds"));
}

TEST_P(RsaPaddingTest, DecryptWithOtherPaddingFailsUniformly) {
  auto key = RsaKey(2048);
  auto pub = PublicKey::FromEvpPkey(key.get());
  ASSERT_TRUE(pub.ok());
  auto ct = RsaEncrypt(*pub, GetParam(), Message(16, 7));
  ASSERT_TRUE(ct.ok());
  const RsaPadding other =
      GetParam() == RsaPadding::kOaepSha256 ? RsaPadding::kOaepSha512 : RsaPadding::kOaepSha256;
  auto pt = RsaDecryptWithPrivateKey(Pkcs8Der(key.get()), other, *ct);
  EXPECT_EQ(pt.status(), kDecryptionFailed);
}

INSTANTIATE_TEST_SUITE_P(AllPaddings, RsaPaddingTest,
                         ::testing::Values(RsaPadding::kOaepSha1, RsaPadding::kOaepSha256,
                                           RsaPadding::kOaepSha384, RsaPadding::kOaepSha512,
                                           RsaPadding::kPkcs1));

TEST(RsaTest, EncryptRefusesEcKey) {
  auto ec = testing::EcKey("P-256");
  auto pub = PublicKey::FromEvpPkey(ec.get());
  ASSERT_TRUE(pub.ok()) << pub.status();
  EXPECT_THAT(RsaEncrypt(*pub, RsaPadding::kOaepSha256, Message(4, 0)).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// --- OaepUnpad on raw RSA output (the HOST_UNPADDING path) ---

class OaepUnpadTest : public ::testing::TestWithParam<HashAlg> {
 protected:
  // EM = raw RSA private operation on an OpenSSL OAEP ciphertext.
  Bytes MakeEm(const Bytes& msg) {
    auto key = RsaKey(2048);
    const Bytes ct = OpenSslRsaEncrypt(key.get(), HashMd(GetParam()), msg);
    return RawRsaDecrypt(key.get(), ct);
  }
};

TEST_P(OaepUnpadTest, RecoversMessage) {
  for (size_t len :
       {size_t{0}, size_t{1}, size_t{21}, MaxPlaintextLen(RsaPadding::kOaepSha1, 256)}) {
    const HashAlg h = GetParam();
    if (len > 256 - 2 * HashLen(h) - 2) continue;
    const Bytes msg = Message(len, 3);
    const Bytes em = MakeEm(msg);
    ASSERT_EQ(em.size(), 256u);
    ASSERT_EQ(em[0], 0);
    auto pt = OaepUnpad(em, 256, h, h);
    ASSERT_TRUE(pt.ok()) << pt.status();
    EXPECT_EQ(Plain(*pt), msg);
    // A token may return the integer without its leading zero byte.
    auto short_pt = OaepUnpad(absl::MakeConstSpan(em).subspan(1), 256, h, h);
    ASSERT_TRUE(short_pt.ok()) << short_pt.status();
    EXPECT_EQ(Plain(*short_pt), msg);
  }
}

TEST_P(OaepUnpadTest, EveryBitFlipGivesTheSameError) {
  const HashAlg h = GetParam();
  const Bytes em = MakeEm(Message(32, 9));
  ASSERT_TRUE(OaepUnpad(em, 256, h, h).ok());
  for (size_t i = 0; i < em.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      Bytes bad = em;
      bad[i] ^= static_cast<uint8_t>(1 << bit);
      EXPECT_EQ(OaepUnpad(bad, 256, h, h).status(), kDecryptionFailed)
          << "byte " << i << " bit " << bit;
    }
  }
}

TEST_P(OaepUnpadTest, WrongHashesAndLengthsGiveTheSameError) {
  const HashAlg h = GetParam();
  const Bytes em = MakeEm(Message(20, 1));
  for (HashAlg other : {HashAlg::kSha1, HashAlg::kSha256, HashAlg::kSha384, HashAlg::kSha512}) {
    if (other == h) continue;
    EXPECT_EQ(OaepUnpad(em, 256, other, other).status(), kDecryptionFailed);
    EXPECT_EQ(OaepUnpad(em, 256, h, other).status(), kDecryptionFailed);
  }
  // Truncations (a shorter EM is read as having leading zeros) and over-long input.
  for (size_t len = 0; len < em.size(); ++len) {
    EXPECT_EQ(OaepUnpad(absl::MakeConstSpan(em).subspan(0, len), 256, h, h).status(),
              kDecryptionFailed)
        << len;
  }
  Bytes longer = em;
  longer.push_back(0);
  EXPECT_EQ(OaepUnpad(longer, 256, h, h).status(), kDecryptionFailed);
  EXPECT_EQ(OaepUnpad(em, 255, h, h).status(), kDecryptionFailed);
  EXPECT_EQ(OaepUnpad(em, 257, h, h).status(), kDecryptionFailed);
  EXPECT_EQ(OaepUnpad(Bytes(256, 0), 256, h, h).status(), kDecryptionFailed);
  EXPECT_EQ(OaepUnpad(Bytes(), 256, h, h).status(), kDecryptionFailed);
  EXPECT_EQ(OaepUnpad(Bytes(), 0, h, h).status(), kDecryptionFailed);
}

INSTANTIATE_TEST_SUITE_P(AllHashes, OaepUnpadTest,
                         ::testing::Values(HashAlg::kSha1, HashAlg::kSha256, HashAlg::kSha384,
                                           HashAlg::kSha512));

TEST(OaepUnpadTest4096, Sha512RecoversMessage) {
  auto key = RsaKey(4096);
  const Bytes msg = Message(382, 5);  // the OAEP-SHA512 maximum for RSA-4096
  const Bytes em = RawRsaDecrypt(key.get(), OpenSslRsaEncrypt(key.get(), EVP_sha512(), msg));
  auto pt = OaepUnpad(em, 512, HashAlg::kSha512, HashAlg::kSha512);
  ASSERT_TRUE(pt.ok()) << pt.status();
  EXPECT_EQ(Plain(*pt), msg);
}

// --- Pkcs1Unpad ---

TEST(Pkcs1UnpadTest, RecoversMessage) {
  auto key = RsaKey(2048);
  for (size_t len : {size_t{0}, size_t{1}, size_t{32}, size_t{245}}) {
    const Bytes msg = Message(len, 11);
    const Bytes em = RawRsaDecrypt(key.get(), OpenSslRsaEncrypt(key.get(), nullptr, msg));
    ASSERT_EQ(em[0], 0);
    ASSERT_EQ(em[1], 2);
    auto pt = Pkcs1Unpad(em, 256);
    ASSERT_TRUE(pt.ok()) << pt.status();
    EXPECT_EQ(Plain(*pt), msg);
    auto short_pt = Pkcs1Unpad(absl::MakeConstSpan(em).subspan(1), 256);
    ASSERT_TRUE(short_pt.ok());
    EXPECT_EQ(Plain(*short_pt), msg);
  }
}

// In EME-PKCS1-v1_5 only the structure is checked: a flip inside the random padding or
// the message still decodes. So: every flip of a structural byte fails with the one error,
// and no flip anywhere produces any other error.
TEST(Pkcs1UnpadTest, CorruptionGivesTheSameError) {
  auto key = RsaKey(2048);
  const Bytes msg = Message(40, 0x20);  // no zero bytes in the message
  for (uint8_t b : msg) ASSERT_NE(b, 0);
  const Bytes em = RawRsaDecrypt(key.get(), OpenSslRsaEncrypt(key.get(), nullptr, msg));
  const size_t sep = em.size() - msg.size() - 1;
  ASSERT_EQ(em[sep], 0);
  for (size_t i = 0; i < em.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      Bytes bad = em;
      bad[i] ^= static_cast<uint8_t>(1 << bit);
      auto r = Pkcs1Unpad(bad, 256);
      if (i == 0 || i == 1 || i == sep) {
        EXPECT_EQ(r.status(), kDecryptionFailed) << "byte " << i << " bit " << bit;
      } else if (!r.ok()) {
        EXPECT_EQ(r.status(), kDecryptionFailed) << "byte " << i << " bit " << bit;
      }
    }
  }
  // A zero inside the first 8 padding bytes makes the padding too short.
  for (size_t i = 2; i < 10; ++i) {
    Bytes bad = em;
    bad[i] = 0;
    EXPECT_EQ(Pkcs1Unpad(bad, 256).status(), kDecryptionFailed) << i;
  }
  for (size_t len = 0; len < em.size(); ++len) {
    EXPECT_EQ(Pkcs1Unpad(absl::MakeConstSpan(em).subspan(0, len), 256).status(), kDecryptionFailed)
        << len;
  }
  EXPECT_EQ(Pkcs1Unpad(em, 255).status(), kDecryptionFailed);
  EXPECT_EQ(Pkcs1Unpad(Bytes(256, 0), 256).status(), kDecryptionFailed);
  EXPECT_EQ(Pkcs1Unpad(Bytes(), 0).status(), kDecryptionFailed);
}

}  // namespace
}  // namespace hsmrewrap::crypto
