// How an item's failure becomes its ItemError, and the API's enums in crypto/hsm terms.
// Only a typed decryption failure from the token (hsm::Outcome::kDecryptFailed) is
// DECRYPT_FAILED, always with the same message; every other failure keeps its own code.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "crypto/cms.h"
#include "crypto/rsa.h"
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

bool PaddingFromProto(v1::Padding p, crypto::RsaPadding* out);
v1::Padding PaddingToProto(crypto::RsaPadding p);
v1::Path PathToProto(hsm::Path p);
crypto::CmsContentCipher ContentCipherFromProto(v1::ContentCipher c);
// Bare formats carry the RSA-encrypted secret itself (no CMS, no Apple payload).
bool IsBareFormat(v1::OutputFormat f);
// The padding of a bare RSA output format.
crypto::RsaPadding BarePadding(v1::OutputFormat f);

}  // namespace hsmrewrap::service
