// The timed phase: one gRPC callback reactor per stream, no threads of our own per stream.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "clients/rewrap-load/load.h"

namespace hsmrewrap::load {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kMaxSeconds = 24 * 3600;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

double CpuSeconds(const struct rusage& ru) {
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

double ClientCpu() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return CpuSeconds(ru);
}

// What every stream adds to; merged into the Report at the end.
struct Tally {
  std::vector<std::pair<uint32_t, uint32_t>> latencies;  // (batch latency in µs, items)
  std::map<std::string, uint64_t> errors, paths, tokens;
  uint64_t items = 0, ok_items = 0, batches = 0, error_items = 0, mismatches = 0, verified = 0;
  std::vector<std::string> notes;  // first few mismatch reasons / stream errors

  void Merge(const Tally& t) {
    latencies.insert(latencies.end(), t.latencies.begin(), t.latencies.end());
    for (const auto& [k, v] : t.errors) errors[k] += v;
    for (const auto& [k, v] : t.paths) paths[k] += v;
    for (const auto& [k, v] : t.tokens) tokens[k] += v;
    items += t.items, ok_items += t.ok_items, batches += t.batches, error_items += t.error_items;
    mismatches += t.mismatches, verified += t.verified;
    for (const auto& n : t.notes)
      if (notes.size() < 10) notes.push_back(n);
  }
};

class Runner;

class StreamReactor final : public grpc::ClientBidiReactor<v1::RewrapRequest, v1::RewrapResponse> {
 public:
  StreamReactor(Runner* runner, v1::Rewrap::Stub* stub, Clock::time_point deadline);
  void Start();
  // Queues one batch; `intended` is when it should have been sent (latency counts from it).
  void Enqueue(const v1::RewrapRequest* req, Clock::time_point intended);
  // No more batches will be enqueued (open loop end).
  void NoMore();
  size_t outstanding() {
    std::lock_guard<std::mutex> l(mu_);
    return sent_.size() + to_write_.size();
  }
  Tally TakeTally() {
    std::lock_guard<std::mutex> l(mu_);
    return std::move(tally_);
  }

  void OnWriteDone(bool ok) override;
  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& s) override;

 private:
  void WriteLocked();
  void MaybeCloseLocked();
  void SendNextClosedLoop();

  Runner* runner_;
  grpc::ClientContext ctx_;
  v1::Rewrap::Stub* stub_;
  std::mutex mu_;
  v1::RewrapResponse resp_;
  std::deque<std::pair<const v1::RewrapRequest*, Clock::time_point>> to_write_;  // guarded by mu_
  std::deque<std::pair<const v1::RewrapRequest*, Clock::time_point>> sent_;      // guarded by mu_
  bool writing_ = false, writes_done_ = false, no_more_ = false;                 // guarded by mu_
  Tally tally_;                                                                  // guarded by mu_
};

class Runner {
 public:
  Runner(const Options& o, const Workload& w) : o_(o), w_(w), per_second_(kMaxSeconds) {}

  Report Run(std::shared_ptr<grpc::Channel> channel);

  // Closed loop: the next batch to send, or null when the run is over.
  const v1::RewrapRequest* NextBatch() {
    if (stop_.load()) return nullptr;
    if (o_.items > 0 && started_.fetch_add(o_.batch) >= o_.items) {
      stop_.store(true);
      return nullptr;
    }
    return w_.batches[next_batch_.fetch_add(1) % w_.batches.size()].get();
  }
  bool open_loop() const { return o_.rate > 0; }

  // Called by a stream with a response (outside its lock).
  void Count(const v1::RewrapRequest& req, const v1::RewrapResponse& resp,
             Clock::time_point intended, Tally& tally_out, std::mutex& tally_mu);
  void CountStreamFailure(const v1::RewrapRequest& req, const grpc::Status& s, Tally& t) {
    t.errors[absl::StrCat("STREAM_", StatusName(s.error_code()))] +=
        static_cast<uint64_t>(req.items_size());
    t.error_items += static_cast<uint64_t>(req.items_size());
    t.items += static_cast<uint64_t>(req.items_size());
    outstanding_items_.fetch_sub(static_cast<uint64_t>(req.items_size()));
  }
  void StreamDone() {
    std::lock_guard<std::mutex> l(done_mu_);
    ++streams_done_;
    done_cv_.notify_all();
  }
  void Sent(size_t items) { outstanding_items_.fetch_add(items); }

