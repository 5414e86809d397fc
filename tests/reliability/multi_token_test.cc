// Several tokens behind one rewrapd (config `tokens:`), real tokens and real faults:
//  - KillTest: two SoftHSM2 tokens, each behind its own `p11-kit server` (a unit of an HSM
//    pair), the same key imported into both through the API. One server is SIGKILLed under
//    load from 16 clients (batches of 1..100): no item may come back UNAVAILABLE, wrong or
//    missing; the token rejoins within 5 s of its return and takes load again.
//  - MixedTest: NSS softoken and SoftHSM2 in one set: each item says which token ran it and
//    on which path; every output opens with OpenSSL.
//  - MismatchTest: a key whose public key differs on one token is refused there, with both
//    SPKI hashes named, and never used there.
// Each token module is a copy of the fault module (tests/fault_module) with a configuration
// of its own (`<copy>.conf`: the real module and, for p11-kit's client, its server address).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "tests/integration/it_util.h"
#include "tests/integration/test_crypto.h"
#include "tests/reliability/rig_util.h"
#include "tests/support/tokens.h"

namespace hsmrewrap::it {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

constexpr char kP11KitClient[] = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";
constexpr char kPin[] = "multi-user-1234";

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string Outcomes(const std::map<std::string, int>& m) {
  std::string s;
  for (const auto& [k, v] : m) s += k + "=" + std::to_string(v) + " ";
  return s;
}

class Rig {
 public:
  // SOFTHSM2_CONF for this process and its children (the p11-kit servers).
  Rig() { test::SetUpSoftHsmConfig(dir_.path()); }

  bool InitSoftToken(const std::string& label, std::string* why) {
    WriteFile(dir_.File("user.pin"), kPin, 0600);
    std::vector<std::string> cmd = {"softhsm2-util", "--init-token", "--free", "--label", label,
                                    "--pin",         kPin,           "--so-pin", "multi-so-5678"};
    CommandResult r = RunCommand(cmd);
    if (r.exit_code != 0) *why = r.Describe(cmd);
    return r.exit_code == 0;
  }

  // A copy of the fault module for token `name`, forwarding to `real` (copied too when
  // `copy_real`: a module instance of its own), with `env` set before the real module loads.
  std::string TokenModule(const std::string& name, const std::string& real, bool copy_real,
                          const std::vector<std::pair<std::string, std::string>>& env) {
    const std::string d = dir_.File(name);
    fs::create_directories(d);
    const std::string mod = d + "/fault.so";
    fs::copy_file(HSMREWRAP_FAULT_MODULE_PATH, mod, fs::copy_options::overwrite_existing);
    std::string target = real;
    if (copy_real) {
      target = d + "/" + fs::path(real).filename().string();
      fs::copy_file(real, target, fs::copy_options::overwrite_existing);
    }
    std::string conf = "module " + target + "\n";
    for (const auto& [k, v] : env) conf += "env " + k + " " + v + "\n";
    WriteFile(mod + ".conf", conf, 0600);
    return mod;
  }
  // Adds `text` (latency or failure rules) to token `name`'s fault configuration.
  void Faults(const std::string& name, const std::string& text) {
    const std::string conf = dir_.File(name) + "/fault.so.conf";
    std::string base = ReadFileOrEmpty(conf);
    base = base.substr(0, base.find("#rules"));
    const std::string tmp = conf + ".tmp";
    WriteFile(tmp, base + "#rules\n" + text, 0600);
    std::rename(tmp.c_str(), conf.c_str());
  }

