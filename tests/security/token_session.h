// The test's own logged-in PKCS#11 session on a SoftHSM2 token that rewrapd uses at the same
// time (SoftHSM2 lets several processes share a token directory): plants keys the way an
// operator's tool would, and reads or changes key attributes behind rewrapd's back.
// SOFTHSM2_CONF must name the token's configuration before Open().
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "hsm/pkcs11.h"
#include "hsm/session_pool.h"

namespace hsmrewrap::sec {

class TokenSession {
 public:
  static absl::StatusOr<std::unique_ptr<TokenSession>> Open(const std::string& token_label,
                                                            const std::string& user_pin);
  ~TokenSession();

  // An RSA-2048 key pair labelled `name` with every attribute rewrapd requires of a service
  // key (hsm::ServicePrivateKeyTemplate), but CKA_MODIFIABLE=TRUE on both objects: a key
  // another tool made, whose attributes anyone with the PIN can change.
  absl::Status GenerateModifiableServiceKey(const std::string& name);

  // The one object of class `cls` (CKO_PRIVATE_KEY / CKO_PUBLIC_KEY) labelled `name`.
  absl::StatusOr<CK_OBJECT_HANDLE> Find(const std::string& name, CK_OBJECT_CLASS cls);
  absl::StatusOr<bool> GetBool(const std::string& name, CK_OBJECT_CLASS cls,
                               CK_ATTRIBUTE_TYPE type);
  // The RSA public key object labelled `name` as a DER SubjectPublicKeyInfo.
  absl::StatusOr<std::string> PublicKeyDer(const std::string& name);
  // C_SetAttributeValue of one CK_BBOOL attribute; the status carries the CKR_ value.
  absl::Status SetBool(const std::string& name, CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE type,
                       bool value);

 private:
  TokenSession() = default;
  std::shared_ptr<hsm::Module> module_;  // declared first: destroyed after the pool
  std::unique_ptr<hsm::SessionPool> pool_;
};

}  // namespace hsmrewrap::sec
