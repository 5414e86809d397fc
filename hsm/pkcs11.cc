#include "hsm/pkcs11.h"

#include <dlfcn.h>

#include <cstring>
#include <map>
#include <mutex>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "spdlog/spdlog.h"

namespace hsmrewrap::hsm {
namespace {
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kKeepModulesLoaded = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kKeepModulesLoaded = true;
#else
constexpr bool kKeepModulesLoaded = false;
#endif
#else
constexpr bool kKeepModulesLoaded = false;
#endif
}  // namespace
namespace {

constexpr char kCkrPayloadUrl[] = "type.hsmrewrap/pkcs11.ckr";

constexpr const char* kKnownFunctions[] = {
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
    "C_GetFunctionList",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_WaitForSlotEvent",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_InitToken",
    "C_InitPIN",
    "C_SetPIN",
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_GetSessionInfo",
    "C_GetOperationState",
    "C_SetOperationState",
    "C_Login",
    "C_Logout",
    "C_CreateObject",
    "C_CopyObject",
    "C_DestroyObject",
    "C_GetObjectSize",
    "C_GetAttributeValue",
    "C_SetAttributeValue",
    "C_FindObjectsInit",
    "C_FindObjects",
    "C_FindObjectsFinal",
    "C_EncryptInit",
    "C_Encrypt",
    "C_EncryptUpdate",
    "C_EncryptFinal",
    "C_DecryptInit",
    "C_Decrypt",
    "C_DecryptUpdate",
    "C_DecryptFinal",
    "C_DigestInit",
    "C_Digest",
    "C_DigestUpdate",
    "C_DigestKey",
    "C_DigestFinal",
    "C_SignInit",
    "C_Sign",
    "C_SignUpdate",
    "C_SignFinal",
    "C_SignRecoverInit",
    "C_SignRecover",
    "C_VerifyInit",
    "C_Verify",
    "C_VerifyUpdate",
    "C_VerifyFinal",
    "C_VerifyRecoverInit",
    "C_VerifyRecover",
    "C_DigestEncryptUpdate",
    "C_DecryptDigestUpdate",
    "C_SignEncryptUpdate",
    "C_DecryptVerifyUpdate",
    "C_GenerateKey",
    "C_GenerateKeyPair",
    "C_WrapKey",
    "C_UnwrapKey",
    "C_DeriveKey",
    "C_SeedRandom",
    "C_GenerateRandom",
    "C_GetFunctionStatus",
    "C_CancelFunction",
};
constexpr size_t kNumKnown = sizeof(kKnownFunctions) / sizeof(kKnownFunctions[0]);

// Built once, read-only afterwards (safe to read from many threads).
const absl::flat_hash_map<absl::string_view, size_t>& FunctionIndex() {
  static const auto* index = [] {
    auto* m = new absl::flat_hash_map<absl::string_view, size_t>();
    for (size_t i = 0; i < kNumKnown; ++i) (*m)[kKnownFunctions[i]] = i;
    return m;
  }();
  return *index;
}

// Modules loaded in this process, by path. A Cryptoki module can be initialised once per
// process, so every user of a path shares one Module.
absl::Mutex& RegistryMutex() {
  static absl::Mutex mu;
  return mu;
}
std::map<std::string, std::weak_ptr<Module>>& Registry() {
  static auto* r = new std::map<std::string, std::weak_ptr<Module>>();
  return *r;
}

}  // namespace

const char* CkrName(CK_RV rv) {
  switch (rv) {
    case CKR_OK:
      return "CKR_OK";
    case CKR_CANCEL:
      return "CKR_CANCEL";
    case CKR_HOST_MEMORY:
      return "CKR_HOST_MEMORY";
    case CKR_SLOT_ID_INVALID:
      return "CKR_SLOT_ID_INVALID";
    case CKR_GENERAL_ERROR:
      return "CKR_GENERAL_ERROR";
    case CKR_FUNCTION_FAILED:
      return "CKR_FUNCTION_FAILED";
    case CKR_ARGUMENTS_BAD:
      return "CKR_ARGUMENTS_BAD";
    case CKR_NO_EVENT:
      return "CKR_NO_EVENT";
    case CKR_NEED_TO_CREATE_THREADS:
      return "CKR_NEED_TO_CREATE_THREADS";
    case CKR_CANT_LOCK:
      return "CKR_CANT_LOCK";
    case CKR_ATTRIBUTE_READ_ONLY:
      return "CKR_ATTRIBUTE_READ_ONLY";
    case CKR_ATTRIBUTE_SENSITIVE:
      return "CKR_ATTRIBUTE_SENSITIVE";
    case CKR_ATTRIBUTE_TYPE_INVALID:
      return "CKR_ATTRIBUTE_TYPE_INVALID";
    case CKR_ATTRIBUTE_VALUE_INVALID:
      return "CKR_ATTRIBUTE_VALUE_INVALID";
    case CKR_ACTION_PROHIBITED:
      return "CKR_ACTION_PROHIBITED";
    case CKR_DATA_INVALID:
      return "CKR_DATA_INVALID";
    case CKR_DATA_LEN_RANGE:
      return "CKR_DATA_LEN_RANGE";
    case CKR_DEVICE_ERROR:
      return "CKR_DEVICE_ERROR";
    case CKR_DEVICE_MEMORY:
      return "CKR_DEVICE_MEMORY";
    case CKR_DEVICE_REMOVED:
      return "CKR_DEVICE_REMOVED";
    case CKR_ENCRYPTED_DATA_INVALID:
      return "CKR_ENCRYPTED_DATA_INVALID";
    case CKR_ENCRYPTED_DATA_LEN_RANGE:
      return "CKR_ENCRYPTED_DATA_LEN_RANGE";
    case CKR_FUNCTION_CANCELED:
      return "CKR_FUNCTION_CANCELED";
    case CKR_FUNCTION_NOT_PARALLEL:
      return "CKR_FUNCTION_NOT_PARALLEL";
    case CKR_FUNCTION_NOT_SUPPORTED:
      return "CKR_FUNCTION_NOT_SUPPORTED";
    case CKR_KEY_HANDLE_INVALID:
      return "CKR_KEY_HANDLE_INVALID";
    case CKR_KEY_SIZE_RANGE:
      return "CKR_KEY_SIZE_RANGE";
    case CKR_KEY_TYPE_INCONSISTENT:
      return "CKR_KEY_TYPE_INCONSISTENT";
    case CKR_KEY_NOT_NEEDED:
      return "CKR_KEY_NOT_NEEDED";
    case CKR_KEY_CHANGED:
      return "CKR_KEY_CHANGED";
    case CKR_KEY_NEEDED:
      return "CKR_KEY_NEEDED";
    case CKR_KEY_INDIGESTIBLE:
      return "CKR_KEY_INDIGESTIBLE";
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
      return "CKR_KEY_FUNCTION_NOT_PERMITTED";
    case CKR_KEY_NOT_WRAPPABLE:
      return "CKR_KEY_NOT_WRAPPABLE";
    case CKR_KEY_UNEXTRACTABLE:
      return "CKR_KEY_UNEXTRACTABLE";
    case CKR_MECHANISM_INVALID:
      return "CKR_MECHANISM_INVALID";
    case CKR_MECHANISM_PARAM_INVALID:
      return "CKR_MECHANISM_PARAM_INVALID";
    case CKR_OBJECT_HANDLE_INVALID:
      return "CKR_OBJECT_HANDLE_INVALID";
    case CKR_OPERATION_ACTIVE:
      return "CKR_OPERATION_ACTIVE";
    case CKR_OPERATION_NOT_INITIALIZED:
      return "CKR_OPERATION_NOT_INITIALIZED";
    case CKR_PIN_INCORRECT:
      return "CKR_PIN_INCORRECT";
    case CKR_PIN_INVALID:
      return "CKR_PIN_INVALID";
    case CKR_PIN_LEN_RANGE:
      return "CKR_PIN_LEN_RANGE";
    case CKR_PIN_EXPIRED:
      return "CKR_PIN_EXPIRED";
    case CKR_PIN_LOCKED:
      return "CKR_PIN_LOCKED";
    case CKR_SESSION_CLOSED:
      return "CKR_SESSION_CLOSED";
    case CKR_SESSION_COUNT:
      return "CKR_SESSION_COUNT";
    case CKR_SESSION_HANDLE_INVALID:
      return "CKR_SESSION_HANDLE_INVALID";
    case CKR_SESSION_PARALLEL_NOT_SUPPORTED:
      return "CKR_SESSION_PARALLEL_NOT_SUPPORTED";
    case CKR_SESSION_READ_ONLY:
      return "CKR_SESSION_READ_ONLY";
    case CKR_SESSION_EXISTS:
      return "CKR_SESSION_EXISTS";
    case CKR_SESSION_READ_ONLY_EXISTS:
      return "CKR_SESSION_READ_ONLY_EXISTS";
    case CKR_SESSION_READ_WRITE_SO_EXISTS:
      return "CKR_SESSION_READ_WRITE_SO_EXISTS";
    case CKR_SIGNATURE_INVALID:
      return "CKR_SIGNATURE_INVALID";
    case CKR_SIGNATURE_LEN_RANGE:
      return "CKR_SIGNATURE_LEN_RANGE";
    case CKR_TEMPLATE_INCOMPLETE:
      return "CKR_TEMPLATE_INCOMPLETE";
    case CKR_TEMPLATE_INCONSISTENT:
      return "CKR_TEMPLATE_INCONSISTENT";
    case CKR_TOKEN_NOT_PRESENT:
      return "CKR_TOKEN_NOT_PRESENT";
    case CKR_TOKEN_NOT_RECOGNIZED:
      return "CKR_TOKEN_NOT_RECOGNIZED";
    case CKR_TOKEN_WRITE_PROTECTED:
      return "CKR_TOKEN_WRITE_PROTECTED";
    case CKR_UNWRAPPING_KEY_SIZE_RANGE:
      return "CKR_UNWRAPPING_KEY_SIZE_RANGE";
    case CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT:
      return "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT";
    case CKR_USER_ALREADY_LOGGED_IN:
      return "CKR_USER_ALREADY_LOGGED_IN";
    case CKR_USER_NOT_LOGGED_IN:
      return "CKR_USER_NOT_LOGGED_IN";
    case CKR_USER_PIN_NOT_INITIALIZED:
      return "CKR_USER_PIN_NOT_INITIALIZED";
    case CKR_USER_TYPE_INVALID:
      return "CKR_USER_TYPE_INVALID";
    case CKR_USER_ANOTHER_ALREADY_LOGGED_IN:
      return "CKR_USER_ANOTHER_ALREADY_LOGGED_IN";
    case CKR_USER_TOO_MANY_TYPES:
      return "CKR_USER_TOO_MANY_TYPES";
    case CKR_WRAPPED_KEY_INVALID:
      return "CKR_WRAPPED_KEY_INVALID";
    case CKR_WRAPPED_KEY_LEN_RANGE:
      return "CKR_WRAPPED_KEY_LEN_RANGE";
    case CKR_WRAPPING_KEY_HANDLE_INVALID:
      return "CKR_WRAPPING_KEY_HANDLE_INVALID";
    case CKR_WRAPPING_KEY_SIZE_RANGE:
      return "CKR_WRAPPING_KEY_SIZE_RANGE";
    case CKR_WRAPPING_KEY_TYPE_INCONSISTENT:
      return "CKR_WRAPPING_KEY_TYPE_INCONSISTENT";
    case CKR_RANDOM_SEED_NOT_SUPPORTED:
      return "CKR_RANDOM_SEED_NOT_SUPPORTED";
    case CKR_RANDOM_NO_RNG:
      return "CKR_RANDOM_NO_RNG";
    case CKR_DOMAIN_PARAMS_INVALID:
      return "CKR_DOMAIN_PARAMS_INVALID";
    case CKR_CURVE_NOT_SUPPORTED:
      return "CKR_CURVE_NOT_SUPPORTED";
    case CKR_BUFFER_TOO_SMALL:
      return "CKR_BUFFER_TOO_SMALL";
    case CKR_SAVED_STATE_INVALID:
      return "CKR_SAVED_STATE_INVALID";
    case CKR_INFORMATION_SENSITIVE:
      return "CKR_INFORMATION_SENSITIVE";
    case CKR_STATE_UNSAVEABLE:
      return "CKR_STATE_UNSAVEABLE";
    case CKR_CRYPTOKI_NOT_INITIALIZED:
      return "CKR_CRYPTOKI_NOT_INITIALIZED";
    case CKR_CRYPTOKI_ALREADY_INITIALIZED:
      return "CKR_CRYPTOKI_ALREADY_INITIALIZED";
    case CKR_MUTEX_BAD:
      return "CKR_MUTEX_BAD";
    case CKR_MUTEX_NOT_LOCKED:
      return "CKR_MUTEX_NOT_LOCKED";
    case CKR_NEW_PIN_MODE:
      return "CKR_NEW_PIN_MODE";
    case CKR_NEXT_OTP:
      return "CKR_NEXT_OTP";
    case CKR_EXCEEDED_MAX_ITERATIONS:
      return "CKR_EXCEEDED_MAX_ITERATIONS";
    case CKR_FIPS_SELF_TEST_FAILED:
      return "CKR_FIPS_SELF_TEST_FAILED";
    case CKR_LIBRARY_LOAD_FAILED:
      return "CKR_LIBRARY_LOAD_FAILED";
    case CKR_PIN_TOO_WEAK:
      return "CKR_PIN_TOO_WEAK";
    case CKR_PUBLIC_KEY_INVALID:
      return "CKR_PUBLIC_KEY_INVALID";
    case CKR_FUNCTION_REJECTED:
      return "CKR_FUNCTION_REJECTED";
    default:
      return (rv & CKR_VENDOR_DEFINED) ? "CKR_VENDOR_DEFINED" : "CKR_UNKNOWN";
  }
}

bool IsTokenLossRv(CK_RV rv) {
  switch (rv) {
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_REMOVED:
    case CKR_DEVICE_MEMORY:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
    case CKR_SESSION_COUNT:
    case CKR_SLOT_ID_INVALID:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
      return true;
    default:
      return false;
  }
}

absl::Status CkrToStatus(absl::string_view function, CK_RV rv) {
  if (rv == CKR_OK) return absl::OkStatus();
  std::string msg = absl::StrCat(function, " failed: ", CkrName(rv), " (0x", absl::Hex(rv), ")");
  absl::StatusCode code;
  if (IsTokenLossRv(rv) || rv == CKR_GENERAL_ERROR) {
    code = absl::StatusCode::kUnavailable;
  } else {
    switch (rv) {
      case CKR_PIN_INCORRECT:
      case CKR_PIN_LOCKED:
      case CKR_PIN_EXPIRED:
        code = absl::StatusCode::kPermissionDenied;
        break;
      case CKR_MECHANISM_INVALID:
      case CKR_MECHANISM_PARAM_INVALID:
      case CKR_FUNCTION_NOT_SUPPORTED:
        code = absl::StatusCode::kUnimplemented;
        break;
      case CKR_OBJECT_HANDLE_INVALID:
      case CKR_KEY_HANDLE_INVALID:
        code = absl::StatusCode::kNotFound;
        break;
      case CKR_OPERATION_ACTIVE:
      case CKR_OPERATION_NOT_INITIALIZED:
      case CKR_USER_NOT_LOGGED_IN:
      case CKR_USER_ALREADY_LOGGED_IN:
      case CKR_USER_PIN_NOT_INITIALIZED:
      case CKR_SESSION_READ_ONLY:
        code = absl::StatusCode::kFailedPrecondition;
        break;
      case CKR_HOST_MEMORY:
        code = absl::StatusCode::kResourceExhausted;
        break;
      // A template the token will not take is the request's, never a lost token.
      case CKR_TEMPLATE_INCOMPLETE:
      case CKR_TEMPLATE_INCONSISTENT:
      case CKR_ATTRIBUTE_TYPE_INVALID:
      case CKR_ATTRIBUTE_VALUE_INVALID:
      case CKR_ATTRIBUTE_READ_ONLY:
        code = absl::StatusCode::kFailedPrecondition;
        break;
      case CKR_KEY_SIZE_RANGE:
        code = absl::StatusCode::kInvalidArgument;
        break;
      default:
        code = absl::StatusCode::kInternal;
    }
  }
  absl::Status s(code, msg);
  s.SetPayload(kCkrPayloadUrl, absl::Cord(absl::StrCat(rv)));
  return s;
}

CK_RV CkrOf(const absl::Status& s) {
  if (s.ok()) return CKR_OK;
  auto p = s.GetPayload(kCkrPayloadUrl);
  CK_RV rv = CKR_GENERAL_ERROR;
  if (p.has_value()) {
    unsigned long v = 0;
    if (absl::SimpleAtoi(std::string(*p), &v)) rv = v;
  }
  return rv;
}

std::string PaddedString(const unsigned char* p, size_t n) {
  std::string s(reinterpret_cast<const char*>(p), n);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}

Module::Counter& Module::CounterFor(const char* name) const {
  static_assert(kNumKnown <= kMaxFunctions, "raise kMaxFunctions");
  const auto& idx = FunctionIndex();
  auto it = idx.find(absl::string_view(name));
  return counters_[it == idx.end() ? kMaxFunctions : it->second];
}

std::vector<CallStat> Module::CallStats() const {
  std::vector<CallStat> out;
  for (size_t i = 0; i <= kMaxFunctions; ++i) {
    uint64_t calls = counters_[i].calls.load(std::memory_order_relaxed);
    if (calls == 0) continue;
    out.push_back(CallStat{i < kNumKnown ? kKnownFunctions[i] : "other", calls,
                           counters_[i].errors.load(std::memory_order_relaxed)});
  }
  return out;
}

absl::StatusOr<std::shared_ptr<Module>> Module::Load(const std::string& path,
                                                     const std::string& init_args) {
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("PKCS#11 module path must be absolute: '", path, "'"));
  }
  absl::MutexLock lock(&RegistryMutex());
  auto& reg = Registry();
  if (auto it = reg.find(path); it != reg.end()) {
    if (auto existing = it->second.lock()) {
      if (existing->init_args_ != init_args) {
        return absl::FailedPreconditionError(absl::StrCat(
            "PKCS#11 module ", path, " is already loaded with different init arguments"));
      }
      return existing;
    }
  }

  std::shared_ptr<Module> m(new Module());
  m->path_ = path;
  m->init_args_ = init_args;
  m->dl_ = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (m->dl_ == nullptr) {
    const char* err = dlerror();
    return absl::NotFoundError(
        absl::StrCat("dlopen(", path, ") failed: ", err ? err : "unknown error"));
  }
  auto get_list = reinterpret_cast<CK_C_GetFunctionList>(dlsym(m->dl_, "C_GetFunctionList"));
  if (get_list == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a PKCS#11 module (no C_GetFunctionList)"));
  }
  CK_FUNCTION_LIST* fl = nullptr;
  if (auto s = m->Call("C_GetFunctionList", get_list, &fl); !s.ok()) return s;
  if (fl == nullptr) return absl::InternalError("C_GetFunctionList returned NULL");
  if (fl->version.major != 2) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, " implements Cryptoki ", fl->version.major, ".", fl->version.minor, "; need 2.x"));
  }
  m->fl_ = fl;

  // CKF_OS_LOCKING_OK: without it SoftHSM2 disables all internal locking.
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  // NSS softoken reads its configuration (configdir=..., flags) from pReserved. The string
  // lives in m->init_args_ for the module's life.
  args.pReserved = init_args.empty() ? nullptr : const_cast<char*>(m->init_args_.c_str());
  if (auto s = m->Call("C_Initialize", fl->C_Initialize, &args); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  }
  m->initialized_ = true;

  CK_INFO info{};
  if (m->Call("C_GetInfo", fl->C_GetInfo, &info).ok()) {
    m->description_ =
        absl::StrCat(PaddedString(info.manufacturerID, sizeof(info.manufacturerID)), " / ",
                     PaddedString(info.libraryDescription, sizeof(info.libraryDescription)));
  }
  spdlog::info("loaded PKCS#11 module {} ({}), Cryptoki {}.{}", path, m->description_,
               fl->version.major, fl->version.minor);
  // openCryptoki 3.8.1 cannot be initialised a second time in a process: C_Initialize after
  // C_Finalize crashes (SIGSEGV in its software token's session_mgr_close_all_sessions). Such
  // a module stays loaded and initialised for the process's life: Load() returns the same
  // instance again, and a reconnect after a token loss opens new sessions on it.
  if (absl::StrContains(m->description_, "IBM / Meta PKCS11 LIBRARY")) {
    m->pinned_ = true;
    static auto* pinned = new std::vector<std::shared_ptr<Module>>();  // never destroyed
    pinned->push_back(m);
    spdlog::info("{}: kept initialised for the process (it cannot be initialised again)", path);
  }
  // tpm2-pkcs11 1.9.0 crashes under concurrent calls: one at a time, whatever max_concurrency
  // says (LimitConcurrency keeps the lowest limit).
  if (absl::StrContains(m->description_, "TPM2.0 Cryptoki")) {
    m->LimitConcurrency(1);
    spdlog::info("{}: calls are made one at a time (tpm2-pkcs11 crashes under concurrent calls)",
                 path);
  }
  m->registered_ = true;
  reg[path] = m;
  return m;
}

