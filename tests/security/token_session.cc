#include "tests/security/token_session.h"

#include "absl/strings/str_cat.h"
#include "crypto/keys.h"
#include "crypto/rsa.h"
#include "hsm/key_policy.h"
#include "hsm/token.h"
#include "tests/support/tokens.h"

namespace hsmrewrap::sec {

absl::StatusOr<std::unique_ptr<TokenSession>> TokenSession::Open(const std::string& token_label,
                                                                 const std::string& user_pin) {
  std::unique_ptr<TokenSession> s(new TokenSession());
  auto module = hsm::Module::Load(test::kSoftHsmPath, "");
  if (!module.ok()) return module.status();
  s->module_ = *std::move(module);
  auto token = hsm::FindToken(*s->module_, hsm::TokenSelector{token_label, "", ""});
  if (!token.ok()) return token.status();
  auto pool = hsm::SessionPool::Create(s->module_, token->slot, crypto::SecretString(user_pin), 1);
  if (!pool.ok()) return pool.status();
  s->pool_ = *std::move(pool);
  return s;
}

TokenSession::~TokenSession() {
  pool_.reset();
  module_.reset();
}

absl::Status TokenSession::GenerateModifiableServiceKey(const std::string& name) {
  auto lease = pool_->Acquire(absl::Now() + absl::Seconds(10));
  if (!lease.ok()) return lease.status();
  const crypto::Bytes id = crypto::RandomBytes(20);
  hsm::Template pub = hsm::ServicePublicKeyTemplate(name, id);
  pub.Remove(CKA_MODIFIABLE);
  pub.Bool(CKA_MODIFIABLE, true)
      .Ulong(CKA_MODULUS_BITS, CK_ULONG(2048))
      .Data(CKA_PUBLIC_EXPONENT, crypto::Bytes{0x01, 0x00, 0x01});
  hsm::Template priv = hsm::ServicePrivateKeyTemplate(name, id, /*host_unpadding=*/true,
                                                      /*pkcs1=*/false);
  priv.Remove(CKA_MODIFIABLE);
  priv.Bool(CKA_MODIFIABLE, true);
  CK_MECHANISM mech{CKM_RSA_PKCS_KEY_PAIR_GEN, nullptr, 0};
  CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
  return lease->GenerateKeyPair(&mech, pub, priv, &hpub, &hpriv);
}

absl::StatusOr<CK_OBJECT_HANDLE> TokenSession::Find(const std::string& name, CK_OBJECT_CLASS cls) {
  auto lease = pool_->Acquire(absl::Now() + absl::Seconds(10));
  if (!lease.ok()) return lease.status();
  hsm::Template t;
  t.Ulong(CKA_CLASS, cls).Str(CKA_LABEL, name);
  auto found = lease->Find(t);
  if (!found.ok()) return found.status();
  if (found->size() != 1) {
    return absl::NotFoundError(
        absl::StrCat(found->size(), " objects of class ", cls, " labelled '", name, "'"));
  }
  return found->front();
}

absl::StatusOr<bool> TokenSession::GetBool(const std::string& name, CK_OBJECT_CLASS cls,
                                           CK_ATTRIBUTE_TYPE type) {
  auto h = Find(name, cls);
  if (!h.ok()) return h.status();
  auto lease = pool_->Acquire(absl::Now() + absl::Seconds(10));
  if (!lease.ok()) return lease.status();
  return lease->GetBool(*h, type);
}

absl::StatusOr<std::string> TokenSession::PublicKeyDer(const std::string& name) {
  auto h = Find(name, CKO_PUBLIC_KEY);
  if (!h.ok()) return h.status();
  auto lease = pool_->Acquire(absl::Now() + absl::Seconds(10));
  if (!lease.ok()) return lease.status();
  auto n = lease->GetAttribute(*h, CKA_MODULUS);
  if (!n.ok()) return n.status();
  auto e = lease->GetAttribute(*h, CKA_PUBLIC_EXPONENT);
  if (!e.ok()) return e.status();
  auto pub = crypto::PublicKey::FromRsaComponents(*n, *e);
  if (!pub.ok()) return pub.status();
  const crypto::Bytes der = pub->SpkiDer();
  return std::string(der.begin(), der.end());
}

absl::Status TokenSession::SetBool(const std::string& name, CK_OBJECT_CLASS cls,
                                   CK_ATTRIBUTE_TYPE type, bool value) {
  auto h = Find(name, cls);
  if (!h.ok()) return h.status();
  auto lease = pool_->Acquire(absl::Now() + absl::Seconds(10));
  if (!lease.ok()) return lease.status();
  CK_BBOOL v = value ? CK_TRUE : CK_FALSE;
  return lease->SetAttribute(*h, CK_ATTRIBUTE{type, &v, sizeof(v)});
}

}  // namespace hsmrewrap::sec
