// The work a PKCS#12 file may ask for (crypto/pkcs12_parse.h): every MAC and PBE iteration
// count is read from the DER and checked before it is used, by both parsers (ImportKey's
// ParseRsaPrivateKeyFromPfx and pfx-import's OpenPfx). The files are made here with
// OpenSSL at small counts and then given the count under test without running it (a MAC
// of 2^31-1 iterations would take an hour to compute).
#include <openssl/pkcs12.h>
#include <openssl/x509.h>

#include <chrono>
#include <string>

#include "crypto/keys.h"
#include "crypto/pfx.h"
#include "crypto/pkcs12_parse.h"
#include "gtest/gtest.h"
#include "tests/support/status_matchers.h"
#include "tests/unit/crypto/test_util.h"

namespace hsmrewrap::crypto {
namespace {

using ::hsmrewrap::test::StatusIs;
using ::testing::HasSubstr;
using testing::RsaKey;
using testing::Secret;
using testing::SelfSignedCert;

constexpr char kPass[] = "pw";
constexpr int64_t kHuge = 2147483647;  // 2^31-1

struct Spec {
  int64_t mac = 2048;                  // MacData iterations
  int64_t safe = 2048;                 // each encrypted safe's PBKDF2
  int64_t key = 2048;                  // the shrouded key bag's PBKDF2
  int encrypted_safes = 1;             // encrypted safes of certificates
  bool key_in_encrypted_safe = false;  // else in a data safe, in the clear
};

// Rewrites an algorithm's parameters to PBES2 (AES-256-CBC, PBKDF2-HMAC-SHA256) with
// `iter` iterations: nothing is computed, the data stays encrypted under the old count.
void SetPbkdf2Count(X509_ALGOR* alg, int64_t iter) {
  X509_ALGOR* fresh = PKCS5_pbe2_set_iv(EVP_aes_256_cbc(), static_cast<int>(iter), nullptr, 0,
                                        nullptr, NID_hmacWithSHA256);
  ASSERT_NE(fresh, nullptr);
  ASSERT_EQ(X509_ALGOR_copy(alg, fresh), 1);
  X509_ALGOR_free(fresh);
}

Bytes MakePfx(const Spec& spec) {
  auto key = RsaKey(2048);
  auto cert = SelfSignedCert(key.get(), "pkcs12-limits", 1);
  STACK_OF(PKCS12_SAFEBAG)* key_bags = nullptr;
  PKCS12_SAFEBAG* kb = PKCS12_add_key(&key_bags, key.get(), 0, 2048, NID_aes_256_cbc, kPass);
  EXPECT_NE(kb, nullptr);
  if (spec.key != 2048) {
    X509_ALGOR* alg = nullptr;
    X509_SIG_getm(const_cast<X509_SIG*>(PKCS12_SAFEBAG_get0_pkcs8(kb)), &alg, nullptr);
    SetPbkdf2Count(alg, spec.key);
  }
  STACK_OF(PKCS7)* safes = nullptr;
  for (int i = 0; i < spec.encrypted_safes; ++i) {
    STACK_OF(PKCS12_SAFEBAG)* cert_bags = nullptr;
    EXPECT_NE(PKCS12_add_cert(&cert_bags, cert.get()), nullptr);
    if (spec.key_in_encrypted_safe && i == 0) {
      sk_PKCS12_SAFEBAG_push(cert_bags, sk_PKCS12_SAFEBAG_shift(key_bags));
    }
    EXPECT_EQ(PKCS12_add_safe(&safes, cert_bags, NID_aes_256_cbc, 2048, kPass), 1);
    sk_PKCS12_SAFEBAG_pop_free(cert_bags, PKCS12_SAFEBAG_free);
    if (spec.safe != 2048) {
      PKCS7* p7 = sk_PKCS7_value(safes, sk_PKCS7_num(safes) - 1);
      SetPbkdf2Count(p7->d.encrypted->enc_data->algorithm, spec.safe);
    }
  }
  if (sk_PKCS12_SAFEBAG_num(key_bags) > 0) {
    EXPECT_EQ(PKCS12_add_safe(&safes, key_bags, -1, 0, nullptr), 1);
  }
  sk_PKCS12_SAFEBAG_pop_free(key_bags, PKCS12_SAFEBAG_free);
  PKCS12* p12 = PKCS12_add_safes(safes, 0);
  sk_PKCS7_pop_free(safes, PKCS7_free);
  EXPECT_NE(p12, nullptr);
  // 2 iterations (1 would leave the field out), then the count under test.
  EXPECT_EQ(PKCS12_set_mac(p12, kPass, -1, nullptr, 0, spec.mac == 2048 ? 2048 : 2, nullptr), 1);
  if (spec.mac != 2048) {
    const ASN1_INTEGER* iter = nullptr;
    PKCS12_get0_mac(nullptr, nullptr, nullptr, &iter, p12);
    EXPECT_NE(iter, nullptr);
    ASN1_INTEGER_set_int64(const_cast<ASN1_INTEGER*>(iter), spec.mac);
  }
  unsigned char* der = nullptr;
  const int len = i2d_PKCS12(p12, &der);
  PKCS12_free(p12);
  Bytes out(der, der + (len > 0 ? len : 0));
  OPENSSL_free(der);
  return out;
}

// Both parsers refuse `pfx` with InvalidArgument naming `what`, at once (no KDF ran).
void ExpectRefused(const Bytes& pfx, const std::string& what) {
  const auto t0 = std::chrono::steady_clock::now();
  auto parts = ParseRsaPrivateKeyFromPfx(pfx, Secret(kPass));
  EXPECT_THAT(parts.status(), StatusIs(absl::StatusCode::kInvalidArgument, what));
  auto opened = OpenPfx(pfx, Secret(kPass));
  EXPECT_THAT(opened.status(), StatusIs(absl::StatusCode::kInvalidArgument, what));
  EXPECT_EQ(PfxProblemOf(opened.status()), PfxProblem::kNotPkcs12);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(s, 2.0) << "refusing took " << s << " s: the counts were run";
}

TEST(Pkcs12Limits, TheMadeFilesOpen) {
  for (bool hidden : {false, true}) {
    Spec spec;
    spec.key_in_encrypted_safe = hidden;
    const Bytes pfx = MakePfx(spec);
    auto parts = ParseRsaPrivateKeyFromPfx(pfx, Secret(kPass));
    EXPECT_TRUE(parts.ok()) << parts.status();
    auto opened = OpenPfx(pfx, Secret(kPass));
    ASSERT_TRUE(opened.ok()) << opened.status();
    EXPECT_TRUE(opened->certificate);
  }
}

TEST(Pkcs12Limits, MacIterationCountAboveTheLimitIsRefusedBeforeTheMacRuns) {
  Spec spec;
  spec.mac = kHuge;
  ExpectRefused(MakePfx(spec),
                "the PKCS#12 MAC iteration count 2147483647 is above the limit of 1000000");
}

TEST(Pkcs12Limits, EncryptedSafeIterationCountAboveTheLimitIsRefused) {
  Spec spec;
  spec.safe = kHuge;
  ExpectRefused(MakePfx(spec), "encrypted safe iteration count 2147483647 is above the limit");
}

TEST(Pkcs12Limits, KeyBagIterationCountAboveTheLimitIsRefused) {
  Spec spec;
  spec.key = kMaxPkcs12Iterations + 1;
  ExpectRefused(MakePfx(spec), "key bag iteration count 1000001 is above the limit of 1000000");
}

// A key bag inside an encrypted safe only shows once the safe is decrypted (at 2048): it
// is checked then, before it is decrypted itself.
TEST(Pkcs12Limits, KeyBagInsideAnEncryptedSafeIsCheckedWhenItShows) {
  Spec spec;
  spec.key = kHuge;
  spec.key_in_encrypted_safe = true;
  ExpectRefused(MakePfx(spec), "key bag iteration count 2147483647 is above the limit");
}

TEST(Pkcs12Limits, CountsThatAddUpAboveTheTotalAreRefused) {
  Spec spec;  // each below the limit, together above the total
  spec.mac = 900'000;
  spec.safe = 900'000;
  spec.encrypted_safes = 2;
  spec.key = 900'000;
  ExpectRefused(MakePfx(spec), "iteration counts add up to more than 3000000");
  Spec many;  // many cheap-looking safes
  many.safe = 700'000;
  many.encrypted_safes = 5;
  ExpectRefused(MakePfx(many), "add up to more than 3000000");
}

TEST(Pkcs12Limits, CountsThatAreNotPositiveAreRefused) {
  for (int64_t bad : {int64_t{0}, int64_t{-5}}) {
    Spec spec;
    spec.mac = bad;
    ExpectRefused(MakePfx(spec), "MAC iteration count is not a positive number");
  }
}

}  // namespace
}  // namespace hsmrewrap::crypto
