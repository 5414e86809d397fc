#include "crypto/keys.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/sha.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "crypto/encoding.h"
#include "gtest/gtest.h"
#include "tests/support/openssl_keys.h"
#include "tests/support/status_matchers.h"
#include "tests/unit/crypto/test_util.h"

namespace hsmrewrap::crypto {
namespace {

using ::hsmrewrap::test::IsOk;
using ::hsmrewrap::test::StatusIs;
using testing::BnParam;
using testing::BnParamPadded;
using testing::CertDer;
using testing::CertPem;
using testing::EcKey;
using ::testing::HasSubstr;
using testing::Pkcs1Der;
using testing::Pkcs1Pem;
using testing::Pkcs8Der;
using testing::Pkcs8Pem;
using testing::ReadFileOrDie;
using testing::RsaKey;
using testing::Secret;
using testing::SelfSignedCert;
using testing::SharedDir;
using testing::SpkiDer;
using ::testing::StartsWith;
using testing::ToBytes;

Bytes Plain(const SecretBytes& s) { return Bytes(s.begin(), s.end()); }

void AppendLe32(Bytes* b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b->push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void Append(Bytes* b, const Bytes& x) { b->insert(b->end(), x.begin(), x.end()); }

// --- PublicKey ---

TEST(PublicKeyTest, CngPublicBlobExactLayoutAndRoundTrip) {
  auto key = RsaKey(2048);
  auto pub = PublicKey::FromEvpPkey(key.get());
  ASSERT_TRUE(pub.ok()) << pub.status();
  EXPECT_TRUE(pub->is_rsa());
  EXPECT_FALSE(pub->is_ec());
  EXPECT_EQ(pub->bits(), 2048);
  const Bytes blob = pub->CngPublicBlob();
  ASSERT_EQ(blob.size(), 283u);                      // header 24 + e 3 + n 256
  Bytes expected_header = {0x52, 0x53, 0x41, 0x31};  // "RSA1"
  AppendLe32(&expected_header, 2048);
  AppendLe32(&expected_header, 3);
  AppendLe32(&expected_header, 256);
  AppendLe32(&expected_header, 0);
  AppendLe32(&expected_header, 0);
  EXPECT_EQ(Bytes(blob.begin(), blob.begin() + 24), expected_header);
  EXPECT_EQ(Bytes(blob.begin() + 24, blob.begin() + 27), (Bytes{0x01, 0x00, 0x01}));
  EXPECT_EQ(Bytes(blob.begin() + 27, blob.end()), BnParam(key.get(), OSSL_PKEY_PARAM_RSA_N));

  auto back = PublicKey::FromCngPublicBlob(blob);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->modulus(), pub->modulus());
  EXPECT_EQ(back->public_exponent(), (Bytes{0x01, 0x00, 0x01}));
  EXPECT_TRUE(back->Equals(*pub));
  EXPECT_EQ(back->SpkiDer(), SpkiDer(key.get()));
}

TEST(PublicKeyTest, CngPublicBlobRejectsMalformed) {
  auto pub = PublicKey::FromEvpPkey(RsaKey(2048).get());
  ASSERT_TRUE(pub.ok());
  const Bytes blob = pub->CngPublicBlob();
  for (size_t len = 0; len < blob.size(); ++len) {
    EXPECT_THAT(PublicKey::FromCngPublicBlob(absl::MakeConstSpan(blob).subspan(0, len)).status(),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << len;
  }
  Bytes longer = blob;
  longer.push_back(0);
  EXPECT_THAT(PublicKey::FromCngPublicBlob(longer).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "length"));
  Bytes rsa3 = blob;
  rsa3[3] = 0x33;
  EXPECT_THAT(PublicKey::FromCngPublicBlob(rsa3).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "private"));
  Bytes bad_magic = blob;
  bad_magic[0] = 0x45;
  EXPECT_THAT(PublicKey::FromCngPublicBlob(bad_magic).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "magic"));
  Bytes prime = blob;
  prime[16] = 1;
  EXPECT_THAT(PublicKey::FromCngPublicBlob(prime).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  Bytes bits = blob;
  bits[4] = 0xFF;  // BitLength 2047 + 255 no longer matches the modulus
  EXPECT_THAT(PublicKey::FromCngPublicBlob(bits).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  Bytes huge = blob;
  huge[12] = 0xFF;
  huge[13] = 0xFF;
  huge[14] = 0xFF;
  huge[15] = 0xFF;  // cbModulus = 4 GiB must not be trusted
  EXPECT_THAT(PublicKey::FromCngPublicBlob(huge).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// microsoft/Intune-Resource-Access PemHelperTests: modulus byte i = (i + 2) mod 10.
TEST(PublicKeyTest, IntunePemHelperVector) {
  Bytes n(256);
  for (size_t i = 0; i < n.size(); ++i) n[i] = static_cast<uint8_t>((i + 2) % 10);
  auto pub = PublicKey::FromRsaComponents(n, Bytes{0x01, 0x00, 0x01});
  ASSERT_TRUE(pub.ok()) << pub.status();
  EXPECT_EQ(pub->bits(), 2042);
  EXPECT_EQ(pub->SpkiDer().size(), 0x125u);
  const std::string pem = pub->SpkiPem();
  EXPECT_THAT(pem, StartsWith("-----BEGIN PUBLIC KEY-----\nMIIBITANBgkq"));
  EXPECT_THAT(pem, HasSubstr("-----END PUBLIC KEY-----"));
  auto back = PublicKey::FromSpki(ToBytes(pem));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->modulus(), n);
  // The CNG blob of this key says 2042 bits over a 256-byte modulus, and reads back.
  auto from_blob = PublicKey::FromCngPublicBlob(pub->CngPublicBlob());
  ASSERT_TRUE(from_blob.ok()) << from_blob.status();
  EXPECT_TRUE(from_blob->Equals(*pub));
}

TEST(PublicKeyTest, FromRsaComponentsRejectsNonsense) {
  Bytes n(256, 0xC3);
  EXPECT_THAT(PublicKey::FromRsaComponents(n, Bytes{0x01, 0x00, 0x00}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "exponent"));
  EXPECT_THAT(PublicKey::FromRsaComponents(n, Bytes{0x01}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "exponent"));
  EXPECT_THAT(PublicKey::FromRsaComponents(Bytes(64, 0xC3), Bytes{0x03}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "bits"));
  Bytes even = n;
  even.back() = 0xC2;
  EXPECT_THAT(PublicKey::FromRsaComponents(even, Bytes{0x03}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "even"));
}

TEST(PublicKeyTest, SpkiPemToleratesCrlfBomAndWhitespace) {
  auto key = RsaKey(2048);
  auto pub = PublicKey::FromEvpPkey(key.get());
  ASSERT_TRUE(pub.ok());
  const std::string pem = pub->SpkiPem();
  std::string crlf;
  for (char c : pem) {
    if (c == '\n') crlf += '\r';
    crlf += c;
  }
  for (const std::string& variant :
       {pem, crlf, "\xEF\xBB\xBF" + crlf, "  \r\n\t" + pem, pem + "\n\n"}) {
    auto parsed = PublicKey::FromSpki(ToBytes(variant));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_TRUE(parsed->Equals(*pub));
    auto any = PublicKey::FromAnyPublicKeyFile(ToBytes(variant));
    ASSERT_TRUE(any.ok()) << any.status();
    EXPECT_TRUE(any->Equals(*pub));
  }
}

TEST(PublicKeyTest, FromAnyPublicKeyFileDetectsAllForms) {
  auto key = RsaKey(2048);
  auto pub = PublicKey::FromEvpPkey(key.get());
  ASSERT_TRUE(pub.ok());
  for (const Bytes& file : {ToBytes(pub->SpkiPem()), pub->SpkiDer(), pub->CngPublicBlob()}) {
    auto parsed = PublicKey::FromAnyPublicKeyFile(file);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_TRUE(parsed->Equals(*pub));
    EXPECT_EQ(parsed->Sha256Hex(), pub->Sha256Hex());
  }
  EXPECT_THAT(PublicKey::FromAnyPublicKeyFile(ToBytes("hello")).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "unrecognised"));
  EXPECT_THAT(PublicKey::FromAnyPublicKeyFile(Bytes()).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(PublicKeyTest, RejectsWrongPemKindsAndTrailingData) {
  auto key = RsaKey(2048);
  auto x = SelfSignedCert(key.get(), "c", 1);
  EXPECT_THAT(PublicKey::FromSpki(ToBytes(CertPem(x.get()))).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "CERTIFICATE"));
  const std::string pkcs1_pub =
      "-----BEGIN RSA PUBLIC KEY-----\nMAoCAwEAAQIDAQAB\n-----END RSA PUBLIC KEY-----\n";
  EXPECT_THAT(PublicKey::FromSpki(ToBytes(pkcs1_pub)).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "PKCS#1"));
  Bytes der = SpkiDer(key.get());
  der.push_back(0);
  EXPECT_THAT(PublicKey::FromSpki(der).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "trailing"));
  EXPECT_THAT(
      PublicKey::FromSpki(ToBytes("-----BEGIN PUBLIC KEY-----\nMII*\n-----END PUBLIC KEY-----\n"))
          .status(),
      StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(PublicKeyTest, EveryTruncationOfDerIsRejected) {
  const Bytes der = SpkiDer(RsaKey(2048).get());
  for (size_t len = 0; len < der.size(); ++len) {
    EXPECT_FALSE(PublicKey::FromSpki(absl::MakeConstSpan(der).subspan(0, len)).ok()) << len;
  }
}

TEST(PublicKeyTest, EcCurves) {
  for (const char* curve : {"P-256", "P-384", "P-521"}) {
    auto ec = EcKey(curve);
    ASSERT_NE(ec, nullptr);
    auto pub = PublicKey::FromSpki(SpkiDer(ec.get()));
    ASSERT_TRUE(pub.ok()) << curve << ": " << pub.status();
    EXPECT_TRUE(pub->is_ec());
    EXPECT_FALSE(pub->is_rsa());
    EXPECT_TRUE(pub->modulus().empty());
    EXPECT_TRUE(pub->CngPublicBlob().empty());
  }
  auto k1 = EcKey("secp256k1");
  ASSERT_NE(k1, nullptr);
  EXPECT_THAT(PublicKey::FromSpki(SpkiDer(k1.get())).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "curve"));
}

TEST(PublicKeyTest, FromEvpPkeyDropsThePrivateHalf) {
  auto key = RsaKey(2048);
  auto pub = PublicKey::FromEvpPkey(key.get());
  ASSERT_TRUE(pub.ok());
  BIGNUM* d = nullptr;
  EXPECT_NE(EVP_PKEY_get_bn_param(pub->get(), OSSL_PKEY_PARAM_RSA_D, &d), 1);
  BN_free(d);
}

TEST(PublicKeyTest, Sha256HexIsDigestOfSpki) {
  auto pub = PublicKey::FromEvpPkey(RsaKey(2048).get());
  ASSERT_TRUE(pub.ok());
  unsigned char md[32];
  const Bytes der = pub->SpkiDer();
  SHA256(der.data(), der.size(), md);
  EXPECT_EQ(pub->Sha256Hex(), HexEncode(absl::MakeConstSpan(md, 32)));
}

// --- Certificate ---

TEST(CertificateTest, ParsesDerAndPem) {
  auto key = RsaKey(2048);
  auto x = SelfSignedCert(key.get(), "Device 1", 4242);
  const Bytes der = CertDer(x.get());
  auto from_der = Certificate::Parse(der);
  ASSERT_TRUE(from_der.ok()) << from_der.status();
  auto from_pem = Certificate::Parse(ToBytes(CertPem(x.get())));
  ASSERT_TRUE(from_pem.ok()) << from_pem.status();
  unsigned char sha1[20];
  SHA1(der.data(), der.size(), sha1);
  EXPECT_EQ(from_der->Sha1Hex(), HexEncode(absl::MakeConstSpan(sha1, 20)));
  EXPECT_EQ(from_pem->Sha1Hex(), from_der->Sha1Hex());
  EXPECT_EQ(from_pem->Sha256Hex(), from_der->Sha256Hex());
  EXPECT_EQ(from_der->Sha256Hex().size(), 64u);
  auto pub = PublicKey::FromEvpPkey(key.get());
  ASSERT_TRUE(pub.ok());
  EXPECT_TRUE(from_der->public_key().Equals(*pub));
  EXPECT_EQ(X509_cmp(from_der->get(), x.get()), 0);
}

TEST(CertificateTest, EcCertificate) {
  auto ec = EcKey("P-384");
  auto x = SelfSignedCert(ec.get(), "ec", 7);
  auto cert = Certificate::Parse(CertDer(x.get()));
  ASSERT_TRUE(cert.ok()) << cert.status();
  EXPECT_TRUE(cert->public_key().is_ec());
}

TEST(CertificateTest, RejectsGarbageAndTruncations) {
  const Bytes der = CertDer(SelfSignedCert(RsaKey(2048).get(), "t", 1).get());
  for (size_t len = 0; len < der.size(); len += 7) {
    EXPECT_FALSE(Certificate::Parse(absl::MakeConstSpan(der).subspan(0, len)).ok()) << len;
  }
  Bytes trailing = der;
  trailing.push_back(0x30);
  EXPECT_THAT(Certificate::Parse(trailing).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "trailing"));
  EXPECT_THAT(Certificate::Parse(SpkiDer(RsaKey(2048).get())).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Certificate::Parse(ToBytes("not a cert")).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// The certificate in Intune's own test PFX (../shared/vectors/intune/testcert.pfx).
TEST(CertificateTest, IntuneTestCertThumbprint) {
  auto dir = SharedDir();
  if (!dir) GTEST_SKIP() << "shared vectors folder (HSMREWRAP_SHARED_DIR) not present";
  auto pfx = test::LoadIntuneTestPfx(*dir);
  ASSERT_THAT(pfx, IsOk());
  X509* x = pfx->cert.get();
  for (const Bytes& form : {CertDer(x), ToBytes(CertPem(x))}) {
    auto cert = Certificate::Parse(form);
    ASSERT_TRUE(cert.ok()) << cert.status();
    EXPECT_EQ(cert->Sha1Hex(), "f5e1acb8c9c55a17605930515661548fb4cfc64c");
    EXPECT_EQ(cert->public_key().bits(), 2048);
  }
}

// --- Private keys ---

void ExpectPartsMatch(const RsaPrivateKeyParts& parts, EVP_PKEY* key) {
  EXPECT_EQ(parts.n, BnParam(key, OSSL_PKEY_PARAM_RSA_N));
  EXPECT_EQ(parts.e, BnParam(key, OSSL_PKEY_PARAM_RSA_E));
  EXPECT_EQ(Plain(parts.d), BnParam(key, OSSL_PKEY_PARAM_RSA_D));
  EXPECT_EQ(Plain(parts.p), BnParam(key, OSSL_PKEY_PARAM_RSA_FACTOR1));
  EXPECT_EQ(Plain(parts.q), BnParam(key, OSSL_PKEY_PARAM_RSA_FACTOR2));
  EXPECT_EQ(Plain(parts.dp), BnParam(key, OSSL_PKEY_PARAM_RSA_EXPONENT1));
  EXPECT_EQ(Plain(parts.dq), BnParam(key, OSSL_PKEY_PARAM_RSA_EXPONENT2));
  EXPECT_EQ(Plain(parts.qinv), BnParam(key, OSSL_PKEY_PARAM_RSA_COEFFICIENT1));
  EXPECT_EQ(parts.bits, EVP_PKEY_get_bits(key));
}

TEST(PrivateKeyTest, ParsesPkcs8AndPkcs1InDerAndPem) {
  auto key = RsaKey(2048);
  for (const Bytes& form : {Pkcs8Der(key.get()), ToBytes(Pkcs8Pem(key.get())), Pkcs1Der(key.get()),
                            ToBytes(Pkcs1Pem(key.get()))}) {
    auto parts = ParseRsaPrivateKey(form);
    ASSERT_TRUE(parts.ok()) << parts.status();
    ExpectPartsMatch(*parts, key.get());
  }
}

TEST(PrivateKeyTest, RejectsEcAndGarbage) {
  auto ec = EcKey("P-256");
  EXPECT_THAT(ParseRsaPrivateKey(Pkcs8Der(ec.get())).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "not an RSA key"));
  EXPECT_THAT(ParseRsaPrivateKey(ToBytes("garbage")).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  const Bytes der = Pkcs8Der(RsaKey(2048).get());
  for (size_t len = 0; len < der.size(); len += 13) {
    EXPECT_FALSE(ParseRsaPrivateKey(absl::MakeConstSpan(der).subspan(0, len)).ok()) << len;
  }
  EXPECT_THAT(ParseRsaPrivateKey(ToBytes("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAA==\n"
                                         "-----END ENCRYPTED PRIVATE KEY-----\n"))
                  .status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "encrypted"));
}

// Builds BCRYPT_RSAFULLPRIVATE_BLOB from an OpenSSL key, as Export-IntunePrivateKey would.
Bytes FullPrivateBlob(EVP_PKEY* key) {
  const size_t k = static_cast<size_t>(EVP_PKEY_get_size(key));
  const size_t half = k / 2;
  const Bytes e = BnParam(key, OSSL_PKEY_PARAM_RSA_E);
  Bytes blob = {0x52, 0x53, 0x41, 0x33};  // "RSA3"
  AppendLe32(&blob, static_cast<uint32_t>(EVP_PKEY_get_bits(key)));
  AppendLe32(&blob, static_cast<uint32_t>(e.size()));
  AppendLe32(&blob, static_cast<uint32_t>(k));
  AppendLe32(&blob, static_cast<uint32_t>(half));
  AppendLe32(&blob, static_cast<uint32_t>(half));
  Append(&blob, e);
  Append(&blob, BnParamPadded(key, OSSL_PKEY_PARAM_RSA_N, k));
  Append(&blob, BnParamPadded(key, OSSL_PKEY_PARAM_RSA_FACTOR1, half));
  Append(&blob, BnParamPadded(key, OSSL_PKEY_PARAM_RSA_FACTOR2, half));
  Append(&blob, BnParamPadded(key, OSSL_PKEY_PARAM_RSA_EXPONENT1, half));
  Append(&blob, BnParamPadded(key, OSSL_PKEY_PARAM_RSA_EXPONENT2, half));
  Append(&blob, BnParamPadded(key, OSSL_PKEY_PARAM_RSA_COEFFICIENT1, half));
  Append(&blob, BnParamPadded(key, OSSL_PKEY_PARAM_RSA_D, k));
  return blob;
}

TEST(CngPrivateBlobTest, ParsesFullPrivateBlob) {
  auto key = RsaKey(2048);
  const Bytes blob = FullPrivateBlob(key.get());
  ASSERT_EQ(blob.size(), 24u + 3 + 256 * 2 + 128 * 5);
  auto parts = ParseCngFullPrivateBlob(blob);
  ASSERT_TRUE(parts.ok()) << parts.status();
  ExpectPartsMatch(*parts, key.get());
}

TEST(CngPrivateBlobTest, RejectsMalformed) {
  const Bytes blob = FullPrivateBlob(RsaKey(2048).get());
  for (size_t len = 0; len < blob.size(); ++len) {
    EXPECT_THAT(ParseCngFullPrivateBlob(absl::MakeConstSpan(blob).subspan(0, len)).status(),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << len;
  }
  Bytes longer = blob;
  longer.push_back(0);
  EXPECT_FALSE(ParseCngFullPrivateBlob(longer).ok());
  Bytes rsa1 = blob;
  rsa1[3] = 0x31;
  EXPECT_THAT(ParseCngFullPrivateBlob(rsa1).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "public"));
  Bytes corrupt = blob;
  corrupt[24 + 3 + 256 + 5] ^= 0x40;  // a byte of Prime1
  EXPECT_THAT(ParseCngFullPrivateBlob(corrupt).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "inconsistent"));
  Bytes big_prime = blob;
  big_prime[19] = 0x7F;  // cbPrime1 huge
  EXPECT_FALSE(ParseCngFullPrivateBlob(big_prime).ok());
  // The public-key reader refuses it too.
  EXPECT_THAT(PublicKey::FromCngPublicBlob(blob).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "private"));
}