  static std::string StatusName(grpc::StatusCode c) {
    static const char* kNames[] = {"OK",
                                   "CANCELLED",
                                   "UNKNOWN",
                                   "INVALID_ARGUMENT",
                                   "DEADLINE_EXCEEDED",
                                   "NOT_FOUND",
                                   "ALREADY_EXISTS",
                                   "PERMISSION_DENIED",
                                   "RESOURCE_EXHAUSTED",
                                   "FAILED_PRECONDITION",
                                   "ABORTED",
                                   "OUT_OF_RANGE",
                                   "UNIMPLEMENTED",
                                   "INTERNAL",
                                   "UNAVAILABLE",
                                   "DATA_LOSS",
                                   "UNAUTHENTICATED"};
    const int i = static_cast<int>(c);
    return i >= 0 && i < 17 ? kNames[i] : std::to_string(i);
  }

 private:
  void Progress(double t, bool final_line);

  const Options& o_;
  const Workload& w_;
  Clock::time_point start_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> started_{0}, next_batch_{0}, verify_seq_{0};
  std::atomic<uint64_t> done_items_{0}, error_items_{0}, outstanding_items_{0};
  std::atomic<int64_t> last_done_ns_{0};
  std::vector<std::atomic<uint64_t>> per_second_;
  std::mutex done_mu_;
  std::condition_variable done_cv_;
  unsigned streams_done_ = 0;  // guarded by done_mu_
  bool tty_ = false;
  double last_progress_t_ = 0;
  uint64_t last_progress_items_ = 0;
};

// ---------------------------------------------------------------------------------------

StreamReactor::StreamReactor(Runner* runner, v1::Rewrap::Stub* stub, Clock::time_point deadline)
    : runner_(runner), stub_(stub) {
  ctx_.set_deadline(
      std::chrono::system_clock::now() +
      std::chrono::duration_cast<std::chrono::system_clock::duration>(deadline - Clock::now()));
}

void StreamReactor::Start() {
  stub_->async()->RewrapStream(&ctx_, this);
  StartRead(&resp_);
  StartCall();
}

void StreamReactor::SendNextClosedLoop() {
  const v1::RewrapRequest* req = runner_->NextBatch();
  if (req == nullptr) {
    NoMore();
    return;
  }
  Enqueue(req, Clock::now());
}

void StreamReactor::Enqueue(const v1::RewrapRequest* req, Clock::time_point intended) {
  std::lock_guard<std::mutex> l(mu_);
  if (writes_done_) return;  // lost a race with the end of the run: not sent, not counted
  runner_->Sent(static_cast<size_t>(req->items_size()));
  to_write_.emplace_back(req, intended);
  if (!writing_) WriteLocked();
}

void StreamReactor::NoMore() {
  std::lock_guard<std::mutex> l(mu_);
  no_more_ = true;
  MaybeCloseLocked();
}

void StreamReactor::WriteLocked() {
  auto next = to_write_.front();
  to_write_.pop_front();
  sent_.push_back(next);
  writing_ = true;
  StartWrite(next.first);
}

void StreamReactor::MaybeCloseLocked() {
  if (no_more_ && !writes_done_ && !writing_ && to_write_.empty() && sent_.empty()) {
    writes_done_ = true;
    StartWritesDone();
  }
}

void StreamReactor::OnWriteDone(bool ok) {
  std::lock_guard<std::mutex> l(mu_);
  writing_ = false;
  if (!ok) return;  // the stream is broken; OnDone reports it
  if (!to_write_.empty()) {
    WriteLocked();
  } else {
    MaybeCloseLocked();
  }
}

void StreamReactor::OnReadDone(bool ok) {
  if (!ok) return;  // OnDone follows
  v1::RewrapResponse resp;
  resp.Swap(&resp_);
  std::pair<const v1::RewrapRequest*, Clock::time_point> batch;
  {
    std::lock_guard<std::mutex> l(mu_);
    batch = sent_.front();
    sent_.pop_front();
  }
  StartRead(&resp_);
  runner_->Count(*batch.first, resp, batch.second, tally_, mu_);
  if (!runner_->open_loop()) {
    SendNextClosedLoop();
  } else {
    std::lock_guard<std::mutex> l(mu_);
    MaybeCloseLocked();
  }
}

void StreamReactor::OnDone(const grpc::Status& s) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!s.ok()) {
      if (tally_.notes.size() < 10) {
        tally_.notes.push_back(absl::StrCat("stream ended: ", Runner::StatusName(s.error_code()),
                                            ": ", s.error_message()));
      }
      for (const auto& b : sent_) runner_->CountStreamFailure(*b.first, s, tally_);
      for (const auto& b : to_write_) runner_->CountStreamFailure(*b.first, s, tally_);
    }
    sent_.clear();
    to_write_.clear();
  }
  runner_->StreamDone();
}

