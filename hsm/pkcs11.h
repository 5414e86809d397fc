// Safe C++ over the raw Cryptoki API: the header we compile against, CK_RV names, the
// one choke point through which every C_* call goes, and the loaded module.
//
// Thread safety: Module is immutable after Load() except for its atomic counters; every
// method may be called from many threads (the module itself is initialised with
// CKF_OS_LOCKING_OK: without it SoftHSM2 turns off its own locking).
#pragma once

#include <p11-kit/pkcs11.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

// We compile against p11-kit's Cryptoki 2.40 header and load vendor modules by path. A
// different header version could change struct layouts silently.
static_assert(CRYPTOKI_VERSION_MAJOR == 2 && CRYPTOKI_VERSION_MINOR == 40,
              "hsm/ is written against the Cryptoki 2.40 header of p11-kit");

namespace hsmrewrap::hsm {

// "CKR_GENERAL_ERROR" etc.; "CKR_VENDOR_DEFINED+0x..." is not produced: unknown values
// give "CKR_UNKNOWN".
const char* CkrName(CK_RV rv);

// Maps a failed call to a status naming the function and the CKR_ value; the CK_RV is
// kept as a payload (CkrOf) so callers can branch on it without parsing text.
//  - device/session/token loss, CKR_GENERAL_ERROR, CKR_CRYPTOKI_NOT_INITIALIZED -> Unavailable
//  - CKR_PIN_INCORRECT/LOCKED/EXPIRED -> PermissionDenied
//  - CKR_MECHANISM_INVALID/PARAM_INVALID, CKR_FUNCTION_NOT_SUPPORTED -> Unimplemented
//  - object/key handle invalid -> NotFound
//  - everything else -> Internal (or FailedPrecondition for state errors)
// The decrypt paths re-classify CKR_GENERAL_ERROR themselves (SoftHSM reports bad
// padding as CKR_GENERAL_ERROR from C_Decrypt).
absl::Status CkrToStatus(absl::string_view function, CK_RV rv);
// The CK_RV carried by a status from CkrToStatus; CKR_OK for an OK status; CKR_GENERAL_ERROR
// for a non-OK status that did not come from a C_ call.
CK_RV CkrOf(const absl::Status& s);
// True for return values that mean the token, slot or session is gone (not the request).
bool IsTokenLossRv(CK_RV rv);

// Per-function call counters, for metrics.
struct CallStat {
  std::string function;
  uint64_t calls = 0;
  uint64_t errors = 0;
};

class Module final {
 public:
  // dlopen()s `path` (absolute), C_GetFunctionList, C_Initialize with CKF_OS_LOCKING_OK
  // and, when `init_args` is not empty, pReserved = init_args (NSS softoken). A module
  // can be initialised once per process, so Load() of a path that is already loaded
  // returns the same instance (init_args must then be equal). C_Finalize + dlclose when
  // the last reference goes away.
  static absl::StatusOr<std::shared_ptr<Module>> Load(const std::string& path,
                                                      const std::string& init_args);
  ~Module();
  // Owns a dlopen handle and the module's initialised state: not copyable or movable.
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // The choke point: every C_* call goes through here. Counts the call (and errors) under
  // `name`, refuses a null function pointer, maps the CK_RV with CkrToStatus.
  //   module.Call("C_Decrypt", module.fl()->C_Decrypt, session, in, in_len, out, &out_len);
  template <typename Fn, typename... Args>
  absl::Status Call(const char* name, Fn fn, Args... args) const {
    Counter& c = CounterFor(name);
    c.calls.fetch_add(1, std::memory_order_relaxed);
    if (retired_.load(std::memory_order_acquire)) {  // finalised under its callers: refuse
      c.errors.fetch_add(1, std::memory_order_relaxed);
      return CkrToStatus(name, CKR_CRYPTOKI_NOT_INITIALIZED);
    }
    if (fn == nullptr) {
      c.errors.fetch_add(1, std::memory_order_relaxed);
      return absl::UnimplementedError(std::string(name) + " is not provided by the module");
    }
    Permit permit(*this);  // max_concurrency: wait for a slot (no-op without a limit)
    if (!permit.granted()) {  // retired while it waited
      c.errors.fetch_add(1, std::memory_order_relaxed);
      return CkrToStatus(name, CKR_CRYPTOKI_NOT_INITIALIZED);
    }
    const auto start = std::chrono::steady_clock::now();
    CK_RV rv = fn(args...);
    // Loaded after the call: an observer cleared meanwhile (shutdown) is not called.
    if (auto observer = std::atomic_load_explicit(&observer_, std::memory_order_acquire)) {
      (*observer)(name, rv == CKR_OK,
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    if (rv == CKR_OK) return absl::OkStatus();
    c.errors.fetch_add(1, std::memory_order_relaxed);
    return CkrToStatus(name, rv);
  }

  // Every later call reports its function, success and duration here (metrics). May be set
  // or cleared (null) at any time, while other threads call the module.
  using CallObserver = std::function<void(const char* function, bool ok, double seconds)>;
  void SetCallObserver(CallObserver observer) {
    std::shared_ptr<const CallObserver> p;
    if (observer) p = std::make_shared<const CallObserver>(std::move(observer));
    std::atomic_store_explicit(&observer_, std::move(p), std::memory_order_release);
  }

  // At most `n` calls inside the module at once (0: no limit), for modules that take one
  // call at a time (a TPM reached without a resource manager) or fail under more: callers
  // wait for a slot instead of getting the module's errors. Module-wide (every token of the
  // module); the lowest limit any user sets wins.
  void LimitConcurrency(size_t n);
  size_t max_concurrency() const;

  // Token lost and calls stuck inside the module (p11-kit 0.24.1's client module can leave
  // threads waiting forever for answers from a dead server): C_Finalize now, under them,
  // which tears down the module's connection; this Module refuses every later call (its
  // session handles would mean other sessions once the library is initialised again), and
  // the next Load() of the path initialises the library afresh.
  void Retire();
  bool retired() const { return retired_.load(); }

  CK_FUNCTION_LIST* fl() const { return fl_; }
  const std::string& path() const { return path_; }
  // Library description/manufacturer from C_GetInfo.
  const std::string& description() const { return description_; }
  // Calls into this module are made one at a time (a process-wide mutex around every call
  // but Retire's C_Finalize): modules known to crash under concurrent calls. tpm2-pkcs11
  // 1.9.0 ("tpm2-software.github.io / TPM2.0 Cryptoki") takes CKF_OS_LOCKING_OK but
  // segfaults in C_DecryptInit while another thread is in C_GetSessionInfo (8 threads
  // decrypting: about one run in three); its TPM serialises commands anyway.
  bool serialized() const { return max_concurrency() == 1; }
  // Kept initialised for the process's life, never finalised (Retire() included): modules
  // that crash when initialised a second time (openCryptoki 3.8.1).
  bool pinned() const { return pinned_; }
  std::vector<CallStat> CallStats() const;

 private:
  struct Counter {
    std::atomic<uint64_t> calls{0};
    std::atomic<uint64_t> errors{0};
  };
  static constexpr size_t kMaxFunctions = 80;

  Module() = default;
  Counter& CounterFor(const char* name) const;

  // A slot of LimitConcurrency for the life of one call.
  class Permit {
   public:
    explicit Permit(const Module& m);
    ~Permit();
    Permit(const Permit&) = delete;
    Permit& operator=(const Permit&) = delete;
    // False when the module was retired while the caller waited for a slot.
    bool granted() const { return granted_; }

   private:
    const Module* m_ = nullptr;  // set while holding a slot
    bool granted_ = true;
  };
  mutable absl::Mutex limit_mu_;
  size_t limit_ ABSL_GUARDED_BY(limit_mu_) = 0;
  mutable size_t inside_ ABSL_GUARDED_BY(limit_mu_) = 0;
  std::atomic<bool> limited_{false};

  std::string path_;
  std::string init_args_;
  std::string description_;
  void* dl_ = nullptr;
  CK_FUNCTION_LIST* fl_ = nullptr;
  bool initialized_ = false;
  std::shared_ptr<const CallObserver> observer_;  // atomic_load/atomic_store only
  bool registered_ = false;
  std::atomic<bool> retired_{false};
  bool pinned_ = false;  // never finalised: Load() keeps a reference for the process's life
  // Index i counts the function KnownFunctions()[i]; the last slot counts unknown names.
  mutable std::array<Counter, kMaxFunctions + 1> counters_;
};

// Reads a blank-padded fixed-size Cryptoki string (labels, serials) without the padding.
std::string PaddedString(const unsigned char* p, size_t n);

}  // namespace hsmrewrap::hsm
