// Parsed recipients (device certificates and public keys) by SHA-256 of their bytes.
// OpenSSL 3.0's d2i_X509 / d2i_PUBKEY cost 100-300 µs a call and scale badly across
// threads, and the same devices come back again and again, so each recipient is parsed
// once. A bounded LRU: at most `capacity` entries (a parsed certificate is a few KiB).
// Only successful parses are cached. Thread-safe.
#pragma once

#include <list>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "crypto/keys.h"

namespace hsmrewrap::service {

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
  using Lru = std::list<std::string>;  // most recent first; holds the map keys
  const size_t capacity_;
  absl::Mutex mu_;
  Lru lru_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, std::pair<std::shared_ptr<const Parsed>, Lru::iterator>> entries_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace hsmrewrap::service
