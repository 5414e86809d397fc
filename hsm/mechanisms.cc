#include "hsm/mechanisms.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace hsmrewrap::hsm {
namespace {

CK_MECHANISM_TYPE HashMech(crypto::HashAlg h) {
  switch (h) {
    case crypto::HashAlg::kSha1:
      return CKM_SHA_1;
    case crypto::HashAlg::kSha256:
      return CKM_SHA256;
    case crypto::HashAlg::kSha384:
      return CKM_SHA384;
    case crypto::HashAlg::kSha512:
      return CKM_SHA512;
  }
  return CKM_SHA_1;
}

CK_RSA_PKCS_MGF_TYPE MgfFor(crypto::HashAlg h) {
  switch (h) {
    case crypto::HashAlg::kSha1:
      return CKG_MGF1_SHA1;
    case crypto::HashAlg::kSha256:
      return CKG_MGF1_SHA256;
    case crypto::HashAlg::kSha384:
      return CKG_MGF1_SHA384;
    case crypto::HashAlg::kSha512:
      return CKG_MGF1_SHA512;
  }
  return CKG_MGF1_SHA1;
}

}  // namespace

const char* PaddingName(RsaPadding p) {
  switch (p) {
    case RsaPadding::kOaepSha1:
      return "OAEP-SHA1";
    case RsaPadding::kOaepSha256:
      return "OAEP-SHA256";
    case RsaPadding::kOaepSha384:
      return "OAEP-SHA384";
    case RsaPadding::kOaepSha512:
      return "OAEP-SHA512";
    case RsaPadding::kPkcs1:
      return "PKCS1";
  }
  return "?";
}

std::string PaddingSetName(const std::set<RsaPadding>& s) {
  std::vector<std::string> names;
  for (RsaPadding p : s) names.push_back(PaddingName(p));
  return absl::StrCat("{", absl::StrJoin(names, ","), "}");
}

RsaMechanism::RsaMechanism(RsaPadding p) {
  if (p == RsaPadding::kPkcs1) {
    mech_ = CK_MECHANISM{CKM_RSA_PKCS, nullptr, 0};
    return;
  }
  const crypto::HashAlg h = crypto::OaepHash(p);
  params_ = CK_RSA_PKCS_OAEP_PARAMS{HashMech(h), MgfFor(h), CKZ_DATA_SPECIFIED, nullptr, 0};
  mech_ = CK_MECHANISM{CKM_RSA_PKCS_OAEP, &params_, sizeof(params_)};
}

RsaMechanism RsaMechanism::Raw() { return RsaMechanism(); }

}  // namespace hsmrewrap::hsm