// --- PKCS#12 (vectors from BoringSSL, unchanged) ---

class PfxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = SharedDir();
    if (!dir) GTEST_SKIP() << "shared vectors folder (HSMREWRAP_SHARED_DIR) not present";
    dir_ = *dir + "/vectors/";
  }
  Bytes Vector(const std::string& name) { return ReadFileOrDie(dir_ + name); }
  std::string dir_;
};

void ExpectConsistentRsa2048(const RsaPrivateKeyParts& parts) {
  EXPECT_EQ(parts.bits, 2048);
  EXPECT_EQ(parts.n.size(), 256u);
  ASSERT_FALSE(parts.p.empty());
  BN_CTX* ctx = BN_CTX_new();
  BIGNUM* p = BN_bin2bn(parts.p.data(), static_cast<int>(parts.p.size()), nullptr);
  BIGNUM* q = BN_bin2bn(parts.q.data(), static_cast<int>(parts.q.size()), nullptr);
  BIGNUM* n = BN_bin2bn(parts.n.data(), static_cast<int>(parts.n.size()), nullptr);
  BIGNUM* pq = BN_new();
  BN_mul(pq, p, q, ctx);
  EXPECT_EQ(BN_cmp(pq, n), 0);
  BN_free(p);
  BN_free(q);
  BN_free(n);
  BN_free(pq);
  BN_CTX_free(ctx);
}

