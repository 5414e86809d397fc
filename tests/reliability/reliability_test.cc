// Reliability of the real rewrapd against real tokens with real faults:
//  - `fault` tests: SoftHSM2 behind our fault-injecting module (tests/fault_module), whose
//    configuration file each test rewrites while rewrapd runs;
//  - `remote` test: SoftHSM2 served by `p11-kit server` over a Unix socket, rewrapd on
//    p11-kit's client module; the server's process group is SIGKILLed and started again.
// Every test gets its own token (softhsm2-util in a temp dir) and its own rewrapd.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <map>
#include <sstream>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"
#include "tests/integration/it_util.h"
#include "tests/integration/test_crypto.h"
#include "tests/reliability/rig_util.h"
#include "tests/support/tokens.h"

namespace hsmrewrap::it {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

using test::kSoftHsmPath;
constexpr char kP11KitClient[] = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";
constexpr char kLabel[] = "reliability";
constexpr char kPin[] = "rel-user-1234";

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// A SoftHSM2 token of its own in `dir`; SOFTHSM2_CONF is set for this process (and so for
// every child it starts).
bool MakeSoftToken(const TempDir& dir, std::string* why) {
  test::SetUpSoftHsmConfig(dir.path());
  WriteFile(dir.File("user.pin"), kPin, 0600);
  std::vector<std::string> cmd = {"softhsm2-util", "--init-token", "--free",   "--label",    kLabel,
                                  "--pin",         kPin,           "--so-pin", "rel-so-5678"};
  CommandResult r = RunCommand(cmd);
  if (r.exit_code != 0) *why = r.Describe(cmd);
  return r.exit_code == 0;
}

class Rig {
 public:
  // Starts rewrapd on `module` (the fault module unless given) over a fresh token.
  bool Start(std::vector<std::string> extra_args, std::string* why) {
    return Prepare(why) && Launch(std::move(extra_args), why);
  }
  // The token and the fault configuration.
  bool Prepare(std::string* why) { return MakeSoftToken(dir_, why); }
  // rewrapd on `module` (default: the fault module over SoftHSM2).
  bool Launch(std::vector<std::string> extra_args, std::string* why, const std::string& module = "",
              std::vector<std::pair<std::string, std::string>> env = {}) {
    fault_conf_ = dir_.File("faults.conf");
    WriteFaults("");
    RewrapdHarness::Options x;
    x.module_args = {"--module",   module.empty() ? HSMREWRAP_FAULT_MODULE_PATH : module,
                     "--token",    kLabel,
                     "--pin-file", dir_.File("user.pin")};
    x.extra_args = {"--metrics-listen",        "127.0.0.1:0",
                    "--reconnect-backoff-max", "500",
                    "--selftest-interval",     "0"};
    x.extra_args.insert(x.extra_args.end(), extra_args.begin(), extra_args.end());
    x.env = std::move(env);
    x.env.push_back({"HSMREWRAP_FAULT_CONFIG", fault_conf_});
    bool has_module = false;
    for (const auto& [k, v] : x.env) has_module |= k == "HSMREWRAP_FAULT_MODULE";
    if (!has_module) x.env.push_back({"HSMREWRAP_FAULT_MODULE", kSoftHsmPath});
    h_ = RewrapdHarness::Start(TokenKind::kSoftHsm, why, x);
    if (!h_) return false;
    health_ = grpc::health::v1::Health::NewStub(h_->channel());
    metrics_ = MetricsAddressFromLog(h_->StderrPath());
    return true;
  }

  RewrapdHarness* h() { return h_.get(); }
  const std::string& dir() const { return dir_.path(); }

  // Atomic rewrite of the fault module's configuration (it re-reads it within 10 ms).
  void WriteFaults(const std::string& text) {
    const std::string tmp = fault_conf_ + ".tmp";
    WriteFile(tmp, text, 0600);
    std::rename(tmp.c_str(), fault_conf_.c_str());
  }

