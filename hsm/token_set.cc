#include "hsm/token_set.h"

#include <openssl/sha.h>
#include <spdlog/spdlog.h>

#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "crypto/encoding.h"
#include "hsm/token_supervisor.h"

namespace hsmrewrap::hsm {

std::string SpkiSha256Hex(const Bytes& spki_der) {
  uint8_t md[SHA256_DIGEST_LENGTH];
  SHA256(spki_der.data(), spki_der.size(), md);
  return crypto::HexEncode(absl::MakeConstSpan(md, sizeof(md)));
}

TokenSet::TokenSet(std::vector<Member> members) : members_(std::move(members)) {
  for (size_t i = 0; i < members_.size(); ++i) {
    stats_.push_back(std::make_unique<Stats>());
    if (members_[i].sessions == 0) members_[i].sessions = 1;
  }
  absl::MutexLock l(&mu_);
  listed_.assign(members_.size(), false);
}

std::shared_ptr<TokenSet> TokenSet::Of(std::shared_ptr<KeyBackend> backend, std::string name,
                                       bool allow_host_unpadding) {
  Member m;
  m.name = name.empty() ? backend->TokenLabel() : std::move(name);
  m.backend = std::move(backend);
  m.allow_host_unpadding = allow_host_unpadding;
  std::vector<Member> ms;
  ms.push_back(std::move(m));
  return std::make_shared<TokenSet>(std::move(ms));
}

std::optional<size_t> TokenSet::IndexOf(const std::string& name) const {
  for (size_t i = 0; i < members_.size(); ++i) {
    if (members_[i].name == name) return i;
  }
  return std::nullopt;
}

size_t TokenSet::FirstUp() const {
  for (size_t i = 0; i < members_.size(); ++i) {
    if (members_[i].backend->Healthy()) return i;
  }
  return 0;
}

void TokenSet::LoadReferences() {
  for (size_t i = 0; i < members_.size(); ++i) {
    auto keys = members_[i].backend->ListKeys();
    if (!keys.ok()) {
      spdlog::warn("token '{}': its keys could not be read now ({}); they are checked when it "
                   "serves them",
                   members_[i].name, keys.status().ToString());
      continue;
    }
    for (const KeyInfo& k : *keys) CheckReference(i, k).IgnoreError();  // logged inside
    absl::MutexLock l(&mu_);
    listed_[i] = true;
  }
}

absl::Status TokenSet::CheckReference(size_t i, const KeyInfo& info) {
  {  // Every item passes here: the common case (a known holder with the reference key) reads.
    absl::ReaderMutexLock r(&mu_);
    auto it = references_.find(info.name);
    auto h = holders_.find(info.name);
    if (it != references_.end() && h != holders_.end() && h->second.count(i) &&
        info.spki_der == it->second.spki) {
      return absl::OkStatus();
    }
  }
  absl::MutexLock l(&mu_);
  auto it = references_.find(info.name);
  if (it == references_.end()) {
    references_.emplace(info.name, Reference{info.spki_der, SpkiSha256Hex(info.spki_der), i});
    holders_[info.name].insert(i);
    return absl::OkStatus();
  }
  const Reference& ref = it->second;
  const auto refused_key = std::make_pair(i, info.name);
  if (info.spki_der == ref.spki) {
    holders_[info.name].insert(i);
    if (refused_.erase(refused_key) > 0) {
      spdlog::info("token '{}': key '{}' has the set's public key again; it serves it",
                   members_[i].name, info.name);
    }
    return absl::OkStatus();
  }
  holders_[info.name].erase(i);
  const std::string hash = SpkiSha256Hex(info.spki_der);
  std::string why = absl::StrCat(
      "key '", info.name, "' on token '", members_[i].name,
      "' has a different public key (SPKI SHA-256 ", hash, ") from the one this rewrapd serves ",
      "under that name (SPKI SHA-256 ", ref.sha256, ", from token '", members_[ref.first].name,
      "'): it is not used on '", members_[i].name,
      "'. Clone the same key into every token (docs/operator-guide.md, \"Several HSMs\")");
  auto [at, inserted] = refused_.emplace(refused_key, why);
  if (inserted || at->second != why) {
    at->second = why;
    spdlog::error("{}", why);
  }
  return absl::FailedPreconditionError(why);
}

std::map<std::string, std::set<size_t>> TokenSet::Holders() const {
  absl::MutexLock l(&mu_);
  return holders_;
}

bool TokenSet::KnownAbsent(size_t i, const std::string& name) const {
  absl::MutexLock l(&mu_);
  if (!listed_[i]) return false;
  auto h = holders_.find(name);
  if (h != holders_.end() && h->second.count(i)) return false;
  return refused_.count({i, name}) == 0;
}

std::vector<std::string> TokenSet::KeysWithoutUpToken() const {
  std::vector<bool> up(members_.size());
  for (size_t i = 0; i < members_.size(); ++i) up[i] = members_[i].backend->Healthy();
  std::vector<std::string> out;
  for (const auto& [name, holders] : Holders()) {
    bool served = false;
    for (size_t i : holders) served |= up[i];
    if (!served) out.push_back(name);
  }
  return out;
}

std::optional<size_t> TokenSet::Next(const std::vector<bool>& tried) {
  const size_t n = members_.size();
  const size_t start = n > 1 ? rotate_.fetch_add(1) % n : 0;
  std::optional<size_t> best, down;
  double best_load = std::numeric_limits<double>::infinity();
  for (size_t k = 0; k < n; ++k) {
    const size_t i = (start + k) % n;
    if (tried[i]) continue;
    if (!members_[i].backend->Healthy()) {
      if (!down) down = i;
      continue;
    }
    const double load = static_cast<double>(stats_[i]->inflight.load()) /
                        static_cast<double>(members_[i].sessions);
    if (load < best_load) {
      best_load = load;
      best = i;
    }
  }
  return best ? best : down;
}

absl::StatusOr<KeyRefPtr> TokenSet::ResolveOn(size_t i, const std::string& name) {
  auto key = members_[i].backend->Resolve(name);
  if (!key.ok()) return key;
  if (auto st = CheckReference(i, (*key)->info); !st.ok()) return st;
  return key;
}

TokenSet::Listing TokenSet::ListByToken() {
  Listing out;
  for (size_t i = 0; i < members_.size(); ++i) {
    auto keys = members_[i].backend->ListKeys();
    if (!keys.ok()) {
      if (out.unavailable.ok()) {
        out.unavailable = absl::Status(keys.status().code(),
                                       absl::StrCat("token '", members_[i].name,
                                                    "': ", keys.status().message()));
      }
      continue;
    }
    for (const KeyInfo& k : *keys) {
      absl::Status st = CheckReference(i, k);
      out.keys[k.name].push_back(
          Holding{i, st.ok() ? absl::StatusOr<KeyInfo>(k) : absl::StatusOr<KeyInfo>(st)});
    }
    absl::MutexLock l(&mu_);
    listed_[i] = true;
  }
  // Members that did not answer, or do not hold a name, are listed for it too.
  for (auto& [name, holdings] : out.keys) {
    std::vector<Holding> all;
    size_t next = 0;
    for (size_t i = 0; i < members_.size(); ++i) {
      if (next < holdings.size() && holdings[next].member == i) {
        all.push_back(std::move(holdings[next++]));
        continue;
      }
      all.push_back(Holding{i, members_[i].backend->Healthy()
                                   ? absl::StatusOr<KeyInfo>(absl::NotFoundError("not held"))
                                   : absl::StatusOr<KeyInfo>(absl::UnavailableError(
                                         "the token is unavailable"))});
    }
    holdings = std::move(all);
  }
  return out;
}

absl::StatusOr<std::vector<KeyInfo>> TokenSet::ListKeys() {
  Listing l = ListByToken();
  if (l.keys.empty() && !l.unavailable.ok()) return l.unavailable;
  std::vector<KeyInfo> out;
  for (auto& [name, holdings] : l.keys) {
    for (auto& h : holdings) {
      if (h.info.ok()) {
        out.push_back(*h.info);
        break;
      }
    }
  }
  return out;
}

absl::StatusOr<KeyInfo> TokenSet::CreateKeyOn(size_t i, const std::string& name, int bits,
                                              bool allow_pkcs1) {
  auto info = members_[i].backend->CreateKey(name, bits, allow_pkcs1);
  if (!info.ok()) return info;
  if (auto st = CheckReference(i, *info); !st.ok()) return st;
  return info;
}

absl::StatusOr<KeyInfo> TokenSet::CreateKey(const std::string& name, int bits,
                                            bool allow_pkcs1) {
  return CreateKeyOn(FirstUp(), name, bits, allow_pkcs1);
}

absl::StatusOr<KeyInfo> TokenSet::ImportKeyOn(const std::vector<std::string>& names,
                                              const std::string& name,
                                              const crypto::RsaPrivateKeyParts& parts,
                                              bool allow_pkcs1) {
  std::vector<size_t> targets;
  for (const auto& n : names) {
    auto i = IndexOf(n);
    if (!i) {
      std::vector<std::string> known;
      for (const auto& m : members_) known.push_back(m.name);
      return absl::InvalidArgumentError(absl::StrCat("tokens: '", n, "' is not a token of this ",
                                                     "rewrapd (it has: ",
                                                     absl::StrJoin(known, ", "), ")"));
    }
    targets.push_back(*i);
  }
  if (targets.empty()) {
    for (size_t i = 0; i < members_.size(); ++i) targets.push_back(i);
  }
  // A key of this name that the set serves already with another public key: refused before
  // anything is written (the import would make a token the set must refuse for it).
  {
    absl::MutexLock l(&mu_);
    if (auto it = references_.find(name); it != references_.end()) {
      auto ref = crypto::PublicKey::FromSpki(it->second.spki);
      if (ref.ok() && (ref->modulus() != parts.n || ref->public_exponent() != parts.e)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "key '", name, "' is served already with another public key (SPKI SHA-256 ",
            it->second.sha256, ", from token '", members_[it->second.first].name,
            "'): a key of the same name on several tokens must be the same key; import it "
            "under another name, or import that same key"));
      }
    }
  }
  std::optional<KeyInfo> first;
  std::vector<std::string> done;
  for (size_t i : targets) {
    auto info = members_[i].backend->ImportKey(name, parts, allow_pkcs1);
    if (info.ok()) {
      if (absl::Status st = CheckReference(i, *info); !st.ok()) info = st;
    }
    if (!info.ok()) {
      if (done.empty()) return info.status();
      return absl::Status(info.status().code(),
                          absl::StrCat("imported into token(s) ", absl::StrJoin(done, ", "),
                                       " but not into '", members_[i].name,
                                       "': ", info.status().message()));
    }
    done.push_back(absl::StrCat("'", members_[i].name, "'"));
    if (!first) first = *info;
  }
  return *first;
}

