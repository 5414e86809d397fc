// The token's half of in-token CMS (KeyBackend::EnvelopeInToken), on one leased session:
// from a secret object already in the token, the ciphertext parts of a CMS EnvelopedData.
// Used by the rewrap (after C_UnwrapKey of the sealed secret) and by the start-up probe
// (after C_CreateObject of a known secret), so both run the same calls.
//
// RSA recipients (key transport): C_GenerateKey of the content key; C_WrapKey CBC_PAD of
// the secret under it with a random IV; C_WrapKey of the content key to the device key
// (a session object) with OAEP-SHA256 or PKCS#1 v1.5.
// EC recipients (RFC 5753 key agreement, P-256/P-384, AES content only): the same content
// step; C_GenerateKeyPair of an ephemeral EC key on the device's curve; C_DeriveKey
// CKM_ECDH1_DERIVE with the device's point and CKD_SHA1_KDF over ECC-CMS-SharedInfo gives
// the KEK; C_WrapKey CKM_AES_KEY_WRAP of the content key under it.
// Every object made here is destroyed before returning (a failed destroy marks the lease
// broken, which closes the session and its objects with it).
#pragma once

#include "absl/status/statusor.h"
#include "crypto/cms.h"
#include "crypto/cms_assemble.h"
#include "crypto/keys.h"
#include "hsm/session_pool.h"

namespace hsmrewrap::hsm {

// `max_secret_len`: an upper bound of the secret's length (the CBC output buffer).
// Errors are the failing call's status (none of these calls sees a sealed ciphertext).
absl::StatusOr<crypto::CmsTokenParts> BuildCmsParts(SessionPool::Lease& lease,
                                                    CK_OBJECT_HANDLE secret,
                                                    const crypto::PublicKey& device,
                                                    const crypto::CmsOptions& options,
                                                    size_t max_secret_len);

}  // namespace hsmrewrap::hsm
