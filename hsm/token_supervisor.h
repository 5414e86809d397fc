// Token-loss recovery: a KeyBackend that owns the PKCS#11 backend (hsm/pkcs11_backend.h)
// and replaces it when the token is lost.
//
//  - Every call runs on a thread of the supervisor's CallRunner (hsm/call_runner.h), never
//    on the caller's: when the token is declared lost, every caller whose call has not
//    returned is answered Unavailable at once, whatever the module does; a thread stuck
//    inside the module is abandoned (counted in stuck_calls()) and new calls get new threads.
//  - Up: calls go to the current backend. A background thread checks Healthy() every
//    `check_interval` (and at once after a call failed Unavailable); three failed checks
//    in a row (50 ms apart, so one injected or transient error is not a loss) mark the
//    token lost, and so does one check that does not answer within `call_timeout`, or any
//    call that has been inside the module for longer than its limit (`call_timeout` for
//    rewrap operations, `admin_call_timeout` for key management and key reads).
//  - Lost: every call fails Unavailable at once, without touching the token. The thread
//    drops the old backend (after at most `drain_wait` for its calls to return; a module
//    with calls still inside is finalised under them), then calls the factory (C_Initialize,
//    token selection, login, new session pool, keys and handles loaded again) with
//    exponential backoff from `initial_backoff` to `max_backoff`. The thread sleeps in
//    between: no busy loop while the token is gone. The reconnect never waits for stuck calls.
//  - A refused PIN (PermissionDenied from the factory or from a call) is terminal: no
//    retry, Healthy() stays false, logged once as an error.
//  - A decryption failure is re-checked against the token's liveness before it is
//    returned: if the token no longer answers C_GetTokenInfo the call is retryable
//    (Unavailable): a dying token must not make good items look like bad ciphertexts.
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
#include "hsm/call_runner.h"
#include "hsm/pkcs11.h"
#include "hsm/pkcs11_backend.h"

namespace hsmrewrap::hsm {

class TokenSupervisor final : public KeyBackend {
 public:
  enum class State { kUp, kLost, kPinRefused };
  static const char* StateName(State s);

  struct Options {
    absl::Duration check_interval = absl::Milliseconds(200);
    absl::Duration initial_backoff = absl::Milliseconds(100);
    absl::Duration max_backoff = absl::Seconds(2);
    // A rewrap operation or health check (C_GetTokenInfo) inside the module for longer than
    // this is a lost token (config token_call_timeout_s). Far above any real operation (RSA
    // on a TPM: < 1 s); a health check waits as long, since modules that serialise calls
    // (p11-kit's RPC server, a TPM resource manager) answer it only after the calls ahead.
    absl::Duration call_timeout = absl::Seconds(10);
    // A health check that has not answered after this is a lost token (unless key management
    // is running: then the check may take as long as that call's limit).
    absl::Duration probe_timeout = absl::Seconds(1);
    // The same for key management and key reads (generation, import, loading and probing
    // keys: seconds to minutes on a TPM or an HSM). While such a call runs, a health check
    // may wait as long.
    absl::Duration admin_call_timeout = absl::Seconds(300);
    // How long a lost backend's in-flight calls may take to return before its module is
    // finalised under them (they have been answered already; this only lets a module that
    // answers quickly be finalised cleanly).
    absl::Duration drain_wait = absl::Milliseconds(200);
    // The token's name in log lines (config tokens: name); empty: "token".
    std::string name;
    // A token that is unavailable at start-up (the factory fails with a retryable status:
    // Unavailable, ...) starts Lost and is re-initialised like a lost token, instead of
    // failing Create. For members of a set: the others serve meanwhile.
    bool start_lost_when_unavailable = false;
  };
  // Makes a new backend: loads/initialises the module, selects the token, logs in.
  using Factory = std::function<absl::StatusOr<std::unique_ptr<Pkcs11Backend>>()>;

  // Calls `factory` once; its error is returned (start-up does not retry), except a
  // retryable one with start_lost_when_unavailable.
  static absl::StatusOr<std::unique_ptr<TokenSupervisor>> Create(Factory factory, Options options);
  ~TokenSupervisor() override;                       // stops the thread
  TokenSupervisor(const TokenSupervisor&) = delete;  // owns a thread
  TokenSupervisor& operator=(const TokenSupervisor&) = delete;

  using KeyBackend::Decrypt;
  using KeyBackend::RewrapInToken;

