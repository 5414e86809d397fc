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

namespace {
// One text for every cause, so neither code, message nor size tells causes apart.
constexpr char kDecryptFailed[] = "decryption failed";
}  // namespace

absl::Status DecryptFailedError() { return absl::InvalidArgumentError(kDecryptFailed); }

bool IsDecryptFailed(const absl::Status& s) {
  return s.code() == absl::StatusCode::kInvalidArgument && s.message() == kDecryptFailed;
}

}  // namespace hsmrewrap::hsm