absl::StatusOr<KeyInfo> TokenSet::ImportKey(const std::string& name,
                                            const crypto::RsaPrivateKeyParts& parts,
                                            bool allow_pkcs1) {
  return ImportKeyOn({}, name, parts, allow_pkcs1);
}

absl::StatusOr<KeyInfo> TokenSet::SetEnabled(const std::string& name, bool enabled) {
  std::optional<KeyInfo> first;
  std::vector<std::string> missed;
  absl::Status missed_why;
  for (size_t i = 0; i < members_.size(); ++i) {
    auto info = members_[i].backend->SetEnabled(name, enabled);
    if (info.ok()) {
      if (!first) first = *info;
      continue;
    }
    if (info.status().code() == absl::StatusCode::kNotFound) continue;
    if (OutcomeOfStatus(info.status()) == Outcome::kRetryable) {
      missed.push_back(absl::StrCat("'", members_[i].name, "'"));
      if (missed_why.ok()) missed_why = info.status();
      continue;
    }
    return absl::Status(info.status().code(),
                        absl::StrCat("token '", members_[i].name, "': ", info.status().message()));
  }
  if (!missed.empty()) {
    return absl::UnavailableError(absl::StrCat(
        "key '", name, "' was ", enabled ? "enabled" : "disabled",
        first ? " on the tokens that answered" : " nowhere", ", but token(s) ",
        absl::StrJoin(missed, ", "), " did not answer (", missed_why.message(),
        "): repeat the call when they are back"));
  }
  if (!first) return absl::NotFoundError(absl::StrCat("key '", name, "' not found"));
  return *first;
}

