// A bounded pool of logged-in PKCS#11 sessions on one token.
//
// Rules (SoftHSM2 and NSS softoken share one login state per token and process, and a
// failed C_Decrypt can leave the operation active in its session):
//  - A leased session is exclusive to its holder until the Lease is destroyed.
//  - Login belongs to the pool: one C_Login(USER) for the token; sessions are closed, never
//    logged out. A refused PIN is remembered and never tried again.
//  - One anchor session stays open for the pool's life: private-key handles (and the login)
//    die when the last session of the token closes.
//  - A session is discarded (C_CloseSession) after any error that may have left operation
//    state behind: callers call Lease::MarkBroken(). Replacements are opened lazily.
//  - At most `size` working sessions are open (plus the anchor).
//
// Thread safety: all methods are thread-safe. The pool must outlive its leases.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "crypto/keys.h"
#include "crypto/secret.h"
#include "hsm/attributes.h"
#include "hsm/pkcs11.h"

namespace hsmrewrap::hsm {

class SessionPool final {
 public:
  class Lease final {
   public:
    Lease() = default;
    Lease(Lease&& other) noexcept { *this = std::move(other); }
    Lease& operator=(Lease&& other) noexcept;
    // A lease is exclusive use of one session: copying would share it.
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { Release(); }

    CK_SESSION_HANDLE handle() const { return handle_; }
    const Module& module() const;
    // The session's state is unknown: close it instead of returning it to the pool.
    void MarkBroken() { broken_ = true; }
    bool broken() const { return broken_; }
    // Returns the session now (or closes it when broken).
    void Release();

    // The session's operations (hsm/session_ops.cc). Each returns the C_ function's status
    // (hsm/pkcs11.h: Unavailable for a lost token, the CKR_ value in the message). Those
    // that can leave operation state or session objects behind when they fail mark the
    // lease broken themselves, so the session is closed instead of reused.
    absl::StatusOr<crypto::Bytes> GetAttribute(CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type);
    absl::StatusOr<bool> GetBool(CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type);
    absl::Status SetAttribute(CK_OBJECT_HANDLE obj, CK_ATTRIBUTE attribute);
    // Every object matching `t` (marks broken on failure: an unfinished search).
    absl::StatusOr<std::vector<CK_OBJECT_HANDLE>> Find(Template& t);
    absl::StatusOr<CK_OBJECT_HANDLE> Create(Template& t);
    // Marks broken when the object cannot be destroyed: session objects go with the session.
    void Destroy(CK_OBJECT_HANDLE h);
    // Destroys `h`, returning the status (for token objects a caller reports).
    absl::Status TryDestroy(CK_OBJECT_HANDLE h);
    // C_DeriveKey from `base` into a new object of template `t`.
    absl::StatusOr<CK_OBJECT_HANDLE> DeriveKey(CK_MECHANISM* mech, CK_OBJECT_HANDLE base,
                                               Template& t);
    // C_GenerateKey of a secret key with template `t`.
    absl::StatusOr<CK_OBJECT_HANDLE> GenerateKey(CK_MECHANISM* mech, Template& t);
    absl::Status GenerateKeyPair(CK_MECHANISM* mech, Template& pub, Template& priv,
                                 CK_OBJECT_HANDLE* hpub, CK_OBJECT_HANDLE* hpriv);
    // C_DecryptInit + C_Decrypt into an `out_len` buffer (the modulus length: enough for one
    // call). Marks broken on failure. *saw_ciphertext (if given) tells whether the failing
    // call was C_Decrypt (it saw the ciphertext) or C_DecryptInit (it did not).
    absl::StatusOr<crypto::SecretBytes> Decrypt(CK_MECHANISM* mech, CK_OBJECT_HANDLE key,
                                                absl::Span<const uint8_t> ct, size_t out_len,
                                                bool* saw_ciphertext = nullptr);
    // C_UnwrapKey into a new object of template `t`. Marks broken on failure.
    absl::StatusOr<CK_OBJECT_HANDLE> Unwrap(CK_MECHANISM* mech, CK_OBJECT_HANDLE key,
                                            absl::Span<const uint8_t> ct, Template& t);
    // C_WrapKey of `key` under `wrapping_key` into an `out_len` buffer. Marks broken on failure.
    absl::StatusOr<crypto::Bytes> Wrap(CK_MECHANISM* mech, CK_OBJECT_HANDLE wrapping_key,
                                       CK_OBJECT_HANDLE key, size_t out_len);
    // Whether the session still answers (C_GetSessionInfo).
    bool Answers();

