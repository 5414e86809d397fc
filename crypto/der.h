// A minimal DER writer for the structures rewrapd assembles itself (crypto/cms_assemble.h):
// definite lengths, single-byte tags, nothing to parse. Leaves that OpenSSL has types for
// (OIDs, AlgorithmIdentifiers, Names, INTEGERs) are encoded by OpenSSL and passed in as DER.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "absl/types/span.h"
#include "crypto/keys.h"

namespace hsmrewrap::crypto::der {

inline constexpr uint8_t kInteger = 0x02;
inline constexpr uint8_t kOctetString = 0x04;
inline constexpr uint8_t kSequence = 0x30;
inline constexpr uint8_t kSet = 0x31;
// Context-specific tags: [n] IMPLICIT primitive, [n] constructed (EXPLICIT or IMPLICIT SEQUENCE).
constexpr uint8_t ContextPrimitive(uint8_t n) { return static_cast<uint8_t>(0x80 | n); }
constexpr uint8_t ContextConstructed(uint8_t n) { return static_cast<uint8_t>(0xA0 | n); }

// tag || length || content.
Bytes Tlv(uint8_t tag, absl::Span<const uint8_t> content);
// The concatenation of `parts` (each already DER) inside one TLV of `tag`.
Bytes Wrap(uint8_t tag, std::initializer_list<absl::Span<const uint8_t>> parts);
// INTEGER 0..127.
Bytes SmallInteger(uint8_t value);

}  // namespace hsmrewrap::crypto::der