  bool Serving() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 2s);
    grpc::health::v1::HealthCheckRequest req;
    grpc::health::v1::HealthCheckResponse resp;
    auto s = health_->Check(&ctx, req, &resp);
    return s.ok() && resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  }
  // Seconds until health is `serving`, or -1 after `limit` seconds.
  double WaitHealth(bool serving, double limit) {
    const auto t0 = Clock::now();
    while (Since(t0) < limit) {
      if (Serving() == serving) return Since(t0);
      std::this_thread::sleep_for(20ms);
    }
    return -1;
  }

  // A sample from the metrics endpoint: the first line starting with `prefix` (name and
  // labels), or -1.
  std::string MetricsText() {
    return RunCommand({"curl", "-s", "--max-time", "5", "http://" + metrics_ + "/metrics"}).out;
  }
  double Metric(const std::string& prefix) {
    std::istringstream in(MetricsText());
    for (std::string line; std::getline(in, line);) {
      if (line.rfind(prefix + " ", 0) == 0) return std::stod(line.substr(prefix.size() + 1));
    }
    return -1;
  }

  // CPU seconds (user + system) rewrapd has used.
  double CpuSeconds() {
    std::string stat = ReadFileOrEmpty("/proc/" + std::to_string(h_->pid()) + "/stat");
    std::istringstream in(stat.substr(stat.rfind(')') + 2));
    std::string f;
    double ticks = 0;
    for (int i = 3; i <= 15 && in >> f; ++i) {
      if (i == 14 || i == 15) ticks += std::stod(f);
    }
    return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
  }

  void CreateKey() {
    ASSERT_NO_FATAL_FAILURE(CreateServiceKey(h_.get(), "rel", 2048, false, &key_));
    device_ = MakeDevice(2048, "reliability-device");
  }

  // A batch of `n` sealed items (ids prefix-0..n-1); secrets in *secrets.
  v1::RewrapRequest Batch(const std::string& prefix, int n, std::vector<std::string>* secrets) {
    v1::RewrapRequest req;
    secrets->clear();
    for (int i = 0; i < n; ++i) {
      secrets->push_back(RandomAscii(24));
      AddItem(&req, prefix + "-" + std::to_string(i), key_.name, v1::OAEP_SHA1,
              Seal(key_, v1::OAEP_SHA1, secrets->back()), device_, Rcp::kSpkiDer,
              v1::RSA_OAEP_SHA256);
    }
    return req;
  }
  static grpc::Status CallOn(v1::Rewrap::Stub& stub, const v1::RewrapRequest& req,
                             v1::RewrapResponse* resp, std::chrono::milliseconds deadline) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + deadline);
    return stub.Rewrap(&ctx, req, resp);
  }
  grpc::Status Call(const v1::RewrapRequest& req, v1::RewrapResponse* resp,
                    std::chrono::milliseconds deadline = 60s) {
    return CallOn(h_->rewrap(), req, resp, deadline);
  }
  // Starts Call(req, resp) on another thread and waits (up to 5 s) until rewrapd reports
  // items in flight, i.e. the batch is in the engine. Returns the call; `*in_engine` says
  // whether the batch got there. The call has a stub of its own, made here: the harness's
  // stubs and channel are destroyed by Stop(), which a test may call (on its own thread)
  // while this call is still running.
  std::future<grpc::Status> CallInBackground(const v1::RewrapRequest& req, v1::RewrapResponse* resp,
                                             bool* in_engine) {
    auto call = std::async(std::launch::async, [stub = v1::Rewrap::NewStub(h_->channel()), &req,
                                                resp] { return CallOn(*stub, req, resp, 60s); });
    for (int i = 0; i < 100 && Metric("hsmrewrap_inflight_items") == 0; ++i)
      std::this_thread::sleep_for(50ms);
    *in_engine = Metric("hsmrewrap_inflight_items") > 0;
    return call;
  }
  // Checks that every result is either the right output or one of `allowed` errors; counts.
  void Check(const v1::RewrapRequest& req, const v1::RewrapResponse& resp,
             const std::vector<std::string>& secrets, std::map<std::string, int>* outcomes) {
    ASSERT_EQ(resp.results_size(), req.items_size());
    for (int i = 0; i < req.items_size(); ++i) {
      const auto& r = resp.results(i);
      ASSERT_EQ(r.id(), req.items(i).id());
      if (r.has_error()) {
        (*outcomes)[CodeName(r.error().code())]++;
        EXPECT_TRUE(r.ciphertext().empty());
        continue;
      }
      std::string why;
      auto pt = DecryptOutput(device_, v1::RSA_OAEP_SHA256, false, r.ciphertext(), &why);
      ASSERT_TRUE(pt.has_value()) << r.id() << ": " << why;
      ASSERT_EQ(*pt, secrets[static_cast<size_t>(i)]) << r.id() << ": wrong output";
      (*outcomes)["OK"]++;
    }
  }
  // A fresh batch of `n` items (Batch), sent (Call) and checked (Check); its outcomes are
  // added to *outcomes.
  void SendBatch(const std::string& prefix, int n, std::map<std::string, int>* outcomes) {
    std::vector<std::string> secrets;
    const v1::RewrapRequest req = Batch(prefix, n, &secrets);
    v1::RewrapResponse resp;
    const grpc::Status st = Call(req, &resp);
    ASSERT_TRUE(st.ok()) << StatusText(st);
    Check(req, resp, secrets, outcomes);
  }
  std::string Log() { return ReadFileOrEmpty(h_->StderrPath()); }

 private:
  TempDir dir_{"hsmrewrap-rel"};
  std::string fault_conf_;
  std::unique_ptr<RewrapdHarness> h_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
  std::string metrics_;
  ServiceKey key_;
  Device device_;
};

std::string Outcomes(const std::map<std::string, int>& m) {
  std::string s;
  for (const auto& [k, v] : m) s += k + "=" + std::to_string(v) + " ";
  return s;
}

#define START_RIG(rig, ...)                               \
  do {                                                    \
    std::string why_;                                     \
    ASSERT_TRUE((rig).Start(__VA_ARGS__, &why_)) << why_; \
  } while (0)

