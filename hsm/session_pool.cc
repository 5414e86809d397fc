#include "hsm/session_pool.h"

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace hsmrewrap::hsm {
namespace {

CK_UTF8CHAR_PTR PinPtr(const crypto::SecretString& pin) {
  return reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(pin.data()));
}

bool IsUserState(CK_STATE s) { return s == CKS_RW_USER_FUNCTIONS || s == CKS_RO_USER_FUNCTIONS; }

}  // namespace

SessionPool::Lease& SessionPool::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    Release();
    pool_ = other.pool_;
    handle_ = other.handle_;
    broken_ = other.broken_;
    other.pool_ = nullptr;
    other.handle_ = CK_INVALID_HANDLE;
    other.broken_ = false;
  }
  return *this;
}

const Module& SessionPool::Lease::module() const { return pool_->module(); }

void SessionPool::Lease::Release() {
  if (pool_ != nullptr) pool_->Return(handle_, broken_);
  pool_ = nullptr;
  handle_ = CK_INVALID_HANDLE;
  broken_ = false;
}

absl::StatusOr<std::unique_ptr<SessionPool>> SessionPool::Create(
    std::shared_ptr<Module> module, CK_SLOT_ID slot, const crypto::SecretString& user_pin,
    size_t size) {
  if (module == nullptr) return absl::InvalidArgumentError("no module");
  if (size < 1) return absl::InvalidArgumentError("session pool size must be >= 1");
  std::unique_ptr<SessionPool> pool(new SessionPool(std::move(module), slot, user_pin, size));
  if (auto s = pool->EnsureAnchor(); !s.ok()) return s;
  return pool;
}

SessionPool::~SessionPool() {
  std::vector<CK_SESSION_HANDLE> idle;
  {
    absl::MutexLock l(&mu_);
    idle.swap(idle_);
    if (open_ != idle.size()) {
      spdlog::error("session pool destroyed with {} sessions still leased", open_ - idle.size());
    }
  }
  for (CK_SESSION_HANDLE h : idle) CloseSession(h);
  absl::MutexLock l(&login_mu_);
  if (anchor_ != CK_INVALID_HANDLE) CloseSession(anchor_);
}

absl::StatusOr<CK_SESSION_HANDLE> SessionPool::OpenSession() {
  CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
  // RW: key creation/import and metadata writes need it; SoftHSM has no RW limit.
  if (auto s = module_->Call("C_OpenSession", module_->fl()->C_OpenSession, slot_,
                             CK_FLAGS(CKF_SERIAL_SESSION | CKF_RW_SESSION), nullptr, nullptr, &h);
      !s.ok()) {
    return s;
  }
  return h;
}

void SessionPool::CloseSession(CK_SESSION_HANDLE h) {
  // Close, never log out: logout would end the login of every session of the token.
  auto s = module_->Call("C_CloseSession", module_->fl()->C_CloseSession, h);
  if (!s.ok()) spdlog::debug("{}", std::string(s.message()));
}

absl::Status SessionPool::EnsureLoggedIn(CK_SESSION_HANDLE h) {
  CK_SESSION_INFO si{};
  if (auto s = module_->Call("C_GetSessionInfo", module_->fl()->C_GetSessionInfo, h, &si);
      !s.ok()) {
    return s;
  }
  if (IsUserState(si.state)) return absl::OkStatus();
  if (pin_refused_) {
    return absl::PermissionDeniedError(
        "the token refused the user PIN earlier; not trying it again (fix the PIN and restart)");
  }
  absl::Status s = module_->Call("C_Login", module_->fl()->C_Login, h, CK_USER_TYPE(CKU_USER),
                                 PinPtr(pin_), CK_ULONG(pin_.size()));
  CK_RV rv = CkrOf(s);
  if (s.ok() || rv == CKR_USER_ALREADY_LOGGED_IN) return absl::OkStatus();
  if (s.code() == absl::StatusCode::kPermissionDenied || rv == CKR_PIN_INVALID ||
      rv == CKR_PIN_LEN_RANGE) {
    pin_refused_ = true;
    spdlog::error("token in slot {} refused the user PIN ({}); it will not be retried", slot_,
                  CkrName(rv));
    return absl::PermissionDeniedError(s.message());
  }
  return s;
}

