// What a service key's objects must look like: the attributes rewrapd gives the keys it
// creates or imports, and the check of keys it finds in a token.
//
// A service private key is sensitive, never extractable, decrypt and unwrap only
// (CKA_SIGN, CKA_SIGN_RECOVER, CKA_DERIVE false), and where the token keeps
// CKA_ALLOWED_MECHANISMS it lists only the rewrap mechanisms (CKM_RSA_PKCS only for keys
// with allow_pkcs1, CKM_RSA_X_509 only with host unpadding). Its public key object has the
// same CKA_LABEL (the key name) and CKA_ID. Both objects of a key rewrapd makes are
// read-only (CKA_MODIFIABLE=FALSE) where the token takes that; keys made by other tools may
// be modifiable, so the check of the attributes runs again at every self-test
// (KeyBackend::RecheckKey).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "crypto/cms.h"
#include "crypto/keys.h"
#include "hsm/session_pool.h"

namespace hsmrewrap::hsm {

// Key names. A name that can refer to a key (any key in a token, also one made by other
// tools): 1..128 bytes, no control characters. A name rewrapd gives a new key: 1..64 of
// A-Z a-z 0-9 . _ -, starting with a letter or digit.
absl::Status CheckKeyName(const std::string& name);
absl::Status CheckNewKeyName(const std::string& name);

// The private key template of a new service key.
Template ServicePrivateKeyTemplate(const std::string& name, const crypto::Bytes& id,
                                   bool host_unpadding, bool pkcs1);
// The public key template of a new service key (add CKA_MODULUS_BITS or CKA_MODULUS).
Template ServicePublicKeyTemplate(const std::string& name, const crypto::Bytes& id);

// Session objects of a rewrap in the token: a device's (or a probe's) RSA public key the
// token can wrap to (marks the lease broken on failure), and the template of the sensitive,
// extractable-for-wrapping session secret C_UnwrapKey creates (CKA_SENSITIVE keeps its
// CKA_VALUE unreadable; C_WrapKey can still move it on to the device key).
absl::StatusOr<CK_OBJECT_HANDLE> SessionPublicKey(SessionPool::Lease& lease,
                                                  const crypto::PublicKey& key);
Template SessionSecretTemplate();
// In-token CMS's content-encryption key: a session AES (16 or 32 bytes) or DES3 key, private,
// sensitive, extractable (so C_WrapKey can move it to the device key; CKA_SENSITIVE keeps
// it from being read), usable only to wrap (no encrypt, decrypt, unwrap, sign, derive).
Template ContentKeyTemplate(crypto::CmsContentCipher cipher);
// Its key-generation mechanism (CKM_AES_KEY_GEN, CKM_DES3_KEY_GEN) and the CBC-with-padding
// wrap mechanism (CKM_AES_CBC_PAD, CKM_DES3_CBC_PAD) taking `iv`.
CK_MECHANISM_TYPE ContentKeyGenMechanism(crypto::CmsContentCipher cipher);
CK_MECHANISM_TYPE ContentWrapMechanism(crypto::CmsContentCipher cipher);
// In-token CMS to EC recipients: the session ephemeral key pair on the curve `ec_params`
// (DER OID; the private half sensitive, never extractable, derive only), and the session
// KEK C_DeriveKey makes (AES, `len` bytes, sensitive, never extractable, wrap only).
void EphemeralEcTemplates(const crypto::Bytes& ec_params, Template& pub, Template& priv);
Template KekTemplate(size_t len);

// Calls `create` (C_GenerateKeyPair or C_CreateObject with `priv`, and `pub` when given).
// While the token rejects the template, drops the next optional attribute the templates
// have (CKA_ALLOWED_MECHANISMS, CKA_MODIFIABLE, CKA_DERIVE, CKA_SIGN_RECOVER, in that
// order; from both templates) and tries again on the fresh session `renew` leases (a failed
// attempt can leave a half-made object in the old one: SoftHSM2 2.6.1). Each drop is logged.
absl::Status CreateWithOptionalAttrs(const std::string& token_label, Template& priv,
                                     const std::function<absl::Status()>& create,
                                     const std::function<absl::Status()>& renew,
                                     Template* pub = nullptr);

// What is wrong with a service private key's attributes, one phrase per attribute (empty:
// nothing). An attribute the token does not know is not held against the key, except
// CKA_SENSITIVE and CKA_EXTRACTABLE, which every token has.
absl::StatusOr<std::vector<std::string>> WrongKeyAttributes(SessionPool::Lease& lease,
                                                            CK_OBJECT_HANDLE priv,
                                                            bool allow_pkcs1);

}  // namespace hsmrewrap::hsm