// The token goes away (every call fails CKR_DEVICE_REMOVED) and comes back: health
// NOT_SERVING within 1 s, items UNAVAILABLE meanwhile, CPU near idle, SERVING again within
// 5 s of the return without a restart, the reconnect counted, outputs right afterwards.
TEST(FaultTest, TokenLossAndReturn) {
  Rig rig;
  START_RIG(rig, {});
  ASSERT_NO_FATAL_FAILURE(rig.CreateKey());
  std::map<std::string, int> out;
  ASSERT_NO_FATAL_FAILURE(rig.SendBatch("before", 8, &out));
  EXPECT_EQ(out["OK"], 8) << Outcomes(out);

  rig.WriteFaults("fail * CKR_DEVICE_REMOVED\n");
  const double down = rig.WaitHealth(false, 5);
  printf("[reliability] token removed: NOT_SERVING after %.3f s\n", down);
  ASSERT_GE(down, 0) << "health never went NOT_SERVING\n" << rig.Log();
  EXPECT_LT(down, 1.0);
  EXPECT_EQ(rig.Metric("hsmrewrap_token_state{state=\"lost\"}"), 1);

  out.clear();
  ASSERT_NO_FATAL_FAILURE(rig.SendBatch("during", 10, &out));
  EXPECT_EQ(out["UNAVAILABLE"], 10) << Outcomes(out);

  // Backoff, not a busy loop: CPU over 3 s of absence.
  const double cpu0 = rig.CpuSeconds();
  std::this_thread::sleep_for(3s);
  const double cpu = (rig.CpuSeconds() - cpu0) / 3.0;
  printf("[reliability] CPU while the token is gone: %.1f%% of a core\n", cpu * 100);
  EXPECT_LT(cpu, 0.05);

  rig.WriteFaults("");
  const double up = rig.WaitHealth(true, 10);
  printf("[reliability] token back: SERVING after %.3f s\n", up);
  ASSERT_GE(up, 0) << rig.Log();
  EXPECT_LT(up, 5.0);
  EXPECT_EQ(rig.Metric("hsmrewrap_token_reconnects_total"), 1);
  EXPECT_GT(rig.Metric("hsmrewrap_token_last_outage_seconds"), 3);

  out.clear();
  ASSERT_NO_FATAL_FAILURE(rig.SendBatch("after", 8, &out));
  EXPECT_EQ(out["OK"], 8) << Outcomes(out);
  const std::string log = rig.Log();
  EXPECT_NE(log.find("token lost"), std::string::npos);
  EXPECT_NE(log.find("token is back after"), std::string::npos);
}

// Each token-loss code on every function: items fail UNAVAILABLE, never DECRYPT_FAILED or a
// wrong output, and the service recovers every time.
TEST(FaultTest, EveryLossCodeIsUnavailable) {
  Rig rig;
  START_RIG(rig, {});
  ASSERT_NO_FATAL_FAILURE(rig.CreateKey());
  for (const char* code : {"CKR_DEVICE_ERROR", "CKR_DEVICE_REMOVED", "CKR_TOKEN_NOT_PRESENT",
                           "CKR_SESSION_HANDLE_INVALID", "CKR_SESSION_CLOSED", "CKR_GENERAL_ERROR",
                           "CKR_SESSION_COUNT"}) {
    SCOPED_TRACE(code);
    std::vector<std::string> secrets;
    auto req = rig.Batch(code, 6, &secrets);
    rig.WriteFaults(std::string("fail * ") + code + "\n");
    std::this_thread::sleep_for(50ms);  // the module re-reads its file within 10 ms
    v1::RewrapResponse resp;
    std::map<std::string, int> out;
    ASSERT_TRUE(rig.Call(req, &resp).ok());
    ASSERT_NO_FATAL_FAILURE(rig.Check(req, resp, secrets, &out));
    EXPECT_EQ(out["UNAVAILABLE"], 6) << Outcomes(out);
    EXPECT_LT(rig.WaitHealth(false, 2), 1.0);
    rig.WriteFaults("");
    const double up = rig.WaitHealth(true, 10);
    ASSERT_GE(up, 0) << rig.Log();
    EXPECT_LT(up, 5.0);
    out.clear();
    resp.Clear();
    ASSERT_TRUE(rig.Call(req, &resp).ok());
    ASSERT_NO_FATAL_FAILURE(rig.Check(req, resp, secrets, &out));
    EXPECT_EQ(out["OK"], 6) << Outcomes(out);
  }
}

// A fault on one operation fails that item alone; the session it left in a bad state (a
// C_Decrypt that never ran leaves SoftHSM's decrypt operation active; an unwrap whose answer
// was lost leaves a session object) is discarded, so no later item is affected.
TEST(FaultTest, BrokenSessionsNeverAffectLaterItems) {
  Rig rig;
  START_RIG(rig, {"--pool-size", "1"});  // one session: a reused bad one would show at once
  ASSERT_NO_FATAL_FAILURE(rig.CreateKey());
  const double discarded0 = rig.Metric("hsmrewrap_sessions{state=\"discarded_total\"}");
  rig.WriteFaults(
      "fail C_UnwrapKey CKR_SESSION_CLOSED calls=1-2 forward\n"
      "fail C_Decrypt,C_UnwrapKey CKR_DEVICE_ERROR calls=3-5\n");
  std::this_thread::sleep_for(50ms);
  std::map<std::string, int> out;
  for (int round = 0; round < 4; ++round) {
    ASSERT_NO_FATAL_FAILURE(rig.SendBatch("r" + std::to_string(round), 10, &out));
  }
  // Only the faulted operations' items failed (a failed IN_TOKEN unwrap is not retried on
  // another path), all as UNAVAILABLE; the 35 others are right.
  EXPECT_EQ(out["OK"] + out["UNAVAILABLE"], 40) << Outcomes(out);
  EXPECT_GE(out["OK"], 35) << Outcomes(out);
  EXPECT_EQ(out.count("DECRYPT_FAILED"), 0u) << Outcomes(out);
  EXPECT_GE(rig.Metric("hsmrewrap_sessions{state=\"discarded_total\"}") - discarded0,
            out["UNAVAILABLE"]);
  EXPECT_TRUE(rig.Serving());
}

