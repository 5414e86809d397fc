#include "hsm/key_policy.h"

#include <cstring>
#include <optional>
#include <regex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "crypto/rsa.h"
#include "spdlog/spdlog.h"

namespace hsmrewrap::hsm {
namespace {

std::vector<CK_MECHANISM_TYPE> AllowedMechanisms(bool host_unpadding, bool pkcs1) {
  std::vector<CK_MECHANISM_TYPE> m{CKM_RSA_PKCS_OAEP};
  if (host_unpadding) m.push_back(CKM_RSA_X_509);
  if (pkcs1) m.push_back(CKM_RSA_PKCS);
  return m;
}

// Dropped one at a time, in this order, when the token rejects the template (an attribute
// the templates do not have is skipped). The first two only harden the key, and the key is
// checked without them (allow_pkcs1 in software; the attributes at every self-test); a
// missing CKA_DERIVE or CKA_SIGN_RECOVER leaves the token's default, which the check of the
// new key refuses if it is TRUE. (CKA_WRAP is not a private-key attribute; SoftHSM2 2.6.1
// rejects it, so it is never sent.)
constexpr CK_ATTRIBUTE_TYPE kOptionalAttrs[] = {CKA_ALLOWED_MECHANISMS, CKA_MODIFIABLE, CKA_DERIVE,
                                                CKA_SIGN_RECOVER};

const char* OptionalAttrName(CK_ATTRIBUTE_TYPE t) {
  switch (t) {
    case CKA_ALLOWED_MECHANISMS:
      return "CKA_ALLOWED_MECHANISMS (the token will not restrict the key's mechanisms; "
             "hsm-rewrap still enforces allow_pkcs1 itself)";
    case CKA_MODIFIABLE:
      return "CKA_MODIFIABLE=FALSE (the key stays modifiable by anyone with the PIN; its "
             "attributes are re-checked at every self-test)";
    case CKA_DERIVE:
      return "CKA_DERIVE";
    case CKA_SIGN_RECOVER:
      return "CKA_SIGN_RECOVER";
  }
  return "?";
}

// How tokens reject an attribute they do not support. NSS softoken 3.87 answers a template
// with CKA_ALLOWED_MECHANISMS with CKR_GENERAL_ERROR, so that counts too; a real device
// error fails again on the retry and is returned then.
bool IsAttributeRejection(CK_RV rv) {
  return rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_VALUE_INVALID ||
         rv == CKR_TEMPLATE_INCONSISTENT || rv == CKR_GENERAL_ERROR;
}

}  // namespace

absl::Status CheckKeyName(const std::string& name) {
  if (name.empty() || name.size() > 128) {
    return absl::InvalidArgumentError("key name must have 1..128 bytes");
  }
  for (unsigned char c : name) {
    if (c < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError("key name must not contain control characters");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckNewKeyName(const std::string& name) {
  static const std::regex kName("[A-Za-z0-9][A-Za-z0-9._-]{0,63}");
  if (!std::regex_match(name, kName)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key name '", name,
        "' is not valid: 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"));
  }
  return absl::OkStatus();
}

Template ServicePrivateKeyTemplate(const std::string& name, const crypto::Bytes& id,
                                   bool host_unpadding, bool pkcs1) {
  Template t;
  t.Ulong(CKA_CLASS, CKO_PRIVATE_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_RSA)
      .Bool(CKA_TOKEN, true)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true)
      .Bool(CKA_EXTRACTABLE, false)
      .Bool(CKA_DECRYPT, true)
      .Bool(CKA_UNWRAP, true)
      .Bool(CKA_SIGN, false)
      .Bool(CKA_SIGN_RECOVER, false)
      .Bool(CKA_DERIVE, false)
      .Bool(CKA_MODIFIABLE, false)
      .Str(CKA_LABEL, name)
      .Data(CKA_ID, id)
      .Mechanisms(AllowedMechanisms(host_unpadding, pkcs1));
  return t;
}

Template ServicePublicKeyTemplate(const std::string& name, const crypto::Bytes& id) {
  Template t;
  t.Ulong(CKA_CLASS, CKO_PUBLIC_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_RSA)
      .Bool(CKA_TOKEN, true)
      .Bool(CKA_PRIVATE, false)
      // No CKA_ENCRYPT, no CKA_VERIFY: the service never uses the public key object in the
      // token (it seals and checks on the host), and a TPM (tpm2-pkcs11) ties the public
      // key's encrypt/verify to the private key's decrypt/sign and refuses a template that
      // sets them otherwise. What the key may do is the private key's attributes.
      .Bool(CKA_WRAP, false)
      .Bool(CKA_MODIFIABLE, false)
      .Str(CKA_LABEL, name)
      .Data(CKA_ID, id);
  return t;
}

absl::StatusOr<CK_OBJECT_HANDLE> SessionPublicKey(SessionPool::Lease& l,
                                                  const crypto::PublicKey& key) {
  Template t;
  t.Ulong(CKA_CLASS, CKO_PUBLIC_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_RSA)
      .Bool(CKA_TOKEN, false)
      .Bool(CKA_PRIVATE, false)
      .Bool(CKA_WRAP, true)
      .Bool(CKA_ENCRYPT, true)
      .Data(CKA_MODULUS, crypto::StripLeadingZeros(key.modulus()))
      .Data(CKA_PUBLIC_EXPONENT, crypto::StripLeadingZeros(key.public_exponent()));
  auto h = l.Create(t);
  if (!h.ok()) l.MarkBroken();
  return h;
}

Template SessionSecretTemplate() {
  Template t;
  t.Ulong(CKA_CLASS, CKO_SECRET_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET)
      .Bool(CKA_TOKEN, false)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true)
      .Bool(CKA_EXTRACTABLE, true);
  return t;
}

