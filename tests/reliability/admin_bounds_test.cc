// Key administration within bounds (issue 20, point 9), against the real rewrapd on
// SoftHSM2 behind the fault module (tests/fault_module), whose `hang` rule holds the
// Keys service's threads inside the token:
//  - a PKCS#12 file whose MAC iteration count is 2^31-1 (an hour of PBKDF) is refused
//    INVALID_ARGUMENT at once, and the admin thread is free right after;
//  - a full Keys queue answers RESOURCE_EXHAUSTED at once;
//  - a write or a read whose deadline passes while it waits in the queue is never run.
#include <gtest/gtest.h>
#include <openssl/pkcs12.h>

#include <chrono>
#include <cstdio>
#include <future>
#include <sstream>
#include <thread>

#include "tests/integration/it_util.h"
#include "tests/integration/test_crypto.h"
#include "tests/reliability/rig_util.h"
#include "tests/leakcheck/record.h"
#include "tests/support/tokens.h"

namespace hsmrewrap::it {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr char kLabel[] = "admin-bounds";
constexpr char kPin[] = "admin-user-1234";
// C_FindObjectsFinal calls that answered: CreateKey searches the token three times for the
// name before it generates the key.
constexpr char kSearches[] =
    "hsmrewrap_pkcs11_calls_total{function=\"C_FindObjectsFinal\",result=\"ok\"}";

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// rewrapd on the fault module over a SoftHSM2 token of its own.
class Rig {
 public:
  bool Start(std::vector<std::pair<std::string, std::string>> env, std::string* why) {
    test::SetUpSoftHsmConfig(dir_.path());
    WriteFile(dir_.File("user.pin"), kPin, 0600);
    const std::vector<std::string> init = {"softhsm2-util", "--init-token", "--free", "--label",
                                           kLabel,          "--pin",        kPin,     "--so-pin",
                                           "admin-so-5678"};
    const CommandResult r = RunCommand(init);
    if (r.exit_code != 0) {
      *why = r.Describe(init);
      return false;
    }
    fault_conf_ = dir_.File("faults.conf");
    WriteFaults("");
    RewrapdHarness::Options x;
    x.module_args = {"--module",   HSMREWRAP_FAULT_MODULE_PATH, "--token", kLabel,
                     "--pin-file", dir_.File("user.pin")};
    x.extra_args = {"--metrics-listen", "127.0.0.1:0", "--selftest-interval", "0"};
    x.env = std::move(env);
    x.env.push_back({"HSMREWRAP_FAULT_CONFIG", fault_conf_});
    x.env.push_back({"HSMREWRAP_FAULT_MODULE", test::kSoftHsmPath});
    h_ = RewrapdHarness::Start(TokenKind::kSoftHsm, why, x);
    if (!h_) return false;
    metrics_ = MetricsAddressFromLog(h_->StderrPath());
    return true;
  }

  RewrapdHarness* h() { return h_.get(); }
  v1::Keys::Stub& keys() { return h_->keys(); }

  // Atomic rewrite of the fault module's configuration (it re-reads it within 10 ms).
  void WriteFaults(const std::string& text) {
    const std::string tmp = fault_conf_ + ".tmp";
    WriteFile(tmp, text, 0600);
    std::rename(tmp.c_str(), fault_conf_.c_str());
  }

  double Metric(const std::string& prefix) {
    std::istringstream in(
        RunCommand({"curl", "-s", "--max-time", "5", "http://" + metrics_ + "/metrics"}).out);
    for (std::string line; std::getline(in, line);) {
      if (line.rfind(prefix + " ", 0) == 0) return std::stod(line.substr(prefix.size() + 1));
    }
    return -1;
  }

  std::string Log() { return ReadFileOrEmpty(h_->StderrPath()); }
  // The audit log the harness gives rewrapd (next to its stderr): one line per key call.
  std::string Audit() {
    const std::string err = h_->StderrPath();
    return ReadFileOrEmpty(err.substr(0, err.rfind('/')) + "/audit.jsonl");
  }

  // Waits (up to `limit` seconds) until rewrapd's log has a line with all of `parts`.
  bool WaitForLogLine(const std::vector<std::string>& parts, double limit) {
    const auto t0 = Clock::now();
    do {
      std::istringstream in(Log());
      for (std::string line; std::getline(in, line);) {
        bool all = true;
        for (const auto& p : parts) all = all && line.find(p) != std::string::npos;
        if (all) return true;
      }
      std::this_thread::sleep_for(50ms);
    } while (Since(t0) < limit);
    return false;
  }

