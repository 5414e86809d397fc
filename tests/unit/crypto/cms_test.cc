#include "crypto/cms.h"

#include <openssl/cms.h>
#include <openssl/objects.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <algorithm>
#include <string>
#include <tuple>

#include "gtest/gtest.h"
#include "tests/support/openssl_keys.h"
#include "tests/support/status_matchers.h"
#include "tests/unit/crypto/test_util.h"

namespace hsmrewrap::crypto {
namespace {

using ::hsmrewrap::test::IsOk;
using ::hsmrewrap::test::StatusIs;
using testing::CertDer;
using testing::CmsDecrypt;
using testing::EcKey;
using testing::RsaKey;
using testing::SelfSignedCert;
using testing::ToBytes;

struct CmsFree {
  void operator()(CMS_ContentInfo* c) const { CMS_ContentInfo_free(c); }
};
using CmsPtr = std::unique_ptr<CMS_ContentInfo, CmsFree>;

CmsPtr ParseCms(const Bytes& der) {
  const unsigned char* p = der.data();
  return CmsPtr(d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(der.size())));  // NOLINT
}

// DER of an OBJECT IDENTIFIER (tag, length, contents) for NID `nid`.
Bytes OidDer(int nid) {
  const ASN1_OBJECT* obj = OBJ_nid2obj(nid);
  unsigned char* der = nullptr;
  const int len = i2d_ASN1_OBJECT(obj, &der);
  Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

bool Contains(const Bytes& haystack, const Bytes& needle) {
  return std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end()) !=
         haystack.end();
}

int CipherNid(CmsContentCipher c) {
  switch (c) {
    case CmsContentCipher::kAes256Cbc:
      return NID_aes_256_cbc;
    case CmsContentCipher::kAes128Cbc:
      return NID_aes_128_cbc;
    case CmsContentCipher::kDes3Cbc:
      return NID_des_ede3_cbc;
  }
  return NID_undef;
}

const CmsContentCipher kCiphers[] = {CmsContentCipher::kAes256Cbc, CmsContentCipher::kAes128Cbc,
                                     CmsContentCipher::kDes3Cbc};

// Checks the key-transport recipient's keyEncryptionAlgorithm.
void ExpectKeyTransportAlgorithm(CMS_RecipientInfo* ri, CmsKeyTransport kt) {
  X509_ALGOR* alg = nullptr;
  ASSERT_EQ(CMS_RecipientInfo_ktri_get0_algs(ri, nullptr, nullptr, &alg), 1);
  const ASN1_OBJECT* oid = nullptr;
  int ptype = 0;
  const void* pval = nullptr;
  X509_ALGOR_get0(&oid, &ptype, &pval, alg);
  if (kt == CmsKeyTransport::kRsaPkcs1) {
    EXPECT_EQ(OBJ_obj2nid(oid), NID_rsaEncryption);
    return;
  }
  char txt[64];
  OBJ_obj2txt(txt, sizeof(txt), oid, 1);
  EXPECT_STREQ(txt, "1.2.840.113549.1.1.7");  // id-RSAES-OAEP
  ASSERT_EQ(ptype, V_ASN1_SEQUENCE);
  const ASN1_STRING* seq = static_cast<const ASN1_STRING*>(pval);
  const unsigned char* p = ASN1_STRING_get0_data(seq);
  RSA_OAEP_PARAMS* params = d2i_RSA_OAEP_PARAMS(nullptr, &p, ASN1_STRING_length(seq));
  ASSERT_NE(params, nullptr);
  ASSERT_NE(params->hashFunc, nullptr);
  EXPECT_EQ(OBJ_obj2nid(params->hashFunc->algorithm), NID_sha256);
  ASSERT_NE(params->maskGenFunc, nullptr);
  EXPECT_EQ(OBJ_obj2nid(params->maskGenFunc->algorithm), NID_mgf1);
  X509_ALGOR* mgf1_md = static_cast<X509_ALGOR*>(
      ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(X509_ALGOR), params->maskGenFunc->parameter));
  ASSERT_NE(mgf1_md, nullptr);
  EXPECT_EQ(OBJ_obj2nid(mgf1_md->algorithm), NID_sha256);
  X509_ALGOR_free(mgf1_md);
  EXPECT_EQ(params->pSourceFunc, nullptr);  // default: empty label
  RSA_OAEP_PARAMS_free(params);
}