Template ContentKeyTemplate(crypto::CmsContentCipher cipher) {
  Template t;
  t.Ulong(CKA_CLASS, CKO_SECRET_KEY);
  if (cipher == crypto::CmsContentCipher::kDes3Cbc) {
    t.Ulong(CKA_KEY_TYPE, CKK_DES3);
  } else {
    t.Ulong(CKA_KEY_TYPE, CKK_AES)
        .Ulong(CKA_VALUE_LEN, cipher == crypto::CmsContentCipher::kAes128Cbc ? 16 : 32);
  }
  t.Bool(CKA_TOKEN, false)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true)
      .Bool(CKA_EXTRACTABLE, true)
      .Bool(CKA_WRAP, true)
      .Bool(CKA_ENCRYPT, false)
      .Bool(CKA_DECRYPT, false)
      .Bool(CKA_UNWRAP, false)
      .Bool(CKA_SIGN, false)
      .Bool(CKA_VERIFY, false)
      .Bool(CKA_DERIVE, false);
  return t;
}

void EphemeralEcTemplates(const crypto::Bytes& ec_params, Template& pub, Template& priv) {
  pub.Ulong(CKA_CLASS, CKO_PUBLIC_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_EC)
      .Bool(CKA_TOKEN, false)
      .Data(CKA_EC_PARAMS, ec_params)
      .Bool(CKA_DERIVE, true);
  priv.Ulong(CKA_CLASS, CKO_PRIVATE_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_EC)
      .Bool(CKA_TOKEN, false)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true)
      .Bool(CKA_EXTRACTABLE, false)
      .Bool(CKA_DERIVE, true)
      .Bool(CKA_SIGN, false);
}

Template KekTemplate(size_t len) {
  Template t;
  t.Ulong(CKA_CLASS, CKO_SECRET_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_AES)
      .Ulong(CKA_VALUE_LEN, static_cast<CK_ULONG>(len))
      .Bool(CKA_TOKEN, false)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true)
      .Bool(CKA_EXTRACTABLE, false)
      .Bool(CKA_WRAP, true)
      .Bool(CKA_ENCRYPT, false)
      .Bool(CKA_DECRYPT, false)
      .Bool(CKA_UNWRAP, false);
  return t;
}

CK_MECHANISM_TYPE ContentKeyGenMechanism(crypto::CmsContentCipher cipher) {
  return cipher == crypto::CmsContentCipher::kDes3Cbc ? CKM_DES3_KEY_GEN : CKM_AES_KEY_GEN;
}

CK_MECHANISM_TYPE ContentWrapMechanism(crypto::CmsContentCipher cipher) {
  return cipher == crypto::CmsContentCipher::kDes3Cbc ? CKM_DES3_CBC_PAD : CKM_AES_CBC_PAD;
}

absl::Status CreateWithOptionalAttrs(const std::string& token_label, Template& priv,
                                     const std::function<absl::Status()>& create,
                                     const std::function<absl::Status()>& renew, Template* pub) {
  size_t next = 0;
  for (;;) {
    absl::Status s = create();
    if (s.ok() || !IsAttributeRejection(CkrOf(s))) return s;
    auto sent = [&](CK_ATTRIBUTE_TYPE t) { return priv.Has(t) || (pub != nullptr && pub->Has(t)); };
    while (next < std::size(kOptionalAttrs) && !sent(kOptionalAttrs[next])) ++next;
    if (next >= std::size(kOptionalAttrs)) return s;
    const CK_ATTRIBUTE_TYPE drop = kOptionalAttrs[next++];
    spdlog::warn("token '{}' rejects the key template ({}); retrying without {}", token_label,
                 std::string(s.message()), OptionalAttrName(drop));
    priv.Remove(drop);
    if (pub != nullptr) pub->Remove(drop);
    if (absl::Status r = renew(); !r.ok()) return r;
  }
}

