// A caller with a legitimate identity trying to make rewrapd hold memory or work it should
// not: metrics labels it chooses, streams it never reads, duplicate ids, long fields, a
// right taken away while its stream is open, streams kept open for ever, calls it cancels.
// Each test runs its own rewrapd (SoftHSM2 embedded default, plaintext, a policy with an
// anonymous client) with the limits it needs.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "hsmrewrap/v1/rewrap.grpc.pb.h"
#include "tests/integration/it_util.h"
#include "tests/integration/test_crypto.h"
#include "tests/support/command.h"
#include "tests/support/files.h"
#include "tests/support/rewrapd_harness.h"
#include "tests/support/temp_dir.h"

#if defined(__SANITIZE_ADDRESS__)
#define HSMREWRAP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HSMREWRAP_ASAN 1
#endif
#endif

namespace hsmrewrap::it {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::string PolicyText(const std::string& rpcs, const std::string& limits) {
  return "clients:\n"
         "  - name: anyone\n"
         "    anonymous: true\n"
         "    rpcs: [" +
         rpcs +
         "]\n"
         "    keys: [default]\n"
         "    recipients: {raw_public_keys: true}\n" +
         (limits.empty() ? "" : "    limits: {" + limits + "}\n");
}

class AbuseTest : public ::testing::Test {
 protected:
  // Starts rewrapd with `limits` (lines of the config file's limits section) and a policy
  // letting the anonymous caller rewrap with `default` (policy limits `policy_limits`).
  void Start(const std::string& limits, const std::string& policy_limits = "") {
    policy_ = dir_.File("policy.yaml");
    audit_ = dir_.File("audit.jsonl");
    WriteFile(policy_, PolicyText("rewrap, keys.read", policy_limits), 0600);
    const std::string config = dir_.File("rewrapd.yaml");
    WriteFile(config, limits.empty() ? "" : "limits:\n" + limits, 0600);
    RewrapdHarness::Options o;
    o.extra_args = {"--config",    config, "--policy",         policy_,
                    "--audit-log", audit_, "--metrics-listen", "127.0.0.1:0"};
    std::string why;
    h_ = RewrapdHarness::Start(TokenKind::kSoftHsm, &why, o);
    ASSERT_TRUE(h_) << why;
    const std::string err = test::ReadFileOrEmpty(h_->StderrPath());
    const std::string tag = "metrics on http://";
    size_t p = err.rfind(tag);
    ASSERT_NE(p, std::string::npos) << err;
    metrics_ = err.substr(p + tag.size(), err.find('/', p + tag.size()) - p - tag.size());
    LoadServiceKey(h_.get(), "default", &key_);
    device_ = MakeDevice(2048, "abuse-device");
    ct_ = Seal(key_, v1::OAEP_SHA256, secret_);
  }
  void TearDown() override {
    if (h_) {
      EXPECT_EQ(h_->Stop(), "");
    }
  }

  v1::RewrapItem* Add(v1::RewrapRequest* req, const std::string& id) {
    return AddItem(req, id, "default", v1::OAEP_SHA256, ct_, device_, Rcp::kSpkiDer,
                   v1::RSA_OAEP_SHA256);
  }

  std::string MetricsText() {
    return test::RunCommand({"curl", "-s", "--max-time", "10", "http://" + metrics_ + "/metrics"})
        .out;
  }
  // Sum of the hsmrewrap_items_total samples whose labels contain `label`.
  double ItemsWith(const std::string& label) {
    std::istringstream in(MetricsText());
    double sum = 0;
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("hsmrewrap_items_total{", 0) == 0 && line.find(label) != std::string::npos)
        sum += std::stod(line.substr(line.rfind(' ') + 1));
    }
    return sum;
  }
  // rewrapd's resident memory, MiB.
  double RssMiB() {
    std::ifstream in("/proc/" + std::to_string(h_->pid()) + "/status");
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
    }
    return -1;
  }

  grpc::Status Call(const v1::RewrapRequest& req, v1::RewrapResponse* resp) {
    grpc::ClientContext ctx;
    test::SetDeadline(&ctx);
    return h_->rewrap().Rewrap(&ctx, req, resp);
  }

  test::TempDir dir_{"hsmrewrap-abuse"};
  std::unique_ptr<RewrapdHarness> h_;
  std::string policy_, audit_, metrics_;
  ServiceKey key_;
  Device device_;
  const std::string secret_ = RandomAscii(24);
  std::string ct_;
};

