// The Apple "encrypted payload" for a PKCS#12 identity: the plist array
// holding one com.apple.security.pkcs12 payload dictionary, CMS-encrypted to the device
// identity certificate. The result is what a configuration profile carries in
// EncryptedPayloadContent (with IsEncrypted = true); the device decrypts it with its MDM
// identity key and installs the PFX with the password inside.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "crypto/cms.h"
#include "crypto/keys.h"
#include "crypto/secret.h"

namespace hsmrewrap::crypto {

struct ApplePayloadOptions {
  // PayloadUUID; empty = a fresh random UUID (upper-case, RFC 4122 version 4).
  std::string payload_uuid;
  // PayloadIdentifier; empty = "com.hsmrewrap.pkcs12." + the UUID.
  std::string payload_identifier;
  std::string display_name = "Imported certificate";  // PayloadDisplayName
};

// Builds the XML plist (UTF-8):
//   <array><dict>
//     PayloadType = com.apple.security.pkcs12, PayloadVersion = 1, PayloadUUID,
//     PayloadIdentifier, PayloadDisplayName, PayloadContent = <data>pfx</data>,
//     Password = the password
//   </dict></array>
// `password` is the unsealed secret, used as bytes: valid UTF-8 is kept as is; anything
// else is read as Latin-1 (what Intune's importer's narrowing of UTF-16 gives) and converted to
// UTF-8. Control characters that XML 1.0 forbids are refused. The plist holds the password, so it
// is written straight into one SecretBytes (sized up front) and returned as such: no other buffer
// ever holds the password or the plist. The text is byte for byte what libplist's plist_to_xml
// writes for the same tree.
absl::StatusOr<SecretBytes> BuildPkcs12PayloadPlist(absl::Span<const uint8_t> pfx,
                                                    absl::Span<const uint8_t> password,
                                                    const ApplePayloadOptions& options = {});

// BuildPkcs12PayloadPlist + CmsEnvelopeToCertificate(device_certificate, plist, cms):
// the DER ContentInfo(EnvelopedData) for EncryptedPayloadContent.
absl::StatusOr<Bytes> AppleEncryptedPkcs12Payload(const Certificate& device_certificate,
                                                  absl::Span<const uint8_t> pfx,
                                                  absl::Span<const uint8_t> password,
                                                  const CmsOptions& cms = {},
                                                  const ApplePayloadOptions& options = {});

}  // namespace hsmrewrap::crypto
