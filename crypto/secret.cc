#include "crypto/secret.h"

#include <openssl/crypto.h>

#include <atomic>

namespace hsmrewrap::crypto {
namespace {

std::atomic<internal::CleanseObserver> cleanse_observer{nullptr};

}  // namespace

void Cleanse(void* p, size_t n) {
  if (p == nullptr || n == 0) return;
  OPENSSL_cleanse(p, n);
  if (internal::CleanseObserver observer = cleanse_observer.load(std::memory_order_acquire))
    observer(p, n);
}

namespace internal {
void SetCleanseObserverForTesting(CleanseObserver observer) {
  cleanse_observer.store(observer, std::memory_order_release);
}
}  // namespace internal

bool operator==(const SecretString& a, const SecretString& b) noexcept {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace hsmrewrap::crypto