  bool Launch(const std::string& tokens_yaml, std::string* why) {
    if (h_) {  // a second rewrapd over the same tokens: the first one stops first
      *why = h_->Stop();
      if (!why->empty()) return false;
      h_.reset();
    }
    const std::string config = dir_.File("rewrapd.yaml");
    WriteFile(config,
              "tokens:\n" + tokens_yaml +
                  "metrics_listen: 127.0.0.1:0\n"
                  "reconnect_backoff_max_ms: 500\n"
                  "selftest_interval_s: 0\n",
              0600);
    RewrapdHarness::Options x;
    x.module_args = {"--config", config};
    h_ = RewrapdHarness::Start(TokenKind::kSoftHsm, why, x);
    if (!h_) return false;
    metrics_ = MetricsAddressFromLog(h_->StderrPath());
    return true;
  }

  static std::string Entry(const std::string& name, const std::string& module,
                           const std::string& label, const std::string& pin_file,
                           const std::string& extra = "") {
    return "  - name: " + name + "\n    module: " + module + "\n    token: \"" + label +
           "\"\n    pin_file: " + pin_file + "\n    pool_size: 4\n" + extra;
  }

  std::string Healthz(long* code = nullptr) {
    auto r = RunCommand({"curl", "-s", "--max-time", "5", "-w", "\n%{http_code}",
                         "http://" + metrics_ + "/healthz"});
    const size_t nl = r.out.rfind('\n');
    if (code) *code = nl == std::string::npos ? 0 : std::atol(r.out.c_str() + nl + 1);
    return nl == std::string::npos ? r.out : r.out.substr(0, nl);
  }
  // Whether /healthz lists token `name` as up.
  bool TokenUp(const std::string& name) {
    const std::string j = Healthz();
    const size_t at = j.find("\"name\":\"" + name + "\"");
    if (at == std::string::npos) return false;
    const size_t end = j.find('}', at);
    return j.substr(at, end - at).find("\"up\":true") != std::string::npos;
  }

  RewrapdHarness* h() { return h_.get(); }
  const TempDir& dir() const { return dir_; }
  std::string Log() { return ReadFileOrEmpty(h_->StderrPath()); }

 private:
  TempDir dir_{"hsmrewrap-multi"};
  std::unique_ptr<RewrapdHarness> h_;
  std::string metrics_;
};

// The key both tokens get, imported through the API (ImportKey into every token).
void ImportEverywhere(RewrapdHarness* h, EVP_PKEY* k, const std::string& name, ServiceKey* out) {
  v1::ImportKeyRequest req;
  req.set_name(name);
  req.set_pkcs8(PrivateKeyPkcs8Der(k));
  ASSERT_NO_FATAL_FAILURE(ImportServiceKey(h, req, out));
}

// Load: `clients` threads, each sending batches of 1..100 sealed items while `run` is true;
// every result is checked (right secret, or counted by error code) and counted by token.
struct Load {
  std::mutex mu;
  std::map<std::string, int> outcomes;
  std::map<std::string, int> by_token;
  std::vector<std::string> failures;  // first few wrong or missing results
  std::atomic<int> calls{0};
  void Note(const std::string& what) {
    std::lock_guard<std::mutex> l(mu);
    if (failures.size() < 10) failures.push_back(what);
  }
  void Reset() {
    std::lock_guard<std::mutex> l(mu);
    outcomes.clear();
    by_token.clear();
  }
};

void RunClient(RewrapdHarness* h, const ServiceKey& key, const Device& device,
               const std::vector<std::pair<std::string, std::string>>& sealed, int seed,
               std::atomic<bool>* run, Load* load) {
  auto stub = v1::Rewrap::NewStub(h->channel());
  std::mt19937 rng(static_cast<unsigned>(seed));
  int batch_no = 0;
  while (run->load()) {
    const int n = std::uniform_int_distribution<int>(1, 100)(rng);
    v1::RewrapRequest req;
    std::vector<const std::string*> secrets;
    for (int i = 0; i < n; ++i) {
      const auto& [secret, ct] = sealed[rng() % sealed.size()];
      AddItem(&req, std::to_string(seed) + "-" + std::to_string(batch_no) + "-" + std::to_string(i),
              key.name, v1::OAEP_SHA1, ct, device, Rcp::kSpkiDer, v1::RSA_OAEP_SHA256);
      secrets.push_back(&secret);
    }
    ++batch_no;
    v1::RewrapResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 60s);
    const grpc::Status st = stub->Rewrap(&ctx, req, &resp);
    load->calls++;
    if (!st.ok()) {
      load->Note("call failed: " + StatusText(st));
      std::lock_guard<std::mutex> l(load->mu);
      load->outcomes["CALL_" + std::to_string(st.error_code())] += n;
      continue;
    }
    if (resp.results_size() != n) {
      load->Note("a batch of " + std::to_string(n) + " got " +
                 std::to_string(resp.results_size()) + " results");
      std::lock_guard<std::mutex> l(load->mu);
      load->outcomes["LOST"] += n;
      continue;
    }
    for (int i = 0; i < n; ++i) {
      const auto& r = resp.results(i);
      std::string outcome;
      if (r.id() != req.items(i).id()) {
        outcome = "WRONG";
        load->Note("result " + r.id() + " in the place of " + req.items(i).id());
      } else if (r.has_error()) {
        outcome = CodeName(r.error().code());
        load->Note(r.id() + ": " + outcome + ": " + r.error().message());
      } else {
        std::string why;
        auto pt = DecryptOutput(device, v1::RSA_OAEP_SHA256, false, r.ciphertext(), &why);
        outcome = pt && *pt == *secrets[static_cast<size_t>(i)] ? "OK" : "WRONG";
        if (outcome == "WRONG") load->Note(r.id() + ": wrong output " + why);
      }
      std::lock_guard<std::mutex> l(load->mu);
      load->outcomes[outcome]++;
      if (outcome == "OK") load->by_token[r.token()]++;
    }
  }
}