TEST_F(PfxTest, OpensRsaFilesFromOtherTools) {
  // openssl.p12 uses RC2-40 for the certificate bag: needs the legacy provider.
  for (const char* name : {"openssl.p12", "windows.p12", "pbes2_sha256.p12"}) {
    auto parts = ParseRsaPrivateKeyFromPfx(Vector(std::string("pkcs12/") + name), Secret("foo"));
    ASSERT_TRUE(parts.ok()) << name << ": " << parts.status();
    ExpectConsistentRsa2048(*parts);
  }
}

TEST_F(PfxTest, OpensIntuneTestCertAndKeyMatchesCertificate) {
  const Bytes pfx = Vector("intune/testcert.pfx");
  auto parts = ParseRsaPrivateKeyFromPfx(pfx, Secret("TestCert"));
  ASSERT_TRUE(parts.ok()) << parts.status();
  ExpectConsistentRsa2048(*parts);
  EXPECT_EQ(parts->e, (Bytes{0x01, 0x00, 0x01}));
}

TEST_F(PfxTest, WrongPasswordIsClear) {
  for (const char* name : {"pkcs12/openssl.p12", "pkcs12/windows.p12", "intune/testcert.pfx"}) {
    EXPECT_THAT(ParseRsaPrivateKeyFromPfx(Vector(name), Secret("bar")).status(),
                StatusIs(absl::StatusCode::kInvalidArgument, "wrong PFX password"))
        << name;
  }
}