absl::StatusOr<KeyRefPtr> TokenSet::Resolve(const std::string& name) {
  std::vector<bool> tried(members_.size());
  absl::Status best = absl::NotFoundError(absl::StrCat("key '", name, "' not found"));
  // Up members first, in configuration order; then the others (they answer at once).
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < members_.size(); ++i) {
      if (tried[i] || (pass == 0 && !members_[i].backend->Healthy())) continue;
      tried[i] = true;
      auto key = ResolveOn(i, name);
      if (key.ok()) return key;
      // What the caller is told when no member serves it: a member that may hold the key
      // but did not answer, else a refusal, else not found.
      const auto code = key.status().code();
      const bool retryable = OutcomeOfStatus(key.status()) == Outcome::kRetryable;
      if (retryable || (code != absl::StatusCode::kNotFound &&
                        best.code() == absl::StatusCode::kNotFound)) {
        if (OutcomeOfStatus(best) != Outcome::kRetryable) best = key.status();
      }
    }
  }
  return best;
}

absl::Status TokenSet::RecheckKey(const std::string& name) {
  bool held = false;
  for (size_t i = 0; i < members_.size(); ++i) {
    absl::Status st = members_[i].backend->RecheckKey(name);
    if (st.code() == absl::StatusCode::kNotFound) continue;
    if (!st.ok()) {
      return absl::Status(st.code(),
                          absl::StrCat("token '", members_[i].name, "': ", st.message()));
    }
    held = true;
  }
  return held ? absl::OkStatus() : absl::NotFoundError(absl::StrCat("key '", name, "' not found"));
}

