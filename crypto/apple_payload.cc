#include "crypto/apple_payload.h"

#include <openssl/rand.h>
#include <plist/plist.h>

#include <cstdio>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace hsmrewrap::crypto {
namespace {

// Owns a plist tree; plist_free frees the whole tree.
struct PlistDeleter {
  void operator()(plist_t p) const { plist_free(p); }
};
using PlistPtr = std::unique_ptr<void, PlistDeleter>;

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
  // The password as a NUL-terminated UTF-8 string, in wiped memory.
  SecretString pw;
  if (IsUtf8(password)) {
    pw.assign(reinterpret_cast<const char*>(password.data()), password.size());
  } else {
    pw.reserve(password.size() * 2);
    for (uint8_t c : password) {  // Latin-1 -> UTF-8
      if (c < 0x80) {
        pw.push_back(static_cast<char>(c));
      } else {
        pw.push_back(static_cast<char>(0xc0 | (c >> 6)));
        pw.push_back(static_cast<char>(0x80 | (c & 0x3f)));
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

  PlistPtr array(plist_new_array());
  plist_t dict = plist_new_dict();
  plist_array_append_item(array.get(), dict);  // the array owns dict from here on
  plist_dict_set_item(dict, "PayloadType", plist_new_string("com.apple.security.pkcs12"));
  plist_dict_set_item(dict, "PayloadVersion", plist_new_uint(1));
  plist_dict_set_item(dict, "PayloadUUID", plist_new_string(uuid.c_str()));
  plist_dict_set_item(dict, "PayloadIdentifier", plist_new_string(identifier.c_str()));
  plist_dict_set_item(dict, "PayloadDisplayName", plist_new_string(options.display_name.c_str()));
  plist_dict_set_item(dict, "PayloadContent",
                      plist_new_data(reinterpret_cast<const char*>(pfx.data()), pfx.size()));
  plist_t pw_node = plist_new_string(pw.c_str());
  plist_dict_set_item(dict, "Password", pw_node);

  char* xml = nullptr;
  uint32_t xml_len = 0;
  plist_to_xml(array.get(), &xml, &xml_len);

  // Wipe libplist's copy of the password before the tree is freed (plist_free does not).
  uint64_t pw_len = 0;
  if (const char* p = plist_get_string_ptr(pw_node, &pw_len)) Cleanse(const_cast<char*>(p), pw_len);
  array.reset();

  if (xml == nullptr || xml_len == 0) {
    if (xml != nullptr) plist_to_xml_free(xml);
    return absl::InternalError("plist_to_xml failed");
  }
  SecretBytes out(reinterpret_cast<const uint8_t*>(xml),
                  reinterpret_cast<const uint8_t*>(xml) + xml_len);
  Cleanse(xml, xml_len);
  plist_to_xml_free(xml);
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
