// Who may do what: the policy file (--policy, YAML; annotated example in
// deploy/policy.example.yaml) maps caller identities (service/tls.h) to RPC classes, service
// keys, recipients and rate limits. `Security` applies it per call: a denied RPC is gRPC
// PERMISSION_DENIED; in a batch a denied item fails alone (ItemError PERMISSION_DENIED).
//
// Without a policy file every caller may do everything: on loopback / insecure plaintext
// that is the development mode; with mTLS it means every client certificate the CA
// vouches for (logged as a warning at start-up).
#pragma once

#include <grpcpp/server_context.h>
#include <openssl/asn1.h>
#include <openssl/x509_vfy.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "crypto/keys.h"
#include "service/audit.h"
#include "service/engine.h"
#include "service/rate_limit.h"
#include "service/tls.h"

namespace hsmrewrap::service {

// RPC classes of the policy: Rewrap/RewrapStream; ListKeys/GetPublicKey/SelfTest;
// CreateKey/ImportKey/EnableKey/DisableKey.
enum class RpcClass { kRewrap, kKeysRead, kKeysAdmin };
const char* RpcClassName(RpcClass c);  // "rewrap", "keys.read", "keys.admin"

// decrypt_failures_per_hour of a policy entry that does not set it.
inline constexpr uint32_t kDefaultDecryptFailuresPerHour = 100;

class Policy {
 public:
  struct Recipients {
    // X.509 stores built from `ca_files`: a certificate recipient must chain to one (and be
    // within its validity period) ...
    std::vector<std::shared_ptr<X509_STORE>> ca_stores;
    std::vector<std::string> ca_files;
    // ... or have its SHA-256 (of the DER certificate) listed here (validity still checked).
    // A raw public key recipient is allowed when raw_public_keys is true, or when the SHA-256
    // of its SubjectPublicKeyInfo is listed here.
    std::set<std::string> fingerprints;
    bool raw_public_keys = false;
    std::set<std::string> service_keys;  // service_key recipients (rotation); "*" = any
    // `require_eku`: when not empty, a certificate recipient (CA-chained or listed) must
    // carry at least one of these in extendedKeyUsage; anyExtendedKeyUsage does not count.
    struct Eku {
      std::string name;  // for messages: "emailProtection (1.3.6.1.5.5.7.3.4)"
      std::shared_ptr<ASN1_OBJECT> oid;
    };
    std::vector<Eku> require_eku;
  };
  struct Client {
    std::string name;  // label for logs, audit and rate limits
    // Typed certificate names, as ParseIdentity writes them: "uri:<URI SAN>", "cn:<CN>".
    std::set<std::string> identities;
    bool anonymous = false;  // matches callers without a client certificate
    std::set<RpcClass> rpcs;
    std::set<std::string> keys;  // service key names; "*" = any
    Recipients recipients;
    RateLimits limits;

    bool AllowsKey(const std::string& key) const { return keys.count("*") || keys.count(key); }
    // The certificate's source (ca_files / fingerprints, validity) and require_eku.
    // Encryption use (keyUsage, CA:TRUE) is the engine's check, made for every certificate
    // recipient before this one (crypto::CheckEncryptionUse, crypto/cert_use.h).
    absl::Status CheckCertificate(const crypto::Certificate& cert) const;
    absl::Status CheckRequiredEku(const crypto::Certificate& cert) const;
    absl::Status CheckPublicKey(const crypto::PublicKey& key) const;
    absl::Status CheckServiceKey(const std::string& name) const;
  };

  // Parses and checks a policy file; errors name the file and the entry.
  static absl::StatusOr<std::shared_ptr<const Policy>> Load(const std::string& path);

  // One identity of a policy entry, typed: "uri:X" and "cn:X" as written (the prefix in any
  // case); a bare string that starts like a URI (a scheme: ^[A-Za-z][A-Za-z0-9+.-]*:, as
  // in "spiffe://...") is "uri:" only, any other bare string "cn:" only.
  static absl::StatusOr<std::string> ParseIdentity(const std::string& text);