// A PIN the token refuses when rewrapd re-initialises is never tried again: only the first
// C_Login is refused (calls=1-1), so a second try would succeed and show as SERVING.
TEST(FaultTest, RefusedPinIsNeverRetried) {
  Rig rig;
  START_RIG(rig, {});
  rig.WriteFaults("fail * CKR_DEVICE_REMOVED\n");
  ASSERT_GE(rig.WaitHealth(false, 2), 0);
  rig.WriteFaults("fail C_Login CKR_PIN_INCORRECT calls=1-1\n");
  EXPECT_LT(rig.WaitHealth(true, 5), 0) << "came back although the PIN was refused";
  EXPECT_EQ(rig.Metric("hsmrewrap_token_state{state=\"pin_refused\"}"), 1);
  const std::string log = rig.Log();
  size_t n = 0;
  for (size_t p = log.find("will not be retried"); p != std::string::npos;
       p = log.find("will not be retried", p + 1))
    ++n;
  EXPECT_EQ(n, 1u) << log;
  EXPECT_NE(log.find("NOT_SERVING until the PIN is fixed"), std::string::npos) << log;
}

// Calls that never return (every call of the module hangs: a p11-kit client
// stuck in a read, a vendor library that never answers). The health check does not answer
// either, so the token is declared lost; every item whose call is stuck is answered
// UNAVAILABLE within 2 s of NOT_SERVING, the stuck threads are counted, and the service is
// SERVING again within 5 s of the hang ending, with right outputs.
TEST(HangTest, CallsThatNeverReturnAreAnsweredAtTheLoss) {
  Rig rig;
  // A health check that has not answered after token_call_timeout_s (10 s by default) is a loss.
  START_RIG(rig, {"--token-call-timeout", "2"});
  ASSERT_NO_FATAL_FAILURE(rig.CreateKey());
  std::map<std::string, int> out;
  ASSERT_NO_FATAL_FAILURE(rig.SendBatch("before", 8, &out));
  EXPECT_EQ(out["OK"], 8) << Outcomes(out);

  rig.WriteFaults("hang *\n");
  std::this_thread::sleep_for(50ms);
  std::vector<std::string> secrets;
  const auto req = rig.Batch("stuck", 16, &secrets);
  v1::RewrapResponse resp;
  bool in_engine = false;
  auto call = rig.CallInBackground(req, &resp, &in_engine);
  ASSERT_TRUE(in_engine) << "the batch never reached rewrapd";
  const double down = rig.WaitHealth(false, 10);
  const auto not_serving = Clock::now();
  printf("[reliability] every call hangs: NOT_SERVING after %.3f s\n", down);
  ASSERT_GE(down, 0) << "health never went NOT_SERVING\n" << rig.Log();
  ASSERT_EQ(call.wait_for(5s), std::future_status::ready)
      << "the batch in flight was never answered\n"
      << rig.Log();
  const double answered = Since(not_serving);
  printf("[reliability] batch stuck in the module answered %.3f s after NOT_SERVING\n", answered);
  EXPECT_LT(answered, 2.0);
  const grpc::Status st = call.get();
  ASSERT_TRUE(st.ok()) << StatusText(st);
  out.clear();
  ASSERT_NO_FATAL_FAILURE(rig.Check(req, resp, secrets, &out));
  EXPECT_EQ(out["UNAVAILABLE"], 16) << Outcomes(out);
  const double stuck = rig.Metric("hsmrewrap_token_stuck_calls");
  printf("[reliability] threads stuck inside the module: %.0f\n", stuck);
  EXPECT_GE(stuck, 1) << rig.MetricsText();
  EXPECT_GE(rig.Metric("hsmrewrap_token_abandoned_calls_total"), stuck);

  // While it hangs: new items fail at once, key RPCs do not hang either.
  out.clear();
  ASSERT_NO_FATAL_FAILURE(rig.SendBatch("during", 4, &out));
  EXPECT_EQ(out["UNAVAILABLE"], 4) << Outcomes(out);
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    v1::ListKeysRequest lreq;
    v1::ListKeysResponse lresp;
    const grpc::Status ls = rig.h()->keys().ListKeys(&ctx, lreq, &lresp);
    EXPECT_NE(ls.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
        << "ListKeys hung with the token";
  }

  rig.WriteFaults("");
  const double up = rig.WaitHealth(true, 10);
  printf("[reliability] hang over: SERVING after %.3f s\n", up);
  ASSERT_GE(up, 0) << rig.Log();
  EXPECT_LT(up, 5.0);
  out.clear();
  ASSERT_NO_FATAL_FAILURE(rig.SendBatch("after", 8, &out));
  EXPECT_EQ(out["OK"], 8) << Outcomes(out);
  // The abandoned threads came back out of the module.
  double left = -1;
  for (int i = 0; i < 100 && (left = rig.Metric("hsmrewrap_token_stuck_calls")) != 0; ++i) {
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(left, 0) << rig.MetricsText();
}

// Only the rewrap operations hang (the health check still answers): a call that
// stays inside the module past token_call_timeout_s makes the token lost all the same.
TEST(HangTest, ACallPastTheCallTimeoutIsATokenLoss) {
  Rig rig;
  START_RIG(rig, {"--token-call-timeout", "2"});
  ASSERT_NO_FATAL_FAILURE(rig.CreateKey());
  rig.WriteFaults("hang C_Decrypt,C_UnwrapKey\n");
  std::this_thread::sleep_for(50ms);
  std::vector<std::string> secrets;
  const auto req = rig.Batch("slow", 6, &secrets);
  v1::RewrapResponse resp;
  const auto t0 = Clock::now();
  bool in_engine = false;
  auto call = rig.CallInBackground(req, &resp, &in_engine);
  ASSERT_TRUE(in_engine);
  ASSERT_EQ(call.wait_for(10s), std::future_status::ready) << "never answered\n" << rig.Log();
  const double took = Since(t0);
  printf(
      "[reliability] operations hang, health answers: batch answered after %.3f s (call timeout 2 "
      "s)\n",
      took);
  EXPECT_GE(took, 1.9);
  EXPECT_LT(took, 4.0);
  ASSERT_TRUE(call.get().ok());
  std::map<std::string, int> out;
  ASSERT_NO_FATAL_FAILURE(rig.Check(req, resp, secrets, &out));
  EXPECT_EQ(out["UNAVAILABLE"], 6) << Outcomes(out);
  EXPECT_NE(rig.Log().find("has not returned for"), std::string::npos) << rig.Log();
  // The health loop shows the loss within its 200 ms poll; only then is "SERVING" news.
  ASSERT_GE(rig.WaitHealth(false, 2), 0) << rig.Log();
  rig.WriteFaults("");
  ASSERT_GE(rig.WaitHealth(true, 10), 0) << rig.Log();
  out.clear();
  ASSERT_NO_FATAL_FAILURE(rig.SendBatch("after", 6, &out));
  EXPECT_EQ(out["OK"], 6) << Outcomes(out);
}

// Key reads (ListKeys, GetPublicKey, SelfTest) have threads of their own: a CreateKey that
// is inside C_GenerateKeyPair (a 4096-bit generation can take many seconds; here the call
// hangs until the test lets it go) does not hold them up. Ordering, not timing: with
// CreateKey in the token, ListKeys and GetPublicKey answer; CreateKey answers only after.
TEST(HangTest, KeyReadsAnswerWhileCreateKeyIsInTheToken) {
  Rig rig;
  START_RIG(rig, {});
  ASSERT_NO_FATAL_FAILURE(rig.CreateKey());
  // CreateKey searches the token three times for the name before it generates the key.
  const std::string searches =
      "hsmrewrap_pkcs11_calls_total{function=\"C_FindObjectsFinal\",result=\"ok\"}";
  const double searches_before = rig.Metric(searches);
  rig.WriteFaults("hang C_GenerateKeyPair\n");
  std::this_thread::sleep_for(50ms);
  auto create = std::async(std::launch::async, [stub = v1::Keys::NewStub(rig.h()->channel())] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 180s);
    v1::CreateKeyRequest req;
    req.set_name("big");
    req.set_bits(4096);
    v1::KeyInfo info;
    return stub->CreateKey(&ctx, req, &info);
  });
  // However the test ends, the token lets the generation go (else `create` waits for it).
  struct LetGo {
    Rig* rig;
    ~LetGo() { rig->WriteFaults(""); }
  } let_go{&rig};
  for (int i = 0; i < 400 && rig.Metric(searches) < searches_before + 3; ++i)
    std::this_thread::sleep_for(25ms);
  ASSERT_GE(rig.Metric(searches), searches_before + 3) << "CreateKey never reached the token\n"
                                                       << rig.Log();
  ASSERT_EQ(create.wait_for(200ms), std::future_status::timeout)
      << "CreateKey answered while C_GenerateKeyPair hangs: " << StatusText(create.get());
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 20s);
    v1::ListKeysRequest req;
    v1::ListKeysResponse resp;
    const grpc::Status st = rig.h()->keys().ListKeys(&ctx, req, &resp);
    ASSERT_TRUE(st.ok()) << "ListKeys behind a CreateKey in the token: " << StatusText(st);
    bool listed = false;
    for (const auto& k : resp.keys()) listed |= k.name() == "rel";
    EXPECT_TRUE(listed) << resp.DebugString();
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 20s);
    v1::GetPublicKeyRequest req;
    req.set_name("rel");
    req.set_format(v1::DER_SPKI);
    v1::GetPublicKeyResponse resp;
    const grpc::Status st = rig.h()->keys().GetPublicKey(&ctx, req, &resp);
    ASSERT_TRUE(st.ok()) << "GetPublicKey behind a CreateKey in the token: " << StatusText(st);
  }
  EXPECT_EQ(create.wait_for(0s), std::future_status::timeout)
      << "CreateKey answered before the token let C_GenerateKeyPair go";
  rig.WriteFaults("");
  ASSERT_EQ(create.wait_for(180s), std::future_status::ready) << "CreateKey never answered";
  const grpc::Status st = create.get();
  ASSERT_TRUE(st.ok()) << StatusText(st);
  v1::KeyInfo info;
  ASSERT_NO_FATAL_FAILURE(FindKeyInfo(rig.h(), "big", &info));
  EXPECT_EQ(info.bits(), 4096u);
}

