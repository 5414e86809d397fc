// How an item's failure becomes its ItemError, and hsm::Path in the API's terms.
// Only a typed decryption failure from the token (hsm::Outcome::kDecryptFailed) is
// DECRYPT_FAILED, always with the same message; every other failure keeps its own code.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "hsm/backend.h"
#include "hsmrewrap/v1/rewrap.pb.h"

namespace hsmrewrap::service {

namespace v1 = ::hsmrewrap::v1;

void Fail(v1::RewrapResult& r, v1::ItemError::Code code, std::string message);
// A gate's refusal: ResourceExhausted / Unavailable / anything else (PERMISSION_DENIED).
void FailGate(v1::RewrapResult& r, const absl::Status& s);
// A failed step that did not see the ciphertext (a key lookup), or a refused or retryable
// token operation: the status code picks the item code. Never DECRYPT_FAILED.
void FailFromStatus(v1::RewrapResult& r, const absl::Status& s, const std::string& key);
// The typed outcome of a token operation.
void FailFromOp(v1::RewrapResult& r, hsm::Outcome outcome, const absl::Status& s,
                const std::string& key);
template <typename T>
void FailFromOp(v1::RewrapResult& r, const hsm::OpResult<T>& op, const std::string& key) {
  FailFromOp(r, op.outcome(), op.status(), key);
}

// The token's path in the API's terms (the other enums: proto/conversions.h).
v1::Path PathToProto(hsm::Path p);

}  // namespace hsmrewrap::service