std::optional<size_t> TokenSet::OwnerOf(const KeyRefPtr& key) {
  if (members_.size() == 1) return 0;
  for (size_t i = 0; i < members_.size(); ++i) {
    auto mine = members_[i].backend->Resolve(key->info.name);
    if (mine.ok() && (*mine)->owner == key->owner && (*mine)->object == key->object) return i;
  }
  return std::nullopt;
}

namespace {
absl::Status NoOwner() {
  return absl::UnavailableError("the token that resolved this key is not available any more");
}
}  // namespace

OpResult<crypto::SecretBytes> TokenSet::Decrypt(const KeyRefPtr& key, RsaPadding padding,
                                                absl::Span<const uint8_t> ciphertext, Path path) {
  auto i = OwnerOf(key);
  if (!i) return OpResult<crypto::SecretBytes>::Retryable(NoOwner());
  return members_[*i].backend->Decrypt(key, padding, ciphertext, path);
}

OpResult<Bytes> TokenSet::RewrapInToken(const KeyRefPtr& key, RsaPadding in_padding,
                                        absl::Span<const uint8_t> ciphertext,
                                        const crypto::PublicKey& device_key,
                                        RsaPadding out_padding) {
  auto i = OwnerOf(key);
  if (!i) return OpResult<Bytes>::Retryable(NoOwner());
  return members_[*i].backend->RewrapInToken(key, in_padding, ciphertext, device_key,
                                             out_padding);
}

OpResult<crypto::CmsTokenParts> TokenSet::EnvelopeInToken(const KeyRefPtr& key,
                                                          RsaPadding in_padding,
                                                          absl::Span<const uint8_t> ciphertext,
                                                          const crypto::PublicKey& device_key,
                                                          const crypto::CmsOptions& options) {
  auto i = OwnerOf(key);
  if (!i) return OpResult<crypto::CmsTokenParts>::Retryable(NoOwner());
  return members_[*i].backend->EnvelopeInToken(key, in_padding, ciphertext, device_key, options);
}

CmsFormSet TokenSet::CmsInToken() { return members_[FirstUp()].backend->CmsInToken(); }
EcCmsFormSet TokenSet::CmsInTokenEc() { return members_[FirstUp()].backend->CmsInTokenEc(); }
std::set<RsaPadding> TokenSet::WrapPaddings() {
  return members_[FirstUp()].backend->WrapPaddings();
}

std::string TokenSet::TokenLabel() {
  if (members_.size() == 1) return members_[0].backend->TokenLabel();
  std::vector<std::string> names;
  for (const auto& m : members_) names.push_back(m.name);
  return absl::StrJoin(names, ", ");
}

bool TokenSet::Healthy() {
  for (const auto& m : members_) {
    if (m.backend->Healthy()) return true;
  }
  return false;
}

}  // namespace hsmrewrap::hsm
