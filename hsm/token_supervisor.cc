#include "hsm/token_supervisor.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "hsm/pkcs11_backend.h"
#include "spdlog/spdlog.h"

namespace hsmrewrap::hsm {

const char* TokenSupervisor::StateName(State s) {
  switch (s) {
    case State::kUp:
      return "up";
    case State::kLost:
      return "lost";
    case State::kPinRefused:
      return "pin_refused";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<TokenSupervisor>> TokenSupervisor::Create(Factory factory,
                                                                         Options options) {
  auto first = factory();
  const bool start_lost = !first.ok() && options.start_lost_when_unavailable &&
                          OutcomeOfStatus(first.status()) == Outcome::kRetryable;
  if (!first.ok() && !start_lost) return first.status();
  std::unique_ptr<TokenSupervisor> s(new TokenSupervisor(std::move(factory), options));
  {
    absl::MutexLock l(&s->mu_);
    if (start_lost) {
      s->state_ = State::kLost;
      s->label_ = options.name;
      spdlog::error("{} is unavailable at start-up ({}): re-initialising it with backoff",
                    s->Who(), first.status().ToString());
    } else {
      s->Install(std::shared_ptr<Pkcs11Backend>(std::move(*first)));
    }
  }
  s->thread_ = std::thread([p = s.get()] { p->Run(); });
  return s;
}

std::string TokenSupervisor::Who() const {
  return options_.name.empty() ? "token" : absl::StrCat("token '", options_.name, "'");
}

namespace {
// The CallRunner tag of re-initialisation and module retirement (backend calls use the
// backend's generation, which never gets this high).
constexpr uint64_t kLifecycleTag = ~uint64_t{0};
}  // namespace

TokenSupervisor::~TokenSupervisor() {
  {
    absl::MutexLock l(&mu_);
    stop_ = true;
  }
  // A re-initialisation stuck inside the module (C_Initialize that never returns) must not
  // keep the supervisor's thread, and so this destructor, waiting.
  runner_.Abandon(kLifecycleTag, absl::CancelledError("stopping"));
  uint64_t generation;
  {
    absl::MutexLock l(&mu_);
    generation = generation_;
  }
  // A health check (or another call) that is running normally is waited for, up to
  // probe_timeout: abandoned, it would keep the backend alive on a runner thread and finalise
  // the module there when it returns, while the process is exiting (NSS softoken crashed so at
  // shutdown, SIGSEGV after the drain). Only one that hangs is abandoned.
  const absl::Time patience = absl::Now() + options_.probe_timeout;
  while (runner_.OldestRunning(generation) > absl::ZeroDuration() && absl::Now() < patience) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  runner_.Abandon(generation, absl::CancelledError("stopping"));
  if (thread_.joinable()) thread_.join();
  // The backend and its module go here, on this thread, once no call holds them (an
  // abandoned call that still does finalises them when it returns: nothing else can).
  std::shared_ptr<Pkcs11Backend> last;
  {
    absl::MutexLock l(&mu_);
    last = std::move(current_);
  }
  const absl::Time drained = absl::Now() + options_.drain_wait;
  while (last && last.use_count() > 1 && absl::Now() < drained) {
    absl::SleepFor(absl::Milliseconds(2));
  }
}

void TokenSupervisor::Install(std::shared_ptr<Pkcs11Backend> b) {
  label_ = b->TokenLabel();
  wrap_paddings_ = b->WrapPaddings();
  cms_forms_ = b->CmsInToken();
  ec_cms_forms_ = b->CmsInTokenEc();
  pool_size_ = b->pool().size();
  if (observer_) b->pool().shared_module()->SetCallObserver(observer_);
  current_ = std::move(b);
  ++generation_;
  state_ = State::kUp;
}

absl::StatusOr<std::pair<std::shared_ptr<Pkcs11Backend>, uint64_t>> TokenSupervisor::Use() const {
  absl::MutexLock l(&mu_);
  switch (state_) {
    case State::kUp:
      return std::make_pair(current_, generation_);
    case State::kLost:
      return absl::UnavailableError("the token is unavailable; reconnecting");
    case State::kPinRefused:
      return absl::UnavailableError(
          "the token refused the user PIN; fix the PIN and restart rewrapd");
  }
  return absl::InternalError("bad token state");
}

void TokenSupervisor::Observe(const absl::Status& s) {
  if (s.code() == absl::StatusCode::kUnavailable) {
    absl::MutexLock l(&mu_);
    suspect_ = true;  // the thread checks the token now instead of at the next interval
  } else if (s.code() == absl::StatusCode::kPermissionDenied) {
    absl::MutexLock l(&mu_);
    if (state_ != State::kPinRefused) {
      spdlog::error(
          "{} refused the user PIN ({}); rewrapd stops using the token and will not retry "
          "the "
          "PIN: health is NOT_SERVING until the PIN is fixed and rewrapd restarted",
          Who(), std::string(s.message()));
      state_ = State::kPinRefused;
    }
  }
}

template <typename T>
T TokenSupervisor::OnToken(std::function<T(Pkcs11Backend&)> op, std::function<T(absl::Status)> fail,
                           absl::Duration limit) {
  auto use = Use();
  if (!use.ok()) return fail(use.status());
  std::shared_ptr<Pkcs11Backend> b = std::move(use->first);
  return runner_.Run<T>([b = std::move(b), op = std::move(op)]() { return op(*b); }, use->second,
                        std::move(fail), absl::InfiniteFuture(), limit);
}

template <typename T>
absl::StatusOr<T> TokenSupervisor::KeyCall(std::function<absl::StatusOr<T>(Pkcs11Backend&)> op) {
  auto r = OnToken<absl::StatusOr<T>>(
      std::move(op), [](absl::Status s) -> absl::StatusOr<T> { return s; },
      options_.admin_call_timeout);
  if (!r.ok()) Observe(r.status());
  return r;
}

namespace {
// A decryption failure from a token that no longer answers is not about the ciphertext.
template <typename T>
OpResult<T> Rechecked(Pkcs11Backend& b, OpResult<T> r) {
  if (r.outcome() == Outcome::kDecryptFailed && !b.Healthy()) {
    spdlog::warn("a decryption failed and the token no longer answers: reported as unavailable");
    return OpResult<T>::Retryable(
        absl::UnavailableError("the token stopped answering during the operation"));
  }
  return r;
}
}  // namespace

absl::StatusOr<std::vector<KeyInfo>> TokenSupervisor::ListKeys() {
  return KeyCall<std::vector<KeyInfo>>([](Pkcs11Backend& b) { return b.ListKeys(); });
}

absl::StatusOr<KeyRefPtr> TokenSupervisor::Resolve(const std::string& name) {
  // Use() answers only while the token is up; the cache read needs no token call.
  if (auto use = Use(); use.ok()) {
    if (KeyRefPtr cached = use->first->Cached(name)) return cached;
  }
  return KeyCall<KeyRefPtr>([name](Pkcs11Backend& b) { return b.Resolve(name); });
}

absl::Status TokenSupervisor::RecheckKey(const std::string& name) {
  return KeyCall<bool>([name](Pkcs11Backend& b) -> absl::StatusOr<bool> {
           if (absl::Status s = b.RecheckKey(name); !s.ok()) return s;
           return true;
         })
      .status();
}

absl::StatusOr<KeyInfo> TokenSupervisor::CreateKey(const std::string& name, int bits,
                                                   bool allow_pkcs1) {
  return KeyCall<KeyInfo>(
      [name, bits, allow_pkcs1](Pkcs11Backend& b) { return b.CreateKey(name, bits, allow_pkcs1); });
}

absl::StatusOr<KeyInfo> TokenSupervisor::ImportKey(const std::string& name,
                                                   const crypto::RsaPrivateKeyParts& parts,
                                                   bool allow_pkcs1) {
  // The parts are copied into the call (zeroizing buffers): it may outlive this caller.
  return KeyCall<KeyInfo>([name, parts, allow_pkcs1](Pkcs11Backend& b) {
    return b.ImportKey(name, parts, allow_pkcs1);
  });
}

absl::StatusOr<KeyInfo> TokenSupervisor::SetEnabled(const std::string& name, bool enabled) {
  return KeyCall<KeyInfo>(
      [name, enabled](Pkcs11Backend& b) { return b.SetEnabled(name, enabled); });
}

OpResult<crypto::SecretBytes> TokenSupervisor::Decrypt(const KeyRefPtr& key, RsaPadding padding,
                                                       absl::Span<const uint8_t> ciphertext,
                                                       Path path) {
  using R = OpResult<crypto::SecretBytes>;
  auto r =
      OnToken<R>([key, padding, ct = Bytes(ciphertext.begin(), ciphertext.end()), path](
                     Pkcs11Backend& b) { return Rechecked(b, b.Decrypt(key, padding, ct, path)); },
                 [](absl::Status s) { return R::Retryable(std::move(s)); }, options_.call_timeout);
  if (!r.ok()) Observe(r.status());
  return r;
}

OpResult<Bytes> TokenSupervisor::RewrapInToken(const KeyRefPtr& key, RsaPadding in_padding,
                                               absl::Span<const uint8_t> ciphertext,
                                               const crypto::PublicKey& device_key,
                                               RsaPadding out_padding) {
  using R = OpResult<Bytes>;
  auto r = OnToken<R>(
      [key, in_padding, ct = Bytes(ciphertext.begin(), ciphertext.end()), device_key,
       out_padding](Pkcs11Backend& b) {
        return Rechecked(b, b.RewrapInToken(key, in_padding, ct, device_key, out_padding));
      },
      [](absl::Status s) { return R::Retryable(std::move(s)); }, options_.call_timeout);
  if (!r.ok()) Observe(r.status());
  return r;
}

OpResult<crypto::CmsTokenParts> TokenSupervisor::EnvelopeInToken(
    const KeyRefPtr& key, RsaPadding in_padding, absl::Span<const uint8_t> ciphertext,
    const crypto::PublicKey& device_key, const crypto::CmsOptions& options) {
  using R = OpResult<crypto::CmsTokenParts>;
  auto r = OnToken<R>(
      [key, in_padding, ct = Bytes(ciphertext.begin(), ciphertext.end()), device_key,
       options](Pkcs11Backend& b) {
        return Rechecked(b, b.EnvelopeInToken(key, in_padding, ct, device_key, options));
      },
      [](absl::Status s) { return R::Retryable(std::move(s)); }, options_.call_timeout);
  if (!r.ok()) Observe(r.status());
  return r;
}

CmsFormSet TokenSupervisor::CmsInToken() {
  absl::MutexLock l(&mu_);
  return cms_forms_;
}

EcCmsFormSet TokenSupervisor::CmsInTokenEc() {
  absl::MutexLock l(&mu_);
  return ec_cms_forms_;
}

std::set<RsaPadding> TokenSupervisor::WrapPaddings() {
  absl::MutexLock l(&mu_);
  return wrap_paddings_;
}

std::string TokenSupervisor::TokenLabel() {
  absl::MutexLock l(&mu_);
  return label_;
}

bool TokenSupervisor::Healthy() {
  absl::MutexLock l(&mu_);
  return state_ == State::kUp;
}

TokenSupervisor::State TokenSupervisor::state() const {
  absl::MutexLock l(&mu_);
  return state_;
}

uint64_t TokenSupervisor::reconnects() const {
  absl::MutexLock l(&mu_);
  return reconnects_;
}

double TokenSupervisor::last_outage_seconds() const {
  absl::MutexLock l(&mu_);
  return last_outage_s_;
}

std::shared_ptr<Pkcs11Backend> TokenSupervisor::current() const {
  absl::MutexLock l(&mu_);
  return current_;
}

std::vector<CallStat> TokenSupervisor::CallStats() const {
  absl::MutexLock l(&mu_);
  std::map<std::string, CallStat> sum = retired_calls_;
  if (current_ != nullptr) {
    for (const auto& st : current_->module().CallStats()) {
      auto& s = sum[st.function];
      s.function = st.function;
      s.calls += st.calls;
      s.errors += st.errors;
    }
  }
  std::vector<CallStat> out;
  for (auto& [name, st] : sum) out.push_back(st);
  return out;
}

TokenSupervisor::PoolStats TokenSupervisor::pool_stats() const {
  absl::MutexLock l(&mu_);
  PoolStats ps;
  ps.size = pool_size_;
  ps.discarded = retired_discarded_;
  if (current_ != nullptr) {
    ps.open = current_->pool().open_sessions();
    ps.idle = current_->pool().idle_sessions();
    ps.discarded += current_->pool().discarded_sessions();
  }
  return ps;
}

void TokenSupervisor::SetCallObserver(Module::CallObserver observer) {
  absl::MutexLock l(&mu_);
  observer_ = std::move(observer);
  if (current_ != nullptr) current_->pool().shared_module()->SetCallObserver(observer_);
}

bool TokenSupervisor::Sleep(absl::Duration d, bool wake_on_suspect) {
  absl::MutexLock l(&mu_);
  auto woken = [this, wake_on_suspect]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || (wake_on_suspect && state_ == State::kUp && suspect_);
  };
  mu_.AwaitWithTimeout(absl::Condition(&woken), d);
  return !stop_;
}

absl::Status TokenSupervisor::CheckHealthy(const std::shared_ptr<Pkcs11Backend>& b,
                                           uint64_t generation) {
  // Three tries 50 ms apart: one failed C_GetTokenInfo (an injected or transient error) is
  // not a lost token; three are, and they still fit in the 1 s the health status has. A
  // check that does not answer within call_timeout (or, while key management runs, within
  // its longer limit: a module that serialises calls answers after it) is a lost token at
  // once (trying again would only leave another thread inside the module).
  for (int i = 0; i < 3; ++i) {
    // 1 s normally; while key management runs (a module that serialises calls answers the
    // check only after it), as long as that call's limit.
    const absl::Duration longest = runner_.LongestLimit(generation);
    const absl::Duration wait = longest > options_.call_timeout
                                    ? longest
                                    : std::min(options_.probe_timeout, options_.call_timeout);
    absl::Status s = runner_.Run<absl::Status>(
        [b]() {
          return b->Healthy() ? absl::OkStatus() : absl::UnavailableError("C_GetTokenInfo fails");
        },
        generation, [](absl::Status why) { return why; }, absl::Now() + wait);
    if (s.ok() || s.code() == absl::StatusCode::kCancelled)
      return absl::OkStatus();  // stopping: not a loss
    if (s.code() == absl::StatusCode::kDeadlineExceeded) {
      return absl::UnavailableError(
          absl::StrCat("C_GetTokenInfo did not answer within ", absl::FormatDuration(wait)));
    }
    if (s.code() != absl::StatusCode::kUnavailable || s.message() != "C_GetTokenInfo fails")
      return s;
    if (i < 2 && !Sleep(absl::Milliseconds(50))) return absl::OkStatus();
  }
  return absl::UnavailableError("C_GetTokenInfo fails");
}

void TokenSupervisor::MarkLost(const std::string& why) {
  std::shared_ptr<Pkcs11Backend> old;
  uint64_t generation = 0;
  {
    absl::MutexLock l(&mu_);
    if (state_ != State::kUp) return;
    state_ = State::kLost;
    old = std::move(current_);
    generation = generation_;
  }
  // Every call still inside the lost token is answered now; its thread is left behind.
  const size_t abandoned =
      runner_.Abandon(generation, absl::UnavailableError(absl::StrCat(
                                      "the token was lost during the call (", why, "); retry")));
  spdlog::error(
      "{} lost ({}): items on it fail UNAVAILABLE or move to another token ({} calls in flight "
      "answered); re-initialising with backoff",
      Who(), why, abandoned);
  Retire(std::move(old));
}

void TokenSupervisor::Retire(std::shared_ptr<Pkcs11Backend> old) {
  if (old == nullptr) return;
  // Calls still running on the old backend hold references. A lost token usually answers
  // them quickly; then the backend and its module go now, so the next Load() runs
  // C_Initialize afresh (the p11-kit client reconnects only then). Calls that stay inside
  // the module were answered already (MarkLost); their module is finalised under them and
  // the reconnect goes ahead without them.
  const absl::Time deadline = absl::Now() + options_.drain_wait;
  while (old.use_count() > 1 && absl::Now() < deadline) {
    if (!Sleep(absl::Milliseconds(10))) break;
  }
  std::weak_ptr<Module> module;
  std::vector<CallStat> stats;
  uint64_t discarded = 0;
  {
    module = old->pool().shared_module();
    if (old.use_count() > 1) {
      spdlog::warn("token: {} calls still inside the module after {}: finalising it under them",
                   old.use_count() - 1, absl::FormatDuration(options_.drain_wait));
      // C_Finalize under them, on a runner thread: it may hang as well.
      std::shared_ptr<Module> m = old->pool().shared_module();
      runner_.Run<bool>(
          [m]() {
            m->Retire();
            return true;
          },
          kLifecycleTag, [](absl::Status) { return false; }, absl::Now() + absl::Seconds(1));
    }
    stats = old->module().CallStats();
    discarded = old->pool().discarded_sessions();
  }
  old.reset();  // closes the pool's sessions; C_Finalize + dlclose if it was the last user
  absl::MutexLock l(&mu_);
  retired_discarded_ += discarded;
  if (module.expired()) {  // else the counters live on in the module still in use
    for (const auto& st : stats) {
      auto& s = retired_calls_[st.function];
      s.function = st.function;
      s.calls += st.calls;
      s.errors += st.errors;
    }
  }
}

absl::Status TokenSupervisor::Reconnect() {
  // On a runner thread: C_Initialize of a module whose device hangs may never return. The
  // call owns a copy of the factory, so it may outlive this supervisor.
  using Made = absl::StatusOr<std::unique_ptr<Pkcs11Backend>>;
  Made b = runner_.Run<Made>([factory = factory_]() { return factory(); }, kLifecycleTag,
                             [](absl::Status why) -> Made { return why; });
  if (!b.ok()) return b.status();
  absl::MutexLock l(&mu_);
  if (stop_) return absl::CancelledError("stopping");
  Install(std::shared_ptr<Pkcs11Backend>(std::move(*b)));
  suspect_ = false;
  ++reconnects_;
  return absl::OkStatus();
}

void TokenSupervisor::Run() {
  absl::Duration backoff = options_.initial_backoff;
  absl::Time lost_at;
  int attempts = 0;
  while (true) {
    State st;
    std::shared_ptr<Pkcs11Backend> b;
    {
      absl::MutexLock l(&mu_);
      if (stop_) return;
      st = state_;
      b = current_;
    }
    if (st == State::kUp) {
      if (!Sleep(options_.check_interval, /*wake_on_suspect=*/true)) return;
      {
        absl::MutexLock l(&mu_);
        suspect_ = false;
        if (state_ != State::kUp) continue;
      }
      uint64_t generation;
      {
        absl::MutexLock l(&mu_);
        generation = generation_;
      }
      absl::Status lost;
      if (const absl::Duration overdue = runner_.Overdue(generation);
          overdue > absl::ZeroDuration()) {
        lost = absl::UnavailableError(absl::StrCat(
            "a token call has not returned for ",
            absl::FormatDuration(absl::Trunc(overdue, absl::Milliseconds(1))),
            " (token_call_timeout_s ", absl::ToDoubleSeconds(options_.call_timeout), ")"));
      } else {
        lost = CheckHealthy(b, generation);
      }
      if (!lost.ok()) {
        b.reset();
        lost_at = absl::Now();
        attempts = 0;
        backoff = options_.initial_backoff;
        MarkLost(std::string(lost.message()));
      }
      continue;
    }
    if (st == State::kPinRefused) {
      b.reset();
      std::shared_ptr<Pkcs11Backend> old;
      {
        absl::MutexLock l(&mu_);
        old = std::move(current_);
      }
      Retire(std::move(old));  // terminal: nothing more to do until the end
      absl::MutexLock l(&mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      mu_.Await(absl::Condition(&stopping));
      return;
    }
    // Lost: try again, then sleep with exponential backoff.
    if (lost_at == absl::Time()) lost_at = absl::Now();
    ++attempts;
    absl::Status s = Reconnect();
    if (s.ok()) {
      const double outage = absl::ToDoubleSeconds(absl::Now() - lost_at);
      {
        absl::MutexLock l(&mu_);
        last_outage_s_ = outage;
      }
      spdlog::info("{} is back after {:.2f} s ({} attempts): re-initialised, serving", Who(),
                   outage, attempts);
      lost_at = absl::Time();
      backoff = options_.initial_backoff;
      continue;
    }
    if (s.code() == absl::StatusCode::kPermissionDenied) {
      Observe(s);
      continue;
    }
    if (s.code() == absl::StatusCode::kCancelled) return;
    spdlog::warn("{} still unavailable ({}); next attempt in {}", Who(), std::string(s.message()),
                 absl::FormatDuration(backoff));
    if (!Sleep(backoff)) return;
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

}  // namespace hsmrewrap::hsm
