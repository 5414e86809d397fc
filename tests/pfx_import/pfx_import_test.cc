// pfx-import without rewrapd (label unit): crypto/pfx on the shared vectors and on files
// made by other producers, password bytes, record format, CSV bulk runs, Graph upload with
// 429 re-send and the state file.
#include "clients/pfx-import/pfx_import.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <sys/stat.h>

#include <atomic>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "clients/pfx-import/csv.h"
#include "crypto/encoding.h"
#include "crypto/keys.h"
#include "crypto/pfx.h"
#include "crypto/rsa.h"
#include "tests/pfx_import/test_util.h"
#include "tests/support/files.h"
#include "tests/support/temp_dir.h"

namespace hsmrewrap::pfx_test {
namespace {

using crypto::PfxProblem;
using crypto::PfxPurpose;
using crypto::SecretString;
using pfx_import::PasswordEncoding;
using ::testing::HasSubstr;

absl::Span<const uint8_t> Span(const std::string& s) {
  return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

bool SharedPresent() {
  struct stat st;
  return stat((SharedDir() + "/vectors/pkcs12/README.md").c_str(), &st) == 0;
}

#define REQUIRE_SHARED() \
  if (!SharedPresent())  \
  GTEST_SKIP() << "shared vectors not found at " << SharedDir() << " (set HSMREWRAP_SHARED_DIR)"

// ---------------------------------------------------------------------------------------
// The shared vectors, with the outcomes their READMEs document.

struct Vector {
  std::string file;
  std::string password;
  PfxProblem expected;  // kNone = opens
  std::string key_type;
  int bits;
};

TEST(PfxVectors, EveryFileGivesItsDocumentedOutcome) {
  REQUIRE_SHARED();
  const std::vector<Vector> vectors = {
      {"pkcs12/openssl.p12", "foo", PfxProblem::kNone, "RSA", 2048},
      {"pkcs12/windows.p12", "foo", PfxProblem::kNone, "RSA", 2048},
      {"pkcs12/pbes2_sha256.p12", "foo", PfxProblem::kNone, "RSA", 2048},
      {"pkcs12/no_encryption.p12", "foo", PfxProblem::kNone, "EC", 256},
      {"pkcs12/empty_password.p12", "", PfxProblem::kNone, "EC", 256},
      {"pkcs12/unicode_password.p12", "Hello, \xE4\xB8\x96\xE7\x95\x8C", PfxProblem::kNone, "EC",
       256},
      {"pkcs12/empty_password_ber_nested.p12", "", PfxProblem::kNotPkcs12, "", 0},
      {"pkcs12/bad1.p12", "", PfxProblem::kNotPkcs12, "", 0},
      {"pkcs12/bad2.p12", "", PfxProblem::kNotPkcs12, "", 0},
      {"pkcs12/bad3.p12", "", PfxProblem::kNotPkcs12, "", 0},
      {"intune/testcert.pfx", "TestCert", PfxProblem::kNone, "RSA", 2048},
  };
  for (const auto& v : vectors) {
    SCOPED_TRACE(v.file);
    const std::string data = test::ReadFileOrEmpty(SharedDir() + "/vectors/" + v.file);
    ASSERT_FALSE(data.empty());
    auto c = crypto::OpenPfx(Span(data), SecretString(v.password.begin(), v.password.end()));
    if (v.expected == PfxProblem::kNone) {
      ASSERT_TRUE(c.ok()) << c.status();
      EXPECT_EQ(c->key_type, v.key_type);
      EXPECT_EQ(c->key_bits, v.bits);
      EXPECT_TRUE(c->certificate);
      EXPECT_THAT(c->thumbprint, ::testing::MatchesRegex("[0-9a-f]{40}"));
    } else {
      ASSERT_FALSE(c.ok());
      EXPECT_EQ(crypto::PfxProblemOf(c.status()), v.expected) << c.status();
    }
  }
  // Every file in the folders is covered above.
  int files = 0;
  std::string log;
  Shell("ls " + ShellQuote(SharedDir() + "/vectors/pkcs12") + " " +
            ShellQuote(SharedDir() + "/vectors/intune") + " | grep -E '\\.(p12|pfx)$' | wc -l",
        &log);
  files = std::atoi(log.c_str());
  EXPECT_EQ(files, static_cast<int>(vectors.size()));
}

TEST(PfxVectors, WrongPasswordIsReportedAsSuch) {
  REQUIRE_SHARED();
  for (const char* f : {"pkcs12/openssl.p12", "pkcs12/windows.p12", "intune/testcert.pfx"}) {
    const std::string data = test::ReadFileOrEmpty(SharedDir() + "/vectors/" + f);
    auto c = crypto::OpenPfx(Span(data), SecretString("wrong"));
    ASSERT_FALSE(c.ok()) << f;
    EXPECT_EQ(crypto::PfxProblemOf(c.status()), PfxProblem::kWrongPassword) << c.status();
    EXPECT_THAT(std::string(c.status().message()), HasSubstr("wrong password"));
  }
}

TEST(PfxVectors, IntuneTestCertFacts) {
  REQUIRE_SHARED();
  const std::string data = test::ReadFileOrEmpty(SharedDir() + "/vectors/intune/testcert.pfx");
  auto c = crypto::OpenPfx(Span(data), SecretString("TestCert"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->thumbprint, "f5e1acb8c9c55a17605930515661548fb4cfc64c");
  EXPECT_EQ(absl::FormatTime("%Y-%m-%dT%H:%M:%S", c->not_before, absl::UTCTimeZone()),
            "2017-08-22T21:50:35");
  EXPECT_EQ(absl::FormatTime("%Y-%m-%dT%H:%M:%S", c->not_after, absl::UTCTimeZone()),
            "2417-08-22T22:00:35");
  EXPECT_TRUE(crypto::CheckPfxForImport(*c, PfxPurpose::kSmimeEncryption, absl::Now()).ok());
}

TEST(PfxVectors, ExpiredVectorsAreRefusedForImportWithTheirDate) {
  REQUIRE_SHARED();
  const std::string data = test::ReadFileOrEmpty(SharedDir() + "/vectors/pkcs12/openssl.p12");
  auto c = crypto::OpenPfx(Span(data), SecretString("foo"));
  ASSERT_TRUE(c.ok()) << c.status();
  absl::Status s = crypto::CheckPfxForImport(*c, PfxPurpose::kUnassigned, absl::Now());
  EXPECT_EQ(crypto::PfxProblemOf(s), PfxProblem::kExpired);
  EXPECT_THAT(std::string(s.message()), HasSubstr("2017-08-18"));
}

// Every truncation and a bit flip in each byte of a real file: rejected or opened, never a
// crash.
TEST(PfxVectors, TruncationsAndBitFlipsNeverCrash) {
  REQUIRE_SHARED();
  const std::string data = test::ReadFileOrEmpty(SharedDir() + "/vectors/pkcs12/windows.p12");
  for (size_t n = 0; n < data.size(); n += 7) {
    auto c = crypto::OpenPfx(Span(data.substr(0, n)), SecretString("foo"));
    EXPECT_FALSE(c.ok());
  }
  for (size_t i = 0; i < data.size(); i += 5) {
    std::string d = data;
    d[i] = static_cast<char>(d[i] ^ 0x01);
    auto c = crypto::OpenPfx(Span(d), SecretString("foo"));
    (void)c;
  }
}

// ---------------------------------------------------------------------------------------
// Generated problem files.

TEST(PfxChecks, EachProblemHasItsOwnError) {
  KeyCert good = MakeKeyCert("good", -3600, 86400, "critical,digitalSignature,keyEncipherment");
  KeyCert other = MakeKeyCert("other", -3600, 86400, "");
  KeyCert expired = MakeKeyCert("expired", -86400 * 2, -86400, "");
  KeyCert future = MakeKeyCert("future", 86400, 86400 * 2, "");
  KeyCert sign_only = MakeKeyCert("signonly", -3600, 86400, "critical,digitalSignature");
  const SecretString pw("pw");
  auto open = [&](const std::string& der) { return crypto::OpenPfx(Span(der), pw); };

  auto ok = open(MakePfx(good.key, good.cert, {}, "pw"));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_TRUE(crypto::CheckPfxForImport(*ok, PfxPurpose::kSmimeEncryption, absl::Now()).ok());

  auto no_key = open(MakePfx(nullptr, good.cert, {}, "pw"));
  EXPECT_EQ(crypto::PfxProblemOf(no_key.status()), PfxProblem::kNoPrivateKey) << no_key.status();
  auto no_cert = open(MakePfx(good.key, nullptr, {}, "pw"));
  EXPECT_EQ(crypto::PfxProblemOf(no_cert.status()), PfxProblem::kNoCertificate) << no_cert.status();
  auto mismatch = open(MakePfx(good.key, nullptr, {other.cert}, "pw"));
  EXPECT_EQ(crypto::PfxProblemOf(mismatch.status()), PfxProblem::kKeyMismatch) << mismatch.status();
  auto not_pfx = open("this is not a PFX file");
  EXPECT_EQ(crypto::PfxProblemOf(not_pfx.status()), PfxProblem::kNotPkcs12);
  auto empty = open("");
  EXPECT_EQ(crypto::PfxProblemOf(empty.status()), PfxProblem::kNotPkcs12);

  auto e = open(MakePfx(expired.key, expired.cert, {}, "pw"));
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(
      crypto::PfxProblemOf(crypto::CheckPfxForImport(*e, PfxPurpose::kUnassigned, absl::Now())),
      PfxProblem::kExpired);
  auto f = open(MakePfx(future.key, future.cert, {}, "pw"));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(
      crypto::PfxProblemOf(crypto::CheckPfxForImport(*f, PfxPurpose::kUnassigned, absl::Now())),
      PfxProblem::kNotYetValid);
  auto s = open(MakePfx(sign_only.key, sign_only.cert, {}, "pw"));
  ASSERT_TRUE(s.ok());
  absl::Status ku = crypto::CheckPfxForImport(*s, PfxPurpose::kSmimeEncryption, absl::Now());
  EXPECT_EQ(crypto::PfxProblemOf(ku), PfxProblem::kKeyUsage);
  EXPECT_THAT(std::string(ku.message()), HasSubstr("keyEncipherment"));
  EXPECT_TRUE(crypto::CheckPfxForImport(*s, PfxPurpose::kSmimeSigning, absl::Now()).ok());
  EXPECT_TRUE(crypto::CheckPfxForImport(*s, PfxPurpose::kUnassigned, absl::Now()).ok());
}

TEST(PfxChecks, ChainIsReported) {
  KeyCert leaf = MakeKeyCert("leaf", -3600, 86400, "");
  KeyCert ca = MakeKeyCert("ca", -3600, 86400, "");
  auto c = crypto::OpenPfx(Span(MakePfx(leaf.key, leaf.cert, {ca.cert}, "pw")), SecretString("pw"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->chain.size(), 1u);
  EXPECT_THAT(c->subject, HasSubstr("CN=leaf"));
}

// ---------------------------------------------------------------------------------------
// Password bytes, names and dates.

TEST(PasswordBytes, IntuneLowByteOfEachUtf16Unit) {
  auto b = pfx_import::PasswordBytes(SecretString("TestCert"), PasswordEncoding::kIntune);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(std::string(b->begin(), b->end()), "TestCert");
  auto latin1 = pfx_import::PasswordBytes(SecretString("caf\xC3\xA9"), PasswordEncoding::kIntune);
  ASSERT_TRUE(latin1.ok());
  EXPECT_EQ(std::string(latin1->begin(), latin1->end()), "caf\xE9");
  EXPECT_EQ(pfx_import::PasswordTextFromBytes(crypto::Reveal(*latin1), PasswordEncoding::kIntune),
            SecretString("caf\xC3\xA9"));
  auto euro = pfx_import::PasswordBytes(SecretString("a\xE2\x82\xAC"), PasswordEncoding::kIntune);
  ASSERT_FALSE(euro.ok());
  EXPECT_THAT(std::string(euro.status().message()), HasSubstr("above U+00FF"));
  EXPECT_THAT(std::string(euro.status().message()), HasSubstr("character 2"));
  EXPECT_FALSE(pfx_import::PasswordBytes(SecretString("\xC3"), PasswordEncoding::kIntune).ok());
  EXPECT_FALSE(pfx_import::PasswordBytes(SecretString("\xC0\x80"), PasswordEncoding::kIntune).ok());
  auto utf8 = pfx_import::PasswordBytes(SecretString("a\xE2\x82\xAC"), PasswordEncoding::kUtf8);
  ASSERT_TRUE(utf8.ok());
  EXPECT_EQ(utf8->size(), 4u);
  auto empty = pfx_import::PasswordBytes(SecretString(""), PasswordEncoding::kIntune);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

TEST(Names, EnumCases) {
  using crypto::RsaPadding;
  using pfx_import::EnumCase;
  EXPECT_EQ(pfx_import::PaddingName(RsaPadding::kOaepSha512, EnumCase::kCamel), "oaepSha512");
  EXPECT_EQ(pfx_import::PaddingName(RsaPadding::kOaepSha256, EnumCase::kPascal), "OaepSha256");
  EXPECT_EQ(pfx_import::PurposeName(PfxPurpose::kSmimeEncryption, EnumCase::kCamel),
            "smimeEncryption");
  EXPECT_EQ(pfx_import::PurposeName(PfxPurpose::kSmimeSigning, EnumCase::kPascal), "SmimeSigning");
  EXPECT_EQ(pfx_import::PurposeName(PfxPurpose::kUnassigned, EnumCase::kPascal), "Unassigned");
  EXPECT_TRUE(pfx_import::ParsePurpose("SmimeEncryption").ok());
  EXPECT_FALSE(pfx_import::ParsePurpose("vpnx").ok());
  EXPECT_FALSE(pfx_import::ParsePadding("pkcs1").ok());
}

TEST(Dates, NewtonsoftDateTimeOffset) {
  const absl::Time t = absl::FromUnixMicros(1714558272123456);  // 2024-05-01T10:11:12.123456Z
  EXPECT_EQ(pfx_import::FormatDateTimeOffset(t, absl::UTCTimeZone(), false),
            "2024-05-01T10:11:12+00:00");
  EXPECT_EQ(pfx_import::FormatDateTimeOffset(t, absl::FixedTimeZone(7200), true),
            "2024-05-01T12:11:12.123456+02:00");
  EXPECT_EQ(pfx_import::FormatDateTimeOffset(t, absl::FixedTimeZone(-5 * 3600), false),
            "2024-05-01T05:11:12-05:00");
  EXPECT_EQ(pfx_import::FormatDateTimeOffset(absl::FromUnixMillis(1714558272500),
                                             absl::UTCTimeZone(), true),
            "2024-05-01T10:11:12.5+00:00");
  EXPECT_EQ(pfx_import::FormatDateTimeOffset(absl::FromUnixSeconds(1714558272), absl::UTCTimeZone(),
                                             true),
            "2024-05-01T10:11:12+00:00");
}

TEST(Csv, QuotesCommasAndLineBreaks) {
  std::istringstream in("a,b,c\r\n\"x,1\",\"say \"\"hi\"\"\",\"two\nlines\"\n\nlast,,\n");
  pfx_import::CsvReader r(in);
  std::vector<std::string> f;
  std::string err;
  ASSERT_TRUE(r.Next(&f, &err));
  EXPECT_THAT(f, ::testing::ElementsAre("a", "b", "c"));
  ASSERT_TRUE(r.Next(&f, &err));
  EXPECT_TRUE(err.empty());
  EXPECT_THAT(f, ::testing::ElementsAre("x,1", "say \"hi\"", "two\nlines"));
  ASSERT_TRUE(r.Next(&f, &err));
  EXPECT_THAT(f, ::testing::ElementsAre("last", "", ""));
  EXPECT_EQ(r.line(), 5);
  EXPECT_FALSE(r.Next(&f, &err));
}

// ---------------------------------------------------------------------------------------
// The command, with a public-key file (no service).

class PfxImportCli : public ::testing::Test {
 protected:
  void SetUp() override {
    svc_key_ = NewRsaKey(2048);
    test::WriteFile(dir_.File("svc.pub"), PublicKeyPem(svc_key_));
    test::WriteFile(dir_.File("svc.key"), KeyPem(svc_key_));
  }
  void TearDown() override { EVP_PKEY_free(svc_key_); }
  // The password sealed in a record, decrypted with the test's service key.
  std::string Unseal(const nlohmann::json& record,
                     crypto::RsaPadding padding = crypto::RsaPadding::kOaepSha512) {
    auto ct = crypto::Base64Decode(record["encryptedPfxPassword"].get<std::string>());
    if (!ct.ok()) return "<bad base64>";
    const std::string pem = KeyPem(svc_key_);
    auto pt = crypto::RsaDecryptWithPrivateKey(Span(pem), padding, *ct);
    if (!pt.ok()) return "<decrypt failed>";
    return std::string(pt->begin(), pt->end());
  }
  test::TempDir dir_;
  EVP_PKEY* svc_key_ = nullptr;
};

TEST_F(PfxImportCli, RecordHasExactlyTheFieldsTypesAndEncodingsOf42) {
  KeyCert kc =
      MakeKeyCert("alice", -3600, 86400 * 365, "critical,digitalSignature,keyEncipherment");
  const std::string pfx = MakePfx(kc.key, kc.cert, {}, "caf\xC3\xA9 pw");
  test::WriteFile(dir_.File("a.pfx"), pfx);
  test::WriteFile(dir_.File("pw"), "caf\xC3\xA9 pw\n");
  test::CommandResult r =
      RunPfxImport({"--pfx", dir_.File("a.pfx"), "--password-file", dir_.File("pw"), "--upn",
                    "Alice@Contoso.example", "--purpose", "smimeEncryption", "--public-key-file",
                    dir_.File("svc.pub"), "--key-name", "pfxkey", "--out", dir_.File("out.jsonl")},
                   {{"TZ", "UTC"}});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string text = test::ReadFileOrEmpty(dir_.File("out.jsonl"));
  ASSERT_EQ(std::count(text.begin(), text.end(), '\n'), 1) << "one JSON Lines record";
  auto j = nlohmann::ordered_json::parse(text);
  std::vector<std::string> keys;
  for (auto it = j.begin(); it != j.end(); ++it) {
    keys.push_back(it.key());
    EXPECT_TRUE(it.value().is_string()) << it.key();
  }
  EXPECT_THAT(
      keys, ::testing::ElementsAre("thumbprint", "intendedPurpose", "userPrincipalName",
                                   "startDateTime", "expirationDateTime", "providerName", "keyName",
                                   "paddingScheme", "encryptedPfxBlob", "encryptedPfxPassword",
                                   "createdDateTime", "lastModifiedDateTime"));
  auto c = crypto::OpenPfx(Span(pfx), SecretString("caf\xC3\xA9 pw"));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(j["thumbprint"], c->thumbprint);
  EXPECT_EQ(j["intendedPurpose"], "smimeEncryption");
  EXPECT_EQ(j["userPrincipalName"], "Alice@Contoso.example");
  const std::regex secs(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d)");
  const std::regex frac(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?[+-]\d\d:\d\d)");
  EXPECT_TRUE(std::regex_match(j["startDateTime"].get<std::string>(), secs)) << j["startDateTime"];
  EXPECT_EQ(j["startDateTime"],
            pfx_import::FormatDateTimeOffset(c->not_before, absl::UTCTimeZone(), false));
  EXPECT_EQ(j["expirationDateTime"],
            pfx_import::FormatDateTimeOffset(c->not_after, absl::UTCTimeZone(), false));
  EXPECT_TRUE(std::regex_match(j["createdDateTime"].get<std::string>(), frac))
      << j["createdDateTime"];
  EXPECT_EQ(j["createdDateTime"], j["lastModifiedDateTime"]);
  EXPECT_EQ(j["providerName"], "hsm-rewrap");
  EXPECT_EQ(j["keyName"], "pfxkey");
  EXPECT_EQ(j["paddingScheme"], "oaepSha512");
  auto blob = crypto::Base64Decode(j["encryptedPfxBlob"].get<std::string>());
  ASSERT_TRUE(blob.ok());
  EXPECT_EQ(std::string(blob->begin(), blob->end()), pfx) << "the original file bytes";
  EXPECT_EQ(j["encryptedPfxBlob"], crypto::Base64Encode(Span(pfx))) << "standard padded base64";
  const std::string sealed = j["encryptedPfxPassword"];
  EXPECT_EQ(sealed.size(), 344u);
  EXPECT_TRUE(std::regex_match(sealed, std::regex("[A-Za-z0-9+/]+=*")));
  EXPECT_EQ(Unseal(j), "caf\xE9 pw") << "Intune bytes: Latin-1, no terminator";
}

TEST_F(PfxImportCli, PascalCaseCngKeyAndPaddings) {
  KeyCert kc = MakeKeyCert("bob", -3600, 86400, "");
  test::WriteFile(dir_.File("b.pfx"), MakePfx(kc.key, kc.cert, {}, "secret"));
  auto pub = crypto::PublicKey::FromSpki(Span(PublicKeyPem(svc_key_)));
  ASSERT_TRUE(pub.ok());
  const crypto::Bytes blob = pub->CngPublicBlob();
  test::WriteFile(dir_.File("svc.blob"), std::string(blob.begin(), blob.end()));
  test::CommandResult r =
      RunPfxImport({"--pfx", dir_.File("b.pfx"), "--upn", "bob@x", "--purpose", "smimeSigning",
                    "--public-key-file", dir_.File("svc.blob"), "--padding", "oaepSha256",
                    "--enum-case", "pascal", "--out", "-"},
                   {{"PFX_PASSWORD", "secret"}});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["intendedPurpose"], "SmimeSigning");
  EXPECT_EQ(j["paddingScheme"], "OaepSha256");
  EXPECT_EQ(Unseal(j, crypto::RsaPadding::kOaepSha256), "secret");
}

TEST_F(PfxImportCli, PasswordTooLongAndAboveLatin1AreRefusedClearly) {
  KeyCert kc = MakeKeyCert("c", -3600, 86400, "");
  const std::string long_pw(127, 'x');
  test::WriteFile(dir_.File("c.pfx"), MakePfx(kc.key, kc.cert, {}, long_pw));
  test::CommandResult r = RunPfxImport(
      {"--pfx", dir_.File("c.pfx"), "--upn", "c@x", "--public-key-file", dir_.File("svc.pub")},
      {{"PFX_PASSWORD", long_pw}});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("password-too-long"));
  EXPECT_THAT(r.err, HasSubstr("at most 126 bytes"));
  // oaepSha256 allows 190.
  r = RunPfxImport({"--pfx", dir_.File("c.pfx"), "--upn", "c@x", "--public-key-file",
                    dir_.File("svc.pub"), "--padding", "oaepSha256"},
                   {{"PFX_PASSWORD", long_pw}});
  EXPECT_EQ(r.exit_code, 0) << r.err;

  const std::string euro = "pr\xE2\x82\xAC";
  test::WriteFile(dir_.File("d.pfx"), MakePfx(kc.key, kc.cert, {}, euro));
  r = RunPfxImport(
      {"--pfx", dir_.File("d.pfx"), "--upn", "d@x", "--public-key-file", dir_.File("svc.pub")},
      {{"PFX_PASSWORD", euro}});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("above U+00FF"));
  r = RunPfxImport({"--pfx", dir_.File("d.pfx"), "--upn", "d@x", "--public-key-file",
                    dir_.File("svc.pub"), "--password-encoding", "utf8"},
                   {{"PFX_PASSWORD", euro}});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Unseal(nlohmann::json::parse(r.out)), euro);
}

TEST_F(PfxImportCli, UsageErrors) {
  EXPECT_EQ(RunPfxImport({"--upn", "x"}).exit_code, 2);
  EXPECT_EQ(
      RunPfxImport({"--pfx", "a", "--csv", "b", "--upn", "x", "--public-key-file", "k"}).exit_code,
      2);
  EXPECT_EQ(RunPfxImport({"--pfx", "a", "--public-key-file", "k"}).exit_code, 2);
  EXPECT_EQ(RunPfxImport({"--pfx", "a", "--upn", "x"}).exit_code, 2) << "no key source";
  EXPECT_EQ(
      RunPfxImport({"--pfx", "a", "--upn", "x", "--public-key-file", "k", "--verify"}).exit_code,
      2);
  test::CommandResult h = RunPfxImport({"--help"});
  EXPECT_EQ(h.exit_code, 0);
  for (const char* flag :
       {"--service", "--key-name", "--public-key-file", "--pfx", "--password-file", "--upn",
        "--purpose", "--padding", "--csv", "--out", "--verify", "--graph-url", "--token-file",
        "--state-file", "--dry-run", "PFX_PASSWORD"}) {
    EXPECT_THAT(h.out, HasSubstr(flag));
  }
  // No password source and no terminal.
  KeyCert kc = MakeKeyCert("e", -3600, 86400, "");
  test::WriteFile(dir_.File("e.pfx"), MakePfx(kc.key, kc.cert, {}, "x"));
  test::CommandResult r = test::RunCommand({"env", "-u", "PFX_PASSWORD", "setsid", PfxImportPath(),
                                            "--pfx", dir_.File("e.pfx"), "--upn", "e@x",
                                            "--public-key-file", dir_.File("svc.pub")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("no PFX password"));
}

// A manifest mixing good rows, every kind of bad row and per-row passwords.
TEST_F(PfxImportCli, CsvBulkRunCountsFailuresByReason) {
  KeyCert good = MakeKeyCert("good", -3600, 86400, "critical,digitalSignature,keyEncipherment");
  KeyCert expired = MakeKeyCert("expired", -86400 * 2, -86400, "");
  KeyCert sign = MakeKeyCert("sign", -3600, 86400, "critical,digitalSignature");
  mkdir(dir_.File("p").c_str(), 0700);
  test::WriteFile(dir_.File("p/good1.pfx"), MakePfx(good.key, good.cert, {}, "one"));
  test::WriteFile(dir_.File("p/good2.pfx"), MakePfx(good.key, good.cert, {}, "two"));
  test::WriteFile(dir_.File("p/pw2"), "two\n");
  test::WriteFile(dir_.File("p/good3.pfx"), MakePfx(good.key, good.cert, {}, "runpw"));
  test::WriteFile(dir_.File("p/expired.pfx"), MakePfx(expired.key, expired.cert, {}, "x"));
  test::WriteFile(dir_.File("p/sign.pfx"), MakePfx(sign.key, sign.cert, {}, "x"));
  test::WriteFile(dir_.File("p/junk.pfx"), "not a pfx");
  test::WriteFile(dir_.File("m.csv"),
                  "pfxPath,password,passwordFile,userPrincipalName,intendedPurpose\n"
                  "p/good1.pfx,one,,u1@x,smimeEncryption\n"
                  "p/good2.pfx,,p/pw2,u2@x,\n"
                  "p/good3.pfx,,,\"u3@x\",SmimeSigning\n"
                  "p/good1.pfx,wrong,,u4@x,\n"
                  "p/expired.pfx,x,,u5@x,\n"
                  "p/sign.pfx,x,,u6@x,smimeEncryption\n"
                  "p/junk.pfx,x,,u7@x,\n"
                  "p/missing.pfx,x,,u8@x,\n"
                  "p/good1.pfx,one,,,\n"
                  "p/good1.pfx,one,,u10@x,vpnx\n");
  test::CommandResult r =
      RunPfxImport({"--csv", dir_.File("m.csv"), "--public-key-file", dir_.File("svc.pub"), "--out",
                    dir_.File("out.jsonl"), "--out-dir", dir_.File("records")},
                   {{"PFX_PASSWORD", "runpw"}});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("3 imported, 0 skipped, 7 failed"));
  for (const char* reason : {"wrong-password: 1", "expired: 1", "key-usage: 1", "not-pkcs12: 1",
                             "unreadable: 1", "manifest: 2"}) {
    EXPECT_THAT(r.err, HasSubstr(reason));
  }
  EXPECT_THAT(r.err, HasSubstr("row 4 (line 5, p/good1.pfx): wrong-password"));
  const std::string out = test::ReadFileOrEmpty(dir_.File("out.jsonl"));
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 3);
  std::istringstream lines(out);
  std::string line, last;
  std::vector<std::string> passwords;
  while (std::getline(lines, line)) {
    passwords.push_back(Unseal(nlohmann::json::parse(line)));
    last = line;
  }
  EXPECT_THAT(passwords, ::testing::ElementsAre("one", "two", "runpw"));
  std::string log;
  Shell("ls " + ShellQuote(dir_.File("records")) + " | wc -l", &log);
  EXPECT_EQ(std::atoi(log.c_str()), 3);
  auto indented = test::ReadFileOrEmpty(dir_.File(
      "records/u3@x-" + nlohmann::json::parse(last)["thumbprint"].get<std::string>() + ".json"));
  EXPECT_THAT(indented, HasSubstr("{\n  \"thumbprint\""));

