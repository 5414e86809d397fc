// Secret bytes that are wiped when freed. Plaintext passwords, PINs and private key
// material live only in these types. Raw access is through data()/size(); grep for
// `Reveal` to find every place a secret is turned into something else.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/types/span.h"

namespace hsmrewrap::crypto {

// Cleanses memory with OPENSSL_cleanse (which the compiler cannot elide).
void Cleanse(void* p, size_t n);

namespace internal {
// Test seam: when set, called after every Cleanse(p, n) with n > 0, while [p, p + n) is
// still allocated, so a test can see that a buffer was wiped before it was freed without
// reading freed memory. nullptr (the default) turns it off.
using CleanseObserver = void (*)(const void* p, size_t n);
void SetCleanseObserverForTesting(CleanseObserver observer);
}  // namespace internal

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
  bool operator==(const ZeroizingAllocator<U>&) const noexcept {
    return true;
  }
  template <typename U>
  bool operator!=(const ZeroizingAllocator<U>&) const noexcept {
    return false;
  }
};

using SecretBytes = std::vector<uint8_t, ZeroizingAllocator<uint8_t>>;

// Secret text (PIN, password, bearer token): a NUL-terminated string whose bytes always
// live in a heap buffer from ZeroizingAllocator, never inside the object. (It used to be a
// std::basic_string, which keeps up to 15 bytes in the object itself, the small-string
// buffer that no allocator sees: short PINs and passwords were never wiped.)
// The bytes are cleansed when the string is destroyed, cleared or shrunk, and when it
// reallocates (growth goes through the allocator, which cleanses the old buffer). Moving
// hands the buffer over, so a moved-from string is empty and holds no copy.
// The API is the part of std::string this code base uses. There is no conversion to
// std::string: where the bytes must go elsewhere, data()/size() say so at the call.
class SecretString final {
 public:
  using value_type = char;
  using size_type = size_t;
  using const_iterator = const char*;

  SecretString() noexcept = default;
  explicit SecretString(std::string_view s) { assign(s.data(), s.size()); }
  SecretString(const char* s, size_t n) { assign(s, n); }
  template <
      typename InputIt,
      typename = std::enable_if_t<std::is_convertible_v<
          typename std::iterator_traits<InputIt>::iterator_category, std::input_iterator_tag>>>
  SecretString(InputIt first, InputIt last) {
    assign(first, last);
  }
  SecretString(const SecretString& other) = default;
  SecretString(SecretString&& other) noexcept : buf_(std::move(other.buf_)) { other.buf_.clear(); }
  // Copy and move assignment build the new value first and free the old buffer through
  // the allocator (so it is cleansed) instead of overwriting it in place.
  SecretString& operator=(const SecretString& other) {
    if (this != &other) SecretString(other).swap(*this);
    return *this;
  }
  SecretString& operator=(SecretString&& other) noexcept {
    if (this != &other) SecretString(std::move(other)).swap(*this);
    return *this;
  }
  ~SecretString() = default;  // the vector frees through the allocator, which cleanses

  size_t size() const noexcept { return buf_.empty() ? 0 : buf_.size() - 1; }
  bool empty() const noexcept { return size() == 0; }
  size_t capacity() const noexcept { return buf_.capacity() == 0 ? 0 : buf_.capacity() - 1; }
  // Never null; data()[size()] is '\0'.
  const char* data() const noexcept { return buf_.empty() ? "" : buf_.data(); }
  const char* c_str() const noexcept { return data(); }
  const_iterator begin() const noexcept { return data(); }
  const_iterator end() const noexcept { return data() + size(); }
  // i < size().
  char& operator[](size_t i) { return buf_[i]; }
  char operator[](size_t i) const { return data()[i]; }
  // !empty().
  char back() const { return buf_[buf_.size() - 2]; }

  void reserve(size_t n) { buf_.reserve(n + 1); }
  // Grows with '\0's; shrinking cleanses the bytes cut off.
  void resize(size_t n) {
    const size_t old = size();
    if (n < old) Cleanse(buf_.data() + n + 1, old - n);
    buf_.resize(n + 1, '\0');
    buf_[n] = '\0';
  }
  // Cleanses the bytes; keeps the (now wiped) buffer for reuse, as std::string does.
  void clear() noexcept {
    Cleanse(buf_.data(), buf_.size());
    buf_.clear();
  }
  void push_back(char c) {
    if (buf_.empty()) buf_.push_back('\0');
    buf_.back() = c;
    buf_.push_back('\0');
  }
  // !empty(). The last byte becomes the terminator, so no copy of it stays behind.
  void pop_back() {
    buf_.pop_back();
    buf_.back() = '\0';
  }
  // `s` does not point into this string.
  SecretString& append(const char* s, size_t n) {
    if (n == 0) return *this;
    if (buf_.empty()) buf_.push_back('\0');
    buf_.insert(buf_.end() - 1, s, s + n);
    return *this;
  }
  SecretString& append(const SecretString& s) {
    if (&s == this) return append(SecretString(s));
    return append(s.data(), s.size());
  }
  // `s` does not point into this string.
  SecretString& assign(const char* s, size_t n) {
    clear();
    return append(s, n);
  }
  template <typename InputIt>
  SecretString& assign(InputIt first, InputIt last) {
    clear();
    using Category = typename std::iterator_traits<InputIt>::iterator_category;
    if constexpr (std::is_convertible_v<Category, std::forward_iterator_tag>) {
      reserve(static_cast<size_t>(std::distance(first, last)));
    }
    for (; first != last; ++first) push_back(static_cast<char>(*first));
    return *this;
  }

  void swap(SecretString& other) noexcept { buf_.swap(other.buf_); }

  // Compares in time that depends on the lengths only (CRYPTO_memcmp).
  friend bool operator==(const SecretString& a, const SecretString& b) noexcept;
  friend bool operator!=(const SecretString& a, const SecretString& b) noexcept {
    return !(a == b);
  }

 private:
  // Empty, or the bytes followed by one '\0'.
  std::vector<char, ZeroizingAllocator<char>> buf_;
};

inline absl::Span<const uint8_t> Reveal(const SecretBytes& s) { return absl::MakeConstSpan(s); }

// ReadSecretFile (whole file -> SecretString) is declared in crypto/keys.h.
}  // namespace hsmrewrap::crypto