// Items refused for a key name the caller chose are counted under "other", never under the
// name: the label set (and /metrics, and the memory behind it) cannot be grown by callers.
// Names over 128 bytes or with control characters are INVALID_ITEM, before the policy.
TEST_F(AbuseTest, MetricsLabelOnlyKeysThatExist) {
  ASSERT_NO_FATAL_FAILURE(Start(""));
  v1::RewrapRequest req;
  for (int i = 0; i < 300; ++i) {
    Add(&req, "p" + std::to_string(i))
        ->set_key_name("probe-" + std::to_string(i) + "-" + RandomAscii(100));
  }
  // Random text, not one letter repeated: a run of one letter matches other tests' secrets
  // (Wycheproof messages) in the log leak check.
  const std::string long_name = RandomAscii(4096);
  Add(&req, "long")->set_key_name(long_name);
  Add(&req, "ctl")->set_key_name("bad\nname");
  Add(&req, "good");
  v1::RewrapResponse resp;
  ASSERT_TRUE(Call(req, &resp).ok());
  ASSERT_EQ(resp.results_size(), req.items_size());
  for (int i = 0; i < 300; ++i)
    EXPECT_EQ(resp.results(i).error().code(), v1::ItemError::PERMISSION_DENIED) << i;
  for (int i : {300, 301}) {
    EXPECT_EQ(resp.results(i).error().code(), v1::ItemError::INVALID_ITEM)
        << resp.results(i).id() << ": " << resp.results(i).error().message();
    EXPECT_NE(resp.results(i).error().message().find("key_name"), std::string::npos);
    EXPECT_LT(resp.results(i).error().message().size(), 200u);
  }
  EXPECT_FALSE(resp.results(302).has_error()) << resp.results(302).error().message();

  const std::string text = MetricsText();
  EXPECT_EQ(text.find("probe-"), std::string::npos) << "a caller's key name became a label";
  EXPECT_EQ(text.find(long_name.substr(0, 16)), std::string::npos);
  EXPECT_NE(text.find("key=\"other\""), std::string::npos);
  EXPECT_NE(text.find("key=\"default\""), std::string::npos);
  EXPECT_LT(text.size(), 64u * 1024) << "the exposition grew with the callers' names";
  EXPECT_EQ(ItemsWith("key=\"other\""), 302);
}

// A duplicated id is answered without repeating it, and every item, a duplicated one too,
// is admitted by the rate limiter first.
TEST_F(AbuseTest, DuplicateIdsCountAgainstRateLimitsAndAreNotEchoed) {
  ASSERT_NO_FATAL_FAILURE(Start("", "items_per_second: 0.001, burst: 4"));
  v1::RewrapRequest req;
  const std::string id = RandomAscii(3000);
  for (int i = 0; i < 8; ++i) Add(&req, id);
  v1::RewrapResponse resp;
  ASSERT_TRUE(Call(req, &resp).ok());
  int invalid = 0, exhausted = 0;
  for (const auto& r : resp.results()) {
    EXPECT_EQ(r.id(), id);
    EXPECT_LT(r.error().message().size(), 200u) << "the message repeats the caller's input";
    invalid += r.error().code() == v1::ItemError::INVALID_ITEM;
    exhausted += r.error().code() == v1::ItemError::RESOURCE_EXHAUSTED;
  }
  EXPECT_EQ(invalid, 4);
  EXPECT_EQ(exhausted, 4);
  EXPECT_LT(resp.ByteSizeLong(), req.ByteSizeLong() + 8 * 200);

  // The audit records (written before the answer) bound the caller's fields too.
  std::ifstream in(audit_);
  int records = 0;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("id")) continue;
    ++records;
    EXPECT_LT(line.size(), 700u) << line.substr(0, 300);
  }
  EXPECT_EQ(records, 8);
}