class CmsRsaTest : public ::testing::TestWithParam<std::tuple<CmsKeyTransport, CmsContentCipher>> {
};

TEST_P(CmsRsaTest, EnvelopeToCertificateDecryptsWithOpenSsl) {
  const auto [kt, cipher] = GetParam();
  auto key = RsaKey(2048);
  auto x = SelfSignedCert(key.get(), "Device RSA", 0x1234567);
  auto cert = Certificate::Parse(CertDer(x.get()));
  ASSERT_TRUE(cert.ok()) << cert.status();
  const Bytes password = ToBytes("correct horse battery staple");
  auto der = CmsEnvelopeToCertificate(*cert, password, CmsOptions{kt, cipher});
  ASSERT_TRUE(der.ok()) << der.status();

  auto plain = CmsDecrypt(*der, key.get(), x.get());
  ASSERT_TRUE(plain.has_value());
  EXPECT_EQ(*plain, password);

  auto cms = ParseCms(*der);
  ASSERT_NE(cms, nullptr);
  EXPECT_EQ(OBJ_obj2nid(CMS_get0_type(cms.get())), NID_pkcs7_enveloped);
  STACK_OF(CMS_RecipientInfo)* ris = CMS_get0_RecipientInfos(cms.get());
  ASSERT_EQ(sk_CMS_RecipientInfo_num(ris), 1);
  CMS_RecipientInfo* ri = sk_CMS_RecipientInfo_value(ris, 0);
  ASSERT_EQ(CMS_RecipientInfo_type(ri), CMS_RECIPINFO_TRANS);
  ASN1_OCTET_STRING* keyid = nullptr;
  X509_NAME* issuer = nullptr;
  ASN1_INTEGER* serial = nullptr;
  ASSERT_EQ(CMS_RecipientInfo_ktri_get0_signer_id(ri, &keyid, &issuer, &serial), 1);
  EXPECT_EQ(keyid, nullptr);
  ASSERT_NE(issuer, nullptr);
  ASSERT_NE(serial, nullptr);
  EXPECT_EQ(CMS_RecipientInfo_ktri_cert_cmp(ri, x.get()), 0);  // issuer + serial match
  ExpectKeyTransportAlgorithm(ri, kt);
  EXPECT_TRUE(Contains(*der, OidDer(CipherNid(cipher))));
  for (CmsContentCipher other : kCiphers) {
    if (other != cipher) {
      EXPECT_FALSE(Contains(*der, OidDer(CipherNid(other))));
    }
  }
}

