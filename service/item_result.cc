#include "service/item_result.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"

namespace hsmrewrap::service {

using crypto::RsaPadding;
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

bool IsBareFormat(v1::OutputFormat f) {
  return f != v1::CMS_ENVELOPED && f != v1::CMS_ENVELOPED_PKCS1 && f != v1::APPLE_ENCRYPTED_PAYLOAD;
}

crypto::CmsContentCipher ContentCipherFromProto(v1::ContentCipher c) {
  switch (c) {
    case v1::AES_128_CBC:
      return crypto::CmsContentCipher::kAes128Cbc;
    case v1::DES_EDE3_CBC:
      return crypto::CmsContentCipher::kDes3Cbc;
    case v1::AES_256_CBC:
    default:
      return crypto::CmsContentCipher::kAes256Cbc;
  }
}

// The padding of a bare RSA output format.
RsaPadding BarePadding(v1::OutputFormat f) {
  switch (f) {
    case v1::RSA_OAEP_SHA1:
      return RsaPadding::kOaepSha1;
    case v1::RSA_OAEP_SHA384:
      return RsaPadding::kOaepSha384;
    case v1::RSA_OAEP_SHA512:
      return RsaPadding::kOaepSha512;
    case v1::RSA_PKCS1:
      return RsaPadding::kPkcs1;
    case v1::RSA_OAEP_SHA256:
    default:
      return RsaPadding::kOaepSha256;
  }
}

bool PaddingFromProto(v1::Padding p, RsaPadding* out) {
  switch (p) {
    case v1::OAEP_SHA256:
      *out = RsaPadding::kOaepSha256;
      return true;
    case v1::OAEP_SHA384:
      *out = RsaPadding::kOaepSha384;
      return true;
    case v1::OAEP_SHA512:
      *out = RsaPadding::kOaepSha512;
      return true;
    case v1::OAEP_SHA1:
      *out = RsaPadding::kOaepSha1;
      return true;
    case v1::PKCS1:
      *out = RsaPadding::kPkcs1;
      return true;
    default:
      return false;
  }
}

v1::Padding PaddingToProto(RsaPadding p) {
  switch (p) {
    case RsaPadding::kOaepSha256:
      return v1::OAEP_SHA256;
    case RsaPadding::kOaepSha384:
      return v1::OAEP_SHA384;
    case RsaPadding::kOaepSha512:
      return v1::OAEP_SHA512;
    case RsaPadding::kOaepSha1:
      return v1::OAEP_SHA1;
    case RsaPadding::kPkcs1:
      return v1::PKCS1;
  }
  return v1::PADDING_UNSPECIFIED;
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
