#include "clients/rewrap-connector/connector.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <istream>
#include <mutex>
#include <ostream>
#include <queue>
#include <random>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "crypto/encoding.h"
#include "hsmrewrap/v1/rewrap.grpc.pb.h"
#include "proto/conversions.h"

namespace hsmrewrap::connector {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

// Lower case without '-' and '_': "oaep_SHA-512" -> "oaepsha512".
std::string Fold(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c != '-' && c != '_' && c != ' ')
      out.push_back(absl::ascii_tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

// A field that is base64 DER, or PEM text ("-----BEGIN"), as bytes for the API.
absl::StatusOr<std::string> DerOrPem(const json& v, const char* field) {
  if (!v.is_string()) return absl::InvalidArgumentError(absl::StrCat(field, " must be a string"));
  const std::string& s = v.get_ref<const std::string&>();
  if (s.find("-----BEGIN") != std::string::npos) return s;
  auto der = crypto::Base64Decode(s);
  if (!der.ok() || der->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(field, " is neither base64 DER nor PEM"));
  }
  return std::string(der->begin(), der->end());
}

absl::StatusOr<std::string> Base64Field(const json& obj, const char* field, bool required) {
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null()) {
    if (required) return absl::InvalidArgumentError(absl::StrCat(field, " is missing"));
    return std::string();
  }
  if (!it->is_string())
    return absl::InvalidArgumentError(absl::StrCat(field, " must be a base64 string"));
  auto b = crypto::Base64Decode(it->get_ref<const std::string&>());
  if (!b.ok()) return absl::InvalidArgumentError(absl::StrCat(field, " is not valid base64"));
  if (required && b->empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is empty"));
  return std::string(b->begin(), b->end());
}

absl::StatusOr<std::string> StringField(const json& obj, const char* field) {
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null())
    return absl::InvalidArgumentError(absl::StrCat(field, " is missing"));
  if (!it->is_string()) return absl::InvalidArgumentError(absl::StrCat(field, " must be a string"));
  return it->get<std::string>();
}

bool Retryable(grpc::StatusCode c) {
  return c == grpc::StatusCode::UNAVAILABLE || c == grpc::StatusCode::DEADLINE_EXCEEDED ||
         c == grpc::StatusCode::RESOURCE_EXHAUSTED || c == grpc::StatusCode::ABORTED;
}

std::string GrpcCodeName(grpc::StatusCode c) {
  switch (c) {
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    default:
      return absl::StrCat("GRPC_", static_cast<int>(c));
  }
}

// ---------------------------------------------------------------------------------------
// The job

// One input line on its way through.
struct Work {
  uint64_t seq = 0;     // 0-based number among non-empty lines; the wire id
  uint64_t lineno = 0;  // 1-based input line number (for messages)
  ojson id;             // the caller's id (null when absent)
  v1::RewrapItem item;
  ojson record;  // --reseal: the input record
  int attempts = 0;
  Clock::time_point not_before{};
  std::string last_code, last_message;
};
using WorkPtr = std::unique_ptr<Work>;

struct RetryLater {
  bool operator()(const WorkPtr& a, const WorkPtr& b) const {
    return a->not_before > b->not_before;
  }
};

class Job {
 public:
  Job(const Options& o, const std::vector<std::shared_ptr<grpc::Channel>>& channels,
      std::istream& in, std::ostream& out, std::ostream* errors)
      : o_(o), in_(in), out_(out), errors_(errors), rng_(std::random_device{}()) {
    for (const auto& ch : channels) stubs_.push_back(v1::Rewrap::NewStub(ch));
    down_until_.assign(stubs_.size(), Clock::time_point{});
    window_ = o_.window ? o_.window : std::max<size_t>(o_.batch * o_.streams * o_.inflight * 2, 64);
  }

