// pfx-import: builds Intune userPFXCertificate records (INTEROP.md §2–4) from users' PFX
// files against an hsm-rewrap service key, optionally verifies them through the service and
// uploads them to Microsoft Graph. The pieces below are separate so tests can use them;
// RunPfxImport is the whole command (main.cc is a thin wrapper).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "crypto/pfx.h"
#include "crypto/rsa.h"
#include "crypto/secret.h"

namespace hsmrewrap::pfx_import {

// How the password text becomes the bytes that are RSA-encrypted.
enum class PasswordEncoding {
  kIntune,  // low byte of each UTF-16 code unit (INTEROP.md §2.1); > U+00FF refused
  kUtf8,    // the UTF-8 bytes as given
};

// `text` is UTF-8. kIntune: invalid UTF-8 and any character above U+00FF are refused with a
// message that says which character position (never the character itself).
absl::StatusOr<crypto::SecretBytes> PasswordBytes(const crypto::SecretString& text,
                                                  PasswordEncoding encoding);
// The inverse, for --verify: the bytes a device recovers, as the UTF-8 text that opens the
// PFX (kIntune: each byte is the code point U+0000..U+00FF).
crypto::SecretString PasswordTextFromBytes(absl::Span<const uint8_t> bytes,
                                           PasswordEncoding encoding);

enum class EnumCase { kCamel, kPascal };

// Intune's userPfxPaddingScheme names for the three supported schemes.
// "oaepSha256" / "OaepSha256" etc.; nullopt-free: the caller passes a valid value.
std::string PaddingName(crypto::RsaPadding padding, EnumCase c);
std::string PurposeName(crypto::PfxPurpose purpose, EnumCase c);
// Accepts the camelCase and PascalCase names, case-insensitively.
absl::StatusOr<crypto::RsaPadding> ParsePadding(const std::string& name);
absl::StatusOr<crypto::PfxPurpose> ParsePurpose(const std::string& name);

// DateTimeOffset as Newtonsoft writes it (INTEROP.md §4.2): local wall-clock time in `tz`
// with a ±HH:MM offset (never "Z"). fractional=false: whole seconds (startDateTime,
// expirationDateTime). fractional=true: up to 7 fractional digits, trailing zeros dropped,
// none when zero (createdDateTime, lastModifiedDateTime).
std::string FormatDateTimeOffset(absl::Time t, absl::TimeZone tz, bool fractional);

struct RecordInput {
  std::string thumbprint;
  crypto::PfxPurpose purpose = crypto::PfxPurpose::kUnassigned;
  std::string user_principal_name;
  absl::Time not_before, not_after;
  std::string provider_name = "hsm-rewrap";
  std::string key_name;
  crypto::RsaPadding padding = crypto::RsaPadding::kOaepSha512;
  std::string pfx_base64;
  std::string encrypted_password_base64;
  absl::Time created;
};

// The userPFXCertificate record, properties in the module's declaration order, `id` omitted.
nlohmann::ordered_json BuildRecord(const RecordInput& in, EnumCase enum_case, absl::TimeZone tz);

// The whole command line tool. Exit codes: 0 every row imported or skipped; 1 at least one
// row failed; 2 usage error; 3 the service or an output could not be used at start-up.
int RunPfxImport(int argc, char** argv);

}  // namespace hsmrewrap::pfx_import