  // The client entry for `id` and the name that matched it ("uri:...", "cn:...", or
  // "anonymous"); client null when no entry names the caller (then it may do nothing).
  // PERMISSION_DENIED when the certificate's names match two or more entries: its rights
  // would depend on the order of the file.
  struct Match {
    const Client* client = nullptr;
    std::string matched;
  };
  absl::StatusOr<Match> Find(const Identity& id) const;
  const std::vector<Client>& clients() const { return clients_; }

  // The policy file's `keys:` section: settings per service key name ("*": every key).
  struct KeySettings {
    // Items of this key must take the IN_TOKEN path; those that cannot fail UNSUPPORTED
    // (naming what the token lacks) instead of falling back to TOKEN_DECRYPT.
    bool require_in_token = false;
  };
  bool RequireInToken(const std::string& key) const;

 private:
  std::vector<Client> clients_;
  std::map<std::string, KeySettings> keys_;
};

// The transport and policy settings put together, shared by the gRPC adapters.
class Security {
 public:
  // `policy_path` empty = no policy (see above); `audit` may be null.
  static absl::StatusOr<std::unique_ptr<Security>> Create(const std::string& policy_path,
                                                          std::unique_ptr<AuditLog> audit);

  // Re-reads the policy file (SIGHUP). On error the old policy stays and the error is
  // returned (and logged by the caller). Calls already running keep the policy they began with.
  absl::Status Reload();

  // Authorizes a call of `rpc_class` named `rpc`. PERMISSION_DENIED (naming the identity)
  // when the caller may not. A broken audit log refuses the call's work later: rewrap
  // items in the ItemGate (UNAVAILABLE), key RPCs in BeginKeyCall.
  // For rewraps the result carries an ItemGate for the engine.
  struct Call {
    Identity identity;
    std::string who;                         // the client entry's name, else identity.primary()
    std::string matched;                     // the name that matched the entry (audit), or ""
    std::shared_ptr<const Policy> policy;    // null: no policy file
    const Policy::Client* client = nullptr;  // null when policy is null
    std::string rpc;
    bool AllowsKey(const std::string& key) const {
      return client == nullptr || client->AllowsKey(key);
    }
  };
  absl::StatusOr<Call> Authorize(const grpc::ServerContextBase& ctx, RpcClass rpc_class,
                                 const char* rpc);
  // The same decision again for a call already running (an open stream's next batch), against
  // the policy in force now: a right a reload removed is gone for open streams too. Refusals
  // are audited as in Authorize.
  absl::StatusOr<Call> Reauthorize(const Call& call, RpcClass rpc_class);
  std::shared_ptr<ItemGate> GateFor(Call call);

  // Key RPCs fail closed with the audit log, as rewraps do. Before a key RPC's work:
  // UNAVAILABLE when the audit log is broken; for key administration (`changes_keys`:
  // CreateKey, ImportKey, EnableKey, DisableKey) the record of the attempt (outcome
  // "STARTED") is written first, and the call is UNAVAILABLE, with nothing done, when it
  // cannot be. A change in the token is then never without a record of who asked for it,
  // even if the record of its outcome is lost afterwards (which cannot be undone: the key
  // exists, or is disabled, by then).
  absl::Status BeginKeyCall(const Call& call, const std::string& key, bool changes_keys);
  // The record of a key RPC's outcome (gRPC status code name), or of a refused call.
  // UNAVAILABLE when it cannot be written (the log is broken from then on): the caller
  // withholds the answer.
  absl::Status AuditKeyCall(const Call& call, const std::string& key, const std::string& outcome);

  // False once the audit log failed: rewraps and key RPCs are refused and health is
  // NOT_SERVING.
  bool serving() const { return audit_ == nullptr || audit_->ok(); }
  bool has_policy() const;

  RateLimiter& limiter() { return limiter_; }
  AuditLog* audit() { return audit_.get(); }

 private:
  Security(std::string path, std::unique_ptr<AuditLog> audit)
      : path_(std::move(path)), audit_(std::move(audit)) {}
  std::shared_ptr<const Policy> current() const;
  // Fills call.policy, call.client and call.who from the current policy; the refusal, if any.
  absl::Status Decide(Call& call, RpcClass rpc_class) const;

  const std::string path_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const Policy> policy_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<AuditLog> audit_;
  RateLimiter limiter_;
};

}  // namespace hsmrewrap::service
