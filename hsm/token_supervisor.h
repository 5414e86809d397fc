// Token-loss recovery: a KeyBackend that owns the real backend (normally a Pkcs11Backend)
// and replaces it when the token is lost.
//
//  - Up: calls go to the current backend. A background thread checks Healthy() every
//    `check_interval` (and at once after a call failed Unavailable); three failed checks
//    in a row (50 ms apart, so one injected or transient error is not a loss) mark the
//    token lost.
//  - Lost: every call fails Unavailable at once, without touching the token. The thread
//    drops the old backend (waiting for its in-flight calls to return, so the module can
//    be C_Finalize'd and loaded again), then calls the factory (C_Initialize, token
//    selection, login, new session pool, keys and handles loaded again) with exponential
//    backoff from `initial_backoff` to `max_backoff`. The thread sleeps in between: no busy
//    loop while the token is gone.
//  - A refused PIN (PermissionDenied from the factory or from a call) is terminal: no
//    retry, Healthy() stays false, logged once as an error.
//  - A decryption failure is re-checked against the token's liveness before it is
//    returned: if the token no longer answers C_GetTokenInfo the call fails Unavailable
//    (a dying token must not make good items look like bad ciphertexts).
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "hsm/backend.h"
#include "hsm/pkcs11.h"

namespace hsmrewrap::hsm {

class TokenSupervisor final : public KeyBackend {
 public:
  enum class State { kUp, kLost, kPinRefused };
  static const char* StateName(State s);

  struct Options {
    absl::Duration check_interval = absl::Milliseconds(200);
    absl::Duration initial_backoff = absl::Milliseconds(100);
    absl::Duration max_backoff = absl::Seconds(2);
    // How long a lost backend's in-flight calls may take to return before it is dropped
    // anyway (the module is then re-initialised only once they have).
    // After that, a module with calls stuck inside it is finalised under them
    // (Module::Retire) and, after as long again, the backend is dropped anyway.
    absl::Duration drain_wait = absl::Seconds(1);
  };
  // Makes a new backend: loads/initialises the module, selects the token, logs in.
  using Factory = std::function<absl::StatusOr<std::unique_ptr<KeyBackend>>()>;

  // Calls `factory` once; its error is returned (start-up does not retry).
  static absl::StatusOr<std::unique_ptr<TokenSupervisor>> Create(Factory factory, Options options);
  ~TokenSupervisor() override;  // stops the thread
  TokenSupervisor(const TokenSupervisor&) = delete;  // owns a thread
  TokenSupervisor& operator=(const TokenSupervisor&) = delete;

  absl::StatusOr<std::vector<KeyInfo>> ListKeys() override;
  absl::StatusOr<KeyInfo> GetKey(const std::string& name) override;
  absl::StatusOr<KeyInfo> CreateKey(const std::string& name, int bits, bool allow_pkcs1) override;
  absl::StatusOr<KeyInfo> ImportKey(const std::string& name, const crypto::RsaPrivateKeyParts& parts,
                                    bool allow_pkcs1) override;
  absl::StatusOr<KeyInfo> SetEnabled(const std::string& name, bool enabled) override;
  absl::StatusOr<crypto::SecretBytes> Decrypt(const std::string& key_name, RsaPadding padding,
                                              absl::Span<const uint8_t> ciphertext, Path path) override;
  absl::StatusOr<Bytes> RewrapInToken(const std::string& key_name, RsaPadding in_padding,
                                      absl::Span<const uint8_t> ciphertext, const crypto::PublicKey& device_key,
                                      RsaPadding out_padding) override;
  std::set<RsaPadding> WrapPaddings() override;
  std::string TokenLabel() override;
  // True while the state is Up (no token call: the thread keeps the state current).
  bool Healthy() override;

  State state() const;
  // Successful re-initialisations since start.
  uint64_t reconnects() const;
  // Seconds the last completed outage lasted (loss detected -> serving again); 0 if none.
  double last_outage_seconds() const;
  // PKCS#11 call counters summed over every module instance this supervisor has used (so
  // they never go backwards across a re-initialisation). Empty for non-PKCS#11 backends.
  std::vector<CallStat> CallStats() const;
  struct PoolStats {
    size_t size = 0, open = 0, idle = 0;
    uint64_t discarded = 0;  // summed over every pool
  };
  PoolStats pool_stats() const;
  // Set on the current module and on every module loaded later (metrics). Null clears it.
  void SetCallObserver(Module::CallObserver observer);

  // The current backend (null while lost). For tests.
  std::shared_ptr<KeyBackend> current() const;

 private:
  TokenSupervisor(Factory factory, Options options) : factory_(std::move(factory)), options_(options) {}

  // The backend to use for a call, or Unavailable while the token is lost.
  absl::StatusOr<std::shared_ptr<KeyBackend>> Use() const;
  // Looks at a call's result: Unavailable wakes the thread for a check at once; a refused
  // PIN makes the state terminal.
  void Observe(const absl::Status& s);
  // Returns `s`, or Unavailable if `s` is a decryption failure and the token has gone.
  absl::Status Recheck(KeyBackend& b, absl::Status s);
  template <typename T>
  absl::StatusOr<T> Checked(KeyBackend& b, absl::StatusOr<T> r);

  void Run();
  bool CheckHealthy(KeyBackend& b);
  void MarkLost(const std::string& why);
  absl::Status Reconnect();
  void Retire(std::shared_ptr<KeyBackend> old);
  void Install(std::shared_ptr<KeyBackend> b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sleeps up to `d` (less if stopping, or with wake_on_suspect when a call failed
  // Unavailable); returns false when stopping.
  bool Sleep(absl::Duration d, bool wake_on_suspect = false);

  const Factory factory_;
  const Options options_;

  mutable absl::Mutex mu_;
  std::shared_ptr<KeyBackend> current_ ABSL_GUARDED_BY(mu_);
  State state_ ABSL_GUARDED_BY(mu_) = State::kUp;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool suspect_ ABSL_GUARDED_BY(mu_) = false;
  std::string label_ ABSL_GUARDED_BY(mu_);
  std::set<RsaPadding> wrap_paddings_ ABSL_GUARDED_BY(mu_);
  uint64_t reconnects_ ABSL_GUARDED_BY(mu_) = 0;
  double last_outage_s_ ABSL_GUARDED_BY(mu_) = 0;
  Module::CallObserver observer_ ABSL_GUARDED_BY(mu_);
  // Counters of modules no longer used, and discarded sessions of retired pools.
  std::map<std::string, CallStat> retired_calls_ ABSL_GUARDED_BY(mu_);
  uint64_t retired_discarded_ ABSL_GUARDED_BY(mu_) = 0;
  size_t pool_size_ ABSL_GUARDED_BY(mu_) = 0;

  std::thread thread_;
};

}  // namespace hsmrewrap::hsm