  // Unknown column: usage error.
  test::WriteFile(dir_.File("bad.csv"), "pfxPath,upn\nx,y\n");
  EXPECT_EQ(RunPfxImport({"--csv", dir_.File("bad.csv"), "--public-key-file", dir_.File("svc.pub")})
                .exit_code,
            2);
}

TEST_F(PfxImportCli, FourJobsGiveTheSameRecordsInTheSameOrderAsOne) {
  // The shared vectors (when present) and generated files, good and bad, in one manifest.
  std::string csv = "pfxPath,password,userPrincipalName,intendedPurpose\n";
  if (SharedPresent()) {
    for (const auto& [file, pw] : std::vector<std::pair<std::string, std::string>>{
             {"pkcs12/openssl.p12", "foo"},
             {"pkcs12/windows.p12", "foo"},
             {"pkcs12/pbes2_sha256.p12", "foo"},
             {"pkcs12/no_encryption.p12", "foo"},
             {"pkcs12/empty_password.p12", ""},
             {"pkcs12/unicode_password.p12", "Hello, \xE4\xB8\x96\xE7\x95\x8C"},
             {"pkcs12/bad1.p12", ""},
             {"intune/testcert.pfx", "TestCert"}}) {
      csv += SharedDir() + "/vectors/" + file + ",\"" + pw + "\",v-" + file.substr(7, 6) +
             "@x,unassigned\n";
    }
  }
  mkdir(dir_.File("g").c_str(), 0700);
  for (int i = 0; i < 24; ++i) {
    const bool expired = i % 7 == 3;
    KeyCert kc = MakeKeyCert("user" + std::to_string(i), expired ? -86400 * 2 : -3600,
                             expired ? -86400 : 86400, "critical,digitalSignature,keyEncipherment");
    const std::string pw = "pw-" + std::to_string(i);
    test::WriteFile(dir_.File("g/" + std::to_string(i) + ".pfx"), MakePfx(kc.key, kc.cert, {}, pw));
    csv += "g/" + std::to_string(i) + ".pfx," + (i % 5 == 4 ? "wrong" : pw) + ",u" +
           std::to_string(i) + "@x,smimeEncryption\n";
  }
  test::WriteFile(dir_.File("m.csv"), csv);
  auto run = [&](const std::string& jobs) {
    test::CommandResult r = RunPfxImport({"--csv", dir_.File("m.csv"), "--public-key-file",
                                          dir_.File("svc.pub"), "--jobs", jobs, "--out",
                                          dir_.File("out" + jobs + ".jsonl")});
    EXPECT_EQ(r.exit_code, 1) << r.err;  // the bad rows
    return r;
  };
  test::CommandResult one = run("1"), four = run("4");
  auto records = [&](const std::string& jobs) {
    std::vector<nlohmann::json> out;
    std::istringstream in(test::ReadFileOrEmpty(dir_.File("out" + jobs + ".jsonl")));
    for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
    return out;
  };
  auto r1 = records("1"), r4 = records("4");
  ASSERT_GE(r1.size(), 18u);
  ASSERT_EQ(r1.size(), r4.size());
  for (size_t i = 0; i < r1.size(); ++i) {
    SCOPED_TRACE(r1[i]["userPrincipalName"].get<std::string>());
    EXPECT_EQ(Unseal(r1[i]), Unseal(r4[i]));  // the seals differ (OAEP is randomized)
    for (auto* r : {&r1[i], &r4[i]}) {
      for (const char* k : {"encryptedPfxPassword", "createdDateTime", "lastModifiedDateTime"}) {
        r->erase(k);
      }
    }
    EXPECT_EQ(r1[i], r4[i]);
  }
  // The same failures, in the same (input) order, and the same counts.
  auto failures = [](const std::string& err) {
    std::vector<std::string> out;
    std::istringstream in(err);
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("pfx-import: row ", 0) == 0) out.push_back(line);
    }
    return out;
  };
  EXPECT_EQ(failures(one.err), failures(four.err));
  EXPECT_GE(failures(one.err).size(), 6u);
  const std::string summary = one.err.substr(one.err.find(" imported"));
  EXPECT_EQ(summary.substr(0, summary.find('(')),
            four.err.substr(four.err.find(" imported")).substr(0, summary.find('(')));
  EXPECT_THAT(four.err, HasSubstr("4 jobs"));
}

