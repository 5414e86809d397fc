#include "hsm/backend.h"

namespace hsmrewrap::hsm {

const char* PathName(Path p) {
  switch (p) {
    case Path::kInToken:
      return "IN_TOKEN";
    case Path::kTokenDecrypt:
      return "TOKEN_DECRYPT";
    case Path::kHostUnpadding:
      return "HOST_UNPADDING";
  }
  return "UNKNOWN";
}

const char* OutcomeName(Outcome o) {
  switch (o) {
    case Outcome::kOk:
      return "ok";
    case Outcome::kDecryptFailed:
      return "decrypt_failed";
    case Outcome::kRetryable:
      return "retryable";
    case Outcome::kRefused:
      return "refused";
  }
  return "unknown";
}

Outcome OutcomeOfStatus(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kOk:
      return Outcome::kOk;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kCancelled:
      return Outcome::kRetryable;
    default:
      return Outcome::kRefused;
  }
}

}  // namespace hsmrewrap::hsm