absl::Status SessionPool::EnsureAnchor() {
  absl::MutexLock l(&login_mu_);
  if (anchor_ != CK_INVALID_HANDLE) {
    CK_SESSION_INFO si{};
    if (module_->Call("C_GetSessionInfo", module_->fl()->C_GetSessionInfo, anchor_, &si).ok() &&
        IsUserState(si.state)) {
      return absl::OkStatus();
    }
    spdlog::warn("anchor session of slot {} lost or logged out; re-opening", slot_);
    CloseSession(anchor_);
    anchor_ = CK_INVALID_HANDLE;
  }
  if (pin_refused_) {
    return absl::PermissionDeniedError(
        "the token refused the user PIN earlier; not trying it again (fix the PIN and restart)");
  }
  auto h = OpenSession();
  if (!h.ok()) return h.status();
  if (auto s = EnsureLoggedIn(*h); !s.ok()) {
    CloseSession(*h);
    return s;
  }
  anchor_ = *h;
  return absl::OkStatus();
}

absl::StatusOr<SessionPool::Lease> SessionPool::Acquire(absl::Time deadline) {
  {
    absl::MutexLock l(&mu_);
    auto ready = [this]() { return !idle_.empty() || open_ < size_; };
    if (!ready()) {
      if (!mu_.AwaitWithDeadline(absl::Condition(&ready), deadline)) {
        return absl::DeadlineExceededError(
            absl::StrCat("no PKCS#11 session free within the deadline (pool size ", size_, ")"));
      }
    }
    if (!idle_.empty()) {
      CK_SESSION_HANDLE h = idle_.back();
      idle_.pop_back();
      return Lease(this, h);
    }
    ++open_;  // reserve the slot; opened below without holding mu_
  }
  auto fail = [this](absl::Status s) {
    absl::MutexLock l(&mu_);
    --open_;
    return s;
  };
  if (auto s = EnsureAnchor(); !s.ok()) return fail(s);
  auto h = OpenSession();
  if (!h.ok()) return fail(h.status());
  {
    absl::MutexLock l(&login_mu_);
    if (auto s = EnsureLoggedIn(*h); !s.ok()) {
      CloseSession(*h);
      return fail(s);
    }
  }
  return Lease(this, *h);
}

void SessionPool::Return(CK_SESSION_HANDLE h, bool broken) {
  if (broken) {
    CloseSession(h);
    absl::MutexLock l(&mu_);
    --open_;
    ++discarded_;
    return;
  }
  absl::MutexLock l(&mu_);
  idle_.push_back(h);
}

absl::Status SessionPool::ReachDevice() {
  absl::MutexLock l(&login_mu_);
  if (anchor_ == CK_INVALID_HANDLE) return absl::UnavailableError("no anchor session");
  CK_BYTE buf[4];
  absl::Status s = module_->Call("C_GenerateRandom", module_->fl()->C_GenerateRandom, anchor_, buf,
                                 CK_ULONG(sizeof(buf)));
  const CK_RV rv = CkrOf(s);
  if (rv == CKR_RANDOM_NO_RNG || rv == CKR_FUNCTION_NOT_SUPPORTED) return absl::OkStatus();
  return s;
}

size_t SessionPool::idle_sessions() const {
  absl::MutexLock l(&mu_);
  return idle_.size();
}

size_t SessionPool::open_sessions() const {
  absl::MutexLock l(&mu_);
  return open_;
}

uint64_t SessionPool::discarded_sessions() const {
  absl::MutexLock l(&mu_);
  return discarded_;
}

}  // namespace hsmrewrap::hsm
