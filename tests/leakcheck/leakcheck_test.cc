// no_secrets_in_logs: after the suite's rewrapd-running tests (the fixture `leakcheck`),
// searches every collected rewrapd log and audit file for every recorded secret (see
// scan.h, record.h). LeakScan.* prove the search finds what it must (planted secrets in a
// fake collection) and refuses a collection that cannot catch anything; Collection.* is
// the real check, run when --collection=DIR is given.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "tests/leakcheck/scan.h"
#include "tests/support/temp_dir.h"

namespace hsmrewrap::leakcheck {
namespace {
namespace fs = std::filesystem;

std::string g_collection;

class FakeCollection : public ::testing::Test {
 protected:
  // A test directory as collect.sh, record.cc and a harness would leave it.
  void AddTest(const std::string& test, const std::vector<std::string>& secrets,
               const std::vector<std::pair<std::string, std::string>>& logs) {
    fs::create_directories(root_ + "/" + test + "/logs/1-0-rewrapd");
    Write(root_ + "/" + test + "/ran", "1\n");
    std::string hex;
    for (const auto& s : secrets) {
      for (unsigned char c : s) {
        static const char d[] = "0123456789abcdef";
        hex += {d[c >> 4], d[c & 15]};
      }
      hex += "\n";
    }
    Write(root_ + "/" + test + "/secrets-1.hex", hex);
    for (const auto& [name, text] : logs)
      Write(root_ + "/" + test + "/logs/1-0-rewrapd/" + name, text);
  }
  static void Write(const std::string& path, const std::string& data) {
    std::ofstream(path, std::ios::binary) << data;
  }
  test::TempDir dir_{"leakcheck-selftest"};
  const std::string root_ = dir_.path();
};

const std::string kSecret = "Pl@nted-secret\xff\x01-42";  // 18 bytes, not all printable
const std::string kClean =
    R"({"level":"debug","msg":"item 3: key default: decrypt failed in the token"})";
const std::string kInfoOnly = R"({"level":"info","msg":"rewrapd serving"})";

std::string EncodingOf(const std::string& name) {
  for (auto& [n, b] : Encodings(kSecret)) {
    if (n == name) return b;
  }
  ADD_FAILURE() << "no encoding " << name;
  return "";
}

TEST_F(FakeCollection, FindsPlantedSecretInEveryEncoding) {
  AddTest("t1", {kSecret, "another-secret-1"},
          {{"rewrapd.stderr", kClean + "\n" + kClean + "x" + kSecret + "y\n"},
           {"hex.log", "pin=" + EncodingOf("hex") + "\n"},
           {"HEX.log", "pin=" + EncodingOf("HEX") + "\n"},
           {"audit.jsonl", "{\"b64\":\"" + EncodingOf("base64") + "==\"}\n"},
           {"url.log", EncodingOf("base64url")},
           {"clean.log", kClean}});
  ScanResult r = ScanCollection(root_);
  EXPECT_TRUE(r.problems.empty()) << r.Report();
  std::map<std::string, std::string> by_file;  // basename -> encoding
  for (const auto& h : r.hits) {
    EXPECT_EQ(r.secrets[h.secret].length, kSecret.size());
    by_file[fs::path(h.file).filename().string()] = h.encoding;
  }
  EXPECT_EQ(by_file["rewrapd.stderr"], "raw");
  EXPECT_EQ(by_file["hex.log"], "hex");
  EXPECT_EQ(by_file["HEX.log"], "HEX");
  EXPECT_EQ(by_file["audit.jsonl"], "base64");
  EXPECT_EQ(by_file["url.log"], "base64url");
  EXPECT_EQ(by_file.count("clean.log"), 0u);
  EXPECT_EQ(r.hits.size(), 5u) << r.Report();
  EXPECT_FALSE(r.ok());
  // The report names file and secret index, never the secret.
  const std::string report = r.Report();
  EXPECT_NE(report.find("LEAK: "), std::string::npos);
  EXPECT_NE(report.find("url.log"), std::string::npos);
  EXPECT_NE(report.find("secret #0"), std::string::npos) << report;
  for (auto& [name, bytes] : Encodings(kSecret)) {
    EXPECT_EQ(report.find(bytes), std::string::npos) << "the report shows the secret as " << name;
  }
  EXPECT_NE(report.find("checked 6 log/audit files"), std::string::npos) << report;
}

TEST_F(FakeCollection, CleanLogsPass) {
  AddTest("t1", {kSecret}, {{"rewrapd.stderr", kClean}, {"audit.jsonl", kClean}});
  ScanResult r = ScanCollection(root_);
  EXPECT_TRUE(r.ok()) << r.Report();
  EXPECT_EQ(r.log_files, 2u);
  EXPECT_EQ(r.searched_secrets, 1u);
}

TEST_F(FakeCollection, ShortSecretsAreNotSearched) {
  AddTest("t1", {"1234567", kSecret}, {{"rewrapd.stderr", kClean + "x1234567y"}});
  ScanResult r = ScanCollection(root_);
  EXPECT_TRUE(r.ok()) << r.Report();
  EXPECT_EQ(r.short_secrets, 1u);
  EXPECT_EQ(r.searched_secrets, 1u);
}

TEST_F(FakeCollection, BrokenCollectionFails) {
  // Nothing ran: vacuous.
  EXPECT_FALSE(ScanCollection(root_).ok());
  EXPECT_FALSE(ScanCollection(root_ + "/missing").ok());
  // A test ran but left no logs; another left logs but no secret of 8 bytes or more.
  AddTest("nologs", {kSecret}, {});
  AddTest("nosecrets", {"short"}, {{"rewrapd.stderr", kClean}});
  ScanResult r = ScanCollection(root_);
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.problems.size(), 2u) << r.Report();
  EXPECT_NE(r.Report().find("nologs ran but left no"), std::string::npos) << r.Report();
  EXPECT_NE(r.Report().find("nosecrets ran but recorded no secret"), std::string::npos)
      << r.Report();
  // Logs without a single debug line: rewrapd ran at info level.
  AddTest("quiet", {kSecret}, {{"rewrapd.stderr", kInfoOnly}});
  r = ScanCollection(root_);
  EXPECT_NE(r.Report().find("quiet: no log has a"), std::string::npos) << r.Report();
  fs::remove_all(root_ + "/quiet");
  // A skipped test owes nothing.
  fs::remove_all(root_ + "/nosecrets");
  Write(root_ + "/nologs/skipped", "token unavailable\n");
  AddTest("good", {kSecret}, {{"rewrapd.stderr", kClean}});
  EXPECT_TRUE(ScanCollection(root_).ok()) << ScanCollection(root_).Report();
}

TEST(Collection, NoSecretsInLogs) {
  if (g_collection.empty())
    GTEST_SKIP() << "no --collection=DIR (the ctest entry no_secrets_in_logs gives it)";
  ScanResult r = ScanCollection(g_collection);
  const std::string report = r.Report();
  printf("%s", report.c_str());
  fflush(stdout);
  EXPECT_TRUE(r.ok())
      << "secrets in rewrapd's logs or audit files, or a broken collection; see above. The "
         "files are kept in "
      << g_collection;
}

}  // namespace
}  // namespace hsmrewrap::leakcheck

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--collection=", 0) == 0) {
      hsmrewrap::leakcheck::g_collection = a.substr(13);
    } else {
      fprintf(stderr, "unknown argument %s (expected --collection=DIR)\n", argv[i]);
      return 2;
    }
  }
  return RUN_ALL_TESTS();
}