  absl::StatusOr<Summary> Run() {
    start_ = Clock::now();
    std::thread reader([this] { ReadInput(); });
    std::vector<std::thread> workers;
    for (size_t i = 0; i < o_.streams; ++i) workers.emplace_back([this, i] { StreamWorker(i); });
    std::thread progress;
    if (o_.progress) progress = std::thread([this] { Progress(); });
    reader.join();
    for (auto& w : workers) w.join();
    {
      std::lock_guard<std::mutex> l(mu_);
      all_done_ = true;
    }
    cv_.notify_all();
    if (progress.joinable()) progress.join();
    out_.flush();
    if (errors_) errors_->flush();
    std::lock_guard<std::mutex> l(mu_);
    summary_.seconds = std::chrono::duration<double>(Clock::now() - start_).count();
    if (!read_error_.empty()) return absl::DataLossError(read_error_);
    return summary_;
  }

 private:
  // --- input ----------------------------------------------------------------------------
  void ReadInput() {
    std::string line;
    uint64_t seq = 0;
    uint64_t lineno = 0;
    while (std::getline(in_, line)) {
      ++lineno;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      {  // the window: never more than window_ lines between the writer and the reader
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return seq - next_write_ < window_; });
        ++summary_.total;
      }
      auto w = std::make_unique<Work>();
      w->seq = seq++;
      w->lineno = lineno;
      absl::Status st = Parse(line, *w);
      if (!st.ok()) {
        Complete(std::move(w), "INVALID_ITEM", std::string(st.message()));
        continue;
      }
      w->item.set_id(absl::StrCat(w->seq));
      std::lock_guard<std::mutex> l(mu_);
      ready_.push_back(std::move(w));
      cv_.notify_all();
    }
    std::lock_guard<std::mutex> l(mu_);
    if (in_.bad()) read_error_ = "reading the input failed";
    input_done_ = true;
    cv_.notify_all();
  }

  absl::Status Parse(const std::string& line, Work& w) {
    if (o_.reseal) {
      ojson rec = ojson::parse(line, nullptr, /*allow_exceptions=*/false);
      if (rec.is_discarded() || !rec.is_object()) {
        return absl::InvalidArgumentError(
            "the line is not a JSON object (one userPFXCertificate record per line)");
      }
      if (rec.contains("id") && !rec["id"].is_null()) {
        w.id = rec["id"];
      } else if (rec.contains("thumbprint") && rec["thumbprint"].is_string()) {
        w.id = rec["thumbprint"].get<std::string>();
      }
      auto item = ParseResealRecord(rec, o_);
      if (!item.ok()) return item.status();
      w.item = *std::move(item);
      w.record = std::move(rec);
      return absl::OkStatus();
    }
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object())
      return absl::InvalidArgumentError("the line is not a JSON object");
    if (j.contains("id")) w.id = ojson::parse(j["id"].dump());
    if (w.id.is_null()) return absl::InvalidArgumentError("id is missing");
    auto item = ParseRequest(j, o_);
    if (!item.ok()) return item.status();
    w.item = *std::move(item);
    return absl::OkStatus();
  }

  // --- output (in input order) ----------------------------------------------------------
  void CompleteOk(WorkPtr w, const v1::RewrapResult& r) {
    std::string line;
    if (o_.reseal) {
      ojson rec = std::move(w->record);
      rec["keyName"] = o_.reseal_to;
      rec["paddingScheme"] = PaddingSchemeName(o_.reseal_padding);
      rec["encryptedPfxPassword"] = crypto::Base64Encode(absl::MakeConstSpan(
          reinterpret_cast<const uint8_t*>(r.ciphertext().data()), r.ciphertext().size()));
      line = rec.dump();
    } else {
      ojson j = {{"id", w->id},
                 {"output", crypto::Base64Encode(absl::MakeConstSpan(
                                reinterpret_cast<const uint8_t*>(r.ciphertext().data()),
                                r.ciphertext().size()))},
                 {"path", v1::Path_Name(r.path())}};
      if (!r.token().empty()) j["token"] = r.token();  // which token (HSM) ran it
      line = j.dump();
    }
    Emit(w->seq, std::move(line), /*failed=*/false, "");
  }

  void Complete(WorkPtr w, const std::string& code, const std::string& message) {
    const uint64_t lineno = w->lineno;
    ojson j = {{"id", w->id},
               {"error", {{"code", code}, {"message", message}}},
               {"path", "PATH_UNSPECIFIED"},
               {"line", lineno},
               {"attempts", w->attempts}};
    Emit(w->seq, j.dump(), /*failed=*/true, code);
  }

  void Emit(uint64_t seq, std::string line, bool failed, const std::string& code) {
    std::lock_guard<std::mutex> l(mu_);
    if (failed) {
      ++summary_.failed;
      ++summary_.failed_by_code[code];
    } else {
      ++summary_.done;
    }
    pending_out_.emplace(seq, std::make_pair(std::move(line), failed));
    bool advanced = false;
    for (auto it = pending_out_.find(next_write_); it != pending_out_.end();
         it = pending_out_.find(next_write_)) {
      std::ostream& os = (it->second.second && errors_) ? *errors_ : out_;
      os << it->second.first << '\n';
      pending_out_.erase(it);
      ++next_write_;
      advanced = true;
    }
    if (advanced) cv_.notify_all();
  }

  // --- retry ----------------------------------------------------------------------------
  std::chrono::milliseconds Backoff(int attempts) {
    // Exponential with "equal jitter": half fixed, half random.
    int64_t b = o_.backoff_base.count() << std::min(attempts - 1, 16);
    b = std::min<int64_t>(b, o_.backoff_max.count());
    std::uniform_int_distribution<int64_t> d(0, std::max<int64_t>(b / 2, 1));
    return std::chrono::milliseconds(b / 2 + d(rng_));  // rng_ guarded by mu_
  }

  // Puts `w` back for another try, or completes it with the error when it has had all its
  // attempts. `stream_level` counts it as resent (its stream broke) rather than retried.
  void RetryOrFail(WorkPtr w, const std::string& code, const std::string& message,
                   bool stream_level) {
    if (w->attempts >= o_.max_attempts) {
      Complete(std::move(w), code,
               absl::StrCat(message, " (gave up after ", o_.max_attempts, " attempts)"));
      return;
    }
    std::lock_guard<std::mutex> l(mu_);
    if (stream_level)
      ++summary_.resent;
    else
      ++summary_.item_retries;
    w->last_code = code;
    w->last_message = message;
    w->not_before = Clock::now() + Backoff(w->attempts);
    retry_.push(std::move(w));
    cv_.notify_all();
  }

  // --- the streams ----------------------------------------------------------------------
  struct Batch {
    std::vector<WorkPtr> items;
    Clock::time_point sent;
  };

  // Takes up to o_.batch items (due retries first). Returns false when the job is over or
  // when `stop` (polled at least every 200 ms, under mu_) says the caller must stop waiting.
  template <typename Stop>
  bool TakeBatch(std::vector<WorkPtr>* out, Stop stop) {
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      const auto now = Clock::now();
      while (out->size() < o_.batch && !retry_.empty() && retry_.top()->not_before <= now) {
        out->push_back(std::move(const_cast<WorkPtr&>(retry_.top())));
        retry_.pop();
      }
      while (out->size() < o_.batch && !ready_.empty()) {
        out->push_back(std::move(ready_.front()));
        ready_.pop_front();
      }
      if (!out->empty()) {
        cv_.notify_all();
        return true;
      }
      if (input_done_ && next_write_ == summary_.total) return false;
      if (stop()) return false;
      if (!retry_.empty()) {
        cv_.wait_until(l, std::min(retry_.top()->not_before, now + std::chrono::milliseconds(200)));
      } else {
        cv_.wait_for(l, std::chrono::milliseconds(200));
      }
    }
  }

  bool JobOver() {
    std::lock_guard<std::mutex> l(mu_);
    return input_done_ && next_write_ == summary_.total;
  }

  void StreamWorker(size_t index) {
    int consecutive_failures = 0;
    std::vector<WorkPtr> carry;  // taken but not yet sent (the stream broke first)
    // Streams start spread over the replicas; every new stream (after a failure or a
    // rotation) goes to the next replica, so a retry lands on another one.
    size_t target = index % stubs_.size();
    bool first = true;
    while (!JobOver() || !carry.empty()) {
      if (!first) target = NextTarget(target);
      first = false;
      // One stream's lifetime.
      grpc::ClientContext ctx;
      auto stream = stubs_[target]->RewrapStream(&ctx);
      std::atomic<bool> closing{false};  // we sent WritesDone: the end is ours
      std::mutex smu;                    // guards inflight, broken
      std::condition_variable scv;
      std::deque<Batch> inflight;
      std::atomic<bool> broken{false}, deadline_hit{false};
      bool any_response = false;
      // Polled while waiting for work: the stream broke, or the oldest batch is overdue.
      auto stop = [&]() -> bool {
        std::lock_guard<std::mutex> g(smu);
        if (!deadline_hit && CheckDeadline(inflight)) {
          deadline_hit = true;
          ctx.TryCancel();
        }
        return broken.load();
      };

      std::thread reader([&] {
        v1::RewrapResponse resp;
        while (stream->Read(&resp)) {
          Batch b;
          {
            std::lock_guard<std::mutex> g(smu);
            if (inflight.empty()) break;  // a response we did not ask for: treat as broken
            b = std::move(inflight.front());
            inflight.pop_front();
            any_response = true;
          }
          scv.notify_all();
          HandleResponse(std::move(b), resp);
        }
        {
          std::lock_guard<std::mutex> g(smu);
          broken = true;
        }
        scv.notify_all();
        cv_.notify_all();               // a writer waiting in TakeBatch
        if (!closing) ctx.TryCancel();  // a writer blocked in Write
      });

      bool over = false, rotate = false;
      size_t sent_batches = 0;
      const auto opened = Clock::now();
      for (;;) {
        if (sent_batches >= kRotateAfterBatches || Clock::now() - opened > kRotateAfter) {
          // Close this stream and open another, so that round robin spreads the streams
          // over replicas that became ready later (or came back).
          rotate = true;
          break;
        }
        std::vector<WorkPtr> items = std::move(carry);
        carry.clear();
        if (items.empty() && !TakeBatch(&items, stop)) {
          over = !broken;
          break;
        }
        // Wait for room on this stream (and watch the deadline of the oldest batch).
        std::unique_lock<std::mutex> g(smu);
        while (!broken && inflight.size() >= o_.inflight) {
          if (!deadline_hit && CheckDeadline(inflight)) {
            deadline_hit = true;
            ctx.TryCancel();
          }
          scv.wait_for(g, std::chrono::milliseconds(100));
        }
        if (broken) {
          carry = std::move(items);
          break;
        }
        v1::RewrapRequest req;
        for (auto& w : items) {
          ++w->attempts;
          *req.add_items() = w->item;
        }
        inflight.push_back(Batch{std::move(items), Clock::now()});
        ++sent_batches;
        g.unlock();
        if (!stream->Write(req)) {
          std::lock_guard<std::mutex> g2(smu);
          broken = true;
          break;
        }
      }
      if (over || rotate) {
        // No more work (or time to rotate): wait for our outstanding batches, then close
        // our side.
        std::unique_lock<std::mutex> g(smu);
        while (!broken && !inflight.empty()) {
          if (!deadline_hit && CheckDeadline(inflight)) {
            deadline_hit = true;
            ctx.TryCancel();
          }
          scv.wait_for(g, std::chrono::milliseconds(100));
        }
        g.unlock();
        closing = true;
        stream->WritesDone();
      }
      reader.join();
      grpc::Status st = stream->Finish();
      // Whatever is still in flight on this stream goes back to the queue.
      std::deque<Batch> lost = std::move(inflight);
      if (lost.empty()) {
        if (over) break;
        if (st.ok()) {
          consecutive_failures = 0;
          continue;
        }
      }
      grpc::StatusCode code = deadline_hit ? grpc::StatusCode::DEADLINE_EXCEEDED : st.error_code();
      std::string msg = deadline_hit
                            ? absl::StrCat("no answer within --deadline ", o_.deadline_s, " s")
                            : absl::StrCat("stream failed: ", st.error_message());
      if (code == grpc::StatusCode::OK || code == grpc::StatusCode::CANCELLED) {
        code = grpc::StatusCode::UNAVAILABLE;  // our TryCancel after a broken Write
      }
      size_t n_lost = 0;
      for (const auto& b : lost) n_lost += b.items.size();
      {
        std::lock_guard<std::mutex> l(mu_);
        if (++summary_.stream_failures <= kMaxStreamFailureLogs) {
          std::fprintf(stderr,
                       "rewrap-connector: stream %zu (replica %zu): %s: %s; %zu in-flight items go "
                       "back to the queue\n",
                       index, target, GrpcCodeName(code).c_str(), msg.c_str(), n_lost);
        }
      }
      for (auto& b : lost) {
        for (auto& w : b.items) {
          if (Retryable(code)) {
            RetryOrFail(std::move(w), GrpcCodeName(code), msg, /*stream_level=*/true);
          } else {
            Complete(std::move(w), GrpcCodeName(code), msg);
          }
        }
      }
      consecutive_failures = any_response ? 1 : consecutive_failures + 1;
      if (!any_response) MarkDown(target, consecutive_failures);
      std::chrono::milliseconds pause;
      {
        std::lock_guard<std::mutex> l(mu_);
        pause = Backoff(consecutive_failures);
      }
      std::this_thread::sleep_for(pause);
    }
  }

  // The replica after `current` that is not marked down (or simply the next one when all are).
  size_t NextTarget(size_t current) {
    std::lock_guard<std::mutex> l(mu_);
    const auto now = Clock::now();
    for (size_t k = 1; k <= stubs_.size(); ++k) {
      const size_t t = (current + k) % stubs_.size();
      if (down_until_[t] <= now) return t;
    }
    return (current + 1) % stubs_.size();
  }

  // A stream to `target` failed before any answer: skip that replica for a while
  // (1 s, doubling with consecutive failures, at most 30 s).
  void MarkDown(size_t target, int failures) {
    std::lock_guard<std::mutex> l(mu_);
    const auto d = std::chrono::seconds(std::min(30, 1 << std::min(failures - 1, 5)));
    down_until_[target] = std::max(down_until_[target], Clock::now() + d);
  }

  bool CheckDeadline(const std::deque<Batch>& inflight) {
    if (inflight.empty() || o_.deadline_s <= 0) return false;
    return Clock::now() - inflight.front().sent > std::chrono::duration_cast<Clock::duration>(
                                                      std::chrono::duration<double>(o_.deadline_s));
  }

  void HandleResponse(Batch b, const v1::RewrapResponse& resp) {
    // Results come in request order, one per item; match by id all the same.
    std::unordered_map<std::string, const v1::RewrapResult*> by_id;
    for (const auto& r : resp.results()) by_id.emplace(r.id(), &r);
    for (auto& w : b.items) {
      auto it = by_id.find(w->item.id());
      if (it == by_id.end()) {
        RetryOrFail(std::move(w), "INTERNAL", "the service sent no result for this item", false);
        continue;
      }
      const v1::RewrapResult& r = *it->second;
      if (!r.has_error()) {
        CompleteOk(std::move(w), r);
        continue;
      }
      const auto code = r.error().code();
      const std::string name = v1::ItemError::Code_Name(code);
      if (code == v1::ItemError::UNAVAILABLE || code == v1::ItemError::RESOURCE_EXHAUSTED) {
        RetryOrFail(std::move(w), name, r.error().message(), false);
      } else {
        Complete(std::move(w), name, r.error().message());
      }
    }
  }

  void Progress() {
    std::unique_lock<std::mutex> l(mu_);
    while (!all_done_) {
      cv_.wait_for(l, std::chrono::seconds(1));
      const double s = std::chrono::duration<double>(Clock::now() - start_).count();
      std::fprintf(
          stderr,
          "\rrewrap-connector: %llu read, %llu done, %llu failed, %llu retries, %.0f items/s   ",
          static_cast<unsigned long long>(summary_.total),
          static_cast<unsigned long long>(summary_.done),
          static_cast<unsigned long long>(summary_.failed),
          static_cast<unsigned long long>(summary_.item_retries + summary_.resent),
          s > 0 ? static_cast<double>(summary_.done + summary_.failed) / s : 0.0);
    }
    std::fprintf(stderr, "\n");
  }

  // A stream is closed and replaced after this many batches or this long (whichever
  // comes first): a new stream is a new round-robin pick.
  static constexpr size_t kRotateAfterBatches = 64;
  static constexpr uint64_t kMaxStreamFailureLogs = 20;
  static constexpr std::chrono::seconds kRotateAfter{1};

  const Options o_;
  std::vector<std::unique_ptr<v1::Rewrap::Stub>> stubs_;  // one per replica
  std::istream& in_;
  std::ostream& out_;
  std::ostream* errors_;
  size_t window_;
  Clock::time_point start_;

  std::mutex mu_;  // guards everything below
  std::condition_variable cv_;
  std::mt19937_64 rng_;
  std::vector<Clock::time_point> down_until_;  // per replica: skip it until then
  std::deque<WorkPtr> ready_;
  std::priority_queue<WorkPtr, std::vector<WorkPtr>, RetryLater> retry_;
  std::map<uint64_t, std::pair<std::string, bool>> pending_out_;  // seq -> (line, failed)
  uint64_t next_write_ = 0;
  bool input_done_ = false, all_done_ = false;
  std::string read_error_;
  Summary summary_;
};

}  // namespace