TEST_P(CmsRsaTest, EnvelopeToPublicKeyUsesSubjectKeyIdentifier) {
  const auto [kt, cipher] = GetParam();
  auto key = RsaKey(2048);
  auto pub = PublicKey::FromEvpPkey(key.get());
  ASSERT_TRUE(pub.ok());
  const Bytes password = ToBytes("p@ss");
  auto der = CmsEnvelopeToPublicKey(*pub, password, CmsOptions{kt, cipher});
  ASSERT_TRUE(der.ok()) << der.status();
  auto plain = CmsDecrypt(*der, key.get(), nullptr);
  ASSERT_TRUE(plain.has_value());
  EXPECT_EQ(*plain, password);

  auto cms = ParseCms(*der);
  ASSERT_NE(cms, nullptr);
  CMS_RecipientInfo* ri = sk_CMS_RecipientInfo_value(CMS_get0_RecipientInfos(cms.get()), 0);
  ASSERT_EQ(CMS_RecipientInfo_type(ri), CMS_RECIPINFO_TRANS);
  ASN1_OCTET_STRING* keyid = nullptr;
  X509_NAME* issuer = nullptr;
  ASN1_INTEGER* serial = nullptr;
  ASSERT_EQ(CMS_RecipientInfo_ktri_get0_signer_id(ri, &keyid, &issuer, &serial), 1);
  ASSERT_NE(keyid, nullptr);
  EXPECT_EQ(issuer, nullptr);
  // SKI = SHA-1 of the subjectPublicKey bits (RFC 5280 method 1).
  const unsigned char* bits = nullptr;
  int bits_len = 0;
  X509_PUBKEY* xpk = nullptr;
  ASSERT_EQ(X509_PUBKEY_set(&xpk, key.get()), 1);
  ASSERT_EQ(X509_PUBKEY_get0_param(nullptr, &bits, &bits_len, nullptr, xpk), 1);
  unsigned char sha1[20];
  SHA1(bits, static_cast<size_t>(bits_len), sha1);
  X509_PUBKEY_free(xpk);
  EXPECT_EQ(Bytes(keyid->data, keyid->data + keyid->length), Bytes(sha1, sha1 + 20));
  ExpectKeyTransportAlgorithm(ri, kt);
}

INSTANTIATE_TEST_SUITE_P(AllTransportsAndCiphers, CmsRsaTest,
                         ::testing::Combine(::testing::Values(CmsKeyTransport::kRsaOaepSha256,
                                                              CmsKeyTransport::kRsaPkcs1),
                                            ::testing::ValuesIn(kCiphers)));

class CmsEcTest : public ::testing::TestWithParam<const char*> {};

TEST_P(CmsEcTest, KeyAgreementToCertificateDecrypts) {
  auto key = EcKey(GetParam());
  ASSERT_NE(key, nullptr);
  auto x = SelfSignedCert(key.get(), "Device EC", 99);
  auto cert = Certificate::Parse(CertDer(x.get()));
  ASSERT_TRUE(cert.ok()) << cert.status();
  const Bytes password = ToBytes("ec password");
  for (CmsContentCipher cipher : kCiphers) {
    auto der = CmsEnvelopeToCertificate(*cert, password, CmsOptions{{}, cipher});
    ASSERT_TRUE(der.ok()) << der.status();
    auto plain = CmsDecrypt(*der, key.get(), x.get());
    ASSERT_TRUE(plain.has_value()) << GetParam();
    EXPECT_EQ(*plain, password);
    auto cms = ParseCms(*der);
    ASSERT_NE(cms, nullptr);
    CMS_RecipientInfo* ri = sk_CMS_RecipientInfo_value(CMS_get0_RecipientInfos(cms.get()), 0);
    ASSERT_EQ(CMS_RecipientInfo_type(ri), CMS_RECIPINFO_AGREE);
    STACK_OF(CMS_RecipientEncryptedKey)* reks = CMS_RecipientInfo_kari_get0_reks(ri);
    ASSERT_EQ(sk_CMS_RecipientEncryptedKey_num(reks), 1);
    CMS_RecipientEncryptedKey* rek = sk_CMS_RecipientEncryptedKey_value(reks, 0);
    EXPECT_EQ(CMS_RecipientEncryptedKey_cert_cmp(rek, x.get()), 0);
    X509_NAME* issuer = nullptr;
    ASN1_OCTET_STRING* keyid = nullptr;
    ASSERT_EQ(CMS_RecipientEncryptedKey_get0_id(rek, &keyid, nullptr, nullptr, &issuer, nullptr),
              1);
    EXPECT_NE(issuer, nullptr);
    EXPECT_EQ(keyid, nullptr);
  }
}