void Module::LimitConcurrency(size_t n) {
  if (n == 0) return;
  absl::MutexLock l(&limit_mu_);
  if (limit_ == 0 || n < limit_) limit_ = n;
  limited_.store(true, std::memory_order_release);
}

size_t Module::max_concurrency() const {
  absl::MutexLock l(&limit_mu_);
  return limit_;
}

Module::Permit::Permit(const Module& m) {
  if (!m.limited_.load(std::memory_order_acquire)) return;
  absl::MutexLock l(&m.limit_mu_);
  // A call stuck inside a lost token's module keeps its slot: Retire() wakes the waiters,
  // which then refuse instead of waiting for it.
  auto free_slot = [&m]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(m.limit_mu_) {
    return m.inside_ < m.limit_ || m.retired_.load(std::memory_order_acquire);
  };
  m.limit_mu_.Await(absl::Condition(&free_slot));
  if (m.retired_.load(std::memory_order_acquire)) {
    granted_ = false;
    return;
  }
  ++m.inside_;
  m_ = &m;
}

Module::Permit::~Permit() {
  if (m_ == nullptr) return;
  absl::MutexLock l(&m_->limit_mu_);
  --m_->inside_;
}

void Module::Retire() {
  if (pinned_) {
    // Finalising it would crash the next C_Initialize (see Load): the calls stuck in it stay;
    // the next backend opens new sessions on the same initialised library.
    spdlog::warn("{}: calls may still be inside it; not finalised (the module cannot be "
                 "initialised again in this process)",
                 path_);
    return;
  }
  {
    absl::MutexLock lock(&RegistryMutex());
    if (retired_.exchange(true, std::memory_order_acq_rel)) return;
    absl::MutexLock wake(&limit_mu_);  // callers waiting for a concurrency slot see it
    if (registered_) {
      auto& reg = Registry();
      if (auto it = reg.find(path_); it != reg.end() && it->second.lock().get() == this)
        reg.erase(it);
    }
  }
  // Outside the registry lock: a C_Finalize that hangs must not stop the next Load().
  if (initialized_ && fl_ != nullptr && fl_->C_Finalize != nullptr) {
    CK_RV rv = fl_->C_Finalize(nullptr);
    spdlog::warn("{}: finalised under calls still inside it ({})", path_, CkrName(rv));
  }
}

Module::~Module() {
  // A registered module finalises under the registry lock so that a concurrent Load() of
  // the same path cannot C_Initialize before this C_Finalize. (An unregistered one is
  // destroyed inside Load(), which already holds the lock.)
  std::unique_ptr<absl::MutexLock> lock;
  if (registered_) lock = std::make_unique<absl::MutexLock>(&RegistryMutex());
  if (initialized_ && fl_ != nullptr && !retired_.load()) {
    auto s = Call("C_Finalize", fl_->C_Finalize, nullptr);
    if (!s.ok()) spdlog::warn("{}: {}", path_, std::string(s.message()));
  }
  // Under AddressSanitizer the module stays mapped: LeakSanitizer runs at exit and can only
  // attribute (and its suppressions match) allocations made inside a module that is still
  // loaded. Production builds unload it.
  if (dl_ != nullptr && !kKeepModulesLoaded) dlclose(dl_);
  if (registered_) {
    auto& reg = Registry();
    if (auto it = reg.find(path_); it != reg.end() && it->second.expired()) reg.erase(it);
  }
}

}  // namespace hsmrewrap::hsm
