// Several tokens (HSMs, partitions, a TPM) holding clones of the same keys, behind one
// rewrapd: the set the engine schedules items over and fails them over in.
//
//  - Members are named (config `tokens:` `name`), in configuration order. Each is a
//    KeyBackend of its own (a TokenSupervisor in rewrapd: it recovers its token alone).
//  - A key name is served by every member that holds a key of that name WITH THE SAME
//    PUBLIC KEY. The reference public key of a name is the one of the first member (in
//    configuration order) that holds it when the set loads its keys (LoadReferences, at
//    start-up), or, for a key made later, the first member that resolves it. A member
//    whose key of that name differs is refused for that key, loudly (an error log naming
//    both SPKI SHA-256 hashes, once per member and key), and never used for it.
//  - Scheduling (Next): among the members not tried yet for an item, the up ones first,
//    least items in flight per session first (ties rotate); members that are down come
//    last, so a set of one behaves exactly as its token.
//  - The set is also a KeyBackend for key administration and tools: ListKeys merges,
//    CreateKey makes the key on one member, ImportKey on all (or named ones), SetEnabled
//    writes every member that holds the key.
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "hsm/backend.h"

namespace hsmrewrap::hsm {

class TokenSupervisor;

class TokenSet final : public KeyBackend {
 public:
  struct Member {
    std::string name;
    std::shared_ptr<KeyBackend> backend;
    // The same object when the backend is a supervisor (state, reconnects, metrics).
    std::shared_ptr<TokenSupervisor> supervisor;
    bool allow_host_unpadding = false;
    size_t sessions = 1;  // the scheduling weight: items in flight per session
  };
  // Per member, since start.
  struct Stats {
    std::atomic<size_t> inflight{0};
    std::atomic<uint64_t> items{0};      // items that ran on the member to a result
    std::atomic<uint64_t> failovers{0};  // items that failed retryably here and moved on
  };

  explicit TokenSet(std::vector<Member> members);
  // A set of one, named `name` (the backend's TokenLabel() when empty).
  static std::shared_ptr<TokenSet> Of(std::shared_ptr<KeyBackend> backend, std::string name = "",
                                      bool allow_host_unpadding = false);

  size_t size() const { return members_.size(); }
  const Member& member(size_t i) const { return members_[i]; }
  Stats& stats(size_t i) const { return *stats_[i]; }
  // The member index of a name, or nullopt.
  std::optional<size_t> IndexOf(const std::string& name) const;

  // Reads every member's keys (in configuration order) and records the reference public key
  // of each name; logs an error for every member whose key of a name differs. Members that
  // do not answer are skipped (their keys are checked when they first resolve).
  void LoadReferences();

  // The next member to try for an item, given the members tried already (`tried` has size()
  // entries), or nullopt when every member was tried.
  std::optional<size_t> Next(const std::vector<bool>& tried);

  // Counts an item in flight on member i for the lifetime of the object.
  class InFlight {
   public:
    InFlight(const TokenSet& set, size_t i) : stats_(&set.stats(i)) { stats_->inflight++; }
    ~InFlight() { stats_->inflight--; }
    InFlight(const InFlight&) = delete;
    InFlight& operator=(const InFlight&) = delete;

   private:
    Stats* stats_;
  };

  // member(i).backend->Resolve(name), then the public key check: FailedPrecondition naming
  // both SPKI SHA-256 hashes when member i's key differs from the reference.
  absl::StatusOr<KeyRefPtr> ResolveOn(size_t i, const std::string& name);

  // Where a key name is held: per member, its KeyInfo as that member lists it, or why not
  // (NotFound: not held; FailedPrecondition: a different public key; Unavailable: down).
  struct Holding {
    size_t member;
    absl::StatusOr<KeyInfo> info;
  };
  // Every member's keys, merged by name, in configuration order of the members; and the
  // first error of a member that did not answer (OK when all did).
  struct Listing {
    std::map<std::string, std::vector<Holding>> keys;
    absl::Status unavailable;
  };
  Listing ListByToken();

