// The rewrap engine: business logic apart from gRPC. Validates items, picks the best
// path per item, runs the token work on a bounded worker pool and gathers results in
// order. The gRPC adapters in service/grpc_services.h only translate.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "crypto/keys.h"
#include "hsm/backend.h"
#include "hsmrewrap/v1/rewrap.pb.h"
#include "service/config.h"
#include "service/worker_pool.h"

namespace hsmrewrap::service {

namespace v1 = ::hsmrewrap::v1;

// The one message every decryption failure carries, whatever the token said.
inline constexpr const char* kDecryptFailedMessage = hsm::kDecryptFailedText;

// A service key as the engine serves it: the token's KeyInfo plus its parsed public key.
struct KeyEntry {
  hsm::KeyInfo info;
  crypto::PublicKey public_key;
  size_t modulus_len = 0;
  std::chrono::steady_clock::time_point fetched;
};

// Caches KeyEntry by name. A miss, or an entry older than the refresh interval, asks the
// backend again, so a key created or disabled through another replica that shares the
// token is seen here within about that interval.
class KeyDirectory final {
 public:
  static constexpr std::chrono::seconds kRefresh{2};
  explicit KeyDirectory(std::shared_ptr<hsm::KeyBackend> backend) : backend_(std::move(backend)) {}
  absl::StatusOr<std::shared_ptr<const KeyEntry>> Get(const std::string& name);
  absl::StatusOr<std::shared_ptr<const KeyEntry>> Put(hsm::KeyInfo info);
  void Forget(const std::string& name);

 private:
  std::shared_ptr<hsm::KeyBackend> backend_;
  std::shared_mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<const KeyEntry>> keys_;  // guarded by mu_
};

// Parsed recipients (device certificates and public keys) by SHA-256 of their bytes.
// OpenSSL 3.0's d2i_X509 / d2i_PUBKEY cost 100-300 µs a call and scale badly across
// threads, and the same devices come back again and again, so each recipient is parsed
// once. A bounded LRU: at most `capacity` entries (a parsed certificate is a few KiB).
// Only successful parses are cached. Thread-safe.
class RecipientCache final {
 public:
  struct Parsed {
    std::optional<crypto::Certificate> cert;  // set for certificate recipients
    std::optional<crypto::PublicKey> key;     // always set: the certificate's key, or the SPKI
  };
  explicit RecipientCache(size_t capacity) : capacity_(capacity) {}
  // `is_certificate` selects X.509 vs SubjectPublicKeyInfo (DER or PEM) parsing.
  absl::StatusOr<std::shared_ptr<const Parsed>> Get(bool is_certificate,
                                                    absl::Span<const uint8_t> bytes);
  size_t size();

 private:
  const size_t capacity_;
  std::mutex mu_;
  std::list<std::string> lru_;  // guarded by mu_; most recent first; holds the map keys
  std::unordered_map<std::string,
                     std::pair<std::shared_ptr<const Parsed>, std::list<std::string>::iterator>>
      entries_;  // guarded by mu_
};

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
  // After each item (counts decryption failures).
  virtual void ItemDone(const v1::RewrapResult& result) = 0;
  // Once per batch, before the response goes out; `recipient_sha256` has one entry per
  // item (empty where the recipient did not parse). May replace results (an audit record
  // that cannot be written withholds the batch's results).
  virtual void BatchDone(const v1::RewrapRequest& request, v1::RewrapResponse* response,
                         const std::vector<std::string>& recipient_sha256) = 0;
};

class RewrapEngine final {
 public:
  struct Options {
    // Threads that run items (config `workers`: max(pool size, cores) by default). A worker
    // holds a session only for the token step; host work (CMS, OAEP unpadding) runs after
    // the session is back in the pool.
    unsigned workers = 2;
    Limits limits;
    bool allow_host_unpadding = false;
  };
  using Done = std::function<void(v1::RewrapResponse)>;

  RewrapEngine(std::shared_ptr<hsm::KeyBackend> backend, Options options);
  ~RewrapEngine();
  RewrapEngine(const RewrapEngine&) = delete;  // owns the worker threads
  RewrapEngine& operator=(const RewrapEngine&) = delete;

  // Checks batch-level limits (empty, too many items, too much in flight) and returns a
  // status for the whole batch if they fail. Otherwise takes ownership of `request`,
  // processes its items on the workers and calls `done` exactly once, from a worker
  // thread, with one result per item in order.
  // `gate`, when set, checks and audits every item (service/policy.h). Items not started by
  // `deadline` (the gRPC call's) fail DEADLINE_EXCEEDED without touching the token: nobody
  // waits for them any more.
  absl::Status Submit(std::shared_ptr<const v1::RewrapRequest> request, Done done,
                      std::shared_ptr<ItemGate> gate = nullptr,
                      std::chrono::system_clock::time_point deadline =
                          std::chrono::system_clock::time_point::max());

  // Shutdown: items not started yet fail UNAVAILABLE ("shutting down", safe to retry
  // elsewhere) without the token; items running finish. Irreversible.
  void StopAccepting() { stopping_.store(true); }

  // Runs one item to completion on the calling thread (exposed for tests and the baseline).
  // With a gate, *recipient_sha256 gets the recipient's fingerprint for the audit record.
  v1::RewrapResult ProcessItem(const v1::RewrapItem& item, ItemGate* gate = nullptr,
                               std::string* recipient_sha256 = nullptr);

  KeyDirectory& keys() { return keys_; }
  hsm::KeyBackend& backend() { return *backend_; }
  size_t inflight() const { return inflight_.load(); }

  // The paths this engine would offer a key for each padding, best first.
  std::vector<std::pair<crypto::RsaPadding, std::vector<hsm::Path>>> PathsFor(
      const hsm::KeyInfo& info);

 private:
  std::shared_ptr<hsm::KeyBackend> backend_;
  Options options_;
  KeyDirectory keys_;
  RecipientCache recipients_{1024};
  std::atomic<size_t> inflight_{0};
  std::atomic<bool> stopping_{false};
  std::unique_ptr<WorkerPool> pool_;  // last: destroyed (joined) first
};

// Conversions between the API's enums and crypto's, shared with the Keys adapter.
bool PaddingFromProto(v1::Padding p, crypto::RsaPadding* out);
v1::Padding PaddingToProto(crypto::RsaPadding p);
v1::Path PathToProto(hsm::Path p);

}  // namespace hsmrewrap::service