// ---------------------------------------------------------------------------------------
// Names

absl::StatusOr<v1::Padding> ParsePaddingScheme(const json& value) {
  if (value.is_number_integer()) {
    switch (value.get<int>()) {
      case 0:
      case 5:
        return v1::OAEP_SHA512;
      case 1:
        return v1::PKCS1;
      case 2:
        return v1::OAEP_SHA1;
      case 3:
        return v1::OAEP_SHA256;
      case 4:
        return v1::OAEP_SHA384;
      default:
        break;
    }
    return absl::InvalidArgumentError(absl::StrCat("paddingScheme ", value.dump(), " is not 0..5"));
  }
  if (!value.is_string()) return absl::InvalidArgumentError("paddingScheme must be a string");
  const std::string f = Fold(value.get<std::string>());
  if (f == "oaepsha256") return v1::OAEP_SHA256;
  if (f == "oaepsha384") return v1::OAEP_SHA384;
  if (f == "oaepsha512" || f == "none") return v1::OAEP_SHA512;
  if (f == "oaepsha1") return v1::OAEP_SHA1;
  if (f == "pkcs1") return v1::PKCS1;
  return absl::InvalidArgumentError(
      absl::StrCat("paddingScheme '", value.get<std::string>(),
                   "' is not one of oaepSha256, oaepSha384, oaepSha512, "
                   "oaepSha1, pkcs1, none"));
}

