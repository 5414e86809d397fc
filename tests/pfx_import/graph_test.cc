// pfx-import against a local Graph + token endpoint (FakeGraph, label unit): list with
// paging and the case-insensitive UPN filter, remove resolving the user id, update after a
// reseal, app sign-in with a client secret and with a client assertion (checked here with
// OpenSSL), one token refresh on a 401, the 429 back-off shared by every worker, Graph's
// 400 body shown to the admin.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <signal.h>

#include <atomic>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "clients/pfx-import/auth.h"
#include "clients/pfx-import/graph.h"
#include "clients/pfx-import/http.h"
#include "crypto/encoding.h"
#include "tests/pfx_import/graph_fake.h"
#include "tests/pfx_import/test_util.h"
#include "tests/support/files.h"
#include "tests/support/temp_dir.h"

namespace hsmrewrap::pfx_test {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kAlice[] = "alice@contoso.example";
constexpr char kBob[] = "bob@contoso.example";

std::string Tp(int i) {  // a thumbprint
  char buf[41];
  std::snprintf(buf, sizeof(buf), "%040x", i + 0xabc);
  return buf;
}

std::vector<nlohmann::json> JsonLines(const std::string& text) {
  std::vector<nlohmann::json> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  }
  return out;
}

std::string B64UrlDecode(std::string s) {
  for (char& c : s) c = c == '-' ? '+' : c == '_' ? '/' : c;
  while (s.size() % 4 != 0) s.push_back('=');
  auto d = crypto::Base64Decode(s);
  return d.ok() ? std::string(d->begin(), d->end()) : "";
}

class GraphCli : public ::testing::Test {
 protected:
  void SetUp() override {
    alice_id_ = graph_.AddUser(kAlice);
    graph_.AddUser(kBob);
    graph_.AddToken("static-token");
    test::WriteFile(dir_.File("token"), "static-token\n");
  }
  // pfx-import COMMAND with the stand-in's URL and the static token.
  test::CommandResult Run(std::vector<std::string> args) {
    args.insert(args.begin() + 1, {"--graph-url", graph_.graph_url(), "--token-file",
                                   dir_.File("token")});
    return RunPfxImport(args);
  }
  // App sign-in flags for the stand-in.
  std::vector<std::string> AppFlags() {
    return {"--graph-url", graph_.graph_url(), "--authority", graph_.authority(), "--tenant",
            "contoso.example", "--client-id", FakeGraph::App().client_id};
  }
  std::vector<FakeGraph::Request> Requests(const std::string& method) {
    std::vector<FakeGraph::Request> out;
    for (auto& r : graph_.requests()) {
      if (r.method == method) out.push_back(r);
    }
    return out;
  }
  test::TempDir dir_;
  FakeGraph graph_;
  std::string alice_id_;
};