// ---------------------------------------------------------------------------------------

void Runner::Count(const v1::RewrapRequest& req, const v1::RewrapResponse& resp,
                   Clock::time_point intended, Tally& t, std::mutex& mu) {
  const auto now = Clock::now();
  const auto lat_us = std::chrono::duration_cast<std::chrono::microseconds>(now - intended).count();
  const uint64_t n = static_cast<uint64_t>(req.items_size());
  // Verification first, outside the stream's lock (it is the expensive part).
  uint64_t verified = 0, mismatches = 0;
  std::string note;
  std::map<std::string, uint64_t> errs, paths, tokens;
  uint64_t ok_items = 0, err_items = 0;
  if (resp.results_size() != req.items_size()) {
    errs["WRONG_RESULT_COUNT"] += n;
    err_items = n;
    note = absl::StrCat("a batch of ", n, " items got ", resp.results_size(), " results");
  } else {
    for (int i = 0; i < resp.results_size(); ++i) {
      const v1::RewrapResult& r = resp.results(i);
      if (r.id() != req.items(i).id()) {
        errs["WRONG_ID"]++;
        err_items++;
        continue;
      }
      if (r.has_error()) {
        errs[v1::ItemError::Code_Name(r.error().code())]++;
        err_items++;
        if (note.empty())
          note = absl::StrCat("item error: ", v1::ItemError::Code_Name(r.error().code()), ": ",
                              r.error().message());
        continue;
      }
      paths[v1::Path_Name(r.path())]++;
      if (!r.token().empty()) tokens[r.token()]++;
      const uint64_t seq = verify_seq_.fetch_add(1);
      if (o_.verify_all || seq % std::max(1u, o_.verify_every) == 0) {
        size_t idx = 0;
        if (!absl::SimpleAtoi(r.id(), &idx) || idx >= w_.passwords.size()) {
          errs["MISMATCH"]++;
          mismatches++, err_items++;
          continue;
        }
        const std::string why = VerifyOutput(o_, w_.devices[idx % w_.devices.size()],
                                             w_.passwords[idx], r.ciphertext());
        verified++;
        if (!why.empty()) {
          errs["MISMATCH"]++;
          mismatches++, err_items++;
          if (note.empty()) note = absl::StrCat("item ", r.id(), ": ", why);
          continue;
        }
      }
      ok_items++;
    }
  }
  outstanding_items_.fetch_sub(n);
  done_items_.fetch_add(n);
  error_items_.fetch_add(err_items);
  const size_t sec = static_cast<size_t>(std::max(0.0, Seconds(now - start_)));
  per_second_[std::min(sec, kMaxSeconds - 1)].fetch_add(n);
  const int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(now - start_).count();
  int64_t prev = last_done_ns_.load();
  while (prev < ns && !last_done_ns_.compare_exchange_weak(prev, ns)) {
  }

  std::lock_guard<std::mutex> l(mu);
  t.latencies.emplace_back(static_cast<uint32_t>(std::min<int64_t>(lat_us, UINT32_MAX)),
                           static_cast<uint32_t>(n));
  t.items += n;
  t.batches++;
  t.ok_items += ok_items;
  t.error_items += err_items;
  t.verified += verified;
  t.mismatches += mismatches;
  for (const auto& [k, v] : errs) t.errors[k] += v;
  for (const auto& [k, v] : paths) t.paths[k] += v;
  for (const auto& [k, v] : tokens) t.tokens[k] += v;
  if (!note.empty() && t.notes.size() < 10) t.notes.push_back(std::move(note));
}

void Runner::Progress(double t, bool final_line) {
  if (!tty_) return;
  const uint64_t done = done_items_.load();
  const double dt = t - last_progress_t_;
  const double inst = dt > 0 ? static_cast<double>(done - last_progress_items_) / dt : 0;
  last_progress_t_ = t;
  last_progress_items_ = done;
  std::fprintf(
      stderr,
      "\r%6.1f s  %10llu items  %8.0f items/s now  %8.0f avg  in flight %6llu  errors %llu   %s", t,
      static_cast<unsigned long long>(done), inst, t > 0 ? static_cast<double>(done) / t : 0.0,
      static_cast<unsigned long long>(outstanding_items_.load()),
      static_cast<unsigned long long>(error_items_.load()), final_line ? "\n" : "");
  std::fflush(stderr);
}

