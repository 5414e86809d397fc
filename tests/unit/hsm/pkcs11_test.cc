// CK_RV mapping and small helpers; no token needed.
#include "hsm/pkcs11.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/backend.h"

namespace hsmrewrap::hsm {
namespace {

TEST(Pkcs11Test, CkrNames) {
  EXPECT_STREQ(CkrName(CKR_OK), "CKR_OK");
  EXPECT_STREQ(CkrName(CKR_GENERAL_ERROR), "CKR_GENERAL_ERROR");
  EXPECT_STREQ(CkrName(CKR_PIN_INCORRECT), "CKR_PIN_INCORRECT");
  EXPECT_STREQ(CkrName(CKR_VENDOR_DEFINED | 5), "CKR_VENDOR_DEFINED");
  EXPECT_STREQ(CkrName(0x7777), "CKR_UNKNOWN");
}

TEST(Pkcs11Test, StatusNamesFunctionAndCkr) {
  absl::Status s = CkrToStatus("C_Decrypt", CKR_DEVICE_REMOVED);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("C_Decrypt"));
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("CKR_DEVICE_REMOVED"));
  EXPECT_EQ(CkrOf(s), CKR_DEVICE_REMOVED);
  EXPECT_EQ(CkrOf(absl::OkStatus()), CKR_OK);
  EXPECT_EQ(CkrOf(absl::InternalError("x")), CKR_GENERAL_ERROR);
}

TEST(Pkcs11Test, Classification) {
  for (CK_RV rv : {CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT,
                   CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED, CKR_DEVICE_MEMORY,
                   CKR_SESSION_COUNT, CKR_CRYPTOKI_NOT_INITIALIZED, CKR_GENERAL_ERROR}) {
    EXPECT_EQ(CkrToStatus("C_X", rv).code(), absl::StatusCode::kUnavailable) << CkrName(rv);
  }
  for (CK_RV rv : {CKR_PIN_INCORRECT, CKR_PIN_LOCKED, CKR_PIN_EXPIRED}) {
    EXPECT_EQ(CkrToStatus("C_Login", rv).code(), absl::StatusCode::kPermissionDenied);
  }
  EXPECT_EQ(CkrToStatus("C_DecryptInit", CKR_MECHANISM_INVALID).code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(CkrToStatus("C_DecryptInit", CKR_OBJECT_HANDLE_INVALID).code(),
            absl::StatusCode::kNotFound);
  // A template or key size the token refuses is the request's, never a lost token.
  for (CK_RV rv : {CKR_TEMPLATE_INCOMPLETE, CKR_TEMPLATE_INCONSISTENT, CKR_ATTRIBUTE_TYPE_INVALID,
                   CKR_ATTRIBUTE_VALUE_INVALID, CKR_ATTRIBUTE_READ_ONLY}) {
    EXPECT_EQ(CkrToStatus("C_GenerateKeyPair", rv).code(), absl::StatusCode::kFailedPrecondition)
        << CkrName(rv);
  }
  EXPECT_EQ(CkrToStatus("C_GenerateKeyPair", CKR_KEY_SIZE_RANGE).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CkrToStatus("C_X", CKR_OK).ok());
}

TEST(Pkcs11Test, OutcomesAreTyped) {
  const auto failed = OpResult<crypto::Bytes>::DecryptFailed();
  EXPECT_EQ(failed.outcome(), Outcome::kDecryptFailed);
  EXPECT_EQ(failed.status(), absl::InvalidArgumentError(kDecryptFailedText));
  // A status that merely looks like a decryption failure is not one.
  EXPECT_EQ(
      OpResult<crypto::Bytes>::FromStatus(absl::InvalidArgumentError(kDecryptFailedText)).outcome(),
      Outcome::kRefused);
  for (auto code : {absl::StatusCode::kUnavailable, absl::StatusCode::kResourceExhausted,
                    absl::StatusCode::kDeadlineExceeded, absl::StatusCode::kAborted,
                    absl::StatusCode::kCancelled}) {
    EXPECT_EQ(OutcomeOfStatus(absl::Status(code, "x")), Outcome::kRetryable) << code;
  }
  for (auto code : {absl::StatusCode::kInternal, absl::StatusCode::kNotFound,
                    absl::StatusCode::kFailedPrecondition, absl::StatusCode::kUnimplemented,
                    absl::StatusCode::kInvalidArgument}) {
    EXPECT_EQ(OutcomeOfStatus(absl::Status(code, "x")), Outcome::kRefused) << code;
  }
  // C_DecryptInit (or any call) failing CKR_GENERAL_ERROR is retryable, not a bad ciphertext.
  EXPECT_EQ(OpResult<crypto::Bytes>::FromStatus(CkrToStatus("C_DecryptInit", CKR_GENERAL_ERROR))
                .outcome(),
            Outcome::kRetryable);
  const auto from = OpResult<int>::From(failed);
  EXPECT_EQ(from.outcome(), Outcome::kDecryptFailed);
  OpResult<int> ok(7);
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 7);
  EXPECT_STREQ(PathName(Path::kHostUnpadding), "HOST_UNPADDING");
}

TEST(Pkcs11Test, LoadRefusesRelativeOrMissingModules) {
  EXPECT_EQ(Module::Load("libsofthsm2.so", "").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Module::Load("/nonexistent/libx.so", "").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace hsmrewrap::hsm