// Streams are counted per identity and in all; one past the limit is refused with
// RESOURCE_EXHAUSTED; closing one makes room.
TEST_F(AbuseTest, StreamsAreBoundedPerIdentity) {
  ASSERT_NO_FATAL_FAILURE(Start("  max_streams_per_identity: 3\n"));
  struct Open {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReaderWriter<v1::RewrapRequest, v1::RewrapResponse>> s;
  };
  v1::RewrapRequest req;
  Add(&req, "one");
  std::vector<std::unique_ptr<Open>> open;
  for (int i = 0; i < 3; ++i) {
    auto o = std::make_unique<Open>();
    test::SetDeadline(&o->ctx);
    o->s = h_->rewrap().RewrapStream(&o->ctx);
    v1::RewrapResponse resp;
    ASSERT_TRUE(o->s->Write(req));
    ASSERT_TRUE(o->s->Read(&resp)) << "stream " << i << ": " << StatusText(o->s->Finish());
    EXPECT_FALSE(resp.results(0).has_error()) << resp.results(0).error().message();
    open.push_back(std::move(o));
  }
  {
    Open extra;
    test::SetDeadline(&extra.ctx);
    extra.s = h_->rewrap().RewrapStream(&extra.ctx);
    extra.s->Write(req);
    v1::RewrapResponse resp;
    EXPECT_FALSE(extra.s->Read(&resp));
    grpc::Status st = extra.s->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << StatusText(st);
    EXPECT_NE(st.error_message().find("max_streams_per_identity"), std::string::npos);
  }
  // Unary calls are not streams: still served.
  v1::RewrapResponse resp;
  ASSERT_TRUE(Call(req, &resp).ok());
  // Close one stream; a new one opens.
  open[0]->s->WritesDone();
  EXPECT_TRUE(open[0]->s->Finish().ok());
  open.erase(open.begin());
  bool reopened = false;
  for (int attempt = 0; attempt < 50 && !reopened; ++attempt) {  // the close is asynchronous
    Open again;
    test::SetDeadline(&again.ctx);
    again.s = h_->rewrap().RewrapStream(&again.ctx);
    again.s->Write(req);
    reopened = again.s->Read(&resp);
    again.s->WritesDone();
    again.s->Finish();
    if (!reopened) std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(reopened);
  for (auto& o : open) {
    o->s->WritesDone();
    o->s->Finish();
  }
}

// Streams that send batches and never read the answers hold a bounded amount of memory:
// past max_stream_buffer_bytes of unread answers a stream reads no further batch.
TEST_F(AbuseTest, StreamsThatNeverReadHoldBoundedMemory) {
#ifdef HSMREWRAP_ASAN
  GTEST_SKIP() << "under AddressSanitizer rewrapd's RSS is mostly its quarantine of freed "
                  "memory and shadow memory, not what it holds (scripts/test.sh runs this)";
#endif
  ASSERT_NO_FATAL_FAILURE(
      Start("  max_stream_buffer_bytes: 262144\n"
            "  max_streams_per_identity: 4\n"));
  // Batches of 1,000 items with 2 KB ids, all the same id: each answer is as large as its
  // request (the message does not repeat the id).
  v1::RewrapRequest req;
  const std::string id = RandomAscii(2048);
  for (int i = 0; i < 1000; ++i) Add(&req, id);
  const double before = RssMiB();
  constexpr int kStreams = 4, kBatches = 30;
  struct Open {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReaderWriter<v1::RewrapRequest, v1::RewrapResponse>> s;
    std::atomic<int> written{0};
  };
  std::vector<std::unique_ptr<Open>> open;
  std::vector<std::thread> writers;
  for (int i = 0; i < kStreams; ++i) {
    auto o = std::make_unique<Open>();
    o->s = h_->rewrap().RewrapStream(&o->ctx);
    Open* p = o.get();
    writers.emplace_back([p, &req] {
      for (int b = 0; b < kBatches; ++b) {
        if (!p->s->Write(req)) return;
        p->written++;
      }
    });
    open.push_back(std::move(o));
  }
  std::this_thread::sleep_for(8s);  // the server reads what it will read
  const double after = RssMiB();
  int written = 0;
  for (auto& o : open) written += o->written.load();
  // Unbounded, each stream takes 8 batches of 2 MB plus their 2 MB answers (~260 MiB for 8).
  // Unbounded (8 batches a stream in the engine, and gRPC reading ahead as far as its
  // BDP-grown windows allow), 4 streams took 330-430 MiB here; bounded, 35-60 MiB.
  EXPECT_LT(after - before, 100.0) << "rewrapd RSS " << before << " -> " << after << " MiB; "
                                   << written << " batches handed to gRPC by the clients";
  for (auto& o : open) o->ctx.TryCancel();
  for (auto& t : writers) t.join();
  for (auto& o : open) o->s->Finish();
}

// A right removed by a policy reload is gone for streams opened before it: the next batch
// ends the stream with PERMISSION_DENIED.
TEST_F(AbuseTest, OpenStreamLosesARightRemovedByReload) {
  ASSERT_NO_FATAL_FAILURE(Start(""));
  grpc::ClientContext ctx;
  test::SetDeadline(&ctx);
  auto s = h_->rewrap().RewrapStream(&ctx);
  v1::RewrapRequest req;
  Add(&req, "before");
  v1::RewrapResponse resp;
  ASSERT_TRUE(s->Write(req));
  ASSERT_TRUE(s->Read(&resp));
  ASSERT_FALSE(resp.results(0).has_error()) << resp.results(0).error().message();

  WriteFile(policy_, PolicyText("keys.read", ""), 0600);
  ASSERT_TRUE(h_->Signal(SIGHUP));
  bool reloaded = false;  // a new unary call is refused once the reload is in force
  for (int i = 0; i < 100 && !reloaded; ++i) {
    v1::RewrapResponse r;
    reloaded = Call(req, &r).error_code() == grpc::StatusCode::PERMISSION_DENIED;
    if (!reloaded) std::this_thread::sleep_for(50ms);
  }
  ASSERT_TRUE(reloaded) << "the reload did not take effect";

  req.mutable_items(0)->set_id("after");
  s->Write(req);
  const bool answered = s->Read(&resp);
  EXPECT_FALSE(answered) << "the open stream still rewrapped: "
                         << (resp.results_size() ? resp.results(0).error().message() : "");
  grpc::Status st = s->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << StatusText(st);
}

// A stream lives at most max_stream_lifetime_s, idle or not; it then ends UNAVAILABLE.
TEST_F(AbuseTest, StreamEndsAtItsMaximumLifetime) {
  ASSERT_NO_FATAL_FAILURE(Start("  max_stream_lifetime_s: 2\n"));
  grpc::ClientContext ctx;
  test::SetDeadline(&ctx, std::chrono::seconds(20));
  auto s = h_->rewrap().RewrapStream(&ctx);
  v1::RewrapRequest req;
  Add(&req, "one");
  v1::RewrapResponse resp;
  const auto t0 = Clock::now();
  ASSERT_TRUE(s->Write(req));
  ASSERT_TRUE(s->Read(&resp));
  EXPECT_FALSE(resp.results(0).has_error());
  EXPECT_FALSE(s->Read(&resp));  // idle: the server ends the stream
  const double took = std::chrono::duration<double>(Clock::now() - t0).count();
  grpc::Status st = s->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << StatusText(st);
  EXPECT_NE(st.error_message().find("max_stream_lifetime_s"), std::string::npos);
  EXPECT_GT(took, 1.5);
  EXPECT_LT(took, 10.0);
}

// Items of a call the caller cancelled, not started yet, never reach the token.
TEST_F(AbuseTest, CancelledCallsDoNotReachTheToken) {
  ASSERT_NO_FATAL_FAILURE(Start(""));
  v1::RewrapRequest req;
  Add(&req, "warm-up");  // the key has been used: its items count under its own name
  v1::RewrapResponse warm;
  ASSERT_TRUE(Call(req, &warm).ok());
  ASSERT_FALSE(warm.results(0).has_error()) << warm.results(0).error().message();
  req.Clear();
  for (int i = 0; i < 1000; ++i) Add(&req, "c" + std::to_string(i));
  constexpr int kCalls = 8;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::thread> callers;
  for (int c = 0; c < kCalls; ++c) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    test::SetDeadline(contexts.back().get());
    callers.emplace_back([this, &req, ctx = contexts.back().get()] {
      v1::RewrapResponse resp;
      h_->rewrap().Rewrap(ctx, req, &resp);
    });
  }
  std::this_thread::sleep_for(300ms);
  for (auto& ctx : contexts) ctx->TryCancel();  // the callers give up after 0.3 s
  for (auto& t : callers) t.join();
  // Every item is answered (counted) once its batch is done; wait for all of them.
  double total = 0;
  for (int i = 0; i < 600 && total < kCalls * 1000 + 1; ++i) {
    std::this_thread::sleep_for(100ms);
    total = ItemsWith("key=\"default\"");
  }
  ASSERT_EQ(total, kCalls * 1000 + 1);
  const double ok = ItemsWith("outcome=\"OK\"") - 1;
  const double cancelled = ItemsWith("outcome=\"CANCELLED\"");
  // At ~2,000 items/s on this token, 0.3 s lets well under half of the 8,000 items start.
  EXPECT_LT(ok, kCalls * 1000 / 2) << ok << " items ran after their callers had gone";
  EXPECT_EQ(ok + cancelled, kCalls * 1000);
}

}  // namespace
}  // namespace hsmrewrap::it
