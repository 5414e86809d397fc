#include "crypto/encoding.h"

#include <openssl/evp.h>

#include <algorithm>

#include "absl/status/status.h"
#include "crypto/openssl_util.h"

namespace hsmrewrap::crypto {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string HexEncode(absl::Span<const uint8_t> b) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.resize(b.size() * 2);
  for (size_t i = 0; i < b.size(); ++i) {
    out[2 * i] = kDigits[b[i] >> 4];
    out[2 * i + 1] = kDigits[b[i] & 0xf];
  }
  return out;
}

absl::StatusOr<std::vector<uint8_t>> HexDecode(std::string_view hex) {
  if (hex.size() % 2 != 0) return absl::InvalidArgumentError("hex: odd number of digits");
  std::vector<uint8_t> out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    const int hi = HexValue(hex[2 * i]);
    const int lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return absl::InvalidArgumentError("hex: invalid digit");
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return out;
}

std::string Base64Encode(absl::Span<const uint8_t> b) {
  if (b.empty()) return std::string();
  std::string out;
  // EVP_EncodeBlock writes 4 chars per 3 bytes plus a NUL; it takes an int length.
  out.resize(4 * ((b.size() + 2) / 3) + 1);
  size_t written = 0;
  // Encode in chunks that fit an int (3 * 2^28 bytes per call keeps 4*n below INT_MAX).
  constexpr size_t kChunk = size_t{3} << 28;
  for (size_t off = 0; off < b.size(); off += kChunk) {
    const size_t n = std::min(kChunk, b.size() - off);
    written += static_cast<size_t>(EVP_EncodeBlock(reinterpret_cast<unsigned char*>(&out[written]),
                                                   b.data() + off, static_cast<int>(n)));
  }
  out.resize(written);
  return out;
}

absl::StatusOr<std::vector<uint8_t>> Base64Decode(std::string_view b64) {
  std::vector<uint8_t> out;
  if (!internal::Base64DecodeInto(absl::string_view(b64.data(), b64.size()), &out)) {
    return absl::InvalidArgumentError("base64: invalid encoding");
  }
  return out;
}

}  // namespace hsmrewrap::crypto
