// PKCS#12 (PFX) inspection for import clients: opens a file with its password and checks
// that it can be imported as a user certificate. No gRPC, no PKCS#11.
//
// Every failure is an absl::Status whose message is meant for an administrator and which
// carries a PfxProblem (PfxProblemOf) so callers can count failures by reason.
//
// Legacy algorithms: OpenSSL's "legacy" provider (with "default") is loaded into the
// default library context once per process, on the first OpenPfx call, so RC2-40 files
// (`openssl pkcs12 -export` 1.x, Windows exports) open. This is deliberate: such files are
// common among users' existing PFX exports, and RC2-40 only protects the certificate bag;
// the loaded provider is never used to *make* anything. Thread-safe (std::call_once).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "crypto/keys.h"
#include "crypto/secret.h"

namespace hsmrewrap::crypto {

// Why a PFX was refused. Stable names (PfxProblemName) are used in summaries.
enum class PfxProblem {
  kNone,
  kNotPkcs12,      // not-pkcs12: not DER PKCS#12, truncated, malformed, too large, or
                   // asks for too much work (an iteration count above kMaxPkcs12Iterations)
  kWrongPassword,  // wrong-password: MAC check failed (or contents do not decrypt)
  kNoPrivateKey,   // no-private-key
  kNoCertificate,  // no-certificate
  kKeyMismatch,    // key-mismatch: no certificate in the file matches the private key
  kExpired,        // expired: NotAfter is in the past
  kNotYetValid,    // not-yet-valid: NotBefore is in the future
  kKeyUsage,       // key-usage: KeyUsage does not allow the intended purpose
  kUnsupported,    // unsupported: e.g. an encryption algorithm OpenSSL cannot run
};
std::string PfxProblemName(PfxProblem p);
// The PfxProblem attached to a status returned by this file (kNone for OK or other
// statuses).
PfxProblem PfxProblemOf(const absl::Status& status);

// Intune's userPfxIntendedPurpose: the Graph record's field.
enum class PfxPurpose { kUnassigned, kSmimeEncryption, kSmimeSigning };

// What is inside a PFX that opened.
struct PfxContents {
  std::shared_ptr<EVP_PKEY> private_key;     // never null in a returned value
  std::shared_ptr<X509> certificate;         // the end-entity certificate matching the key
  std::vector<std::shared_ptr<X509>> chain;  // other certificates in the file
  std::string thumbprint;                    // lowercase hex SHA-1 of the certificate DER
  absl::Time not_before;
  absl::Time not_after;
  std::string key_type;  // "RSA", "EC", ...
  int key_bits = 0;
  std::string subject;  // one-line RFC 2253 form, for messages
};

// Opens `pfx` with `password` (UTF-8 text; OpenSSL converts it to the BMPString form
// PKCS#12 uses). An empty password also tries "no password". Refuses (not-pkcs12) a file
// whose MAC or PBE iteration counts are above kMaxPkcs12Iterations or add up to more than
// kMaxPkcs12TotalIterations (crypto/pkcs12_parse.h) before running any. Checks that there is a
// private key, at least one certificate, and a certificate matching the key. Never
// crashes on malformed input (the CVE-2024-0727 shapes are detected before parsing).
absl::StatusOr<PfxContents> OpenPfx(absl::Span<const uint8_t> pfx, const SecretString& password);

// Validity at `now` and KeyUsage against `purpose`: smimeEncryption needs keyEncipherment
// (RSA) or keyAgreement (EC) and smimeSigning needs digitalSignature or nonRepudiation,
// when the certificate has a KeyUsage extension. unassigned checks no key usage.
absl::Status CheckPfxForImport(const PfxContents& contents, PfxPurpose purpose, absl::Time now);

}  // namespace hsmrewrap::crypto