  // CreateKey `name` on a stub of its own (so Stop() may run while it waits), with a long
  // deadline.
  std::future<grpc::Status> CreateKeyInBackground(const std::string& name) {
    return std::async(std::launch::async, [stub = v1::Keys::NewStub(h_->channel()), name] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + 180s);
      v1::CreateKeyRequest req;
      req.set_name(name);
      v1::KeyInfo info;
      return stub->CreateKey(&ctx, req, &info);
    });
  }

  // Holds the admin (write) thread: a CreateKey that hangs in C_GenerateKeyPair until
  // Release(). Returns the call; ASSERTs that it reached the token.
  void HoldWriter(std::future<grpc::Status>* create) {
    const double before = Metric(kSearches);
    WriteFaults("hang C_GenerateKeyPair\n");
    std::this_thread::sleep_for(50ms);
    *create = CreateKeyInBackground("held");
    for (int i = 0; i < 400 && Metric(kSearches) < before + 3; ++i)
      std::this_thread::sleep_for(25ms);
    ASSERT_GE(Metric(kSearches), before + 3) << "CreateKey never reached the token\n" << Log();
    ASSERT_EQ(create->wait_for(200ms), std::future_status::timeout)
        << "CreateKey answered while C_GenerateKeyPair hangs: " << StatusText(create->get());
  }
  void Release() { WriteFaults(""); }

 private:
  TempDir dir_{"hsmrewrap-admin"};
  std::string fault_conf_;
  std::unique_ptr<RewrapdHarness> h_;
  std::string metrics_;
};

// However a test ends, the token lets go of the calls it holds.
struct LetGo {
  Rig* rig;
  ~LetGo() { rig->Release(); }
};

#define START_RIG(rig, env)                       \
  do {                                            \
    std::string why_;                             \
    ASSERT_TRUE((rig).Start(env, &why_)) << why_; \
  } while (0)

grpc::Status SetEnabledOn(v1::Keys::Stub& stub, const std::string& name, bool enabled,
                          std::chrono::milliseconds deadline, v1::KeyInfo* info) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + deadline);
  if (enabled) {
    v1::EnableKeyRequest req;
    req.set_name(name);
    return stub.EnableKey(&ctx, req, info);
  }
  v1::DisableKeyRequest req;
  req.set_name(name);
  return stub.DisableKey(&ctx, req, info);
}

// A PKCS#12 file of a fresh RSA key whose MAC iteration count says `mac_iterations`. It is
// made with 2 (computing 2^31-1 would take an hour) and the count is rewritten afterwards:
// the MAC no longer verifies, which only matters to a parser that runs the count.
std::string PfxWithMacIterations(const std::string& password, int64_t mac_iterations) {
  Pkey key = GenerateRsa(2048);
  X509Ptr cert = SelfSignedCert(key.get(), "admin-bounds");
  PKCS12* p12 =
      PKCS12_create(password.c_str(), "imported", key.get(), cert.get(), nullptr, 0, 0, 2048, 2, 0);
  EXPECT_NE(p12, nullptr) << OpenSslErrors();
  const ASN1_INTEGER* iter = nullptr;
  PKCS12_get0_mac(nullptr, nullptr, nullptr, &iter, p12);
  EXPECT_NE(iter, nullptr);
  EXPECT_EQ(ASN1_INTEGER_set_int64(const_cast<ASN1_INTEGER*>(iter), mac_iterations), 1);
  unsigned char* der = nullptr;
  const int len = i2d_PKCS12(p12, &der);
  PKCS12_free(p12);
  std::string out(reinterpret_cast<char*>(der), len > 0 ? static_cast<size_t>(len) : 0);
  OPENSSL_free(der);
  return out;
}