TEST(KillTest, OneOfTwoTokensKilledUnderLoadCostsNothing) {
  if (access(kP11KitClient, R_OK) != 0)
    GTEST_SKIP() << kP11KitClient << " missing (package p11-kit-modules)";
  Rig rig;
  std::string why;
  ASSERT_TRUE(rig.InitSoftToken("unit-a", &why)) << why;
  ASSERT_TRUE(rig.InitSoftToken("unit-b", &why)) << why;
  P11KitServer a(rig.dir().File("a.sock"), "unit-a"), b(rig.dir().File("b.sock"), "unit-b");
  ASSERT_TRUE(a.Start() && b.Start()) << "p11-kit server did not create its socket";
  const std::string pin = rig.dir().File("user.pin");
  const std::string mod_a = rig.TokenModule(
      "hsm-a", kP11KitClient, true, {{"P11_KIT_SERVER_ADDRESS", "unix:path=" + a.socket()}});
  const std::string mod_b = rig.TokenModule(
      "hsm-b", kP11KitClient, true, {{"P11_KIT_SERVER_ADDRESS", "unix:path=" + b.socket()}});
  ASSERT_TRUE(rig.Launch(Rig::Entry("hsm-a", mod_a, "unit-a", pin) +
                             Rig::Entry("hsm-b", mod_b, "unit-b", pin),
                         &why))
      << why;

  Pkey k = GenerateRsa(2048);
  ServiceKey key;
  ASSERT_NO_FATAL_FAILURE(ImportEverywhere(rig.h(), k.get(), "svc", &key));
  ASSERT_EQ(key.info.tokens_size(), 2);
  for (const auto& t : key.info.tokens()) {
    EXPECT_EQ(t.state(), v1::KeyTokenInfo::SERVING) << t.name() << ": " << t.message();
    EXPECT_EQ(t.spki_sha256(), key.info.spki_sha256());
  }
  EXPECT_TRUE(key.info.clone_advice().empty()) << key.info.clone_advice();

  const Device device = MakeDevice(2048, "multi-device");
  std::vector<std::pair<std::string, std::string>> sealed;
  for (int i = 0; i < 64; ++i) {
    std::string s = RandomAscii(24);
    sealed.emplace_back(s, Seal(key, v1::OAEP_SHA1, s));
  }
  // Each operation takes at least 1 ms in the module, so items are in flight at the kill.
  rig.Faults("hsm-a", "delay C_Decrypt 1000\n");
  rig.Faults("hsm-b", "delay C_Decrypt 1000\n");

  Load load;
  std::atomic<bool> run{true};
  std::vector<std::thread> clients;
  for (int c = 0; c < 16; ++c) {
    clients.emplace_back(RunClient, rig.h(), std::cref(key), std::cref(device), std::cref(sealed),
                         c + 1, &run, &load);
  }
  auto phase = [&](const char* name, std::chrono::milliseconds d) {
    std::this_thread::sleep_for(d);
    std::lock_guard<std::mutex> l(load.mu);
    printf("[multi-token] %s: %s| by token: hsm-a=%d hsm-b=%d\n", name,
           Outcomes(load.outcomes).c_str(), load.by_token["hsm-a"], load.by_token["hsm-b"]);
    fflush(stdout);
    std::map<std::string, int> seen = load.by_token;
    return seen;
  };
  auto before = phase("both up", 3000ms);
  EXPECT_GT(before["hsm-a"], 0);
  EXPECT_GT(before["hsm-b"], 0);

  load.Reset();
  a.Kill();
  const auto killed = Clock::now();
  auto during = phase("hsm-a killed", 4000ms);
  long code = 0;
  const std::string health = rig.Healthz(&code);
  EXPECT_EQ(code, 200) << "health is not SERVING with one token up: " << health;
  EXPECT_FALSE(rig.TokenUp("hsm-a")) << health;
  EXPECT_GT(during["hsm-b"], 0);

  load.Reset();
  ASSERT_TRUE(a.Start());
  const auto back = Clock::now();
  double rejoined = -1;
  while (Since(back) < 10) {
    if (rig.TokenUp("hsm-a")) {
      rejoined = Since(back);
      break;
    }
    std::this_thread::sleep_for(50ms);
  }
  printf("[multi-token] hsm-a restarted %.1f s after the kill; up again after %.3f s\n",
         std::chrono::duration<double>(back - killed).count(), rejoined);
  ASSERT_GE(rejoined, 0) << rig.Log();
  EXPECT_LE(rejoined, 5.0);
  load.Reset();
  auto after = phase("hsm-a back", 3000ms);
  EXPECT_GT(after["hsm-a"], 0) << "the token that came back takes no load";
  EXPECT_GT(after["hsm-b"], 0);

  run = false;
  for (auto& t : clients) t.join();
  std::lock_guard<std::mutex> l(load.mu);
  printf("[multi-token] %d calls; healthz: %s\n", load.calls.load(), rig.Healthz().c_str());
  for (const auto& f : load.failures) ADD_FAILURE() << f;
}

