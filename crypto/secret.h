// Secret bytes that are wiped when freed. Plaintext passwords, PINs and private key
// material live only in these types. Raw access is through data()/size(); grep for
// `Reveal` to find every place a secret is turned into something else.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/types/span.h"

namespace hsmrewrap::crypto {

// Cleanses memory with OPENSSL_cleanse (which the compiler cannot elide).
void Cleanse(void* p, size_t n);

// std::allocator that cleanses on deallocate. Vectors that grow reallocate; the old
// buffer is cleansed too because it goes through deallocate.
template <typename T>
struct ZeroizingAllocator {
  using value_type = T;
  ZeroizingAllocator() noexcept = default;
  template <typename U>
  ZeroizingAllocator(const ZeroizingAllocator<U>&) noexcept {}
  T* allocate(size_t n) { return std::allocator<T>().allocate(n); }
  void deallocate(T* p, size_t n) noexcept {
    Cleanse(p, n * sizeof(T));
    std::allocator<T>().deallocate(p, n);
  }
  template <typename U>
  bool operator==(const ZeroizingAllocator<U>&) const noexcept { return true; }
  template <typename U>
  bool operator!=(const ZeroizingAllocator<U>&) const noexcept { return false; }
};

using SecretBytes = std::vector<uint8_t, ZeroizingAllocator<uint8_t>>;
using SecretString = std::basic_string<char, std::char_traits<char>, ZeroizingAllocator<char>>;

inline absl::Span<const uint8_t> Reveal(const SecretBytes& s) { return absl::MakeConstSpan(s); }

// ReadSecretFile (whole file -> SecretString) is declared in crypto/keys.h.
}  // namespace hsmrewrap::crypto