absl::StatusOr<std::vector<std::string>> WrongKeyAttributes(SessionPool::Lease& l,
                                                            CK_OBJECT_HANDLE priv,
                                                            bool allow_pkcs1) {
  std::vector<std::string> wrong;
  auto optional_bool = [&](CK_ATTRIBUTE_TYPE t) -> absl::StatusOr<std::optional<bool>> {
    auto b = l.GetBool(priv, t);
    if (b.ok()) return std::optional<bool>(*b);
    if (b.status().code() == absl::StatusCode::kNotFound ||
        CkrOf(b.status()) == CKR_ATTRIBUTE_TYPE_INVALID ||
        CkrOf(b.status()) == CKR_ATTRIBUTE_SENSITIVE) {
      return std::optional<bool>();
    }
    return b.status();
  };
  struct Rule {
    CK_ATTRIBUTE_TYPE type;
    const char* name;
    bool want;
    bool required;  // must be readable
  };
  const Rule rules[] = {{CKA_SENSITIVE, "CKA_SENSITIVE", true, true},
                        {CKA_EXTRACTABLE, "CKA_EXTRACTABLE", false, true},
                        {CKA_SIGN, "CKA_SIGN", false, false},
                        {CKA_SIGN_RECOVER, "CKA_SIGN_RECOVER", false, false},
                        {CKA_DERIVE, "CKA_DERIVE", false, false},
                        {CKA_WRAP, "CKA_WRAP", false, false}};
  for (const Rule& r : rules) {
    auto v = optional_bool(r.type);
    if (!v.ok()) return v.status();
    if (!v->has_value()) {
      if (r.required) wrong.push_back(absl::StrCat(r.name, " is unreadable"));
      continue;
    }
    if (**v != r.want) {
      wrong.push_back(absl::StrCat(r.name, " is ", **v ? "TRUE" : "FALSE", ", must be ",
                                   r.want ? "TRUE" : "FALSE"));
    }
  }
  // Generated in the token (CKA_LOCAL): it must never have been anything but sensitive and
  // non-extractable.
  auto local = optional_bool(CKA_LOCAL);
  if (!local.ok()) return local.status();
  if (local->value_or(false)) {
    for (const Rule& r : {Rule{CKA_ALWAYS_SENSITIVE, "CKA_ALWAYS_SENSITIVE", true, false},
                          Rule{CKA_NEVER_EXTRACTABLE, "CKA_NEVER_EXTRACTABLE", true, false}}) {
      auto v = optional_bool(r.type);
      if (!v.ok()) return v.status();
      if (v->has_value() && **v != r.want) {
        wrong.push_back(
            absl::StrCat(r.name, " is FALSE, must be TRUE for a key generated in the token"));
      }
    }
  }
  // CKA_ALLOWED_MECHANISMS where the token keeps it: set, and only the rewrap mechanisms.
  auto mechs = l.GetAttribute(priv, CKA_ALLOWED_MECHANISMS);
  if (mechs.ok()) {
    std::vector<CK_MECHANISM_TYPE> list(mechs->size() / sizeof(CK_MECHANISM_TYPE));
    // (memcpy from an empty attribute's null data pointer is undefined even for 0 bytes)
    if (!list.empty()) {
      std::memcpy(list.data(), mechs->data(), list.size() * sizeof(CK_MECHANISM_TYPE));
    }
    if (list.empty()) {
      wrong.push_back("CKA_ALLOWED_MECHANISMS is empty (any mechanism), must list the rewrap ones");
    }
    for (CK_MECHANISM_TYPE m : list) {
      const bool ok =
          m == CKM_RSA_PKCS_OAEP || m == CKM_RSA_X_509 || (m == CKM_RSA_PKCS && allow_pkcs1);
      if (!ok) {
        wrong.push_back(absl::StrFormat(
            "CKA_ALLOWED_MECHANISMS allows mechanism 0x%x%s", m,
            m == CKM_RSA_PKCS ? " (CKM_RSA_PKCS on a key without allow_pkcs1)" : ""));
      }
    }
  } else if (mechs.status().code() != absl::StatusCode::kNotFound &&
             CkrOf(mechs.status()) != CKR_ATTRIBUTE_TYPE_INVALID) {
    // p11-kit's RPC (client module -> p11-kit server, 0.24.1) cannot carry this attribute's
    // mechanism array and answers CKR_DEVICE_ERROR while the token is fine: if the session
    // still answers, the value is unavailable through this module, not a lost token.
    if (CkrOf(mechs.status()) != CKR_DEVICE_ERROR || !l.Answers()) return mechs.status();
    spdlog::debug("CKA_ALLOWED_MECHANISMS cannot be read through this module ({}); not checked",
                  std::string(mechs.status().message()));
  }
  return wrong;
}

}  // namespace hsmrewrap::hsm