   private:
    friend class SessionPool;
    Lease(SessionPool* pool, CK_SESSION_HANDLE h) : pool_(pool), handle_(h) {}
    SessionPool* pool_ = nullptr;
    CK_SESSION_HANDLE handle_ = CK_INVALID_HANDLE;
    bool broken_ = false;
  };

  // Opens the anchor session and logs in with `user_pin` (CKR_USER_ALREADY_LOGGED_IN is
  // fine). A refused PIN gives PermissionDenied. size >= 1.
  static absl::StatusOr<std::unique_ptr<SessionPool>> Create(std::shared_ptr<Module> module,
                                                             CK_SLOT_ID slot,
                                                             const crypto::SecretString& user_pin,
                                                             size_t size);
  ~SessionPool();
  SessionPool(const SessionPool&) = delete;
  SessionPool& operator=(const SessionPool&) = delete;

  // An idle session, or a newly opened one if fewer than `size` are open, or waits for one
  // to be returned until `deadline` (DeadlineExceeded).
  absl::StatusOr<Lease> Acquire(absl::Time deadline);

  const Module& module() const { return *module_; }
  const std::shared_ptr<Module>& shared_module() const { return module_; }
  CK_SLOT_ID slot() const { return slot_; }
  size_t size() const { return size_; }
  // Working sessions idle in the pool (open, not leased).
  size_t idle_sessions() const;
  // Working sessions currently open (idle + leased).
  size_t open_sessions() const;
  // Sessions discarded after errors, for metrics.
  uint64_t discarded_sessions() const;
  // A call that reaches the device behind the module: C_GenerateRandom of a few bytes on
  // the anchor session (serialised; the anchor does nothing else). C_GetTokenInfo and
  // C_GetSessionInfo can be answered by the module alone (tpm2-pkcs11 answers both from
  // memory while its TPM connection is broken). A token without a random generator
  // (CKR_RANDOM_NO_RNG, CKR_FUNCTION_NOT_SUPPORTED) has answered, so that is OK.
  absl::Status ReachDevice();

 private:
  SessionPool(std::shared_ptr<Module> module, CK_SLOT_ID slot, crypto::SecretString pin,
              size_t size)
      : module_(std::move(module)), slot_(slot), pin_(std::move(pin)), size_(size) {}

  absl::StatusOr<CK_SESSION_HANDLE> OpenSession();
  // Logs the token in through `h` unless the session already is in a user state.
  absl::Status EnsureLoggedIn(CK_SESSION_HANDLE h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(login_mu_);
  // Re-opens the anchor session if it was lost (token loss), so handles survive again.
  absl::Status EnsureAnchor();
  void CloseSession(CK_SESSION_HANDLE h);
  void Return(CK_SESSION_HANDLE h, bool broken);

  const std::shared_ptr<Module> module_;
  const CK_SLOT_ID slot_;
  const crypto::SecretString pin_;
  const size_t size_;

  // Serialises login and anchor re-opening.
  absl::Mutex login_mu_;
  bool pin_refused_ ABSL_GUARDED_BY(login_mu_) = false;
  CK_SESSION_HANDLE anchor_ ABSL_GUARDED_BY(login_mu_) = CK_INVALID_HANDLE;

  mutable absl::Mutex mu_;
  std::vector<CK_SESSION_HANDLE> idle_ ABSL_GUARDED_BY(mu_);
  size_t open_ ABSL_GUARDED_BY(mu_) = 0;  // idle + leased + being opened
  uint64_t discarded_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace hsmrewrap::hsm
