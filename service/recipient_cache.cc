#include "service/recipient_cache.h"

#include <openssl/evp.h>

namespace hsmrewrap::service {

absl::StatusOr<std::shared_ptr<const RecipientCache::Parsed>> RecipientCache::Get(
    bool is_certificate, absl::Span<const uint8_t> bytes) {
  // The key: kind byte + SHA-256 of the bytes (the digest is fetched once: an EVP fetch per
  // call would take OpenSSL's global locks, which is what this cache avoids).
  static EVP_MD* const sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  std::string key(1 + 32, is_certificate ? 'c' : 'k');
  unsigned int len = 0;
  if (sha256 == nullptr ||
      EVP_Digest(bytes.data(), bytes.size(), reinterpret_cast<unsigned char*>(&key[1]), &len,
                 sha256, nullptr) != 1) {
    key.clear();  // no digest: parse without caching
  }
  if (!key.empty()) {
    absl::MutexLock l(&mu_);
    auto it = entries_.find(key);
    if (it != entries_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.second);
      return it->second.first;
    }
  }
  auto parsed = std::make_shared<Parsed>();
  if (is_certificate) {
    auto c = crypto::Certificate::Parse(bytes);
    if (!c.ok()) return c.status();
    parsed->key = c->public_key();
    parsed->cert = *std::move(c);
  } else {
    auto k = crypto::PublicKey::FromSpki(bytes);
    if (!k.ok()) return k.status();
    parsed->key = *std::move(k);
  }
  if (key.empty() || capacity_ == 0) return std::shared_ptr<const Parsed>(parsed);
  absl::MutexLock l(&mu_);
  auto it = entries_.find(key);
  if (it != entries_.end()) return it->second.first;  // another thread parsed it meanwhile
  lru_.push_front(key);
  entries_.emplace(key, std::make_pair(parsed, lru_.begin()));
  while (entries_.size() > capacity_) {
    entries_.erase(lru_.back());
    lru_.pop_back();
  }
  return std::shared_ptr<const Parsed>(parsed);
}

size_t RecipientCache::size() {
  absl::MutexLock l(&mu_);
  return entries_.size();
}

}  // namespace hsmrewrap::service
