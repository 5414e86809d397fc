// The rewrap engine: business logic apart from gRPC. Validates items, picks the best
// path per item, runs the token work on a bounded worker pool and gathers results in
// order. The gRPC adapters (service/rewrap_service.h, keys_service.h) only translate.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "crypto/keys.h"
#include "hsm/backend.h"
#include "hsm/token_set.h"
#include "hsmrewrap/v1/rewrap.pb.h"
#include "service/config.h"
#include "service/item_result.h"
#include "service/recipient_cache.h"
#include "service/worker_pool.h"

namespace hsmrewrap::service {

namespace v1 = ::hsmrewrap::v1;

// Per-call checks the security layer (service/policy.h) attaches to a batch: who may use
// which key and recipient, rate limits, the audit trail. Thread-safe: items of one batch
// run on several workers at once.
class ItemGate {
 public:
  virtual ~ItemGate() = default;
  // Before anything else of an item. A non-OK status fails the item with the matching
  // ItemError code (RESOURCE_EXHAUSTED, UNAVAILABLE, PERMISSION_DENIED) and its message.
  virtual absl::Status Admit() = 0;
  // May the caller use this service key (the item's key_name)?
  virtual absl::Status CheckKey(const std::string& key_name) = 0;
  // May the caller rewrap to this recipient? `parsed` is null for a service_key recipient.
  virtual absl::Status CheckRecipient(const v1::Recipient& recipient,
                                      const RecipientCache::Parsed* parsed) = 0;
  // Must items of this key take the IN_TOKEN path (the policy file's per-key
  // require_in_token)? Then an item that cannot fails UNSUPPORTED instead of falling back.
  virtual bool RequireInToken(const std::string& key_name) { return false; }
  // After each item (counts decryption failures).
  virtual void ItemDone(const v1::RewrapResult& result) = 0;
  // Once per batch, before the response goes out; `recipient_sha256` has one entry per
  // item (empty where the recipient did not parse). May replace results (an audit record
  // that cannot be written withholds the batch's results).
  virtual void BatchDone(const v1::RewrapRequest& request, v1::RewrapResponse* response,
                         const std::vector<std::string>& recipient_sha256) = 0;
};

// What the engine may know of the call a batch came in: its deadline and whether the caller
// has gone. Items not started by then never reach the token.
struct CallContext {
  std::chrono::system_clock::time_point deadline = std::chrono::system_clock::time_point::max();
  // True once the caller cancelled the call (or went away); null = never. Called from worker
  // threads, before each item, while the call is still open.
  std::function<bool()> cancelled;
};

class RewrapEngine final {
 public:
  struct Options {
    // Threads that run items (config `workers`: max(pool size, cores) by default). A worker
    // holds a session only for the token step; host work (CMS, OAEP unpadding) runs after
    // the session is back in the pool.
    unsigned workers = 2;
    Limits limits;
    // For the single-backend constructor only (a set's members carry their own).
    bool allow_host_unpadding = false;
    // Build CMS outputs in the token where it can (config in_token_cms; default on). Off:
    // CMS is always built on the host (TOKEN_DECRYPT / HOST_UNPADDING).
    bool in_token_cms = true;
    // Every item must take IN_TOKEN (config require_in_token); one that cannot fails
    // UNSUPPORTED naming the token's missing capability. Per key: ItemGate::RequireInToken.
    bool require_in_token = false;
  };
  using Done = std::function<void(v1::RewrapResponse)>;

  // Items go to the least loaded token of the set that serves their key and move to the next
  // one when a token fails them retryably (hsm/token_set.h), inside the call.
  RewrapEngine(std::shared_ptr<hsm::TokenSet> tokens, Options options);
  // One backend: a set of one (named after its TokenLabel()).
  RewrapEngine(std::shared_ptr<hsm::KeyBackend> backend, Options options);
  ~RewrapEngine();
  RewrapEngine(const RewrapEngine&) = delete;  // owns the worker threads
  RewrapEngine& operator=(const RewrapEngine&) = delete;

  // Checks batch-level limits (empty, too many items, too much in flight) and returns a
  // status for the whole batch if they fail. Otherwise takes ownership of `request`,
  // processes its items on the workers and calls `done` exactly once, from a worker
  // thread, with one result per item in order.
  // `gate`, when set, checks and audits every item (service/policy.h); every item, a malformed
  // one too, is admitted by it first (rate limits) and counts as in flight until answered.
  // Items not started by the call's deadline fail DEADLINE_EXCEEDED, and items not started
  // when the caller cancelled fail CANCELLED, without touching the token: nobody waits for
  // them any more.
  absl::Status Submit(std::shared_ptr<const v1::RewrapRequest> request, Done done,
                      std::shared_ptr<ItemGate> gate = nullptr, CallContext call = {});