TEST_F(GraphCli, ListFollowsPagingAndFiltersUpnCaseInsensitively) {
  graph_.SetPageSize(2);
  for (int i = 0; i < 5; ++i) graph_.AddRecord(kAlice, Tp(i));
  graph_.AddRecord(kBob, Tp(9));

  test::CommandResult r = Run({"list", "--upn", "ALICE@Contoso.Example", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto records = JsonLines(r.out);
  ASSERT_EQ(records.size(), 5u) << r.out;
  for (int i = 0; i < 5; ++i) EXPECT_EQ(records[i]["thumbprint"], Tp(i));
  EXPECT_EQ(Requests("GET").size(), 3u) << "three pages of two";
  EXPECT_THAT(Requests("GET")[0].path, HasSubstr("userPfxCertificates"));

  // All records, as a table; the empty blob/password explained.
  r = Run({"list"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1 + 6) << r.out;
  EXPECT_THAT(r.out, HasSubstr(kBob));
  EXPECT_THAT(r.err, HasSubstr("6 record(s)"));
  EXPECT_THAT(r.err, HasSubstr("by design"));

  // Several users and a thumbprint; a UPN with no records is named and exits 1.
  r = Run({"list", "--upn", std::string(kAlice) + ",nobody@contoso.example", "--thumbprint",
           Tp(3).substr(0, 40), "--json"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(JsonLines(r.out).size(), 1u);
  EXPECT_THAT(r.err, HasSubstr("no records for user nobody@contoso.example"));
}

TEST_F(GraphCli, RemoveResolvesTheUserIdAndReports204And404) {
  graph_.AddRecord(kAlice, Tp(1));
  graph_.AddRecord(kAlice, Tp(2));
  graph_.AddRecord(kBob, Tp(3));
  std::string key = alice_id_;
  key.erase(std::remove(key.begin(), key.end(), '-'), key.end());
  key += "-" + Tp(1);

  test::CommandResult r = Run({"remove", "--upn", kAlice, "--thumbprint", Tp(1), "--yes"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  auto deletes = Requests("DELETE");
  ASSERT_EQ(deletes.size(), 1u);
  EXPECT_EQ(deletes[0].path, "/beta/deviceManagement/userPfxCertificates/" + key)
      << "the key is the user's object id without hyphens, not the UPN";
  EXPECT_THAT(r.out, HasSubstr("deleted"));
  EXPECT_THAT(r.out, HasSubstr("HTTP 204"));
  EXPECT_EQ(graph_.records().count(key), 0u);

  // Again: 404, reported as such, exit 1.
  r = Run({"remove", "--upn", kAlice, "--thumbprint", Tp(1), "--yes"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.out, HasSubstr("not-found"));
  EXPECT_THAT(r.out, HasSubstr("HTTP 404"));

  // From a `list --json` file: the rest, with an unknown user's line failing by itself.
  r = Run({"list", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  test::WriteFile(dir_.File("all.jsonl"),
                  r.out + R"({"userPrincipalName":"ghost@contoso.example","thumbprint":")" +
                      Tp(7) + "\"}\n");
  r = Run({"remove", "--from", dir_.File("all.jsonl"), "--yes", "--jobs", "2"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("2 deleted, 0 not found, 1 failed"));
  EXPECT_THAT(r.out, HasSubstr("line 3 (ghost@contoso.example"));
  EXPECT_THAT(r.out, HasSubstr("no user with UPN ghost@contoso.example"));
  EXPECT_TRUE(graph_.records().empty());

  // No terminal and no --yes: nothing is deleted (only checkable without a terminal).
  if (FILE* tty = std::fopen("/dev/tty", "r"); tty == nullptr) {
    graph_.AddRecord(kBob, Tp(4));
    r = Run({"remove", "--upn", kBob, "--thumbprint", Tp(4)});
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_THAT(r.err, HasSubstr("--yes"));
    EXPECT_EQ(graph_.records().size(), 1u);
  } else {
    std::fclose(tty);
  }
}

TEST_F(GraphCli, UpdatePatchesEachResealedRecordAndReportsErrorLines) {
  graph_.AddRecord(kAlice, Tp(1));
  graph_.AddRecord(kBob, Tp(2));
  // What rewrap-connector --reseal --to k2 writes: records, and an error line.
  auto record = [](const std::string& upn, const std::string& tp) {
    return nlohmann::ordered_json{{"thumbprint", tp},
                                  {"intendedPurpose", "smimeEncryption"},
                                  {"userPrincipalName", upn},
                                  {"providerName", "hsm-rewrap"},
                                  {"keyName", "k2"},
                                  {"paddingScheme", "oaepSha512"},
                                  {"encryptedPfxBlob", "MIIB"},
                                  {"encryptedPfxPassword", "bmV3LXNlYWw="},
                                  {"createdDateTime", "2026-01-01T00:00:00+00:00"},
                                  {"lastModifiedDateTime", "2026-01-01T00:00:00+00:00"}}
        .dump();
  };
  test::WriteFile(dir_.File("resealed.jsonl"),
                  record(kAlice, Tp(1)) + "\n" +
                      R"({"id":"x","error":{"code":"DECRYPT_FAILED","message":"bad seal"},"line":2})"
                      "\n" +
                      record(kBob, Tp(2)) + "\n" + record(kBob, Tp(5)) + "\n");
  test::CommandResult r = Run({"update", "--in", dir_.File("resealed.jsonl"), "--jobs", "2"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr("2 updated, 1 not found, 1 failed"));
  EXPECT_THAT(r.out, HasSubstr("rewrap-connector could not reseal it: DECRYPT_FAILED"));
  auto patches = Requests("PATCH");
  ASSERT_EQ(patches.size(), 3u);
  std::string key = alice_id_;
  key.erase(std::remove(key.begin(), key.end(), '-'), key.end());
  bool seen = false;
  for (const auto& p : patches) {
    seen = seen || p.path == "/beta/deviceManagement/userPfxCertificates('" + key + "-" + Tp(1) + "')";
  }
  EXPECT_TRUE(seen);
  for (const auto& [id, rec] : graph_.records()) {
    EXPECT_EQ(rec["keyName"], "k2") << id;
    EXPECT_EQ(rec["encryptedPfxPassword"], "bmV3LXNlYWw=") << id;
    EXPECT_NE(rec["lastModifiedDateTime"], "2026-01-01T00:00:00+00:00") << id;
  }
  // Output lines are in input order.
  EXPECT_LT(r.out.find(Tp(1)), r.out.find("DECRYPT_FAILED"));
  EXPECT_LT(r.out.find("DECRYPT_FAILED"), r.out.find(Tp(5)));
}

TEST_F(GraphCli, ClientSecretGrantAndOneRefreshOn401) {
  FakeGraph::App app;
  app.client_secret = "s3cr3t-value~";
  graph_.SetApp(app);
  graph_.RejectFirstIssuedToken();
  graph_.AddRecord(kAlice, Tp(1));
  test::WriteFile(dir_.File("secret"), app.client_secret + "\n");
  std::vector<std::string> args = {"list"};
  for (auto& a : AppFlags()) args.push_back(a);
  args.insert(args.end(), {"--client-secret-file", dir_.File("secret"), "--json"});
  test::CommandResult r = RunPfxImport(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(JsonLines(r.out).size(), 1u);
  EXPECT_EQ(graph_.token_requests(), 2) << "one token, then one new one after the 401";
  auto gets = Requests("GET");
  ASSERT_EQ(gets.size(), 2u);
  EXPECT_EQ(gets[0].authorization, "Bearer tok-1");
  EXPECT_EQ(gets[1].authorization, "Bearer tok-2");
  EXPECT_TRUE(graph_.token_errors().empty());

  // A wrong secret: Entra's error code shown, the secret never.
  test::WriteFile(dir_.File("secret"), "wrong-secret-value\n");
  r = RunPfxImport(args);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_THAT(r.err, HasSubstr("AADSTS7000215"));
  EXPECT_THAT(r.err + r.out, Not(HasSubstr("wrong-secret-value")));

  // A token Graph keeps refusing: one re-read of the token file, then a clear error.
  test::WriteFile(dir_.File("token"), "revoked\n");
  const size_t before = graph_.requests().size();
  r = Run({"list"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_THAT(r.err, HasSubstr("HTTP 401 InvalidAuthenticationToken"));
  EXPECT_THAT(r.err, HasSubstr("no new token could be had from the token in"));
  EXPECT_EQ(graph_.requests().size(), before + 1);
}

TEST_F(GraphCli, ClientAssertionGrantIsSignedRs256WithTheCertificateThumbprint) {
  KeyCert app_cert = MakeKeyCert("pfx-import app", -3600, 86400, "");
  test::WriteFile(dir_.File("app.crt"), CertPem(app_cert.cert));
  test::WriteFile(dir_.File("app.key"), KeyPem(app_cert.key));
  FakeGraph::App app;
  app.client_cert_pem = CertPem(app_cert.cert);
  graph_.SetApp(app);
  graph_.AddRecord(kBob, Tp(2));
  std::vector<std::string> args = {"list"};
  for (auto& a : AppFlags()) args.push_back(a);
  args.insert(args.end(), {"--client-cert", dir_.File("app.crt"), "--client-key",
                           dir_.File("app.key"), "--json"});
  test::CommandResult r = RunPfxImport(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(JsonLines(r.out).size(), 1u);
  ASSERT_EQ(graph_.assertions().size(), 1u);

  // The test's own check of the assertion, with OpenSSL.
  const std::string jwt = graph_.assertions()[0];
  const size_t a = jwt.find('.'), b = jwt.rfind('.');
  auto header = nlohmann::json::parse(B64UrlDecode(jwt.substr(0, a)));
  auto claims = nlohmann::json::parse(B64UrlDecode(jwt.substr(a + 1, b - a - 1)));
  EXPECT_EQ(header["alg"], "RS256");
  EXPECT_EQ(header["typ"], "JWT");
  unsigned char sha1[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  ASSERT_EQ(X509_digest(app_cert.cert, EVP_sha1(), sha1, &n), 1);
  EXPECT_EQ(B64UrlDecode(header["x5t"].get<std::string>()), std::string(sha1, sha1 + n));
  EXPECT_EQ(claims["aud"], graph_.token_url());
  EXPECT_EQ(claims["iss"], app.client_id);
  EXPECT_EQ(claims["sub"], app.client_id);
  EXPECT_GT(claims["exp"].get<int64_t>(), claims["nbf"].get<int64_t>());
  const std::string sig = B64UrlDecode(jwt.substr(b + 1));
  const std::string input = jwt.substr(0, b);
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  ASSERT_EQ(EVP_DigestVerifyInit(md, nullptr, EVP_sha256(), nullptr,
                                 X509_get0_pubkey(app_cert.cert)),
            1);
  EXPECT_EQ(EVP_DigestVerify(md, reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                             reinterpret_cast<const unsigned char*>(input.data()), input.size()),
            1);
  EVP_MD_CTX_free(md);

  // Another app's key is refused by the token endpoint, with its reason shown.
  KeyCert other = MakeKeyCert("other", -3600, 86400, "");
  test::WriteFile(dir_.File("other.crt"), CertPem(other.cert));
  test::WriteFile(dir_.File("other.key"), KeyPem(other.key));
  args[args.size() - 4] = dir_.File("other.crt");
  args[args.size() - 2] = dir_.File("other.key");
  r = RunPfxImport(args);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_THAT(r.err, HasSubstr("AADSTS700027"));
}

TEST_F(GraphCli, Graph400BodyIsShownWithCodeMessageFieldAndRequestId) {
  KeyCert kc = MakeKeyCert("carol", -3600, 86400, "critical,digitalSignature,keyEncipherment");
  test::WriteFile(dir_.File("carol.pfx"), MakePfx(kc.key, kc.cert, {}, "pw"));
  EVP_PKEY* svc = NewRsaKey(2048);
  test::WriteFile(dir_.File("svc.pub"), PublicKeyPem(svc));
  EVP_PKEY_free(svc);
  test::WriteFile(dir_.File("m.csv"), "pfxPath,password,userPrincipalName\ncarol.pfx,pw," +
                                          std::string("carol@contoso.example") + "\n");
  test::CommandResult r = Run({"import", "--csv", dir_.File("m.csv"), "--public-key-file",
                               dir_.File("svc.pub")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("row 1 (line 2, carol.pfx): upload-http-400: HTTP 400 BadRequest: "
                               "User 'carol@contoso.example' was not found in the tenant. "
                               "(field userPrincipalName) [request-id "));
}

class GraphImport : public GraphCli {
 protected:
  void SetUp() override {
    GraphCli::SetUp();
    EVP_PKEY* svc = NewRsaKey(2048);
    test::WriteFile(dir_.File("svc.pub"), PublicKeyPem(svc));
    EVP_PKEY_free(svc);
    std::string csv = "pfxPath,password,userPrincipalName\n";
    for (int i = 0; i < kRows; ++i) {
      KeyCert kc = MakeKeyCert("u" + std::to_string(i), -3600, 86400, "");
      const std::string file = std::to_string(i) + ".pfx";
      test::WriteFile(dir_.File(file), MakePfx(kc.key, kc.cert, {}, "pw"));
      csv += file + ",pw," + (i % 2 == 0 ? kAlice : kBob) + "\n";
    }
    test::WriteFile(dir_.File("m.csv"), csv);
  }
  std::vector<std::string> ImportArgs(const std::string& jobs) {
    return {"--csv", dir_.File("m.csv"), "--public-key-file", dir_.File("svc.pub"),
            "--graph-url", graph_.graph_url(), "--token-file", dir_.File("token"),
            "--state-file", dir_.File("state.jsonl"), "--jobs", jobs};
  }
  int StateLines() {
    const std::string s = test::ReadFileOrEmpty(dir_.File("state.jsonl"));
    return static_cast<int>(std::count(s.begin(), s.end(), '\n'));
  }
  static constexpr int kRows = 12;
};

TEST_F(GraphImport, FourJobsUploadEveryRowThroughA429) {
  graph_.ThrottleNext(1, 1, /*skip=*/2);
  test::CommandResult r = RunPfxImport(ImportArgs("4"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("12 imported, 0 skipped, 0 failed"));
  EXPECT_THAT(r.err, HasSubstr("Graph is throttling (429); every worker waits 1s"));
  EXPECT_EQ(graph_.records().size(), 12u);
  EXPECT_EQ(Requests("POST").size(), 13u);
  EXPECT_EQ(StateLines(), 12);
  r = RunPfxImport(ImportArgs("4"));
  EXPECT_THAT(r.err, HasSubstr("0 imported, 12 skipped, 0 failed"));
  EXPECT_EQ(Requests("POST").size(), 13u);
}

TEST_F(GraphImport, CtrlCLetsRowsInFlightEndKeepsTheStateAndExits130) {
  // Three uploads pass, then Graph throttles for a long time. Once three records are in
  // and a 429 has been sent (so every worker waits: the back-off is shared), the test sends
  // SIGINT. The rows in flight stop waiting and are reported; queued rows never start.
  graph_.ThrottleNext(1000, 30, /*skip=*/3);
  std::string cmd = "cd " + ShellQuote(dir_.path()) + " || exit; " + ShellQuote(PfxImportPath());
  for (const auto& a : ImportArgs("2")) cmd += " " + ShellQuote(a);
  cmd += " -q 2>err & echo $! >pid; wait $!; echo \"rc=$?\"";
  std::string log;
  std::thread run([&] { Shell(cmd, &log); });
  for (int i = 0; i < 6000; ++i) {  // at most 10 min (a loaded machine), normally < 1 s
    if (graph_.records().size() == 3 && !graph_.throttled_at().empty() &&
        !test::ReadFileOrEmpty(dir_.File("pid")).empty()) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const int pid = std::atoi(test::ReadFileOrEmpty(dir_.File("pid")).c_str());
  EXPECT_GT(pid, 0);
  if (pid > 0) kill(pid, SIGINT);  // never 0: that would be the test's own process group
  run.join();
  const std::string err = test::ReadFileOrEmpty(dir_.File("err"));
  EXPECT_THAT(log, HasSubstr("rc=130")) << err;
  EXPECT_THAT(err, HasSubstr("3 imported"));
  EXPECT_THAT(err, HasSubstr("interrupted"));
  EXPECT_THAT(err, Not(HasSubstr("row 7 "))) << "queued rows do not start";
  EXPECT_EQ(StateLines(), 3);
  EXPECT_EQ(graph_.records().size(), 3u);
  // A re-run does the rest.
  graph_.ThrottleNext(0, 1);
  test::CommandResult r = RunPfxImport(ImportArgs("2"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("9 imported, 3 skipped, 0 failed"));
  EXPECT_EQ(graph_.records().size(), 12u);
}

// ---------------------------------------------------------------------------------------
// The library: token cache and the shared back-off.

TEST(GraphLibrary, TokenIsCachedAndRefreshedBeforeItExpires) {
  FakeGraph graph;
  FakeGraph::App app;
  app.client_secret = "sec";
  graph.SetApp(app);
  auto http = pfx_import::HttpClient::Create(absl::Seconds(10));
  ASSERT_TRUE(http.ok());
  absl::Time now = absl::FromUnixSeconds(1800000000);
  pfx_import::AppCredentials c;
  c.authority = graph.authority();
  c.tenant = app.tenant;
  c.client_id = app.client_id;
  c.scope = pfx_import::GraphScope(graph.graph_url());
  c.client_secret = crypto::SecretString("sec");
  auto tokens = pfx_import::AppTokenSource(std::move(c), http->get(), [&now] { return now; });
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  auto t1 = (*tokens)->Get();
  ASSERT_TRUE(t1.ok()) << t1.status();
  now += absl::Minutes(50);
  auto again = (*tokens)->Get();
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(*again == *t1) << "cached";
  EXPECT_EQ(graph.token_requests(), 1);
  now += absl::Minutes(6);  // 56 min into a 60 min token: within the 5 min margin
  auto t2 = (*tokens)->Get();
  ASSERT_TRUE(t2.ok());
  EXPECT_FALSE(*t2 == *t1);
  EXPECT_EQ(graph.token_requests(), 2);
}

TEST(GraphLibrary, A429MakesEveryWorkerWaitRetryAfter) {
  FakeGraph graph;
  graph.AddToken("t");
  graph.ThrottleNext(1, 1);
  auto http = pfx_import::HttpClient::Create(absl::Seconds(10));
  ASSERT_TRUE(http.ok());
  auto tokens = pfx_import::StaticTokenFromEnv(crypto::SecretString("t"));
  std::atomic<bool> throttled{false};
  pfx_import::GraphClient::Options o;
  o.graph_url = graph.graph_url();
  o.on_throttle = [&](absl::Duration) { throttled = true; };
  pfx_import::GraphClient client(o, http->get(), tokens.get());
  // Worker 1 is throttled; worker 2 starts only after that and must not reach Graph before
  // the Retry-After second is over, though nothing throttled it.
  pfx_import::GraphResult r1, r2;
  std::thread w1([&] { r1 = client.Call("GET", "/deviceManagement/userPfxCertificates"); });
  while (!throttled) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::thread w2([&] { r2 = client.Call("GET", "/users?$filter=x"); });
  w1.join();
  w2.join();
  EXPECT_TRUE(r1.ok()) << r1.error;
  EXPECT_EQ(r1.attempts, 2);
  EXPECT_EQ(r2.attempts, 1) << "worker 2 waited instead of being throttled itself";
  auto throttled_at = graph.throttled_at();
  ASSERT_EQ(throttled_at.size(), 1u);
  int users_requests = 0;
  for (const auto& req : graph.requests()) {
    if (req.path == "/beta/users") {
      ++users_requests;
      // A lower bound only: the wait may be longer on a loaded machine, never shorter.
      EXPECT_GE(std::chrono::duration_cast<std::chrono::milliseconds>(req.arrived -
                                                                      throttled_at[0])
                    .count(),
                1000);
    }
  }
  EXPECT_EQ(users_requests, 1);
}

TEST(GraphLibrary, ErrorDescriptions) {
  EXPECT_EQ(pfx_import::DescribeGraphError(
                400,
                R"({"error":{"code":"BadRequest","message":"Invalid","details":[{"target":"paddingScheme","message":"unknown value"}],"innerError":{"request-id":"r1","date":"d1"}}})",
                ""),
            "HTTP 400 BadRequest: Invalid (field paddingScheme: unknown value) [request-id r1, "
            "date d1]");
  EXPECT_EQ(pfx_import::DescribeGraphError(502, "<html>\nbad gateway</html>", "rid"),
            "HTTP 502: <html> bad gateway</html> [request-id rid]");
  EXPECT_EQ(pfx_import::ODataString("o'brien@x"), "'o''brien@x'");
  EXPECT_EQ(pfx_import::GraphScope("https://graph.microsoft.us/beta"),
            "https://graph.microsoft.us/.default");
}

}  // namespace
}  // namespace hsmrewrap::pfx_test
