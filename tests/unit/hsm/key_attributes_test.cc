// Key attributes over the life of a key, on SoftHSM2 and on NSS softoken: the objects of
// CreateKey and ImportKey are read-only (CKA_MODIFIABLE=FALSE) where the token allows it,
// and RecheckKey reads the attributes from the token again and refuses a key whose
// attributes were changed while it was served. A fresh token per test (TestToken, through the
// backend suite's fixture TokenBackendTest); what differs between the tokens is in
// TestToken::facts() (read_only_keys, sets_sign_when_modifiable).
#include <iostream>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/key_policy.h"
#include "hsm/pkcs11_backend.h"
#include "hsm/token.h"
#include "tests/support/test_token.h"
#include "tests/unit/hsm/hsm_test_util.h"

namespace hsmrewrap::hsm {
namespace {

using ::testing::HasSubstr;
using testing::IsOk;
using testing::StatusIs;

class KeyAttributesTest : public testing::TokenBackendTest {
 protected:
  void SetUp() override {
    TokenBackendTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    Open(/*host_unpadding=*/false, /*pool=*/2);
  }

  absl::StatusOr<CK_OBJECT_HANDLE> Find(const std::string& name, CK_OBJECT_CLASS cls) {
    auto lease = backend_->pool().Acquire(absl::Now() + absl::Seconds(5));
    if (!lease.ok()) return lease.status();
    Template t;
    t.Ulong(CKA_CLASS, cls).Str(CKA_LABEL, name);
    auto found = lease->Find(t);
    if (!found.ok()) return found.status();
    if (found->size() != 1) return absl::NotFoundError(absl::StrCat(found->size(), " objects"));
    return found->front();
  }
  absl::StatusOr<bool> GetBool(const std::string& name, CK_OBJECT_CLASS cls,
                               CK_ATTRIBUTE_TYPE type) {
    auto h = Find(name, cls);
    if (!h.ok()) return h.status();
    auto lease = backend_->pool().Acquire(absl::Now() + absl::Seconds(5));
    if (!lease.ok()) return lease.status();
    return lease->GetBool(*h, type);
  }
  absl::Status SetBool(const std::string& name, CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE type,
                       bool value) {
    auto h = Find(name, cls);
    if (!h.ok()) return h.status();
    auto lease = backend_->pool().Acquire(absl::Now() + absl::Seconds(5));
    if (!lease.ok()) return lease.status();
    CK_BBOOL v = value ? CK_TRUE : CK_FALSE;
    return lease->SetAttribute(*h, CK_ATTRIBUTE{type, &v, sizeof(v)});
  }
  // A key pair with every attribute of a service key but CKA_MODIFIABLE=TRUE, made beside
  // the backend (another tool, or rewrapd before it asked for read-only keys). Tokens that
  // refuse some attribute get it dropped, as the backend would.
  absl::Status GenerateModifiableKey(const std::string& name) {
    auto lease = backend_->pool().Acquire(absl::Now() + absl::Seconds(5));
    if (!lease.ok()) return lease.status();
    const crypto::Bytes id = testing::RandomBytes(20);
    Template pub = ServicePublicKeyTemplate(name, id);
    pub.Remove(CKA_MODIFIABLE);
    pub.Bool(CKA_MODIFIABLE, true)
        .Ulong(CKA_MODULUS_BITS, CK_ULONG(2048))
        .Data(CKA_PUBLIC_EXPONENT, crypto::Bytes{0x01, 0x00, 0x01});
    Template priv = ServicePrivateKeyTemplate(name, id, /*host_unpadding=*/false, /*pkcs1=*/false);
    priv.Remove(CKA_MODIFIABLE);
    priv.Bool(CKA_MODIFIABLE, true);
    CK_MECHANISM mech{CKM_RSA_PKCS_KEY_PAIR_GEN, nullptr, 0};
    CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
    return CreateWithOptionalAttrs(
        token_->label(), priv,
        [&] { return lease->GenerateKeyPair(&mech, pub, priv, &hpub, &hpriv); },
        [&]() -> absl::Status {
          lease->MarkBroken();
          lease->Release();
          lease = backend_->pool().Acquire(absl::Now() + absl::Seconds(5));
          return lease.status();
        },
        &pub);
  }
};

// Both tokens take CKA_MODIFIABLE=FALSE in the templates of C_GenerateKeyPair and
// C_CreateObject (SoftHSM2 2.6.1, NSS softoken 3.87; TokenFacts::read_only_keys): every object
// rewrapd makes is read-only, so nobody can give it a signing role later, not even with the PIN.
TEST_P(KeyAttributesTest, CreatedAndImportedKeysAreReadOnly) {
  if (!facts().read_only_keys) {
    GTEST_SKIP() << token_->name()
                 << " does not take CKA_MODIFIABLE=FALSE: its keys stay modifiable";
  }
  ASSERT_THAT(backend_->CreateKey("made", 2048, /*allow_pkcs1=*/false), IsOk());
  std::vector<std::string> names = {"made"};
  if (facts().imports_private_keys) {
    auto host = testing::GenerateHostRsa(2048);
    ASSERT_THAT(backend_->ImportKey("imported", testing::HostKeyParts(host.get(), true), false),
                IsOk());
    names.push_back("imported");
  }
  for (const std::string& name : names) {
    for (CK_OBJECT_CLASS cls : {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY}) {
      const char* what = cls == CKO_PRIVATE_KEY ? "private" : "public";
      auto modifiable = GetBool(name, cls, CKA_MODIFIABLE);
      ASSERT_THAT(modifiable, IsOk()) << name << " " << what;
      std::cout << token_->name() << ": " << name << " " << what
                << " key CKA_MODIFIABLE=" << (*modifiable ? "TRUE" : "FALSE") << "\n";
      EXPECT_FALSE(*modifiable) << name << " " << what << " key";
    }
    absl::Status set = SetBool(name, CKO_PRIVATE_KEY, CKA_SIGN, true);
    std::cout << token_->name() << ": C_SetAttributeValue(CKA_SIGN=TRUE) on " << name << ": "
              << (set.ok() ? "OK" : std::string(set.message())) << "\n";
    EXPECT_FALSE(set.ok()) << name;
    auto sign = GetBool(name, CKO_PRIVATE_KEY, CKA_SIGN);
    ASSERT_THAT(sign, IsOk());
    EXPECT_FALSE(*sign) << name;
    EXPECT_THAT(backend_->RecheckKey(name), IsOk());
  }
  // Stored so: still read-only after the module is loaded again.
  Reopen(/*host_unpadding=*/false, /*pool=*/2);
  for (const std::string& name : names) {
    for (CK_OBJECT_CLASS cls : {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY}) {
      auto modifiable = GetBool(name, cls, CKA_MODIFIABLE);
      ASSERT_THAT(modifiable, IsOk()) << name;
      EXPECT_FALSE(*modifiable) << name << " after reopening";
    }
  }
}

// Read-only is not indestructible (CKA_DESTROYABLE stays TRUE): the clean-up of a key whose
// metadata cannot be written (FinishNewKey) and an operator's deletion still work.
TEST_P(KeyAttributesTest, ReadOnlyKeysCanBeDestroyed) {
  ASSERT_THAT(backend_->CreateKey("gone", 2048, false), IsOk());
  for (CK_OBJECT_CLASS cls : {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY}) {
    auto h = Find("gone", cls);
    ASSERT_THAT(h, IsOk());
    auto lease = backend_->pool().Acquire(absl::Now() + absl::Seconds(5));
    ASSERT_THAT(lease, IsOk());
    EXPECT_THAT(lease->TryDestroy(*h), IsOk()) << token_->name();
  }
  EXPECT_THAT(Find("gone", CKO_PRIVATE_KEY), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(backend_->RecheckKey("gone"), StatusIs(absl::StatusCode::kNotFound));
}

// A modifiable key whose attributes change while it is served is refused from the next
// re-check on, at once (no cache), with the attribute named; a key still in order is not.
TEST_P(KeyAttributesTest, RecheckRefusesKeyWhoseAttributesChanged) {
  ASSERT_THAT(GenerateModifiableKey("mod"), IsOk());
  ASSERT_THAT(backend_->CreateKey("fine", 2048, false), IsOk());
  auto ref = backend_->Resolve("mod");
  ASSERT_THAT(ref, IsOk());
  EXPECT_THAT(backend_->RecheckKey("mod"), IsOk());
  EXPECT_THAT(backend_->RecheckKey("nope"), StatusIs(absl::StatusCode::kNotFound));

  absl::Status set = SetBool("mod", CKO_PRIVATE_KEY, CKA_SIGN, true);
  std::cout << token_->name() << ": C_SetAttributeValue(CKA_SIGN=TRUE) on a modifiable key: "
            << (set.ok() ? "OK" : std::string(set.message())) << "\n";
  EXPECT_EQ(set.ok(), facts().sets_sign_when_modifiable) << set;
  if (!set.ok()) GTEST_SKIP() << token_->name() << " does not let CKA_SIGN change: " << set;
  // Until the re-check the cache still serves it: that is the gap the re-check closes.
  EXPECT_NE(backend_->Cached("mod"), nullptr);
  absl::Status recheck = backend_->RecheckKey("mod");
  EXPECT_THAT(recheck, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(std::string(recheck.message()), HasSubstr("CKA_SIGN is TRUE"));
  EXPECT_THAT(std::string(recheck.message()), HasSubstr("key 'mod'"));
  EXPECT_EQ(backend_->Cached("mod"), nullptr);
  auto again = backend_->Resolve("mod");
  EXPECT_THAT(again, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(std::string(again.status().message()), HasSubstr("CKA_SIGN is TRUE"));
  auto ct = crypto::RsaEncrypt((*ref)->public_key, RsaPadding::kOaepSha1, testing::RandomBytes(16));
  ASSERT_THAT(ct, IsOk());
  EXPECT_THAT(backend_->Decrypt("mod", RsaPadding::kOaepSha1, *ct, Path::kTokenDecrypt),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  auto keys = backend_->ListKeys();
  ASSERT_THAT(keys, IsOk());
  for (const auto& k : *keys) EXPECT_NE(k.name, "mod") << "a refused key is listed";
  // Refused from then on, also once the attribute is back.
  ASSERT_THAT(SetBool("mod", CKO_PRIVATE_KEY, CKA_SIGN, false), IsOk());
  EXPECT_THAT(backend_->RecheckKey("mod"), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(backend_->Resolve("mod"), StatusIs(absl::StatusCode::kFailedPrecondition));
  // The other key is unaffected.
  EXPECT_THAT(backend_->RecheckKey("fine"), IsOk());
  EXPECT_THAT(backend_->Resolve("fine"), IsOk());
}

INSTANTIATE_TEST_SUITE_P(Tokens, KeyAttributesTest, ::testing::ValuesIn(testing::kTokenKinds),
                         testing::TokenParamName);

}  // namespace
}  // namespace hsmrewrap::hsm
