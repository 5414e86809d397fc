// KeyBackend over a PKCS#11 token (SoftHSM2, NSS softoken, network HSMs).
//
// Keys: an RSA private key (CKA_LABEL = key name, sensitive, never extractable, decrypt
// and unwrap only) plus a public key object with the same label and CKA_ID. Per-key
// metadata (created time, enabled, allow_pkcs1) lives in the token as a CKO_DATA object
// (CKA_APPLICATION "hsm-rewrap", CKA_LABEL = key name, CKA_VALUE = JSON), so replicas
// that share a token agree. Keys without metadata are served with defaults.
//
// What the token can do with each key is learned by trial at load/create/import (the
// mechanism list is not enough, TOKENS.md §1).
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

  absl::StatusOr<std::vector<KeyInfo>> ListKeys() override;
  absl::StatusOr<KeyInfo> GetKey(const std::string& name) override;
  absl::StatusOr<KeyInfo> CreateKey(const std::string& name, int bits, bool allow_pkcs1) override;
  absl::StatusOr<KeyInfo> ImportKey(const std::string& name,
                                    const crypto::RsaPrivateKeyParts& parts,
                                    bool allow_pkcs1) override;
  absl::StatusOr<KeyInfo> SetEnabled(const std::string& name, bool enabled) override;
  OpResult<crypto::SecretBytes> Decrypt(const std::string& key_name, RsaPadding padding,
                                        absl::Span<const uint8_t> ciphertext, Path path) override;
  OpResult<Bytes> RewrapInToken(const std::string& key_name, RsaPadding in_padding,
                                absl::Span<const uint8_t> ciphertext,
                                const crypto::PublicKey& device_key,
                                RsaPadding out_padding) override;
  std::set<RsaPadding> WrapPaddings() override { return wrap_paddings_; }
  std::string TokenLabel() override { return token_.label; }
  bool Healthy() override;

  // For tests and metrics.
  const Module& module() const { return pool_->module(); }
  SessionPool& pool() { return *pool_; }
  const TokenSlot& token() const { return token_; }
  // The private key's object handle as currently cached (tests read attributes with it).
  absl::StatusOr<CK_OBJECT_HANDLE> PrivateKeyHandle(const std::string& name);

 private:
  struct Metadata {
    int64_t created_unix = 0;
    bool enabled = true;
    bool allow_pkcs1 = false;
    bool present = false;  // a metadata object exists in the token
    uint64_t seq = 0;      // version: raised by every write; the highest object wins
  };
  struct Entry {
    KeyInfo info;
    CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE;
    size_t modulus_len = 0;
    absl::Time metadata_read;
  };

  Pkcs11Backend(Options options, TokenSlot token, std::unique_ptr<SessionPool> pool)
      : options_(std::move(options)), token_(std::move(token)), pool_(std::move(pool)) {}

  absl::StatusOr<SessionPool::Lease> Lease();
  // Loads a key from the token (attributes, metadata, probe) into keys_.
  absl::StatusOr<KeyInfo> LoadKey(const std::string& name);
  absl::Status LoadAllKeys();
  // The key's current metadata; *objects (if given) gets every metadata object of the key,
  // the current one first.
  absl::StatusOr<Metadata> ReadMetadata(SessionPool::Lease& lease, const std::string& name,
                                        std::vector<CK_OBJECT_HANDLE>* objects);
  absl::Status WriteMetadata(const std::string& name, const Metadata& md);
  absl::StatusOr<KeyCapabilities> Probe(CK_OBJECT_HANDLE priv, const crypto::PublicKey& pub,
                                        bool allow_pkcs1);
  absl::Status ProbeWrapPaddings();
  absl::StatusOr<Entry> Lookup(const std::string& name);
  // Finds the private key by label again after CKR_OBJECT_HANDLE_INVALID.
  absl::StatusOr<CK_OBJECT_HANDLE> Reresolve(const std::string& name);
  absl::Status CheckNewName(SessionPool::Lease& lease, const std::string& name);
  // Writes the new key's metadata (destroying the key objects if that fails), then loads
  // and probes it.
  absl::StatusOr<KeyInfo> FinishNewKey(const std::string& name, bool allow_pkcs1,
                                       CK_OBJECT_HANDLE hpriv, CK_OBJECT_HANDLE hpub);
  OpResult<crypto::SecretBytes> TokenDecrypt(const std::string& name, CK_MECHANISM* mech,
                                             absl::Span<const uint8_t> ciphertext);

  const Options options_;
  const TokenSlot token_;
  const std::unique_ptr<SessionPool> pool_;
  std::set<RsaPadding> wrap_paddings_;  // set once in Create()

  // Tokens that refuse CKO_DATA token objects (NSS softoken 3.87: CKR_ATTRIBUTE_VALUE_INVALID
  // for CKA_TOKEN=TRUE) keep metadata in this process only; loudly reported.
  std::atomic<bool> metadata_in_token_{true};
  absl::Mutex local_md_mu_;
  std::map<std::string, Metadata> local_md_ ABSL_GUARDED_BY(local_md_mu_);

  absl::Mutex admin_mu_;  // serialises CreateKey/ImportKey/SetEnabled
  absl::Mutex mu_;
  std::map<std::string, Entry> keys_ ABSL_GUARDED_BY(mu_);
};

}  // namespace hsmrewrap::hsm