// ---------------------------------------------------------------------------------------
// Other producers.

class Producers : public PfxImportCli {
 protected:
  void SetUp() override {
    PfxImportCli::SetUp();
    kc_ = MakeKeyCert("producer", -3600, 86400 * 30, "critical,digitalSignature,keyEncipherment");
    test::WriteFile(dir_.File("leaf.key"), KeyPem(kc_.key));
    test::WriteFile(dir_.File("leaf.crt"), CertPem(kc_.cert));
  }
  void ExpectImports(const std::string& file, const std::string& password) {
    const std::string data = test::ReadFileOrEmpty(file);
    ASSERT_FALSE(data.empty()) << file;
    auto c = crypto::OpenPfx(Span(data), SecretString(password.begin(), password.end()));
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->key_type, "RSA");
    test::CommandResult r =
        RunPfxImport({"--pfx", file, "--upn", "p@x", "--purpose", "smimeEncryption",
                      "--public-key-file", dir_.File("svc.pub")},
                     {{"PFX_PASSWORD", password}});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(Unseal(j), password);
    EXPECT_EQ(j["encryptedPfxBlob"], crypto::Base64Encode(Span(data)));
  }
  KeyCert kc_;
};

TEST_F(Producers, OpenSsl3Default) {
  std::string log;
  ASSERT_EQ(Shell("openssl pkcs12 -export -inkey " + dir_.File("leaf.key") + " -in " +
                      dir_.File("leaf.crt") + " -passout pass:Open3pw -out " + dir_.File("o.p12"),
                  &log),
            0)
      << log;
  ExpectImports(dir_.File("o.p12"), "Open3pw");
}