TEST(MismatchTest, AKeyThatDiffersOnOneTokenIsRefusedThereNamingBothHashes) {
  Rig rig;
  std::string why;
  ASSERT_TRUE(rig.InitSoftToken("m-a", &why)) << why;
  ASSERT_TRUE(rig.InitSoftToken("m-b", &why)) << why;
  const std::string pin = rig.dir().File("user.pin");
  // Two instances of SoftHSM2 (a copy each), over the same token directory.
  const std::string mod_a = rig.TokenModule("m-a", test::kSoftHsmPath, true, {});
  const std::string mod_b = rig.TokenModule("m-b", test::kSoftHsmPath, true, {});
  // Each token gets its own key of the same name, by a rewrapd that knows only that token
  // (as happens when HSMs are set up one by one); then one rewrapd serves both.
  Pkey k1 = GenerateRsa(2048), k2 = GenerateRsa(2048);
  for (auto [key, token] : {std::pair<EVP_PKEY*, const char*>{k1.get(), "m-a"}, {k2.get(), "m-b"}}) {
    const std::string mod = token == std::string("m-a") ? mod_a : mod_b;
    ASSERT_TRUE(rig.Launch(Rig::Entry(token, mod, token, pin), &why)) << why;
    v1::ImportKeyRequest req;
    req.set_name("split");
    req.set_pkcs8(PrivateKeyPkcs8Der(key));
    v1::KeyInfo info;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    const grpc::Status st = rig.h()->keys().ImportKey(&ctx, req, &info);
    ASSERT_TRUE(st.ok()) << StatusText(st);
  }
  ASSERT_TRUE(
      rig.Launch(Rig::Entry("m-a", mod_a, "m-a", pin) + Rig::Entry("m-b", mod_b, "m-b", pin), &why))
      << why;
  {  // Importing yet another key of that name is refused before anything is written.
    Pkey k3 = GenerateRsa(2048);
    v1::ImportKeyRequest req;
    req.set_name("split");
    req.set_pkcs8(PrivateKeyPkcs8Der(k3.get()));
    v1::KeyInfo info;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    const grpc::Status st = rig.h()->keys().ImportKey(&ctx, req, &info);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << StatusText(st);
  }
  const std::string h1 = Sha256(SpkiDer(k1.get())), h2 = Sha256(SpkiDer(k2.get()));
  ServiceKey key;
  ASSERT_NO_FATAL_FAILURE(LoadServiceKey(rig.h(), "split", &key));
  EXPECT_EQ(key.info.spki_sha256(), HexEncode(h1));
  ASSERT_EQ(key.info.tokens_size(), 2);
  EXPECT_EQ(key.info.tokens(0).state(), v1::KeyTokenInfo::SERVING);
  EXPECT_EQ(key.info.tokens(1).state(), v1::KeyTokenInfo::REFUSED);
  EXPECT_NE(key.info.tokens(1).message().find(HexEncode(h1)), std::string::npos)
      << key.info.tokens(1).message();
  EXPECT_NE(key.info.tokens(1).message().find(HexEncode(h2)), std::string::npos)
      << key.info.tokens(1).message();
  EXPECT_NE(rig.Log().find("has a different public key"), std::string::npos);
  // Items sealed to the served key all run on m-a; m-b's key is never used.
  const Device device = MakeDevice(2048, "mismatch-device");
  v1::RewrapRequest req;
  std::vector<std::string> secrets;
  for (int i = 0; i < 40; ++i) {
    secrets.push_back(RandomAscii(20));
    AddItem(&req, "m" + std::to_string(i), "split", v1::OAEP_SHA1, Seal(key, v1::OAEP_SHA1, secrets.back()),
            device, Rcp::kSpkiDer, v1::RSA_OAEP_SHA256);
  }
  v1::RewrapResponse resp;
  ASSERT_NO_FATAL_FAILURE(CallRewrap(rig.h(), req, &resp));
  for (int i = 0; i < resp.results_size(); ++i) {
    ASSERT_FALSE(resp.results(i).has_error()) << resp.results(i).error().message();
    EXPECT_EQ(resp.results(i).token(), "m-a");
    std::string why2;
    auto pt = DecryptOutput(device, v1::RSA_OAEP_SHA256, false, resp.results(i).ciphertext(), &why2);
    ASSERT_TRUE(pt.has_value()) << why2;
    EXPECT_EQ(*pt, secrets[static_cast<size_t>(i)]);
  }
}