  absl::StatusOr<std::vector<KeyInfo>> ListKeys() override;
  absl::StatusOr<KeyInfo> CreateKey(const std::string& name, int bits, bool allow_pkcs1) override;
  absl::StatusOr<KeyInfo> ImportKey(const std::string& name,
                                    const crypto::RsaPrivateKeyParts& parts,
                                    bool allow_pkcs1) override;
  absl::StatusOr<KeyInfo> SetEnabled(const std::string& name, bool enabled) override;
  // A fresh cached key is answered on the caller's thread (no token call); otherwise the
  // backend resolves it on a runner thread like every other token call.
  absl::StatusOr<KeyRefPtr> Resolve(const std::string& name) override;
  // On a runner thread, like every key read (never answered from the cache).
  absl::Status RecheckKey(const std::string& name) override;
  OpResult<crypto::SecretBytes> Decrypt(const KeyRefPtr& key, RsaPadding padding,
                                        absl::Span<const uint8_t> ciphertext, Path path) override;
  OpResult<Bytes> RewrapInToken(const KeyRefPtr& key, RsaPadding in_padding,
                                absl::Span<const uint8_t> ciphertext,
                                const crypto::PublicKey& device_key,
                                RsaPadding out_padding) override;
  OpResult<crypto::CmsTokenParts> EnvelopeInToken(const KeyRefPtr& key, RsaPadding in_padding,
                                                     absl::Span<const uint8_t> ciphertext,
                                                     const crypto::PublicKey& device_key,
                                                     const crypto::CmsOptions& options) override;
  CmsFormSet CmsInToken() override;
  EcCmsFormSet CmsInTokenEc() override;
  std::set<RsaPadding> WrapPaddings() override;
  std::string TokenLabel() override;
  // True while the state is Up (no token call: the thread keeps the state current).
  bool Healthy() override;

  State state() const;
  // Successful re-initialisations since start.
  uint64_t reconnects() const;
  // Token calls abandoned (answered Unavailable at a token loss, or a health check that did
  // not answer) whose thread is still inside the module; and all ever abandoned.
  size_t stuck_calls() const { return runner_.stuck(); }
  uint64_t abandoned_calls() const { return runner_.abandoned_total(); }
  // Seconds the last completed outage lasted (loss detected -> serving again); 0 if none.
  double last_outage_seconds() const;
  // PKCS#11 call counters summed over every module instance this supervisor has used (so
  // they never go backwards across a re-initialisation).
  std::vector<CallStat> CallStats() const;
  struct PoolStats {
    size_t size = 0, open = 0, idle = 0;
    uint64_t discarded = 0;  // summed over every pool
  };
  PoolStats pool_stats() const;
  // Set on the current module and on every module loaded later (metrics). Null clears it.
  void SetCallObserver(Module::CallObserver observer);

  // The current backend (null while lost). For tests.
  std::shared_ptr<Pkcs11Backend> current() const;

 private:
  TokenSupervisor(Factory factory, Options options)
      : factory_(std::move(factory)), options_(options) {}

  // The backend to use for a call and its generation (the CallRunner tag of its calls), or
  // Unavailable while the token is lost.
  absl::StatusOr<std::pair<std::shared_ptr<Pkcs11Backend>, uint64_t>> Use() const;
  // Looks at a call's result: Unavailable wakes the thread for a check at once; a refused
  // PIN makes the state terminal.
  void Observe(const absl::Status& s);
  // Runs op(backend) on a runner thread; `fail` turns a status into a T (lost token,
  // abandoned call). Everything `op` captures must be owned by it: an abandoned call goes on
  // running after its caller has returned.
  template <typename T>
  T OnToken(std::function<T(Pkcs11Backend&)> op, std::function<T(absl::Status)> fail,
            absl::Duration limit);
  template <typename T>
  absl::StatusOr<T> KeyCall(std::function<absl::StatusOr<T>(Pkcs11Backend&)> op);

  void Run();
  // "token 'NAME'" or "token", for log lines.
  std::string Who() const;
  // OK, or why the token counts as lost (three failed checks, or one that did not answer).
  absl::Status CheckHealthy(const std::shared_ptr<Pkcs11Backend>& b, uint64_t generation);
  void MarkLost(const std::string& why);
  absl::Status Reconnect();
  void Retire(std::shared_ptr<Pkcs11Backend> old);
  void Install(std::shared_ptr<Pkcs11Backend> b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sleeps up to `d` (less if stopping, or with wake_on_suspect when a call failed
  // Unavailable); returns false when stopping.
  bool Sleep(absl::Duration d, bool wake_on_suspect = false);

  const Factory factory_;
  const Options options_;

  mutable absl::Mutex mu_;
  std::shared_ptr<Pkcs11Backend> current_ ABSL_GUARDED_BY(mu_);
  State state_ ABSL_GUARDED_BY(mu_) = State::kUp;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool suspect_ ABSL_GUARDED_BY(mu_) = false;
  std::string label_ ABSL_GUARDED_BY(mu_);
  std::set<RsaPadding> wrap_paddings_ ABSL_GUARDED_BY(mu_);
  CmsFormSet cms_forms_ ABSL_GUARDED_BY(mu_);
  EcCmsFormSet ec_cms_forms_ ABSL_GUARDED_BY(mu_);
  uint64_t reconnects_ ABSL_GUARDED_BY(mu_) = 0;
  double last_outage_s_ ABSL_GUARDED_BY(mu_) = 0;
  Module::CallObserver observer_ ABSL_GUARDED_BY(mu_);
  // Counters of modules no longer used, and discarded sessions of retired pools.
  std::map<std::string, CallStat> retired_calls_ ABSL_GUARDED_BY(mu_);
  uint64_t retired_discarded_ ABSL_GUARDED_BY(mu_) = 0;
  size_t pool_size_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;  // raised by every Install()

  CallRunner runner_;
  std::thread thread_;
};

}  // namespace hsmrewrap::hsm