// A metadata write that fails never loses the key's state. Replacing the
// metadata object creates the new one before destroying the old: a failed C_CreateObject
// leaves the key as it was (seen by a second rewrapd on the same token, as after a restart
// or on another replica); a failed C_DestroyObject leaves two versions, the newer one wins.
TEST(FaultTest, KeyStateSurvivesFailedMetadataWrites) {
  Rig rig;
  START_RIG(rig, {});
  ASSERT_NO_FATAL_FAILURE(rig.CreateKey());
  auto set_enabled = [&](bool enabled) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 30s);
    v1::KeyInfo info;
    if (enabled) {
      v1::EnableKeyRequest r;
      r.set_name("rel");
      return rig.h()->keys().EnableKey(&ctx, r, &info);
    }
    v1::DisableKeyRequest r;
    r.set_name("rel");
    return rig.h()->keys().DisableKey(&ctx, r, &info);
  };
  // What a freshly started rewrapd on the same token says.
  auto enabled_after_restart = [&]() -> int {
    std::string why;
    if (!rig.Launch({}, &why)) {
      ADD_FAILURE() << why;
      return -1;
    }
    v1::KeyInfo info;
    FindKeyInfo(rig.h(), "rel", &info);
    return info.enabled() ? 1 : 0;
  };
  ASSERT_TRUE(set_enabled(false).ok());
  // Update in place refused, and the replacement cannot be created: the enable fails and the
  // key stays disabled (before: the old object was destroyed first, so it came back enabled).
  rig.WriteFaults("fail C_SetAttributeValue,C_CreateObject CKR_FUNCTION_FAILED\n");
  std::this_thread::sleep_for(50ms);
  const grpc::Status failed = set_enabled(true);
  EXPECT_FALSE(failed.ok()) << "EnableKey succeeded although no metadata could be written";
  printf("[reliability] EnableKey with C_CreateObject failing: %s\n", StatusText(failed).c_str());
  rig.WriteFaults("");
  EXPECT_EQ(enabled_after_restart(), 0) << "a disabled key came back enabled";

  // The old object cannot be destroyed: the enable succeeds, the newer version wins.
  rig.WriteFaults("fail C_SetAttributeValue,C_DestroyObject CKR_FUNCTION_FAILED\n");
  std::this_thread::sleep_for(50ms);
  EXPECT_TRUE(set_enabled(true).ok());
  rig.WriteFaults("");
  EXPECT_EQ(enabled_after_restart(), 1);
  // Two versions in the token now; the next change replaces both.
  ASSERT_TRUE(set_enabled(false).ok());
  EXPECT_EQ(enabled_after_restart(), 0);
  ASSERT_TRUE(set_enabled(true).ok());
  EXPECT_EQ(enabled_after_restart(), 1);
}

