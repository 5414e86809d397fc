#include "crypto/der.h"

namespace hsmrewrap::crypto::der {

Bytes Tlv(uint8_t tag, absl::Span<const uint8_t> content) {
  Bytes out;
  out.reserve(content.size() + 6);
  out.push_back(tag);
  const size_t n = content.size();
  if (n < 0x80) {
    out.push_back(static_cast<uint8_t>(n));
  } else {
    uint8_t len[sizeof(size_t)];
    int k = 0;
    for (size_t v = n; v != 0; v >>= 8) len[k++] = static_cast<uint8_t>(v & 0xff);
    out.push_back(static_cast<uint8_t>(0x80 | k));
    while (k > 0) out.push_back(len[--k]);
  }
  out.insert(out.end(), content.begin(), content.end());
  return out;
}

Bytes Wrap(uint8_t tag, std::initializer_list<absl::Span<const uint8_t>> parts) {
  Bytes content;
  for (const auto& p : parts) content.insert(content.end(), p.begin(), p.end());
  return Tlv(tag, content);
}

Bytes SmallInteger(uint8_t value) {
  const uint8_t v[1] = {static_cast<uint8_t>(value & 0x7f)};
  return Tlv(kInteger, v);
}

}  // namespace hsmrewrap::crypto::der
