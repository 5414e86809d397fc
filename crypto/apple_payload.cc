#include "crypto/apple_payload.h"

#include <openssl/rand.h>

#include <cstdio>
#include <cstring>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace hsmrewrap::crypto {
namespace {

// The XML text libplist's plist_to_xml writes (libplist 2.2, src/xplist.c): this prolog,
// one tab of indentation per level, `&`, `<` and `>` escaped in strings and keys, and
// data as base64 lines of at most ((76 - 8 * depth) / 4) * 3 bytes, each indented.
constexpr char kPlistProlog[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" "
    "\"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n"
    "<plist version=\"1.0\">\n";
constexpr char kPlistEpilog[] = "</plist>\n";
constexpr char kPayloadType[] = "com.apple.security.pkcs12";
// Values of the payload dictionary sit at depth 2 (array, dict).
constexpr char kValueIndent[] = "\t\t";
constexpr size_t kDataLineBytes = ((76 - 8 * 2) / 4) * 3;  // 45 bytes: 60 base64 characters

absl::Span<const uint8_t> AsBytes(std::string_view s) {
  return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

void Append(SecretBytes& out, std::string_view s) { out.insert(out.end(), s.begin(), s.end()); }

const char* Escape(uint8_t c) {
  switch (c) {
    case '&':
      return "&amp;";
    case '<':
      return "&lt;";
    case '>':
      return "&gt;";
    default:
      return nullptr;
  }
}

size_t EscapedLen(absl::Span<const uint8_t> s) {
  size_t n = 0;
  for (uint8_t c : s) n += Escape(c) ? std::strlen(Escape(c)) : 1;
  return n;
}

// Appends the text of `s` with `&`, `<` and `>` escaped, straight into `out`.
void AppendEscaped(SecretBytes& out, absl::Span<const uint8_t> s) {
  for (uint8_t c : s) {
    if (const char* e = Escape(c)) {
      Append(out, e);
    } else {
      out.push_back(c);
    }
  }
}

// "\t\t<key>NAME</key>\n"
size_t KeyLen(std::string_view name) { return 2 + 5 + name.size() + 6 + 1; }
void AppendKey(SecretBytes& out, std::string_view name) {
  Append(out, kValueIndent);
  Append(out, "<key>");
  AppendEscaped(out, AsBytes(name));
  Append(out, "</key>\n");
}

// "\t\t<string>TEXT</string>\n"
size_t StringLen(absl::Span<const uint8_t> text) { return 2 + 8 + EscapedLen(text) + 9 + 1; }
void AppendString(SecretBytes& out, absl::Span<const uint8_t> text) {
  Append(out, kValueIndent);
  Append(out, "<string>");
  AppendEscaped(out, text);
  Append(out, "</string>\n");
}

// "\t\t<data>\n" + one "\t\tBASE64\n" per kDataLineBytes + "\t\t</data>\n"
size_t DataLen(absl::Span<const uint8_t> data) {
  const size_t lines = (data.size() + kDataLineBytes - 1) / kDataLineBytes;
  return 2 + 7 + lines * (2 + 1) + 4 * ((data.size() + 2) / 3) + 2 + 8;
}
void AppendData(SecretBytes& out, absl::Span<const uint8_t> data) {
  static constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  Append(out, kValueIndent);
  Append(out, "<data>\n");
  for (size_t line = 0; line < data.size(); line += kDataLineBytes) {
    const auto chunk = data.subspan(line, kDataLineBytes);
    Append(out, kValueIndent);
    size_t i = 0;
    for (; i + 3 <= chunk.size(); i += 3) {
      const uint32_t v = (uint32_t{chunk[i]} << 16) | (uint32_t{chunk[i + 1]} << 8) | chunk[i + 2];
      for (int shift = 18; shift >= 0; shift -= 6) out.push_back(kB64[(v >> shift) & 63]);
    }
    if (i < chunk.size()) {
      const bool two = i + 1 < chunk.size();
      const uint32_t v = (uint32_t{chunk[i]} << 16) | (two ? uint32_t{chunk[i + 1]} << 8 : 0);
      out.push_back(kB64[(v >> 18) & 63]);
      out.push_back(kB64[(v >> 12) & 63]);
      out.push_back(two ? kB64[(v >> 6) & 63] : '=');
      out.push_back('=');
    }
    out.push_back('\n');
  }
  Append(out, kValueIndent);
  Append(out, "</data>\n");
}

absl::StatusOr<std::string> RandomUuid() {
  uint8_t b[16];
  if (RAND_bytes(b, sizeof(b)) != 1) return absl::InternalError("RAND_bytes failed");
  b[6] = static_cast<uint8_t>((b[6] & 0x0f) | 0x40);  // version 4
  b[8] = static_cast<uint8_t>((b[8] & 0x3f) | 0x80);  // RFC 4122 variant
  char s[37];
  std::snprintf(s, sizeof(s),
                "%02X%02X%02X%02X-%02X%02X-%02X%02X-%02X%02X-%02X%02X%02X%02X%02X%02X", b[0], b[1],
                b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
                b[15]);
  return std::string(s);
}

// True when `s` is well-formed UTF-8 (no overlongs, no surrogates, <= U+10FFFF).
bool IsUtf8(absl::Span<const uint8_t> s) {
  size_t i = 0;
  while (i < s.size()) {
    const uint8_t c = s[i];
    size_t n;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    }
    if ((c & 0xe0) == 0xc0) {
      n = 1;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      n = 2;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      n = 3;
      cp = c & 0x07;
    } else
      return false;
    for (size_t k = 1; k <= n; ++k) {
      if (i + k >= s.size() || (s[i + k] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000)) return false;
    if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += n + 1;
  }
  return true;
}

}  // namespace

absl::StatusOr<SecretBytes> BuildPkcs12PayloadPlist(absl::Span<const uint8_t> pfx,
                                                    absl::Span<const uint8_t> password,
                                                    const ApplePayloadOptions& options) {
  if (pfx.empty()) return absl::InvalidArgumentError("the PFX is empty");
  for (uint8_t c : password) {
    if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
      return absl::InvalidArgumentError(
          "the password holds a control character that an XML plist cannot carry");
    }
  }
  // The password as UTF-8, in wiped memory.
  SecretBytes pw;
  if (IsUtf8(password)) {
    pw.assign(password.begin(), password.end());
  } else {
    pw.reserve(password.size() * 2);
    for (uint8_t c : password) {  // Latin-1 -> UTF-8
      if (c < 0x80) {
        pw.push_back(c);
      } else {
        pw.push_back(static_cast<uint8_t>(0xc0 | (c >> 6)));
        pw.push_back(static_cast<uint8_t>(0x80 | (c & 0x3f)));
      }
    }
  }

  std::string uuid = options.payload_uuid;
  if (uuid.empty()) {
    auto u = RandomUuid();
    if (!u.ok()) return u.status();
    uuid = *std::move(u);
  }
  const std::string identifier = options.payload_identifier.empty()
                                     ? absl::StrCat("com.hsmrewrap.pkcs12.", uuid)
                                     : options.payload_identifier;

  // Written here rather than by libplist: libplist copies every string into buffers it
  // grows with realloc and frees unwiped, so the password would stay in the heap. The
  // text is the one libplist's plist_to_xml writes for this tree (same prolog, tab
  // indentation, escaping and base64 lines), built in one SecretBytes sized up front.
  const absl::Span<const uint8_t> uuid_text = AsBytes(uuid);
  const absl::Span<const uint8_t> identifier_text = AsBytes(identifier);
  const absl::Span<const uint8_t> name_text = AsBytes(options.display_name);
  const absl::Span<const uint8_t> pw_text = absl::MakeConstSpan(pw);
  const size_t size =
      std::strlen(kPlistProlog) + std::strlen(kPlistEpilog) + std::strlen("<array>\n") +
      std::strlen("</array>\n") + std::strlen("\t<dict>\n") + std::strlen("\t</dict>\n") +
      KeyLen("PayloadType") + StringLen(AsBytes(kPayloadType)) + KeyLen("PayloadVersion") +
      std::strlen("\t\t<integer>1</integer>\n") + KeyLen("PayloadUUID") + StringLen(uuid_text) +
      KeyLen("PayloadIdentifier") + StringLen(identifier_text) + KeyLen("PayloadDisplayName") +
      StringLen(name_text) + KeyLen("PayloadContent") + DataLen(pfx) + KeyLen("Password") +
      StringLen(pw_text);
  SecretBytes out;
  out.reserve(size);
  Append(out, kPlistProlog);
  Append(out, "<array>\n\t<dict>\n");
  AppendKey(out, "PayloadType");
  AppendString(out, AsBytes(kPayloadType));
  AppendKey(out, "PayloadVersion");
  Append(out, "\t\t<integer>1</integer>\n");
  AppendKey(out, "PayloadUUID");
  AppendString(out, uuid_text);
  AppendKey(out, "PayloadIdentifier");
  AppendString(out, identifier_text);
  AppendKey(out, "PayloadDisplayName");
  AppendString(out, name_text);
  AppendKey(out, "PayloadContent");
  AppendData(out, pfx);
  AppendKey(out, "Password");
  AppendString(out, pw_text);
  Append(out, "\t</dict>\n</array>\n");
  Append(out, kPlistEpilog);
  return out;
}

absl::StatusOr<Bytes> AppleEncryptedPkcs12Payload(const Certificate& device_certificate,
                                                  absl::Span<const uint8_t> pfx,
                                                  absl::Span<const uint8_t> password,
                                                  const CmsOptions& cms,
                                                  const ApplePayloadOptions& options) {
  auto plist = BuildPkcs12PayloadPlist(pfx, password, options);
  if (!plist.ok()) return plist.status();
  return CmsEnvelopeToCertificate(device_certificate, Reveal(*plist), cms);
}

}  // namespace hsmrewrap::crypto