TEST(MixedTest, NssAndSoftHsmInOneSetEachItemSaysItsTokenAndPath) {
  if (std::string r = TokenUnavailableReason(TokenKind::kNss); !r.empty()) GTEST_SKIP() << r;
  Rig rig;
  std::string why;
  ASSERT_TRUE(rig.InitSoftToken("mixed-soft", &why)) << why;
  const std::string pin = rig.dir().File("user.pin");
  const std::string db = rig.dir().File("nssdb");
  fs::create_directories(db);
  std::vector<std::string> certutil = {"certutil", "-N", "-d", "sql:" + db, "-f", pin};
  CommandResult cr = RunCommand(certutil);
  ASSERT_EQ(cr.exit_code, 0) << cr.Describe(certutil);
  const std::string nss_entry =
      "  - name: nss\n    module: " + std::string(test::kNssSoftokenPath) + "\n    init_args: \"" +
      test::NssInitArgs(db) + "\"\n    token: \"" + test::kNssKeyTokenLabel +
      "\"\n    pin_file: " + pin + "\n    pool_size: 4\n";
  ASSERT_TRUE(rig.Launch(nss_entry + Rig::Entry("softhsm", test::kSoftHsmPath, "mixed-soft", pin,
                                                "    allow_host_unpadding: true\n"),
                         &why))
      << why;
  Pkey k = GenerateRsa(2048);
  ServiceKey key;
  ASSERT_NO_FATAL_FAILURE(ImportEverywhere(rig.h(), k.get(), "mixed", &key));
  ASSERT_EQ(key.info.tokens_size(), 2);
  std::map<std::string, std::set<int>> advertised;  // token -> OAEP-SHA256 paths
  for (const auto& t : key.info.tokens()) {
    ASSERT_EQ(t.state(), v1::KeyTokenInfo::SERVING) << t.name() << ": " << t.message();
    for (const auto& p : t.paths()) {
      if (p.padding() == v1::OAEP_SHA256) advertised[t.name()].insert(p.paths().begin(), p.paths().end());
    }
  }
  const Device device = MakeDevice(2048, "mixed-device");
  std::map<std::string, std::set<std::string>> seen;  // token -> "FORMAT/PATH"
  for (v1::OutputFormat f : {v1::RSA_OAEP_SHA256, v1::CMS_ENVELOPED}) {
    v1::RewrapRequest req;
    std::vector<std::string> secrets;
    for (int i = 0; i < 60; ++i) {
      secrets.push_back(RandomAscii(20));
      AddItem(&req, "x" + std::to_string(i), "mixed", v1::OAEP_SHA256,
              Seal(key, v1::OAEP_SHA256, secrets.back()), device, Rcp::kCertDer, f);
    }
    v1::RewrapResponse resp;
    ASSERT_NO_FATAL_FAILURE(CallRewrap(rig.h(), req, &resp));
    for (int i = 0; i < resp.results_size(); ++i) {
      const auto& r = resp.results(i);
      ASSERT_FALSE(r.has_error()) << r.id() << ": " << r.error().message();
      std::string why2;
      auto pt = DecryptOutput(device, f, true, r.ciphertext(), &why2);
      ASSERT_TRUE(pt.has_value()) << r.id() << " (" << r.token() << "): " << why2;
      EXPECT_EQ(*pt, secrets[static_cast<size_t>(i)]) << r.id();
      EXPECT_EQ(advertised[r.token()].count(r.path()), 1u) << r.token() << " " << PathName(r.path());
      seen[r.token()].insert(std::string(FormatName(f)) + "/" + PathName(r.path()));
    }
  }
  for (const auto& [token, kinds] : seen) {
    std::string s;
    for (const auto& x : kinds) s += x + " ";
    printf("[multi-token] mixed set: token %s gave %s\n", token.c_str(), s.c_str());
  }
  ASSERT_EQ(seen.size(), 2u) << "one token took every item";
  // NSS decrypts OAEP-SHA256 in the token (IN_TOKEN); SoftHSM2 2.6 only by raw RSA.
  EXPECT_EQ(seen["nss"].count("RSA_OAEP_SHA256/IN_TOKEN"), 1u);
  EXPECT_EQ(seen["softhsm"].count("RSA_OAEP_SHA256/HOST_UNPADDING"), 1u);
}