LatencySummary Summarize(std::vector<std::pair<uint32_t, uint32_t>> lat, bool per_item) {
  LatencySummary s;
  if (lat.empty()) return s;
  std::sort(lat.begin(), lat.end());
  uint64_t total = 0;
  double sum = 0;
  for (const auto& [us, n] : lat) {
    const uint64_t w = per_item ? n : 1;
    total += w;
    sum += static_cast<double>(us) * static_cast<double>(w);
  }
  s.count = total;
  s.mean_ms = sum / static_cast<double>(total) / 1000.0;
  s.max_ms = lat.back().first / 1000.0;
  const double qs[] = {0.50, 0.90, 0.99, 0.999};
  double* outs[] = {&s.p50_ms, &s.p90_ms, &s.p99_ms, &s.p999_ms};
  for (int q = 0; q < 4; ++q) {
    const uint64_t rank = static_cast<uint64_t>(std::ceil(qs[q] * static_cast<double>(total)));
    uint64_t cum = 0;
    for (const auto& [us, n] : lat) {
      cum += per_item ? n : 1;
      if (cum >= rank) {
        *outs[q] = us / 1000.0;
        break;
      }
    }
  }
  return s;
}

std::vector<std::pair<double, uint64_t>> Histogram(
    const std::vector<std::pair<uint32_t, uint32_t>>& lat) {
  // Log-spaced buckets, 10 per decade, 0.01 ms .. 100 s; empty leading/trailing buckets trimmed.
  std::vector<std::pair<double, uint64_t>> h;
  for (int i = 0; i <= 70; ++i) h.emplace_back(0.01 * std::pow(10.0, i / 10.0), 0);
  for (const auto& [us, n] : lat) {
    const double ms = us / 1000.0;
    auto it = std::lower_bound(h.begin(), h.end(), ms,
                               [](const auto& b, double v) { return b.first < v; });
    if (it == h.end()) --it;
    it->second += n;
  }
  size_t first = 0, last = h.size();
  while (first < last && h[first].second == 0) ++first;
  while (last > first && h[last - 1].second == 0) --last;
  return std::vector<std::pair<double, uint64_t>>(h.begin() + static_cast<long>(first),
                                                  h.begin() + static_cast<long>(last));
}