// Overload is never a bad ciphertext. One session, eight workers, a token that
// takes 0.8 s per operation, 16 valid items: those that cannot get a session within
// session_wait (5 s) are RESOURCE_EXHAUSTED (retryable), the rest are right; none is
// DECRYPT_FAILED (before: 4 of 16).
TEST(OverloadTest, WaitingForASessionIsNeverDecryptFailed) {
  Rig rig;
  START_RIG(rig, {"--pool-size", "1", "--workers", "8"});
  ASSERT_NO_FATAL_FAILURE(rig.CreateKey());
  rig.WriteFaults("delay C_Decrypt,C_UnwrapKey 800000\n");
  std::this_thread::sleep_for(50ms);
  std::vector<std::string> s1, s2;
  const auto b1 = rig.Batch("a", 8, &s1);
  const auto b2 = rig.Batch("b", 8, &s2);
  v1::RewrapResponse r1, r2;
  auto c1 = std::async(std::launch::async, [&] { return rig.Call(b1, &r1); });
  auto c2 = std::async(std::launch::async, [&] { return rig.Call(b2, &r2); });
  ASSERT_TRUE(c1.get().ok());
  ASSERT_TRUE(c2.get().ok());
  std::map<std::string, int> out;
  ASSERT_NO_FATAL_FAILURE(rig.Check(b1, r1, s1, &out));
  ASSERT_NO_FATAL_FAILURE(rig.Check(b2, r2, s2, &out));
  printf("[reliability] 16 items, 1 session, 0.8 s per operation: %s\n", Outcomes(out).c_str());
  EXPECT_EQ(out.count("DECRYPT_FAILED"), 0u) << Outcomes(out);
  EXPECT_EQ(out["OK"] + out["RESOURCE_EXHAUSTED"], 16) << Outcomes(out);
  EXPECT_GE(out["RESOURCE_EXHAUSTED"], 1)
      << "no item waited past session_wait: the test proves nothing";
  EXPECT_GE(out["OK"], 5) << Outcomes(out);
}