TEST(KeysTest, CreateOnOneTokenAdviseCloningSelfTestPerTokenAndHealthPerKey) {
  Rig rig;
  std::string why;
  ASSERT_TRUE(rig.InitSoftToken("k-a", &why)) << why;
  ASSERT_TRUE(rig.InitSoftToken("k-b", &why)) << why;
  const std::string pin = rig.dir().File("user.pin");
  const std::string mod_a = rig.TokenModule("k-a", test::kSoftHsmPath, true, {});
  const std::string mod_b = rig.TokenModule("k-b", test::kSoftHsmPath, true, {});
  const std::string unpad = "    allow_host_unpadding: true\n";  // SoftHSM2: OAEP-SHA2 by raw RSA
  ASSERT_TRUE(rig.Launch(Rig::Entry("k-a", mod_a, "k-a", pin, unpad) +
                             Rig::Entry("k-b", mod_b, "k-b", pin, unpad),
                         &why))
      << why;
  // CreateKey makes the key on the token named, and says how to put it on the other.
  v1::CreateKeyRequest create;
  create.set_name("born-in-b");
  create.set_token("k-b");
  v1::KeyInfo made;
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    const grpc::Status st = rig.h()->keys().CreateKey(&ctx, create, &made);
    ASSERT_TRUE(st.ok()) << StatusText(st);
  }
  ASSERT_EQ(made.tokens_size(), 2);
  EXPECT_EQ(made.tokens(0).name(), "k-a");
  EXPECT_EQ(made.tokens(0).state(), v1::KeyTokenInfo::ABSENT);
  EXPECT_EQ(made.tokens(1).state(), v1::KeyTokenInfo::SERVING);
  EXPECT_NE(made.clone_advice().find("k-a"), std::string::npos) << made.clone_advice();
  create.set_token("k-c");
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    const grpc::Status st = rig.h()->keys().CreateKey(&ctx, create, &made);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << StatusText(st);
  }
  // A key on both: the self-test runs on each token.
  Pkey k = GenerateRsa(2048);
  ServiceKey both;
  ASSERT_NO_FATAL_FAILURE(ImportEverywhere(rig.h(), k.get(), "both", &both));
  v1::SelfTestRequest req;
  req.set_name("both");
  v1::SelfTestResponse resp;
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    const grpc::Status st = rig.h()->keys().SelfTest(&ctx, req, &resp);
    ASSERT_TRUE(st.ok()) << StatusText(st);
  }
  std::set<std::string> tested;
  for (const auto& r : resp.results()) {
    EXPECT_TRUE(r.ok()) << r.token() << ": " << r.message();
    tested.insert(r.token());
  }
  EXPECT_EQ(tested, (std::set<std::string>{"k-a", "k-b"}));
  // Disable and enable write both tokens.
  {
    v1::DisableKeyRequest d;
    d.set_name("both");
    v1::KeyInfo info;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    ASSERT_TRUE(rig.h()->keys().DisableKey(&ctx, d, &info).ok());
    ASSERT_EQ(info.tokens_size(), 2);
    EXPECT_FALSE(info.tokens(0).enabled());
    EXPECT_FALSE(info.tokens(1).enabled());
  }
  // Token k-b lost: "both" is still served (by k-a), "born-in-b" by nobody: NOT_SERVING, and
  // /healthz says which key.
  rig.Faults("k-b", "fail * CKR_DEVICE_REMOVED\n");
  long code = 0;
  std::string health;
  for (int i = 0; i < 100; ++i) {
    health = rig.Healthz(&code);
    if (code == 503) break;
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(code, 503) << health;
  EXPECT_NE(health.find("\"keys_without_up_token\":[\"born-in-b\"]"), std::string::npos) << health;
  EXPECT_NE(health.find("\"status\":\"NOT_SERVING\""), std::string::npos) << health;
  rig.Faults("k-b", "");
  for (int i = 0; i < 200; ++i) {
    health = rig.Healthz(&code);
    if (code == 200) break;
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(code, 200) << health;
}

}  // namespace
}  // namespace hsmrewrap::it