  // Shutdown: items not started yet fail UNAVAILABLE ("shutting down", safe to retry
  // elsewhere) without the token; items running finish. Irreversible.
  void StopAccepting() { stopping_.store(true); }

  // Runs one item to completion on the calling thread (exposed for tests and the baseline).
  // With a gate, *recipient_sha256 gets the recipient's fingerprint for the audit record.
  // With `call`, an item is not moved to another token after the call's deadline passed or
  // the caller cancelled. With `only_token`, the item runs on that member of the set and
  // nowhere else (the self-test of each token).
  v1::RewrapResult ProcessItem(const v1::RewrapItem& item, ItemGate* gate = nullptr,
                               std::string* recipient_sha256 = nullptr,
                               const CallContext* call = nullptr,
                               std::optional<size_t> only_token = std::nullopt);

  // Key administration's view: the whole set.
  hsm::KeyBackend& backend() { return *tokens_; }
  hsm::TokenSet& tokens() { return *tokens_; }
  size_t inflight() const { return inflight_.load(); }

  // The metrics label for an item's key name: the name itself when it names a key this
  // engine has resolved (so operators' keys only), else "other". Callers cannot grow the
  // label set.
  std::string KeyLabel(const std::string& key_name) const;

  // The outputs this engine builds IN_TOKEN for a key on member `token` of the set
  // (ListKeys' in_token_outputs).
  std::vector<v1::InTokenOutput> InTokenOutputs(const hsm::KeyInfo& info, size_t token = 0);

  // The paths this engine would offer a key on member `token` for each padding, best first.
  std::vector<std::pair<crypto::RsaPadding, std::vector<hsm::Path>>> PathsFor(
      const hsm::KeyInfo& info, size_t token = 0);

 private:
  // An item's recipient, parsed (from the cache) and checked.
  struct Recipient {
    std::optional<crypto::Certificate> cert;                           // certificate recipients
    std::optional<crypto::PublicKey> key;                              // always set
    crypto::RsaPadding out_padding = crypto::RsaPadding::kOaepSha256;  // bare formats
    bool bare = false;  // the output is the RSA-encrypted secret itself
  };
  // Fills `out`, or fails `r` (INVALID_ITEM, the gate's refusal, KEY_NOT_FOUND...) and
  // returns false.
  bool ResolveRecipient(const v1::RewrapItem& item, ItemGate* gate, std::string* recipient_sha256,
                        Recipient& out, v1::RewrapResult& r);
  // How one token's attempt at an item ended: final (the result stands), or to be tried on
  // the next token (rank: which failure the caller is told when no token succeeds; a
  // retryable one outranks a refusal, which outranks "not found").
  struct Attempt {
    bool final = true;
    int rank = 0;
  };
  // The item (fields, gate and recipient checked) on member `m` of the set.
  Attempt RunOn(size_t m, const v1::RewrapItem& item, const Recipient& rcpt,
                crypto::RsaPadding in_padding, ItemGate* gate, v1::RewrapResult& r);
  // Whether token `m` can build the item's output with the secret never leaving it (given
  // that it unwraps the item's padding); if not, *missing says what the token lacks. Sets
  // *cms to the CMS options of a CMS item.
  bool CanBuildInToken(size_t m, const v1::RewrapItem& item, const Recipient& rcpt,
                       crypto::CmsOptions* cms, std::string* missing);
  // IN_TOKEN: the token's rewrap or in-token CMS, and the result. kFallBack (r untouched)
  // when the unwrap failed and the key's caps say it may have been a valid secret longer
  // than the token unwraps: the caller decides what follows. kRetry: failed retryably (r
  // says how).
  enum class InTokenEnd { kDone, kFallBack, kRetry };
  InTokenEnd RewrapInToken(hsm::KeyBackend& backend, const v1::RewrapItem& item,
                           const Recipient& rcpt, const hsm::KeyRefPtr& key,
                           crypto::RsaPadding in_padding, const crypto::CmsOptions& cms,
                           v1::RewrapResult& r);
  // The host step of TOKEN_DECRYPT / HOST_UNPADDING: the secret encrypted to the recipient.
  void EncryptOnHost(const v1::RewrapItem& item, const Recipient& rcpt,
                     const crypto::SecretBytes& plain, hsm::Path path, v1::RewrapResult& r);

  std::shared_ptr<hsm::TokenSet> tokens_;
  Options options_;
  RecipientCache recipients_{1024};
  std::atomic<size_t> inflight_{0};
  // Names that resolved to a key: bounded by the keys on the token, never by callers.
  mutable absl::Mutex known_keys_mu_;
  absl::flat_hash_set<std::string> known_keys_ ABSL_GUARDED_BY(known_keys_mu_);
  void NoteKnownKey(const std::string& name);
  std::atomic<bool> stopping_{false};
  std::unique_ptr<WorkerPool> pool_;  // last: destroyed (joined) first
};

}  // namespace hsmrewrap::service
