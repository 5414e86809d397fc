#include "crypto/openssl_util.h"

#include <openssl/err.h>
#include <openssl/provider.h>

#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "crypto/encoding.h"

namespace hsmrewrap::crypto::internal {

std::string DrainOpenSslErrors() {
  std::string out;
  int shown = 0;
  unsigned long e;  // NOLINT(runtime/int): OpenSSL's type
  while ((e = ERR_get_error()) != 0) {
    if (shown++ >= 4) continue;  // keep draining, but keep the text short
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

absl::Status OsslInvalidArgument(absl::string_view what) {
  std::string errs = DrainOpenSslErrors();
  if (errs.empty()) return absl::InvalidArgumentError(what);
  return absl::InvalidArgumentError(absl::StrCat(what, " (", errs, ")"));
}

absl::Status OsslInternal(absl::string_view what) {
  std::string errs = DrainOpenSslErrors();
  if (errs.empty()) return absl::InternalError(what);
  return absl::InternalError(absl::StrCat(what, " (", errs, ")"));
}

Bytes BnToBytes(const BIGNUM* bn) {
  Bytes out(static_cast<size_t>(BN_num_bytes(bn)));
  if (!out.empty()) BN_bn2bin(bn, out.data());
  return out;
}

SecretBytes BnToSecretBytes(const BIGNUM* bn) {
  SecretBytes out(static_cast<size_t>(BN_num_bytes(bn)));
  if (!out.empty()) BN_bn2bin(bn, out.data());
  return out;
}

absl::Span<const uint8_t> SkipBomAndWhitespace(absl::Span<const uint8_t> data) {
  if (data.size() >= 3 && data[0] == 0xEF && data[1] == 0xBB && data[2] == 0xBF) {
    data.remove_prefix(3);
  }
  while (!data.empty() && absl::ascii_isspace(data[0])) data.remove_prefix(1);
  return data;
}

namespace {

constexpr absl::string_view kBegin = "-----BEGIN ";
constexpr absl::string_view kEnd = "-----END ";
constexpr absl::string_view kDashes = "-----";

absl::string_view AsStringView(absl::Span<const uint8_t> d) {
  return absl::string_view(reinterpret_cast<const char*>(d.data()), d.size());
}

// Base64 alphabet value, -1 for anything else.
int B64Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

}  // namespace

bool LooksLikePem(absl::Span<const uint8_t> data) {
  absl::string_view s = AsStringView(SkipBomAndWhitespace(data));
  return s.substr(0, kBegin.size()) == kBegin;
}

std::string PemLabel(absl::Span<const uint8_t> data) {
  absl::string_view s = AsStringView(SkipBomAndWhitespace(data));
  if (s.substr(0, kBegin.size()) != kBegin) return "";
  s.remove_prefix(kBegin.size());
  const size_t end = s.find(kDashes);
  if (end == absl::string_view::npos || end > 64) return "";
  return std::string(s.substr(0, end));
}

template <typename Container>
bool Base64DecodeInto(absl::string_view b64, Container* out) {
  out->clear();
  out->reserve(b64.size() / 4 * 3);
  uint32_t acc = 0;
  int n = 0;        // sextets in acc
  int padding = 0;  // '=' seen
  for (char c : b64) {
    if (absl::ascii_isspace(static_cast<unsigned char>(c))) continue;
    if (c == '=') {
      ++padding;
      if (padding > 2) return false;
      continue;
    }
    if (padding > 0) return false;  // data after padding
    const int v = B64Value(c);
    if (v < 0) return false;
    acc = acc << 6 | static_cast<uint32_t>(v);
    if (++n == 4) {
      out->push_back(static_cast<uint8_t>(acc >> 16));
      out->push_back(static_cast<uint8_t>(acc >> 8));
      out->push_back(static_cast<uint8_t>(acc));
      acc = 0;
      n = 0;
    }
  }
  // n sextets left over must be completed by exactly (4 - n) '=' characters.
  if (n == 0) {
    if (padding != 0) return false;
  } else if (n == 2) {
    if (padding != 2 || (acc & 0xF) != 0) return false;
    out->push_back(static_cast<uint8_t>(acc >> 4));
  } else if (n == 3) {
    if (padding != 1 || (acc & 0x3) != 0) return false;
    out->push_back(static_cast<uint8_t>(acc >> 10));
    out->push_back(static_cast<uint8_t>(acc >> 2));
  } else {
    return false;  // a single dangling sextet
  }
  acc = 0;
  return true;
}

template bool Base64DecodeInto<std::vector<uint8_t>>(absl::string_view, std::vector<uint8_t>*);
template bool Base64DecodeInto<SecretBytes>(absl::string_view, SecretBytes*);

absl::StatusOr<SecretBytes> PemDecode(absl::Span<const uint8_t> data, absl::string_view label) {
  absl::string_view s = AsStringView(SkipBomAndWhitespace(data));
  const std::string begin = absl::StrCat(kBegin, label, kDashes);
  const std::string end = absl::StrCat(kEnd, label, kDashes);
  if (s.substr(0, begin.size()) != begin) {
    return absl::InvalidArgumentError(absl::StrCat("PEM: expected \"", begin, "\""));
  }
  s.remove_prefix(begin.size());
  // The BEGIN line must end right there (CR/LF); the body runs up to the END line.
  if (s.empty() || (s[0] != '\n' && s[0] != '\r')) {
    return absl::InvalidArgumentError("PEM: malformed BEGIN line");
  }
  const size_t end_pos = s.find(end);
  if (end_pos == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("PEM: missing \"", end, "\""));
  }
  absl::string_view body = s.substr(0, end_pos);
  absl::string_view rest = s.substr(end_pos + end.size());
  // After the END line only whitespace or further PEM blocks (e.g. a chain) may follow;
  // the first block is the one decoded.
  while (!rest.empty() && absl::ascii_isspace(static_cast<unsigned char>(rest[0]))) {
    rest.remove_prefix(1);
  }
  if (!rest.empty() && rest.substr(0, kBegin.size()) != kBegin) {
    return absl::InvalidArgumentError("PEM: unexpected data after END line");
  }
  SecretBytes der;
  if (!Base64DecodeInto(body, &der)) {
    return absl::InvalidArgumentError(
        "PEM: body is not plain base64 (encrypted PEM or headers are not supported)");
  }
  if (der.empty()) return absl::InvalidArgumentError("PEM: empty body");
  return der;
}

std::string DigestHex(const EVP_MD* md, absl::Span<const uint8_t> data) {
  unsigned char buf[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), buf, &len, md, nullptr) != 1) {
    ERR_clear_error();
    return "";
  }
  return HexEncode(absl::MakeConstSpan(buf, len));
}

bool EnsureLegacyProvider() {
  static std::once_flag once;
  static OSSL_PROVIDER* default_provider = nullptr;
  static OSSL_PROVIDER* legacy_provider = nullptr;
  std::call_once(once, [] {
    default_provider = OSSL_PROVIDER_load(nullptr, "default");
    legacy_provider = OSSL_PROVIDER_load(nullptr, "legacy");
    ERR_clear_error();
  });
  return default_provider != nullptr && legacy_provider != nullptr;
}

}  // namespace hsmrewrap::crypto::internal
