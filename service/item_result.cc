#include "service/item_result.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"

namespace hsmrewrap::service {

using v1::ItemError;

void Fail(v1::RewrapResult& r, ItemError::Code code, std::string message) {
  r.clear_ciphertext();
  r.set_path(v1::PATH_UNSPECIFIED);
  r.mutable_error()->set_code(code);
  r.mutable_error()->set_message(std::move(message));
}

// A gate's refusal: the status code picks the item code; the message is the gate's.
void FailGate(v1::RewrapResult& r, const absl::Status& s) {
  ItemError::Code code = ItemError::PERMISSION_DENIED;
  if (s.code() == absl::StatusCode::kResourceExhausted) code = ItemError::RESOURCE_EXHAUSTED;
  if (s.code() == absl::StatusCode::kUnavailable) code = ItemError::UNAVAILABLE;
  Fail(r, code, std::string(s.message()));
}

namespace {
void FailDecrypt(v1::RewrapResult& r) {
  Fail(r, ItemError::DECRYPT_FAILED, hsm::kDecryptFailedText);
}
}  // namespace

// A failed call that did not see the ciphertext (key lookups) or a refused/retryable token
// operation: the status code picks the item code. Never DECRYPT_FAILED: only the token's
// answer about a ciphertext is that (FailFromOp).
void FailFromStatus(v1::RewrapResult& r, const absl::Status& s, const std::string& key) {
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kPermissionDenied:  // the token refused the PIN: unavailable here
      Fail(r, ItemError::UNAVAILABLE, absl::StrCat("token unavailable: ", s.message()));
      return;
    case absl::StatusCode::kResourceExhausted:
      Fail(r, ItemError::RESOURCE_EXHAUSTED, std::string(s.message()));
      return;
    case absl::StatusCode::kDeadlineExceeded:
      Fail(r, ItemError::DEADLINE_EXCEEDED, std::string(s.message()));
      return;
    case absl::StatusCode::kNotFound:
      Fail(r, ItemError::KEY_NOT_FOUND, absl::StrCat("key '", key, "' not found"));
      return;
    case absl::StatusCode::kFailedPrecondition:  // a key rewrapd refuses to serve, says why
    case absl::StatusCode::kUnimplemented:
      Fail(r, ItemError::UNSUPPORTED, std::string(s.message()));
      return;
    case absl::StatusCode::kInvalidArgument:
      Fail(r, ItemError::INVALID_ITEM, std::string(s.message()));
      return;
    default:
      spdlog::warn("item {}: key {}: token error: {}", r.id(), key, s.ToString());
      Fail(r, ItemError::INTERNAL, "the token failed the operation");
      return;
  }
}

void FailFromOp(v1::RewrapResult& r, hsm::Outcome outcome, const absl::Status& s,
                const std::string& key) {
  switch (outcome) {
    case hsm::Outcome::kDecryptFailed:
      FailDecrypt(r);
      return;
    case hsm::Outcome::kRetryable:
      if (hsm::OutcomeOfStatus(s) != hsm::Outcome::kRetryable) {  // keep it retryable
        Fail(r, ItemError::UNAVAILABLE, absl::StrCat("token unavailable: ", s.message()));
        return;
      }
      FailFromStatus(r, s, key);
      return;
    case hsm::Outcome::kRefused:
      FailFromStatus(r, s, key);
      return;
    case hsm::Outcome::kOk:
      break;
  }
  Fail(r, ItemError::INTERNAL, "internal error: a successful operation reported as failed");
}

v1::Path PathToProto(hsm::Path p) {
  switch (p) {
    case hsm::Path::kInToken:
      return v1::IN_TOKEN;
    case hsm::Path::kTokenDecrypt:
      return v1::TOKEN_DECRYPT;
    case hsm::Path::kHostUnpadding:
      return v1::HOST_UNPADDING;
  }
  return v1::PATH_UNSPECIFIED;
}

}  // namespace hsmrewrap::service