TEST_F(Producers, OpenSslLegacyRc2) {
  std::string log;
  ASSERT_EQ(Shell("openssl pkcs12 -export -legacy -inkey " + dir_.File("leaf.key") + " -in " +
                      dir_.File("leaf.crt") + " -passout pass:Legacy1 -out " + dir_.File("l.p12"),
                  &log),
            0)
      << log;
  ASSERT_EQ(Shell("openssl pkcs12 -info -noout -legacy -in " + dir_.File("l.p12") +
                      " -passin pass:Legacy1 2>&1 | grep -q 'RC2'",
                  &log),
            0)
      << "expected an RC2 bag";
  ExpectImports(dir_.File("l.p12"), "Legacy1");
}

TEST_F(Producers, JavaKeytool) {
  if (!test::FindInPath("keytool")) GTEST_SKIP() << "keytool not installed (default-jre-headless)";
  std::string log;
  ASSERT_EQ(
      Shell("keytool -genkeypair -storetype PKCS12 -keystore " + dir_.File("k.p12") +
                " -storepass Keytool1 -keypass Keytool1 -alias user -keyalg RSA -keysize 2048"
                " -dname CN=keytool -validity 30 -ext KeyUsage=digitalSignature,keyEncipherment",
            &log),
      0)
      << log;
  ExpectImports(dir_.File("k.p12"), "Keytool1");
}

