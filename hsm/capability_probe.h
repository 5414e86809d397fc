// What a token can do, learned by trial (a token may list a mechanism and still refuse it,
// or accept it and produce something else): every probe runs the operation on known data
// and checks the result.
#pragma once

#include <functional>
#include <set>

#include "absl/status/statusor.h"
#include "crypto/keys.h"
#include "hsm/backend.h"
#include "hsm/session_pool.h"

namespace hsmrewrap::hsm {

// A fresh lease for each probe step (a failed step breaks its session).
using LeaseSource = std::function<absl::StatusOr<SessionPool::Lease>()>;

// The paddings the token can C_WrapKey a secret with to an RSA public key imported as a
// session object: a throwaway host key's public half goes into the token, a known session
// secret is wrapped to it, and the host decrypts the result. *out gets every padding that
// worked; an error return (Unavailable: the token was lost) may leave it partial.
// With `cms` set, also what in-token CMS the token builds (KeyBackend::EnvelopeInToken): for
// each content cipher and each key transport among the wrap paddings (OAEP-SHA256, PKCS#1),
// a sensitive session secret of known value is wrapped under a generated content key
// (CBC_PAD, random IV), the content key is wrapped to the throwaway host key, and the host
// decrypts both; *cms gets every form whose result gave the secret back.
// With `ec_cms` set, the same for EC device keys (P-256, P-384; AES content): a host EC key
// stands for the device and unwraps the content key from the token's parts.
absl::Status ProbeWrapPaddings(const LeaseSource& lease, std::set<RsaPadding>* out,
                               CmsFormSet* cms = nullptr, EcCmsFormSet* ec_cms = nullptr);

// What the token does with a service key: C_Decrypt and C_UnwrapKey per padding (PKCS#1
// v1.5 only with allow_pkcs1), whether bad PKCS#1 padding is implicitly rejected, and raw
// RSA (only with host_unpadding). Errors: only a lost token (Unavailable) or host failures.
absl::StatusOr<KeyCapabilities> ProbeKey(const LeaseSource& lease, CK_OBJECT_HANDLE priv,
                                         const crypto::PublicKey& pub, bool allow_pkcs1,
                                         bool host_unpadding);

}  // namespace hsmrewrap::hsm