Report Runner::Run(std::shared_ptr<grpc::Channel> channel) {
  Report rep;
  rep.options = o_;
  rep.prepare_s = w_.prepare_s;
  tty_ = o_.progress && isatty(STDERR_FILENO);
  auto stub = v1::Rewrap::NewStub(channel);

  double server_cpu0 = -1;
  if (o_.server_pid > 0 && ReadProcCpu(o_.server_pid, &server_cpu0)) {
    uint64_t rss = 0, hwm = 0;
    ReadProcMem(o_.server_pid, &rss, &hwm);
    rep.server_rss_kib_first = rss;
  }
  const double client_cpu0 = ClientCpu();
  start_ = Clock::now();
  const bool by_items = o_.items > 0;
  const auto deadline = start_ + std::chrono::seconds(static_cast<int64_t>(
                                     by_items ? 24 * 3600 : o_.duration_s + o_.timeout_s));

  std::vector<std::unique_ptr<StreamReactor>> streams;
  for (unsigned i = 0; i < o_.streams; ++i)
    streams.push_back(std::make_unique<StreamReactor>(this, stub.get(), deadline));
  for (auto& s : streams) s->Start();

  std::thread pacer;
  if (open_loop()) {
    // Open loop: batch k is due at start + k * batch / rate, whatever the service does.
    pacer = std::thread([&] {
      const double interval = static_cast<double>(o_.batch) / o_.rate;
      for (uint64_t k = 0;; ++k) {
        const auto due = start_ + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(k * interval));
        std::this_thread::sleep_until(due);
        if (stop_.load()) break;
        if (by_items && k * o_.batch >= o_.items) {
          stop_.store(true);
          break;
        }
        rep.scheduled_items += o_.batch;
        const double lag_ms = Seconds(Clock::now() - due) * 1000;
        rep.max_send_lag_ms = std::max(rep.max_send_lag_ms, lag_ms);
        if (outstanding_items_.load() + o_.batch > o_.max_outstanding) {
          rep.skipped_items += o_.batch;
          continue;
        }
        streams[k % streams.size()]->Enqueue(w_.batches[k % w_.batches.size()].get(), due);
      }
      for (auto& s : streams) s->NoMore();
    });
  } else {
    for (unsigned d = 0; d < std::max(1u, o_.depth); ++d) {
      for (auto& s : streams) {
        const v1::RewrapRequest* req = NextBatch();
        if (req == nullptr) break;
        s->Enqueue(req, Clock::now());
      }
    }
    if (stop_.load())
      for (auto& s : streams) s->NoMore();
  }

  // Main thread: stop condition, progress line and /proc samples.
  auto next_sample = start_;
  for (;;) {
    {
      std::unique_lock<std::mutex> l(done_mu_);
      if (done_cv_.wait_for(l, std::chrono::milliseconds(100),
                            [&] { return streams_done_ == streams.size(); }))
        break;
    }
    const auto now = Clock::now();
    const double t = Seconds(now - start_);
    if (!by_items && t >= o_.duration_s && !stop_.exchange(true)) {
      if (!open_loop())
        for (auto& s : streams) s->NoMore();
    }
    if (now >= next_sample) {
      next_sample += std::chrono::seconds(1);
      if (o_.server_pid > 0) {
        ProcSample ps;
        ps.t_s = t;
        uint64_t hwm = 0;
        if (ReadProcCpu(o_.server_pid, &ps.server_cpu_s) &&
            ReadProcMem(o_.server_pid, &ps.rss_kib, &hwm)) {
          ps.server_cpu_s -= server_cpu0;
          rep.proc_series.push_back(ps);
          rep.server_rss_kib_max = std::max(rep.server_rss_kib_max, ps.rss_kib);
        }
      }
      Progress(t, false);
    }
  }
  if (pacer.joinable()) pacer.join();
  const auto end = Clock::now();
  rep.client_cpu_s = ClientCpu() - client_cpu0;
  if (server_cpu0 >= 0) {
    double cpu = 0;
    uint64_t rss = 0, hwm = 0;
    if (ReadProcCpu(o_.server_pid, &cpu)) rep.server_cpu_s = cpu - server_cpu0;
    if (ReadProcMem(o_.server_pid, &rss, &hwm)) {
      rep.server_rss_kib_last = rss;
      rep.server_vmhwm_kib = hwm;
      rep.server_rss_kib_max = std::max(rep.server_rss_kib_max, rss);
    }
  }
  Progress(Seconds(end - start_), true);

  Tally all;
  for (auto& s : streams) all.Merge(s->TakeTally());
  const int64_t last_ns = last_done_ns_.load();
  rep.elapsed_s = last_ns > 0 ? static_cast<double>(last_ns) / 1e9 : Seconds(end - start_);
  rep.items = all.items;
  rep.ok_items = all.ok_items;
  rep.batches = all.batches;
  rep.error_items = all.error_items;
  rep.mismatches = all.mismatches;
  rep.verified = all.verified;
  rep.errors = all.errors;
  rep.paths = all.paths;
  rep.tokens = all.tokens;
  rep.stream_errors = all.notes;
  // Rates count only answered items (stream failures are counted as errors, not as work).
  const uint64_t answered = done_items_.load();
  rep.items_per_s = rep.elapsed_s > 0 ? static_cast<double>(answered) / rep.elapsed_s : 0;
  rep.batches_per_s = rep.elapsed_s > 0 ? static_cast<double>(all.batches) / rep.elapsed_s : 0;
  rep.item_latency = Summarize(all.latencies, true);
  rep.batch_latency = Summarize(all.latencies, false);
  rep.latency_histogram = Histogram(all.latencies);
  const size_t secs = std::min(kMaxSeconds, static_cast<size_t>(std::ceil(Seconds(end - start_))));
  for (size_t i = 0; i < secs; ++i) rep.items_per_second.push_back(per_second_[i].load());
  if (open_loop()) {
    rep.behind = rep.skipped_items > 0 || rep.items_per_s < 0.95 * o_.rate;
  }
  return rep;
}

}  // namespace

Report Run(const Options& options, const Workload& work, std::shared_ptr<grpc::Channel> channel) {
  Runner runner(options, work);
  return runner.Run(std::move(channel));
}

bool ReadProcCpu(pid_t pid, double* cpu_s) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  if (!std::getline(in, line)) return false;
  // Fields after the ")" that ends comm: state is field 3; utime 14, stime 15.
  const size_t p = line.rfind(')');
  if (p == std::string::npos) return false;
  std::istringstream ss(line.substr(p + 2));
  std::string f;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && ss >> f; ++i) {
    if (i == 14) utime = std::stoull(f);
    if (i == 15) stime = std::stoull(f);
  }
  *cpu_s = static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
  return true;
}

bool ReadProcMem(pid_t pid, uint64_t* rss_kib, uint64_t* hwm_kib) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  if (!in) return false;
  std::string line;
  bool found = false;
  while (std::getline(in, line)) {
    unsigned long long v = 0;
    if (std::sscanf(line.c_str(), "VmRSS: %llu kB", &v) == 1) *rss_kib = v, found = true;
    if (std::sscanf(line.c_str(), "VmHWM: %llu kB", &v) == 1) *hwm_kib = v;
  }
  return found;
}

}  // namespace hsmrewrap::load
