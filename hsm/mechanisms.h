// RSA paddings as PKCS#11 mechanisms.
#pragma once

#include <set>
#include <string>

#include "crypto/rsa.h"
#include "hsm/pkcs11.h"

namespace hsmrewrap::hsm {

using crypto::RsaPadding;

inline constexpr RsaPadding kOaepPaddings[] = {RsaPadding::kOaepSha1, RsaPadding::kOaepSha256,
                                               RsaPadding::kOaepSha384, RsaPadding::kOaepSha512};
inline constexpr RsaPadding kAllPaddings[] = {RsaPadding::kOaepSha1, RsaPadding::kOaepSha256,
                                              RsaPadding::kOaepSha384, RsaPadding::kOaepSha512,
                                              RsaPadding::kPkcs1};

const char* PaddingName(RsaPadding p);                      // "OAEP-SHA256", "PKCS1"
std::string PaddingSetName(const std::set<RsaPadding>& s);  // "{OAEP-SHA1,PKCS1}"

// A CK_MECHANISM that owns its parameters (not copyable: it points into itself).
// OAEP: MGF1 of the same hash, the empty label given as CKZ_DATA_SPECIFIED with no data
// (SoftHSM2 2.6 rejects any other form for encrypt, wrap and unwrap).
class RsaMechanism final {
 public:
  explicit RsaMechanism(RsaPadding p);
  static RsaMechanism Raw();  // CKM_RSA_X_509
  RsaMechanism(const RsaMechanism&) = delete;
  RsaMechanism& operator=(const RsaMechanism&) = delete;
  CK_MECHANISM* get() { return &mech_; }

 private:
  RsaMechanism() : mech_{CKM_RSA_X_509, nullptr, 0} {}
  CK_RSA_PKCS_OAEP_PARAMS params_{};
  CK_MECHANISM mech_;
};

}  // namespace hsmrewrap::hsm