TEST_F(Producers, NssPk12util) {
  if (!test::FindInPath("pk12util") || !test::FindInPath("certutil"))
    GTEST_SKIP() << "NSS tools not installed (libnss3-tools)";
  std::string log;
  const std::string db = "sql:" + dir_.File("nssdb");
  mkdir(dir_.File("nssdb").c_str(), 0700);
  test::WriteFile(dir_.File("empty"), "");
  ASSERT_EQ(
      Shell("openssl pkcs12 -export -inkey " + dir_.File("leaf.key") + " -in " +
                dir_.File("leaf.crt") + " -name user -passout pass:seed -out " +
                dir_.File("seed.p12") + " && certutil -N -d " + db + " -f " + dir_.File("empty") +
                " && pk12util -i " + dir_.File("seed.p12") + " -d " + db + " -W seed -K ''" +
                " && pk12util -o " + dir_.File("n.p12") + " -n user -d " + db + " -W Nss3pw -K ''",
            &log),
      0)
      << log;
  ExpectImports(dir_.File("n.p12"), "Nss3pw");
}

TEST_F(Producers, GnuTlsCerttool) {
  if (!test::FindInPath("certtool")) GTEST_SKIP() << "certtool not installed (gnutls-bin)";
  std::string log;
  ASSERT_EQ(Shell("certtool --load-privkey " + dir_.File("leaf.key") + " --load-certificate " +
                      dir_.File("leaf.crt") +
                      " --to-p12 --outder --p12-name user --password Gnutls1 --outfile " +
                      dir_.File("g.p12"),
                  &log),
            0)
      << log;
  ExpectImports(dir_.File("g.p12"), "Gnutls1");
}