// A PFX asking for 2^31-1 MAC iterations (an hour of PBKDF on this machine) is refused
// INVALID_ARGUMENT, naming the count and the limit, well inside the call's deadline, and the
// admin thread is free at once: a key read and a key write answer right after.
TEST(AdminBoundsTest, PfxWithAHugeMacIterationCountIsRefusedAtOnce) {
  Rig rig;
  START_RIG(rig, {});
  ServiceKey key;
  ASSERT_NO_FATAL_FAILURE(CreateServiceKey(rig.h(), "rel", 2048, false, &key));
  const std::string password = "admin-bounds-pfx-password";
  leakcheck::RecordSecret(password);
  v1::ImportKeyRequest req;
  req.set_name("huge-mac");
  req.mutable_pfx()->set_pfx(PfxWithMacIterations(password, 2147483647));
  req.mutable_pfx()->set_password(password);
  const auto t0 = Clock::now();
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 60s);
    v1::KeyInfo info;
    const grpc::Status st = rig.keys().ImportKey(&ctx, req, &info);
    const double took = Since(t0);
    printf("[admin] ImportKey of a PFX with 2^31-1 MAC iterations: %s after %.3f s\n",
           StatusText(st).c_str(), took);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << StatusText(st);
    EXPECT_NE(st.error_message().find("2147483647"), std::string::npos) << st.error_message();
    EXPECT_NE(st.error_message().find("limit of 1000000"), std::string::npos) << st.error_message();
    EXPECT_LT(took, 5.0) << "the count was run";
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 10s);
    v1::ListKeysRequest list;
    v1::ListKeysResponse resp;
    const grpc::Status st = rig.keys().ListKeys(&ctx, list, &resp);
    ASSERT_TRUE(st.ok()) << "ListKeys right after: " << StatusText(st);
    for (const auto& k : resp.keys()) EXPECT_NE(k.name(), "huge-mac");
  }
  v1::KeyInfo info;
  const grpc::Status st = SetEnabledOn(rig.keys(), "rel", true, 10s, &info);
  EXPECT_TRUE(st.ok()) << "a key write right after (the admin thread must be free): "
                       << StatusText(st);
}

// limits.max_queued_key_calls = 2: with the admin thread held in the token, two writes wait
// and every further one is RESOURCE_EXHAUSTED at once; the two run once the token lets go.
TEST(AdminBoundsTest, AFullKeyQueueIsResourceExhaustedAtOnce) {
  Rig rig;
  START_RIG(
      rig,
      (std::vector<std::pair<std::string, std::string>>{{"HSMREWRAP_MAX_QUEUED_KEY_CALLS", "2"}}));
  ServiceKey key;
  ASSERT_NO_FATAL_FAILURE(CreateServiceKey(rig.h(), "rel", 2048, false, &key));
  LetGo let_go{&rig};
  std::future<grpc::Status> create;
  ASSERT_NO_FATAL_FAILURE(rig.HoldWriter(&create));
  constexpr int kCalls = 5;
  std::vector<std::future<grpc::Status>> calls;
  for (int i = 0; i < kCalls; ++i) {
    calls.push_back(std::async(std::launch::async, [stub = v1::Keys::NewStub(rig.h()->channel())] {
      v1::KeyInfo info;
      return SetEnabledOn(*stub, "rel", true, 120s, &info);
    }));
  }
  // The refused ones answer while the admin thread is still held.
  const auto t0 = Clock::now();
  int ready = 0;
  while (Since(t0) < 20) {
    ready = 0;
    for (auto& c : calls) ready += c.wait_for(0s) == std::future_status::ready;
    if (ready >= kCalls - 2) break;
    std::this_thread::sleep_for(20ms);
  }
  std::this_thread::sleep_for(300ms);  // a third waiting call would show here
  int refused = 0, waiting = 0;
  for (auto& c : calls) {
    if (c.wait_for(0s) != std::future_status::ready) {
      ++waiting;
      continue;
    }
    const grpc::Status st = c.get();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << StatusText(st);
    EXPECT_NE(st.error_message().find("key administration queue is full"), std::string::npos)
        << st.error_message();
    ++refused;
  }
  printf(
      "[admin] %d writes behind a held CreateKey with max_queued_key_calls 2: %d refused at "
      "once, %d waiting\n",
      kCalls, refused, waiting);
  EXPECT_EQ(refused, kCalls - 2);
  EXPECT_EQ(waiting, 2);
  EXPECT_EQ(create.wait_for(0s), std::future_status::timeout);
  rig.Release();
  ASSERT_EQ(create.wait_for(180s), std::future_status::ready);
  EXPECT_TRUE(create.get().ok());
  for (auto& c : calls) {
    if (!c.valid()) continue;
    ASSERT_EQ(c.wait_for(60s), std::future_status::ready);
    const grpc::Status st = c.get();
    EXPECT_TRUE(st.ok()) << "a queued write: " << StatusText(st);
  }
}