TEST_P(CmsEcTest, KeyAgreementToPublicKeyDecrypts) {
  auto key = EcKey(GetParam());
  auto pub = PublicKey::FromEvpPkey(key.get());
  ASSERT_TRUE(pub.ok()) << pub.status();
  const Bytes password = ToBytes("ec password 2");
  auto der = CmsEnvelopeToPublicKey(*pub, password);
  ASSERT_TRUE(der.ok()) << der.status();
  auto plain = CmsDecrypt(*der, key.get(), nullptr);
  ASSERT_TRUE(plain.has_value());
  EXPECT_EQ(*plain, password);
  auto cms = ParseCms(*der);
  CMS_RecipientInfo* ri = sk_CMS_RecipientInfo_value(CMS_get0_RecipientInfos(cms.get()), 0);
  ASSERT_EQ(CMS_RecipientInfo_type(ri), CMS_RECIPINFO_AGREE);
  CMS_RecipientEncryptedKey* rek =
      sk_CMS_RecipientEncryptedKey_value(CMS_RecipientInfo_kari_get0_reks(ri), 0);
  ASN1_OCTET_STRING* keyid = nullptr;
  X509_NAME* issuer = nullptr;
  ASSERT_EQ(CMS_RecipientEncryptedKey_get0_id(rek, &keyid, nullptr, nullptr, &issuer, nullptr), 1);
  EXPECT_NE(keyid, nullptr);
  EXPECT_EQ(issuer, nullptr);
}

INSTANTIATE_TEST_SUITE_P(Curves, CmsEcTest, ::testing::Values("P-256", "P-384"));

// Intune's sample rewrap (.NET EnvelopedCms defaults): PKCS#1 v1.5 + 3DES to Intune's test
// certificate, decrypted with the PFX's own key.
TEST(CmsIntuneTest, EnvelopeToIntuneTestCert) {
  auto dir = testing::SharedDir();
  if (!dir) GTEST_SKIP() << "shared vectors folder (HSMREWRAP_SHARED_DIR) not present";
  auto pfx = test::LoadIntuneTestPfx(*dir);
  ASSERT_THAT(pfx, IsOk());
  EVP_PKEY* pkey = pfx->key.get();
  X509* x = pfx->cert.get();
  auto cert = Certificate::Parse(CertDer(x));
  ASSERT_TRUE(cert.ok()) << cert.status();
  const Bytes password = ToBytes("1234");
  for (CmsKeyTransport kt : {CmsKeyTransport::kRsaPkcs1, CmsKeyTransport::kRsaOaepSha256}) {
    auto der =
        CmsEnvelopeToCertificate(*cert, password, CmsOptions{kt, CmsContentCipher::kDes3Cbc});
    ASSERT_TRUE(der.ok()) << der.status();
    auto plain = CmsDecrypt(*der, pkey, x);
    ASSERT_TRUE(plain.has_value());
    EXPECT_EQ(*plain, password);
  }
}

TEST(CmsTest, EmptyAndOversizedPlaintext) {
  auto key = RsaKey(2048);
  auto x = SelfSignedCert(key.get(), "d", 5);
  auto cert = Certificate::Parse(CertDer(x.get()));
  ASSERT_TRUE(cert.ok());
  auto empty = CmsEnvelopeToCertificate(*cert, Bytes());
  ASSERT_TRUE(empty.ok()) << empty.status();
  auto plain = CmsDecrypt(*empty, key.get(), x.get());
  ASSERT_TRUE(plain.has_value());
  EXPECT_TRUE(plain->empty());
  EXPECT_THAT(CmsEnvelopeToCertificate(*cert, Bytes(65 * 1024, 'a')).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(CmsTest, EachEnvelopeIsFresh) {
  auto key = RsaKey(2048);
  auto pub = PublicKey::FromEvpPkey(key.get());
  ASSERT_TRUE(pub.ok());
  auto a = CmsEnvelopeToPublicKey(*pub, ToBytes("same"));
  auto b = CmsEnvelopeToPublicKey(*pub, ToBytes("same"));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);  // fresh CEK and IV every time
}

}  // namespace
}  // namespace hsmrewrap::crypto