std::string PaddingSchemeName(v1::Padding p) {
  crypto::RsaPadding r = crypto::RsaPadding::kOaepSha512;  // unset: the module's default
  proto_crypto::PaddingFromProto(p, &r);
  return proto_crypto::PaddingSchemeName(r);
}

absl::StatusOr<v1::OutputFormat> ParseFormat(const std::string& name) {
  const std::string f = Fold(name);
  if (f.empty() || f == "cms" || f == "cmsenveloped") return v1::CMS_ENVELOPED;
  if (f == "cmspkcs1" || f == "cmsenvelopedpkcs1") return v1::CMS_ENVELOPED_PKCS1;
  if (f == "rsaoaepsha256") return v1::RSA_OAEP_SHA256;
  if (f == "rsaoaepsha1") return v1::RSA_OAEP_SHA1;
  if (f == "rsaoaepsha384") return v1::RSA_OAEP_SHA384;
  if (f == "rsaoaepsha512") return v1::RSA_OAEP_SHA512;
  if (f == "rsapkcs1") return v1::RSA_PKCS1;
  if (f == "apple" || f == "appleencryptedpayload") return v1::APPLE_ENCRYPTED_PAYLOAD;
  return absl::InvalidArgumentError(
      absl::StrCat("format '", name,
                   "' is not one of cms, cmsPkcs1, rsaOaepSha256, rsaOaepSha1, rsaOaepSha384, "
                   "rsaOaepSha512, rsaPkcs1, apple"));
}

