// Password bytes, Intune's enum names and dates, and the record (INTEROP.md §2.1, §4.2).
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "clients/pfx-import/pfx_import.h"
#include "proto/conversions.h"

namespace hsmrewrap::pfx_import {

using crypto::PfxPurpose;
using crypto::RsaPadding;
using crypto::SecretBytes;
using crypto::SecretString;

// ---------------------------------------------------------------------------------------
// Password bytes

absl::StatusOr<SecretBytes> PasswordBytes(const SecretString& text, PasswordEncoding encoding) {
  SecretBytes out;
  out.reserve(text.size());
  if (encoding == PasswordEncoding::kUtf8) {
    out.assign(text.begin(), text.end());
    return out;
  }
  // Decode UTF-8 to code points; each code point becomes one UTF-16 code unit (BMP) or two
  // (surrogates). Intune keeps the low byte of each unit, so only U+0000..U+00FF survive.
  size_t i = 0, position = 0;
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  while (i < text.size()) {
    ++position;
    const unsigned char c = s[i];
    uint32_t cp = 0;
    size_t len = 0;
    if (c < 0x80) {
      cp = c, len = 1;
    } else if ((c & 0xE0) == 0xC0) {
      cp = c & 0x1F, len = 2;
    } else if ((c & 0xF0) == 0xE0) {
      cp = c & 0x0F, len = 3;
    } else if ((c & 0xF8) == 0xF0) {
      cp = c & 0x07, len = 4;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("the password is not valid UTF-8 (byte ", i + 1, ")"));
    }
    if (i + len > text.size()) {
      return absl::InvalidArgumentError("the password is not valid UTF-8 (truncated character)");
    }
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) {
        return absl::InvalidArgumentError(
            absl::StrCat("the password is not valid UTF-8 (character ", position, ")"));
      }
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    static constexpr uint32_t kMinForLen[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLen[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return absl::InvalidArgumentError(
          absl::StrCat("the password is not valid UTF-8 (character ", position, ")"));
    }
    if (cp > 0xFF) {
      return absl::InvalidArgumentError(absl::StrCat(
          "password character ", position,
          " is above U+00FF; Intune's tooling keeps only the low byte of each UTF-16 unit, so "
          "the device would get a corrupted password (use --password-encoding utf8 only if "
          "every consumer expects UTF-8)"));
    }
    out.push_back(static_cast<uint8_t>(cp));
    i += len;
  }
  return out;
}

SecretString PasswordTextFromBytes(absl::Span<const uint8_t> bytes, PasswordEncoding encoding) {
  SecretString out;
  out.reserve(bytes.size() * 2 + 32);
  for (uint8_t b : bytes) {
    if (encoding == PasswordEncoding::kUtf8 || b < 0x80) {
      out.push_back(static_cast<char>(b));
    } else {
      out.push_back(static_cast<char>(0xC0 | (b >> 6)));
      out.push_back(static_cast<char>(0x80 | (b & 0x3F)));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Names and dates

std::string PaddingName(RsaPadding padding, EnumCase c) {
  std::string n = proto_crypto::PaddingSchemeName(padding);
  if (c == EnumCase::kPascal) n[0] = absl::ascii_toupper(n[0]);
  return n;
}

std::string PurposeName(PfxPurpose purpose, EnumCase c) {
  std::string n;
  switch (purpose) {
    case PfxPurpose::kUnassigned:
      n = "Unassigned";
      break;
    case PfxPurpose::kSmimeEncryption:
      n = "SmimeEncryption";
      break;
    case PfxPurpose::kSmimeSigning:
      n = "SmimeSigning";
      break;
  }
  if (c == EnumCase::kCamel) n[0] = absl::ascii_tolower(n[0]);
  return n;
}

absl::StatusOr<RsaPadding> ParsePadding(const std::string& name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "oaepsha256") return RsaPadding::kOaepSha256;
  if (n == "oaepsha384") return RsaPadding::kOaepSha384;
  if (n == "oaepsha512") return RsaPadding::kOaepSha512;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown padding '", name, "' (oaepSha256, oaepSha384 or oaepSha512)"));
}

absl::StatusOr<PfxPurpose> ParsePurpose(const std::string& name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "unassigned") return PfxPurpose::kUnassigned;
  if (n == "smimeencryption") return PfxPurpose::kSmimeEncryption;
  if (n == "smimesigning") return PfxPurpose::kSmimeSigning;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown intended purpose '", name, "' (smimeEncryption, smimeSigning or unassigned)"));
}

std::string FormatDateTimeOffset(absl::Time t, absl::TimeZone tz, bool fractional) {
  std::string out = absl::FormatTime("%Y-%m-%dT%H:%M:%S", t, tz);
  if (fractional) {
    // 100 ns ticks, as .NET DateTime; trailing zeros dropped, nothing when zero.
    const absl::Duration sub = t - absl::FromUnixSeconds(absl::ToUnixSeconds(t));
    int64_t ticks = absl::ToInt64Nanoseconds(sub) / 100;
    if (ticks < 0) ticks += 10000000;
    if (ticks != 0) {
      std::string frac = absl::StrFormat("%07d", ticks);
      while (!frac.empty() && frac.back() == '0') frac.pop_back();
      absl::StrAppend(&out, ".", frac);
    }
  }
  absl::StrAppend(&out, absl::FormatTime("%Ez", t, tz));
  return out;
}

nlohmann::ordered_json BuildRecord(const RecordInput& in, EnumCase enum_case, absl::TimeZone tz) {
  nlohmann::ordered_json j;
  j["thumbprint"] = absl::AsciiStrToLower(in.thumbprint);
  j["intendedPurpose"] = PurposeName(in.purpose, enum_case);
  j["userPrincipalName"] = in.user_principal_name;
  j["startDateTime"] = FormatDateTimeOffset(in.not_before, tz, false);
  j["expirationDateTime"] = FormatDateTimeOffset(in.not_after, tz, false);
  j["providerName"] = in.provider_name;
  j["keyName"] = in.key_name;
  j["paddingScheme"] = PaddingName(in.padding, enum_case);
  j["encryptedPfxBlob"] = in.pfx_base64;
  j["encryptedPfxPassword"] = in.encrypted_password_base64;
  const std::string created = FormatDateTimeOffset(in.created, tz, true);
  j["createdDateTime"] = created;
  j["lastModifiedDateTime"] = created;
  return j;
}

}  // namespace hsmrewrap::pfx_import