// Past max_inflight_items a batch is refused at once with RESOURCE_EXHAUSTED (no queueing).
TEST(OverloadTest, PastTheInflightLimitIsResourceExhaustedAtOnce) {
  Rig rig;
  START_RIG(rig, {"--pool-size", "1", "--max-inflight-items", "20", "--max-batch-items", "20"});
  ASSERT_NO_FATAL_FAILURE(rig.CreateKey());
  rig.WriteFaults("delay C_Decrypt,C_UnwrapKey 100000\n");  // 100 ms per token operation
  std::this_thread::sleep_for(50ms);
  std::vector<std::string> s1, s2;
  auto busy = rig.Batch("busy", 20, &s1);
  auto more = rig.Batch("more", 5, &s2);
  v1::RewrapResponse busy_resp;
  bool in_engine = false;
  auto first = rig.CallInBackground(busy, &busy_resp, &in_engine);
  ASSERT_TRUE(in_engine) << "the first batch never reached rewrapd";
  v1::RewrapResponse resp;
  const auto t0 = Clock::now();
  grpc::Status st = rig.Call(more, &resp);
  const double took = Since(t0);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << StatusText(st);
  EXPECT_LT(took, 0.5) << "refused at once, not queued";
  EXPECT_EQ(first.get().error_code(), grpc::StatusCode::OK);
}

// Items whose call deadline has passed are dropped without the token.
TEST(OverloadTest, ExpiredItemsAreDroppedWithoutTheToken) {
  Rig rig;
  START_RIG(rig, {"--pool-size", "1"});
  ASSERT_NO_FATAL_FAILURE(rig.CreateKey());
  rig.WriteFaults("delay C_Decrypt,C_UnwrapKey 200000\n");
  std::this_thread::sleep_for(50ms);
  auto ops = [&] {
    return std::max(
               0.0,
               rig.Metric("hsmrewrap_pkcs11_calls_total{function=\"C_UnwrapKey\",result=\"ok\"}")) +
           std::max(0.0, rig.Metric(
                             "hsmrewrap_pkcs11_calls_total{function=\"C_Decrypt\",result=\"ok\"}"));
  };
  const double ops0 = ops();
  std::vector<std::string> secrets;
  auto req = rig.Batch("late", 30, &secrets);
  v1::RewrapResponse resp;
  grpc::Status st = rig.Call(req, &resp, 500ms);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << StatusText(st);
  // Wait until the engine is empty again, then count token operations.
  for (int i = 0; i < 100 && rig.Metric("hsmrewrap_inflight_items") != 0; ++i)
    std::this_thread::sleep_for(100ms);
  const double used = ops() - ops0;
  printf(
      "[reliability] 30 items, 0.5 s deadline, 0.2 s per token operation: %.0f token operations\n",
      used);
  EXPECT_LE(used, 12) << "expired items still went to the token";
  EXPECT_GE(rig.Metric("hsmrewrap_items_total{key=\"rel\",outcome=\"DEADLINE_EXCEEDED\",path="
                       "\"PATH_UNSPECIFIED\"}"),
            15)
      << rig.MetricsText();
}

// SIGTERM: a batch in flight completes within the grace period, rewrapd exits 0.
TEST(DrainTest, SigtermDrainsInflightBatches) {
  Rig rig;
  START_RIG(rig, {"--pool-size", "1", "--shutdown-grace", "20"});
  ASSERT_NO_FATAL_FAILURE(rig.CreateKey());
  rig.WriteFaults("delay C_Decrypt,C_UnwrapKey 100000\n");
  std::this_thread::sleep_for(50ms);
  std::vector<std::string> secrets;
  auto req = rig.Batch("drain", 12, &secrets);
  v1::RewrapResponse resp;
  // SIGTERM only once the batch is in the engine: a call that had not reached rewrapd yet
  // would be refused by the drain, which is right but not what this test is about.
  bool in_engine = false;
  auto call = rig.CallInBackground(req, &resp, &in_engine);
  ASSERT_TRUE(in_engine) << "the batch never reached rewrapd";
  const auto t0 = Clock::now();
  ASSERT_TRUE(rig.h()->Signal(SIGTERM));
  grpc::Status st = call.get();
  ASSERT_TRUE(st.ok()) << StatusText(st);
  std::map<std::string, int> out;
  ASSERT_NO_FATAL_FAILURE(rig.Check(req, resp, secrets, &out));
  EXPECT_EQ(out["OK"], 12) << Outcomes(out);
  EXPECT_EQ(rig.h()->Stop(), "");
  printf("[reliability] drained 12 items and stopped %.2f s after SIGTERM\n", Since(t0));
  EXPECT_LT(Since(t0), 10);
}

