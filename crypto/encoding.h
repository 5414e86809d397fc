#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace hsmrewrap::crypto {
std::string HexEncode(absl::Span<const uint8_t> b);  // lowercase
absl::StatusOr<std::vector<uint8_t>> HexDecode(std::string_view hex);
std::string Base64Encode(absl::Span<const uint8_t> b);  // RFC 4648, padded, no newlines
absl::StatusOr<std::vector<uint8_t>> Base64Decode(std::string_view b64);  // tolerates whitespace
}  // namespace hsmrewrap::crypto