  absl::StatusOr<KeyInfo> CreateKeyOn(size_t i, const std::string& name, int bits,
                                      bool allow_pkcs1);
  // Imports into the members named (every member when empty). All or an error naming the
  // members it is on: a name that is not a member is InvalidArgument before any write.
  absl::StatusOr<KeyInfo> ImportKeyOn(const std::vector<std::string>& members,
                                      const std::string& name,
                                      const crypto::RsaPrivateKeyParts& parts, bool allow_pkcs1);

  // Per key name, the members known to hold it with the set's public key (learned at
  // LoadReferences and at every resolve/listing since).
  std::map<std::string, std::set<size_t>> Holders() const;
  // True when member i's keys were read (at start-up or by a listing since) and it did not
  // hold `name`: a member that is down is then not expected to serve it.
  bool KnownAbsent(size_t i, const std::string& name) const;
  // Key names none of whose holders is up now (health: SERVING needs every key served).
  std::vector<std::string> KeysWithoutUpToken() const;

  // KeyBackend.
  using KeyBackend::Decrypt;
  using KeyBackend::RewrapInToken;
  // Merged by name: the reference member's view of each key.
  absl::StatusOr<std::vector<KeyInfo>> ListKeys() override;
  // On the first member that is up (in configuration order).
  absl::StatusOr<KeyInfo> CreateKey(const std::string& name, int bits, bool allow_pkcs1) override;
  // On every member.
  absl::StatusOr<KeyInfo> ImportKey(const std::string& name,
                                    const crypto::RsaPrivateKeyParts& parts,
                                    bool allow_pkcs1) override;
  // On every member that holds the key. A member that is down misses the write: the call
  // then fails Unavailable naming it (the others are written; repeat the call when it is
  // back), so a disabled key is not left served by a member nobody told.
  absl::StatusOr<KeyInfo> SetEnabled(const std::string& name, bool enabled) override;
  // The first member, up ones first, that resolves the name with the reference public key.
  absl::StatusOr<KeyRefPtr> Resolve(const std::string& name) override;
  absl::Status RecheckKey(const std::string& name) override;
  // By the member that resolved `key` (KeyRef::owner).
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
  // Those of the first member that is up.
  CmsFormSet CmsInToken() override;
  EcCmsFormSet CmsInTokenEc() override;
  std::set<RsaPadding> WrapPaddings() override;
  // The members' names, joined ("hsm-a, hsm-b"); a set of one: its token's label.
  std::string TokenLabel() override;
  // True while at least one member is up.
  bool Healthy() override;

 private:
  struct Reference {
    Bytes spki;
    std::string sha256;  // hex
    size_t first = 0;    // the member it was taken from
  };
  // OK when member i's key of this name has the reference public key (recording it as the
  // reference when the name has none yet).
  absl::Status CheckReference(size_t i, const KeyInfo& info);
  // The member whose backend resolved `key`, or nullopt.
  std::optional<size_t> OwnerOf(const KeyRefPtr& key);
  size_t FirstUp() const;

  std::vector<Member> members_;
  std::vector<std::unique_ptr<Stats>> stats_;
  std::atomic<size_t> rotate_{0};
  mutable absl::Mutex mu_;
  std::map<std::string, Reference> references_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::set<size_t>> holders_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> listed_ ABSL_GUARDED_BY(mu_);  // per member: its keys were read once
  // (member, key name) pairs refused for a different public key (logged once).
  std::map<std::pair<size_t, std::string>, std::string> refused_ ABSL_GUARDED_BY(mu_);
};

// Lowercase hex SHA-256 of a DER SubjectPublicKeyInfo.
std::string SpkiSha256Hex(const Bytes& spki_der);

}  // namespace hsmrewrap::hsm