// SIGTERM with more work than the grace period: rewrapd stops after the grace anyway.
TEST(DrainTest, SigtermStopsAfterTheGracePeriod) {
  Rig rig;
  START_RIG(rig, {"--pool-size", "1", "--shutdown-grace", "1"});
  ASSERT_NO_FATAL_FAILURE(rig.CreateKey());
  rig.WriteFaults("delay C_Decrypt,C_UnwrapKey 200000\n");
  std::this_thread::sleep_for(50ms);
  std::vector<std::string> secrets;
  auto req = rig.Batch("long", 60, &secrets);  // >= 12 s of token time
  v1::RewrapResponse resp;
  bool in_engine = false;
  auto call = rig.CallInBackground(req, &resp, &in_engine);
  ASSERT_TRUE(in_engine) << "the batch never reached rewrapd";
  const auto t0 = Clock::now();
  ASSERT_TRUE(rig.h()->Signal(SIGTERM));
  EXPECT_EQ(rig.h()->Stop(), "");
  const double took = Since(t0);
  printf("[reliability] 1 s grace: stopped %.2f s after SIGTERM\n", took);
  // Far less than the >= 12 s of queued token work; slack for a loaded machine and the
  // sanitizer build (stopping joins threads and finalises the module).
  EXPECT_LT(took, 8.0);
  // At the grace deadline two things race: gRPC cancels the call, and the engine fails the
  // items it has not started (UNAVAILABLE) so the batch can end. Either way the batch must
  // not have completed: a cancelled call, or a full answer whose unstarted items failed.
  const grpc::Status st = call.get();
  if (st.ok()) {
    std::map<std::string, int> out;
    ASSERT_NO_FATAL_FAILURE(rig.Check(req, resp, secrets, &out));
    EXPECT_GT(out["UNAVAILABLE"], 0) << Outcomes(out);
    EXPECT_LT(out["OK"], 60) << Outcomes(out);
  }
}

TEST(RemoteTest, ServerKilledAndRestarted) {
  if (access(kP11KitClient, R_OK) != 0)
    GTEST_SKIP() << kP11KitClient << " missing (package p11-kit-modules)";
  Rig rig;
  std::string why;
  ASSERT_TRUE(rig.Prepare(&why)) << why;
  P11KitServer server(rig.dir() + "/p11.sock", kLabel);
  ASSERT_TRUE(server.Start()) << "p11-kit server did not create its socket";
  // rewrapd -> fault module (latency only, so a batch is in flight at the kill) -> p11-kit
  // client module -> socket -> p11-kit server -> SoftHSM2.
  ASSERT_TRUE(rig.Launch({}, &why, "",
                         {{"P11_KIT_SERVER_ADDRESS", "unix:path=" + rig.dir() + "/p11.sock"},
                          {"HSMREWRAP_FAULT_MODULE", kP11KitClient}}))
      << why;
  ASSERT_NO_FATAL_FAILURE(rig.CreateKey());
  for (int round = 1; round <= 2; ++round) {
    SCOPED_TRACE(round);
    std::map<std::string, int> out;
    ASSERT_NO_FATAL_FAILURE(rig.SendBatch("ok" + std::to_string(round), 8, &out));
    EXPECT_EQ(out["OK"], 8) << Outcomes(out);

    // Items in flight when the server dies: sent, then the server is killed mid-batch.
    rig.WriteFaults("delay C_Decrypt,C_UnwrapKey 20000\n");  // 40 items: ~0.4 s on 2 sessions
    std::this_thread::sleep_for(50ms);
    std::vector<std::string> secrets;
    auto inflight = rig.Batch("kill" + std::to_string(round), 40, &secrets);
    v1::RewrapResponse inflight_resp;
    auto call = std::async(std::launch::async, [&] { return rig.Call(inflight, &inflight_resp); });
    std::this_thread::sleep_for(100ms);
    server.Kill();
    const auto killed = Clock::now();
    const double down = rig.WaitHealth(false, 5);
    printf("[reliability] remote token killed (round %d): NOT_SERVING after %.3f s\n", round, down);
    ASSERT_GE(down, 0) << rig.Log();
    EXPECT_LT(down, 1.0);
    ASSERT_TRUE(call.get().ok());
    out.clear();
    ASSERT_NO_FATAL_FAILURE(rig.Check(inflight, inflight_resp, secrets, &out));
    EXPECT_EQ(out.count("DECRYPT_FAILED"), 0u) << Outcomes(out);
    EXPECT_EQ(out["OK"] + out["UNAVAILABLE"], 40) << Outcomes(out);
    printf("[reliability] batch in flight at the kill: %s\n", Outcomes(out).c_str());

    out.clear();
    ASSERT_NO_FATAL_FAILURE(rig.SendBatch("down" + std::to_string(round), 6, &out));
    EXPECT_EQ(out["UNAVAILABLE"], 6) << Outcomes(out);

    std::this_thread::sleep_for(1500ms);
    ASSERT_TRUE(server.Start());
    const double up = rig.WaitHealth(true, 10);
    printf(
        "[reliability] remote token restarted (round %d, %.1f s after the kill): SERVING after "
        "%.3f s\n",
        round, Since(killed), up);
    ASSERT_GE(up, 0) << rig.Log();
    EXPECT_LT(up, 5.0);
  }
  EXPECT_EQ(rig.Metric("hsmrewrap_token_reconnects_total"), 2);
  std::map<std::string, int> out;
  ASSERT_NO_FATAL_FAILURE(rig.SendBatch("end", 8, &out));
  EXPECT_EQ(out["OK"], 8) << Outcomes(out);
}

}  // namespace
}  // namespace hsmrewrap::it