absl::StatusOr<v1::ContentCipher> ParseContentCipher(const std::string& name) {
  const std::string f = Fold(name);
  if (f.empty() || f == "aes256" || f == "aes256cbc") return v1::AES_256_CBC;
  if (f == "aes128" || f == "aes128cbc") return v1::AES_128_CBC;
  if (f == "3des" || f == "des3" || f == "desede3" || f == "desede3cbc") return v1::DES_EDE3_CBC;
  return absl::InvalidArgumentError(
      absl::StrCat("contentCipher '", name, "' is not one of aes256, aes128, 3des"));
}

absl::StatusOr<v1::RewrapItem> ParseRequest(const json& j, const Options& options) {
  v1::RewrapItem item;
  auto key = StringField(j, "keyName");
  if (!key.ok()) return key.status();
  item.set_key_name(*key);
  if (!j.contains("paddingScheme")) return absl::InvalidArgumentError("paddingScheme is missing");
  auto padding = ParsePaddingScheme(j["paddingScheme"]);
  if (!padding.ok()) return padding.status();
  item.set_padding(*padding);
  auto ct = Base64Field(j, "encryptedPfxPassword", true);
  if (!ct.ok()) return ct.status();
  item.set_ciphertext(*std::move(ct));
  const bool has_cert = j.contains("deviceCertificate") && !j["deviceCertificate"].is_null();
  const bool has_key = j.contains("devicePublicKey") && !j["devicePublicKey"].is_null();
  if (has_cert == has_key) {
    return absl::InvalidArgumentError("give exactly one of deviceCertificate and devicePublicKey");
  }
  if (has_cert) {
    auto c = DerOrPem(j["deviceCertificate"], "deviceCertificate");
    if (!c.ok()) return c.status();
    item.mutable_recipient()->set_certificate(*std::move(c));
  } else {
    auto k = DerOrPem(j["devicePublicKey"], "devicePublicKey");
    if (!k.ok()) return k.status();
    item.mutable_recipient()->set_public_key(*std::move(k));
  }
  std::string format;
  if (j.contains("format") && !j["format"].is_null()) {
    if (!j["format"].is_string()) return absl::InvalidArgumentError("format must be a string");
    format = j["format"].get<std::string>();
  }
  auto f = ParseFormat(format);
  if (!f.ok()) return f.status();
  item.set_format(*f);
  item.set_content_cipher(options.default_cipher);
  if (j.contains("contentCipher") && !j["contentCipher"].is_null()) {
    if (!j["contentCipher"].is_string())
      return absl::InvalidArgumentError("contentCipher must be a string");
    auto c = ParseContentCipher(j["contentCipher"].get<std::string>());
    if (!c.ok()) return c.status();
    item.set_content_cipher(*c);
  }
  // The device's subjectKeyIdentifier, for a devicePublicKey recipient: hex as certificates
  // print it (colons and spaces allowed).
  if (j.contains("recipientKeyId") && !j["recipientKeyId"].is_null()) {
    if (!j["recipientKeyId"].is_string())
      return absl::InvalidArgumentError("recipientKeyId must be a hex string");
    std::string hex;
    for (char c : j["recipientKeyId"].get<std::string>()) {
      if (c != ':' && c != ' ') hex.push_back(c);
    }
    bool is_hex = !hex.empty() && hex.size() % 2 == 0;
    for (char c : hex) is_hex = is_hex && absl::ascii_isxdigit(static_cast<unsigned char>(c));
    if (!is_hex) {
      return absl::InvalidArgumentError(
          "recipientKeyId must be hex (e.g. 3A:7F:...: the device certificate's "
          "subjectKeyIdentifier)");
    }
    item.set_recipient_key_id(absl::HexStringToBytes(hex));
  }
  // The PFX for the Apple payload: "pfx", or the Graph record's "encryptedPfxBlob".
  for (const char* field : {"pfx", "encryptedPfxBlob"}) {
    auto pfx = Base64Field(j, field, false);
    if (!pfx.ok()) return pfx.status();
    if (!pfx->empty()) {
      item.set_pfx(*std::move(pfx));
      break;
    }
  }
  if (*f != v1::APPLE_ENCRYPTED_PAYLOAD)
    item.clear_pfx();  // a record's blob is not for other formats
  if (*f == v1::APPLE_ENCRYPTED_PAYLOAD && item.pfx().empty()) {
    return absl::InvalidArgumentError("format apple needs the PFX in pfx (base64)");
  }
  return item;
}

