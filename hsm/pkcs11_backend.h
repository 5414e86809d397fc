// KeyBackend over a PKCS#11 token (SoftHSM2, NSS softoken, network HSMs).
//
// Keys: an RSA private key (CKA_LABEL = key name; attributes: hsm/key_policy.h) plus a
// public key object with the same label and CKA_ID. Per-key metadata (created time,
// enabled, allow_pkcs1) lives in the token (hsm/metadata_store.h), so replicas that share
// a token agree. Keys without metadata are served with defaults. What the token can do
// with each key is learned by trial at load, create and import (hsm/capability_probe.h).
//
// The class is in two files by job: hsm/key_store.cc (the key cache and the key
// lifecycle: load, list, create, import, enable) and hsm/pkcs11_backend.cc (start-up,
// health and the rewrap operations).
//
// Thread safety: all methods are thread-safe (KeyBackend contract).
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "hsm/backend.h"
#include "hsm/metadata_store.h"
#include "hsm/pkcs11.h"
#include "hsm/session_pool.h"
#include "hsm/token.h"

namespace hsmrewrap::hsm {

class Pkcs11Backend final : public KeyBackend {
 public:
  struct Options {
    std::string module_path;  // absolute path of the PKCS#11 module
    std::string init_args;    // C_Initialize pReserved (NSS softoken), may be empty
    TokenSelector token;      // label / serial / RFC 7512 URI
    crypto::SecretString user_pin;
    size_t pool_size = 4;  // working sessions (an anchor session is kept in addition)
    // Calls inside the module at once (config max_concurrency; 0: no limit): Module::LimitConcurrency.
    size_t max_concurrency = 0;
    // Permit CKM_RSA_X_509 on keys created/imported here and probe it (HOST_UNPADDING).
    bool allow_host_unpadding = false;
    // Refuse (true) or only warn about (false) keys whose attributes say extractable or
    // not sensitive. Production: true.
    bool refuse_weak_keys = true;
    absl::Duration session_wait = absl::Seconds(5);  // Acquire() deadline per operation
    absl::Duration metadata_ttl = absl::Seconds(2);  // re-read of shared metadata
  };

  static absl::StatusOr<std::unique_ptr<Pkcs11Backend>> Create(Options options);
  ~Pkcs11Backend() override;

  using KeyBackend::Decrypt;
  using KeyBackend::RewrapInToken;

  absl::StatusOr<std::vector<KeyInfo>> ListKeys() override;
  absl::StatusOr<KeyInfo> CreateKey(const std::string& name, int bits, bool allow_pkcs1) override;
  absl::StatusOr<KeyInfo> ImportKey(const std::string& name,
                                    const crypto::RsaPrivateKeyParts& parts,
                                    bool allow_pkcs1) override;
  absl::StatusOr<KeyInfo> SetEnabled(const std::string& name, bool enabled) override;
  absl::StatusOr<KeyRefPtr> Resolve(const std::string& name) override;
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
  CmsFormSet CmsInToken() override { return cms_forms_; }
  EcCmsFormSet CmsInTokenEc() override { return ec_cms_forms_; }
  std::set<RsaPadding> WrapPaddings() override { return wrap_paddings_; }
  std::string TokenLabel() override { return token_.label; }
  bool Healthy() override;

  // The cached key while it is fresh, else null. Never calls the token (the supervisor
  // uses it on the caller's thread).
  KeyRefPtr Cached(const std::string& name);

  // For the supervisor, tests and metrics.
  const Module& module() const { return pool_->module(); }
  SessionPool& pool() { return *pool_; }
  const TokenSlot& token() const { return token_; }
  // The private key's object handle as currently cached (tests read attributes with it).
  absl::StatusOr<CK_OBJECT_HANDLE> PrivateKeyHandle(const std::string& name);

 private:
  struct Entry {
    KeyRefPtr ref;
    absl::Time metadata_read;
  };

  Pkcs11Backend(Options options, TokenSlot token, std::unique_ptr<SessionPool> pool);