// ---------------------------------------------------------------------------------------
// Upload to a local Graph stand-in.

class FakeGraph {
 public:
  FakeGraph() {
    server_.Post("/beta/deviceManagement/userPfxCertificates", [this](const httplib::Request& req,
                                                                      httplib::Response& res) {
      std::lock_guard<std::mutex> lock(mu_);
      bodies_.push_back(req.body);
      auth_.push_back(req.get_header_value("Authorization"));
      if (throttle_once_ && !throttled_) {
        throttled_ = true;
        res.status = 429;
        res.set_header("Retry-After", "1");
        res.set_content(R"({"error":{"code":"TooManyRequests","message":"slow down"}})",
                        "application/json");
        return;
      }
      if (req.body.find("\"userPrincipalName\":\"reject@x\"") != std::string::npos) {
        res.status = 400;
        res.set_content(R"({"error":{"code":"BadRequest","message":"thumbprint already exists"}})",
                        "application/json");
        return;
      }
      res.status = 201;
      res.set_content(req.body, "application/json");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ~FakeGraph() {
    server_.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/beta"; }
  void ThrottleOnce() { throttle_once_ = true; }
  std::vector<std::string> bodies() {
    std::lock_guard<std::mutex> lock(mu_);
    return bodies_;
  }
  std::vector<std::string> auth() {
    std::lock_guard<std::mutex> lock(mu_);
    return auth_;
  }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::string> bodies_, auth_;
  std::atomic<bool> throttle_once_{false};
  bool throttled_ = false;
};

TEST_F(PfxImportCli, UploadResendsAfter429AndStateFileSkipsOnRerun) {
  FakeGraph graph;
  graph.ThrottleOnce();
  KeyCert kc = MakeKeyCert("up", -3600, 86400, "");
  test::WriteFile(dir_.File("u.pfx"), MakePfx(kc.key, kc.cert, {}, "pw"));
  test::WriteFile(dir_.File("token"), "tok123\n");
  const std::vector<std::string> args = {"--pfx",
                                         dir_.File("u.pfx"),
                                         "--upn",
                                         "up@x",
                                         "--public-key-file",
                                         dir_.File("svc.pub"),
                                         "--graph-url",
                                         graph.url(),
                                         "--token-file",
                                         dir_.File("token"),
                                         "--state-file",
                                         dir_.File("state.jsonl"),
                                         "-v"};
  const absl::Time start = absl::Now();
  test::CommandResult r = RunPfxImport(args, {{"PFX_PASSWORD", "pw"}});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(900)) << "waited Retry-After: 1";
  auto bodies = graph.bodies();
  ASSERT_EQ(bodies.size(), 2u) << "the request was really sent again";
  EXPECT_EQ(bodies[0], bodies[1]);
  EXPECT_EQ(graph.auth()[1], "Bearer tok123");
  auto j = nlohmann::ordered_json::parse(bodies[1]);
  EXPECT_EQ(j.begin().key(), "thumbprint");
  EXPECT_THAT(r.err, HasSubstr("uploaded (HTTP 201, 2 attempts)"));
  EXPECT_THAT(test::ReadFileOrEmpty(dir_.File("state.jsonl")),
              HasSubstr(j["thumbprint"].get<std::string>()));

  // Re-run: skipped, nothing sent.
  r = RunPfxImport(args, {{"PFX_PASSWORD", "pw"}});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("0 imported, 1 skipped, 0 failed"));
  EXPECT_EQ(graph.bodies().size(), 2u);

  // Dry run sends nothing; a Graph error is reported with its message.
  std::vector<std::string> dry = args;
  dry[3] = "other@x";
  dry.push_back("--dry-run");
  r = RunPfxImport(dry, {{"PFX_PASSWORD", "pw"}});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(graph.bodies().size(), 2u);
  std::vector<std::string> reject = args;
  reject[3] = "reject@x";
  r = RunPfxImport(reject, {{"PFX_PASSWORD", "pw"}});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("upload-http-400"));
  EXPECT_THAT(r.err, HasSubstr("thumbprint already exists"));
  // Token from the environment.
  std::vector<std::string> env_token = {"--pfx",       dir_.File("u.pfx"),  "--upn",
                                        "env@x",       "--public-key-file", dir_.File("svc.pub"),
                                        "--graph-url", graph.url()};
  r = RunPfxImport(env_token, {{"PFX_PASSWORD", "pw"}, {"GRAPH_TOKEN", "envtok"}});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(graph.auth().back(), "Bearer envtok");
}

}  // namespace
}  // namespace hsmrewrap::pfx_test