absl::StatusOr<v1::RewrapItem> ParseResealRecord(const ojson& rec, const Options& options) {
  json j = json::parse(rec.dump());
  v1::RewrapItem item;
  auto key = StringField(j, "keyName");
  if (!key.ok()) return key.status();
  item.set_key_name(*key);
  v1::Padding padding = v1::OAEP_SHA512;  // the module's default when absent
  if (j.contains("paddingScheme") && !j["paddingScheme"].is_null()) {
    auto p = ParsePaddingScheme(j["paddingScheme"]);
    if (!p.ok()) return p.status();
    padding = *p;
  }
  item.set_padding(padding);
  auto ct = Base64Field(j, "encryptedPfxPassword", true);
  if (!ct.ok()) return ct.status();
  item.set_ciphertext(*std::move(ct));
  item.mutable_recipient()->set_service_key(options.reseal_to);
  item.set_format(proto_crypto::BareFormatFor(options.reseal_padding, v1::RSA_OAEP_SHA512));
  return item;
}

absl::StatusOr<Summary> Run(const Options& options,
                            const std::vector<std::shared_ptr<grpc::Channel>>& channels,
                            std::istream& in, std::ostream& out, std::ostream* errors) {
  if (channels.empty()) return absl::InvalidArgumentError("no service address");
  if (options.batch == 0 || options.streams == 0 || options.inflight == 0) {
    return absl::InvalidArgumentError(
        "--batch, --streams and the in-flight count must be at least 1");
  }
  if (options.max_attempts < 1)
    return absl::InvalidArgumentError("--max-attempts must be at least 1");
  Job job(options, channels, in, out, errors);
  return job.Run();
}

std::string FormatSummary(const Summary& s) {
  std::string out = absl::StrFormat(
      "rewrap-connector: %d requests: %d done, %d failed; retries %d (%d items after an item "
      "error, "
      "%d items resent after %d stream failures); %.1f s, %.0f items/s\n",
      s.total, s.done, s.failed, s.item_retries + s.resent, s.item_retries, s.resent,
      s.stream_failures, s.seconds,
      s.seconds > 0 ? static_cast<double>(s.done + s.failed) / s.seconds : 0.0);
  if (!s.failed_by_code.empty()) {
    out += "rewrap-connector: failed by code:";
    for (const auto& [code, n] : s.failed_by_code) absl::StrAppend(&out, " ", code, "=", n);
    out += "\n";
  }
  return out;
}

}  // namespace hsmrewrap::connector