TEST_F(PfxTest, RejectsMalformedFilesWithoutCrashing) {
  for (const char* name : {"bad1.p12", "bad2.p12", "bad3.p12", "empty_password_ber_nested.p12"}) {
    for (const char* pw : {"", "foo"}) {
      auto parts = ParseRsaPrivateKeyFromPfx(Vector(std::string("pkcs12/") + name), Secret(pw));
      EXPECT_THAT(parts.status(), StatusIs(absl::StatusCode::kInvalidArgument)) << name;
    }
  }
  EXPECT_THAT(ParseRsaPrivateKeyFromPfx(ToBytes("not a pfx"), Secret("foo")).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "PKCS#12"));
  EXPECT_THAT(ParseRsaPrivateKeyFromPfx(Bytes(), Secret("foo")).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(PfxTest, EcOnlyFilesAreNotRsa) {
  const std::pair<const char*, const char*> kFiles[] = {
      {"no_encryption.p12", "foo"},
      {"empty_password.p12", ""},
      {"unicode_password.p12", "Hello, \xE4\xB8\x96\xE7\x95\x8C"},
  };
  for (const auto& [name, pw] : kFiles) {
    auto parts = ParseRsaPrivateKeyFromPfx(Vector(std::string("pkcs12/") + name), Secret(pw));
    EXPECT_THAT(parts.status(), StatusIs(absl::StatusCode::kInvalidArgument, "not an RSA key"))
        << name;
  }
}

// --- ReadSecretFile ---

class SecretFileTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& content) {
    char path[] = "/tmp/hsmrewrap_secret_XXXXXX";
    const int fd = mkstemp(path);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(write(fd, content.data(), content.size()), static_cast<ssize_t>(content.size()));
    close(fd);
    paths_.push_back(path);
    return path;
  }
  void TearDown() override {
    for (const auto& p : paths_) unlink(p.c_str());
  }
  std::vector<std::string> paths_;
};

TEST_F(SecretFileTest, StripsOneTrailingNewline) {
  const std::pair<std::string, std::string> kCases[] = {
      {"1234\n", "1234"}, {"1234\r\n", "1234"},
      {"1234", "1234"},   {"1234\n\n", "1234\n"},
      {"", ""},           {"\n", ""},
      {"a b\r", "a b\r"}, {std::string(10000, 'x'), std::string(10000, 'x')},
  };
  for (const auto& [content, want] : kCases) {
    auto s = ReadSecretFile(Write(content));
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(std::string(s->data(), s->size()), want);
  }
}

TEST_F(SecretFileTest, MissingFileIsNotFound) {
  EXPECT_THAT(ReadSecretFile("/nonexistent/hsmrewrap/pin").status(),
              StatusIs(absl::StatusCode::kNotFound));
}

}  // namespace
}  // namespace hsmrewrap::crypto