// A DisableKey that waits behind a held CreateKey until its deadline has passed is answered
// DEADLINE_EXCEEDED and never run: the key is still enabled afterwards.
TEST(AdminBoundsTest, AWriteWhoseDeadlinePassesInTheQueueIsNotRun) {
  Rig rig;
  START_RIG(rig, {});
  ServiceKey key;
  ASSERT_NO_FATAL_FAILURE(CreateServiceKey(rig.h(), "rel", 2048, false, &key));
  LetGo let_go{&rig};
  std::future<grpc::Status> create;
  ASSERT_NO_FATAL_FAILURE(rig.HoldWriter(&create));
  v1::KeyInfo info;
  const grpc::Status st = SetEnabledOn(rig.keys(), "rel", false, 1000ms, &info);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << StatusText(st);
  // rewrapd's view of the deadline can be a little later than the client's.
  std::this_thread::sleep_for(500ms);
  rig.Release();
  ASSERT_EQ(create.wait_for(180s), std::future_status::ready);
  ASSERT_TRUE(create.get().ok());
  EXPECT_TRUE(rig.WaitForLogLine(
      {"DisableKey from", "its deadline passed while it was queued; not run"}, 10))
      << "rewrapd never said it dropped the expired DisableKey\n"
      << rig.Log();
  v1::KeyInfo now;
  ASSERT_NO_FATAL_FAILURE(FindKeyInfo(rig.h(), "rel", &now));
  EXPECT_TRUE(now.enabled()) << "the expired DisableKey was run after its deadline";
}

// Both read threads held inside the token (two ListKeys in a hanging C_FindObjectsInit): a
// GetPublicKey that waits past its deadline is answered DEADLINE_EXCEEDED and never run.
TEST(AdminBoundsTest, AKeyReadWhoseDeadlinePassesInTheQueueIsNotRun) {
  Rig rig;
  START_RIG(rig, {});
  ServiceKey key;
  ASSERT_NO_FATAL_FAILURE(CreateServiceKey(rig.h(), "rel", 2048, false, &key));
  LetGo let_go{&rig};
  rig.WriteFaults("hang C_FindObjectsInit\n");
  std::this_thread::sleep_for(50ms);
  auto list_keys = [&rig] {
    return std::async(std::launch::async, [stub = v1::Keys::NewStub(rig.h()->channel())] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + 120s);
      v1::ListKeysRequest req;
      v1::ListKeysResponse resp;
      return stub->ListKeys(&ctx, req, &resp);
    });
  };
  // Two ListKeys held in the token take both read threads. The fault module applies a new
  // rule at its next call once it has seen the file change; on a loaded machine a ListKeys
  // can still slip through before that (it answers OK): then it is sent again.
  std::vector<std::future<grpc::Status>> lists;
  for (int attempt = 0; attempt < 20 && lists.size() < 2; ++attempt) {
    auto l = list_keys();
    if (l.wait_for(1500ms) == std::future_status::timeout) {
      lists.push_back(std::move(l));
    } else {
      const grpc::Status st = l.get();
      ASSERT_TRUE(st.ok()) << "ListKeys failed instead of hanging: " << StatusText(st);
    }
  }
  ASSERT_EQ(lists.size(), 2u) << "ListKeys never hung in C_FindObjectsInit\n" << rig.Log();
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 1000ms);
    v1::GetPublicKeyRequest req;
    req.set_name("rel");
    req.set_format(v1::DER_SPKI);
    v1::GetPublicKeyResponse resp;
    const grpc::Status st = rig.keys().GetPublicKey(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << StatusText(st);
  }
  // rewrapd's view of the deadline can be a little later than the client's.
  std::this_thread::sleep_for(500ms);
  rig.Release();
  for (auto& l : lists) {
    ASSERT_EQ(l.wait_for(60s), std::future_status::ready);
    const grpc::Status st = l.get();
    EXPECT_TRUE(st.ok()) << StatusText(st);
  }
  EXPECT_TRUE(rig.WaitForLogLine(
      {"GetPublicKey from", "its deadline passed while it was queued; not run"}, 10))
      << "rewrapd never said it dropped the expired GetPublicKey\naudit:\n"
      << rig.Audit() << "log:\n"
      << rig.Log();
}

}  // namespace
}  // namespace hsmrewrap::it