  absl::StatusOr<SessionPool::Lease> Lease();
  // Discards `lease`'s session (a failed attempt may have left debris in it) and leases
  // another one into it.
  absl::Status RenewLease(absl::StatusOr<SessionPool::Lease>& lease);
  // Loads a key from the token (attributes, metadata, probe) into the cache. With a known
  // `priv` handle and metadata (a key just made here) the search and the metadata read are
  // skipped.
  absl::StatusOr<KeyRefPtr> LoadKey(const std::string& name,
                                    CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE,
                                    const KeyMetadata* md = nullptr);
  absl::Status LoadAllKeys();
  // Finds the private key by label again after CKR_OBJECT_HANDLE_INVALID; updates the cache.
  absl::StatusOr<CK_OBJECT_HANDLE> Reresolve(const std::string& name);
  absl::Status CheckNewName(SessionPool::Lease& lease, const std::string& name);
  // Whether the token makes (generate) or serves (import: OAEP decryption) RSA keys of
  // `bits`, from C_GetMechanismInfo of `mech`: InvalidArgument naming the token's range when
  // not, FailedPrecondition when the token lacks the mechanism. A token that does not say
  // is let through (the call itself will tell).
  absl::Status CheckKeySize(CK_MECHANISM_TYPE mech, int bits, const char* what);
  // The status of a key generation or import the token refused, told apart from a lost
  // token: a size outside the token's range is InvalidArgument, a template or mechanism the
  // token will not take is FailedPrecondition, and so is CKR_GENERAL_ERROR /
  // CKR_FUNCTION_FAILED from a token that still answers (Healthy(): tpm2-pkcs11 answers a
  // template the TPM will not make with CKR_GENERAL_ERROR); only a token that no longer
  // answers stays Unavailable. `what`: "generate this key", "import this key".
  absl::Status KeyRefusal(const absl::Status& s, const char* what);
  // Writes the new key's metadata (destroying the key objects if that fails), then loads
  // and probes it.
  absl::StatusOr<KeyInfo> FinishNewKey(SessionPool::Lease& lease, const std::string& name,
                                       bool allow_pkcs1, CK_OBJECT_HANDLE hpriv,
                                       CK_OBJECT_HANDLE hpub);
  // A reference valid in this backend: `key` itself, or (resolved by another backend
  // instance, before a reconnect) this backend's reference to the same name.
  absl::StatusOr<KeyRefPtr> Own(const KeyRefPtr& key);
  OpResult<crypto::SecretBytes> TokenDecrypt(const KeyRef& key, CK_MECHANISM* mech,
                                             absl::Span<const uint8_t> ciphertext);
  // The first step of both in-token paths: a lease, and in it the sealed secret unwrapped
  // (C_UnwrapKey with `in_padding`) into a sensitive session object, re-resolving the key's
  // handle once after CKR_OBJECT_HANDLE_INVALID. The caller destroys the object.
  struct Unwrapped {
    SessionPool::Lease lease;
    CK_OBJECT_HANDLE secret = CK_INVALID_HANDLE;
  };
  OpResult<Unwrapped> UnwrapSealed(const KeyRef& key, RsaPadding in_padding,
                                   absl::Span<const uint8_t> ciphertext);

  const uint64_t id_;  // KeyRef::owner of the references this instance makes
  const Options options_;
  const TokenSlot token_;
  const std::unique_ptr<SessionPool> pool_;
  std::set<RsaPadding> wrap_paddings_;  // set once in Create()
  CmsFormSet cms_forms_;                 // set once in Create()
  EcCmsFormSet ec_cms_forms_;            // set once in Create()
  MetadataStore metadata_;

  absl::Mutex admin_mu_;  // serialises CreateKey/ImportKey/SetEnabled
  absl::Mutex mu_;
  std::map<std::string, Entry> keys_ ABSL_GUARDED_BY(mu_);
  // Keys RecheckKey refused (their attributes changed while they were served): name -> why.
  // Never in keys_; Resolve answers FailedPrecondition(why) without the token.
  std::map<std::string, std::string> refused_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hsmrewrap::hsm
