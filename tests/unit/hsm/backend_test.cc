// Pkcs11Backend against real tokens: every test runs once on SoftHSM2 and once on NSS
// softoken (a fresh token per test, tests/support/test_token.h). What differs between the
// two is data, TestToken::facts(): SoftHSM2 does OAEP with SHA-1 only in the token and
// keeps key metadata in CKO_DATA objects; NSS softoken does OAEP-SHA2 natively, answers bad
// PKCS#1 padding with implicit rejection and refuses CKO_DATA token objects.
#include <atomic>
#include <cstdlib>
#include <iostream>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include <openssl/obj_mac.h>

#include "hsm/key_policy.h"
#include "hsm/mechanisms.h"
#include "hsm/pkcs11_backend.h"
#include "hsm/token.h"
#include "hsm/token_supervisor.h"
#include "tests/support/test_token.h"
#include "tests/unit/hsm/hsm_test_util.h"

namespace hsmrewrap::hsm {
namespace {

using ::testing::ContainerEq;
using ::testing::Contains;
using ::testing::HasSubstr;
using testing::IsOk;
using ::testing::Not;
using testing::StatusIs;
using ::testing::UnorderedElementsAreArray;

constexpr RsaPadding kAllPaddings[] = {RsaPadding::kOaepSha1, RsaPadding::kOaepSha256,
                                       RsaPadding::kOaepSha384, RsaPadding::kOaepSha512,
                                       RsaPadding::kPkcs1};

// `s` less PKCS#1 v1.5: the capabilities of a key made without allow_pkcs1.
std::set<RsaPadding> OaepOnly(std::set<RsaPadding> s) {
  s.erase(RsaPadding::kPkcs1);
  return s;
}

uint64_t Calls(const Module& m, const std::string& fn) {
  for (const auto& s : m.CallStats()) {
    if (s.function == fn) return s.calls;
  }
  return 0;
}

// Classes of all objects visible to a session of the backend's pool.
std::vector<std::string> ObjectKinds(Pkcs11Backend& b) {
  std::vector<std::string> kinds;
  auto lease = b.pool().Acquire(absl::Now() + absl::Seconds(1));
  EXPECT_THAT(lease, IsOk());
  if (!lease.ok()) return kinds;
  const Module& m = b.module();
  EXPECT_THAT(
      m.Call("C_FindObjectsInit", m.fl()->C_FindObjectsInit, lease->handle(), nullptr, CK_ULONG(0)),
      IsOk());
  CK_OBJECT_HANDLE objs[64];
  CK_ULONG n = 0;
  EXPECT_THAT(
      m.Call("C_FindObjects", m.fl()->C_FindObjects, lease->handle(), objs, CK_ULONG(64), &n),
      IsOk());
  EXPECT_THAT(m.Call("C_FindObjectsFinal", m.fl()->C_FindObjectsFinal, lease->handle()), IsOk());
  for (CK_ULONG i = 0; i < n; ++i) {
    CK_OBJECT_CLASS cls = 0;
    CK_BBOOL token = CK_FALSE;
    CK_ATTRIBUTE a[2] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &token, sizeof(token)}};
    EXPECT_THAT(m.Call("C_GetAttributeValue", m.fl()->C_GetAttributeValue, lease->handle(), objs[i],
                       a, CK_ULONG(2)),
                IsOk());
    const char* name = cls == CKO_PRIVATE_KEY  ? "private"
                       : cls == CKO_PUBLIC_KEY ? "public"
                       : cls == CKO_DATA       ? "data"
                       : cls == CKO_SECRET_KEY ? "secret"
                                               : "other";
    kinds.push_back(std::string(name) + (token ? "/token" : "/session"));
  }
  return kinds;
}

// The fixture (token_, backend_, facts(), Open, Reopen) is TokenBackendTest.
class BackendTest : public testing::TokenBackendTest {
 protected:
  // Open(host_unpadding, pool), then a new 2048-bit key `name` in it.
  absl::StatusOr<KeyInfo> OpenWithKey(const std::string& name, bool allow_pkcs1,
                                      bool host_unpadding = true, size_t pool = 4) {
    Open(host_unpadding, pool);
    if (HasFatalFailure()) return absl::FailedPreconditionError("the backend did not open");
    return backend_->CreateKey(name, 2048, allow_pkcs1);
  }
  crypto::Bytes Seal(const KeyInfo& k, RsaPadding p, const crypto::Bytes& pt) {
    auto pub = crypto::PublicKey::FromSpki(k.spki_der);
    EXPECT_THAT(pub, IsOk());
    auto ct = crypto::RsaEncrypt(*pub, p, pt);
    EXPECT_THAT(ct, IsOk());
    return ct.ok() ? *ct : crypto::Bytes{};
  }
  void ExpectDecrypts(const std::string& key, RsaPadding p, Path path) {
    auto info = backend_->GetKey(key);
    ASSERT_THAT(info, IsOk());
    const crypto::Bytes pt = testing::RandomBytes(32);
    auto out = backend_->Decrypt(key, p, Seal(*info, p, pt), path);
    ASSERT_THAT(out, IsOk()) << PathName(path) << " padding " << static_cast<int>(p);
    EXPECT_EQ(crypto::Bytes(out->begin(), out->end()), pt);
  }
};

TEST_P(BackendTest, CreateKeyProbesCapabilities) {
  auto k = OpenWithKey("svc", /*allow_pkcs1=*/true);
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ(k->bits, 2048);
  EXPECT_TRUE(k->enabled);
  EXPECT_TRUE(k->allow_pkcs1);
  EXPECT_GT(k->created_unix, 0);
  EXPECT_THAT(k->caps.decrypt, ContainerEq(facts().decrypt));
  EXPECT_THAT(k->caps.unwrap, ContainerEq(facts().unwrap));
  EXPECT_EQ(k->caps.raw_rsa, facts().raw_rsa);
  EXPECT_EQ(k->caps.pkcs1_implicit_rejection, facts().pkcs1_implicit_rejection);
  EXPECT_THAT(backend_->WrapPaddings(), ContainerEq(facts().wrap));
  EXPECT_EQ(backend_->TokenLabel(), token_->label());
  EXPECT_TRUE(backend_->Healthy());
  std::cout << token_->name() << " caps: decrypt " << k->caps.decrypt.size() << " unwrap "
            << k->caps.unwrap.size() << " wrap " << backend_->WrapPaddings().size() << "\n";
}

TEST_P(BackendTest, NoPkcs1NoHostUnpaddingUnlessAllowed) {
  auto k = OpenWithKey("strict", /*allow_pkcs1=*/false, /*host_unpadding=*/false);
  ASSERT_THAT(k, IsOk());
  EXPECT_THAT(k->caps.decrypt, ContainerEq(OaepOnly(facts().decrypt)));
  EXPECT_THAT(k->caps.unwrap, ContainerEq(OaepOnly(facts().unwrap)));
  EXPECT_FALSE(k->caps.raw_rsa);
  // A key without PKCS#1 is not probed for implicit rejection.
  EXPECT_FALSE(k->caps.pkcs1_implicit_rejection);
  EXPECT_THAT(backend_->WrapPaddings(), ContainerEq(facts().wrap));
  auto ct = Seal(*k, RsaPadding::kPkcs1, testing::RandomBytes(16));
  EXPECT_THAT(backend_->Decrypt("strict", RsaPadding::kPkcs1, ct, Path::kTokenDecrypt),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  const crypto::Bytes pt = testing::RandomBytes(16);
  ct = Seal(*k, RsaPadding::kOaepSha256, pt);
  EXPECT_THAT(backend_->Decrypt("strict", RsaPadding::kOaepSha256, ct, Path::kHostUnpadding),
              StatusIs(absl::StatusCode::kUnimplemented));
  auto token = backend_->Decrypt("strict", RsaPadding::kOaepSha256, ct, Path::kTokenDecrypt);
  if (facts().TokenDecrypts(RsaPadding::kOaepSha256)) {
    ASSERT_THAT(token, IsOk());
    EXPECT_EQ(crypto::Bytes(token->begin(), token->end()), pt);
  } else {
    EXPECT_THAT(token, StatusIs(absl::StatusCode::kUnimplemented));
  }
}

TEST_P(BackendTest, DecryptRoundTrips) {
  auto k = OpenWithKey("svc", true);
  ASSERT_THAT(k, IsOk());
  for (RsaPadding p : kAllPaddings) {
    if (facts().TokenDecrypts(p)) {
      ExpectDecrypts("svc", p, Path::kTokenDecrypt);
    } else {
      EXPECT_THAT(
          backend_->Decrypt("svc", p, Seal(*k, p, testing::RandomBytes(16)), Path::kTokenDecrypt),
          StatusIs(absl::StatusCode::kUnimplemented))
          << static_cast<int>(p);
    }
    ExpectDecrypts("svc", p, Path::kHostUnpadding);
  }
  EXPECT_THAT(
      backend_->Decrypt("nope", RsaPadding::kOaepSha1, crypto::Bytes(256, 1), Path::kTokenDecrypt),
      StatusIs(absl::StatusCode::kNotFound));
}

TEST_P(BackendTest, TamperedCiphertextFailsUniformly) {
  auto k = OpenWithKey("svc", true, /*host_unpadding=*/true, /*pool=*/1);
  ASSERT_THAT(k, IsOk());
  const crypto::Bytes pt = testing::RandomBytes(32);
  struct Case {
    RsaPadding padding;
    Path path;
  };
  std::vector<Case> cases;
  for (RsaPadding p : facts().decrypt) cases.push_back(Case{p, Path::kTokenDecrypt});
  cases.push_back(Case{RsaPadding::kOaepSha256, Path::kHostUnpadding});
  cases.push_back(Case{RsaPadding::kPkcs1, Path::kHostUnpadding});
  for (Case c : cases) {
    crypto::Bytes ct = Seal(*k, c.padding, pt);
    for (auto [pos, flip] : {std::pair<size_t, uint8_t>{0, 0x40},
                             {1, 0x40},
                             {10, 0x80},
                             {100, 0x40},
                             {ct.size() - 1, 0x40}}) {
      crypto::Bytes bad = ct;
      bad[pos] ^= flip;
      auto r = backend_->Decrypt("svc", c.padding, bad, c.path);
      // PKCS#1 v1.5 has a small chance of a tampered input still unpadding, and a token with
      // implicit rejection "decrypts" it (Pkcs1BadPaddingIsProbed); never OAEP.
      if (c.padding == RsaPadding::kPkcs1 && r.ok()) continue;
      EXPECT_TRUE(IsDecryptFailed(r)) << r.status() << " " << PathName(c.path);
    }
    // Still serving after the failures.
    auto good = backend_->Decrypt("svc", c.padding, ct, c.path);
    ASSERT_THAT(good, IsOk());
    EXPECT_EQ(crypto::Bytes(good->begin(), good->end()), pt);
  }
  // Every failure discarded its session; the pool still serves.
  EXPECT_GT(backend_->pool().discarded_sessions(), 0u);
  EXPECT_LE(backend_->pool().open_sessions(), 1u);
}

TEST_P(BackendTest, EmptyAndShortCiphertextDoNotPoisonSessions) {
  auto k = OpenWithKey("svc", false, /*host_unpadding=*/true, /*pool=*/1);
  ASSERT_THAT(k, IsOk());
  const crypto::Bytes ct = Seal(*k, RsaPadding::kOaepSha1, testing::RandomBytes(16));
  for (size_t len : {size_t{0}, size_t{1}, ct.size() - 1}) {
    crypto::Bytes shorter(ct.begin(), ct.begin() + len);
    for (Path p : {Path::kTokenDecrypt, Path::kHostUnpadding}) {
      EXPECT_TRUE(IsDecryptFailed(backend_->Decrypt("svc", RsaPadding::kOaepSha1, shorter, p)));
    }
  }
  crypto::Bytes longer = ct;
  longer.push_back(0);
  EXPECT_TRUE(IsDecryptFailed(
      backend_->Decrypt("svc", RsaPadding::kOaepSha1, longer, Path::kTokenDecrypt)));
  ExpectDecrypts("svc", RsaPadding::kOaepSha1, Path::kTokenDecrypt);
  ExpectDecrypts("svc", RsaPadding::kOaepSha256, Path::kHostUnpadding);
}

TEST_P(BackendTest, KeyAttributesAreProtected) {
  ASSERT_THAT(OpenWithKey("svc", false, /*host_unpadding=*/false), IsOk());
  auto h = backend_->PrivateKeyHandle("svc");
  ASSERT_THAT(h, IsOk());
  auto lease = backend_->pool().Acquire(absl::Now() + absl::Seconds(5));
  ASSERT_THAT(lease, IsOk());
  const Module& m = backend_->module();
  auto get_bool = [&](CK_ATTRIBUTE_TYPE t) {
    CK_BBOOL v = CK_FALSE;
    CK_ATTRIBUTE a{t, &v, sizeof(v)};
    EXPECT_THAT(m.Call("C_GetAttributeValue", m.fl()->C_GetAttributeValue, lease->handle(), *h, &a,
                       CK_ULONG(1)),
                IsOk());
    return v == CK_TRUE;
  };
  EXPECT_TRUE(get_bool(CKA_SENSITIVE));
  EXPECT_FALSE(get_bool(CKA_EXTRACTABLE));
  EXPECT_TRUE(get_bool(CKA_ALWAYS_SENSITIVE));
  EXPECT_TRUE(get_bool(CKA_NEVER_EXTRACTABLE));
  EXPECT_TRUE(get_bool(CKA_DECRYPT));
  EXPECT_TRUE(get_bool(CKA_UNWRAP));
  EXPECT_FALSE(get_bool(CKA_SIGN));
  EXPECT_TRUE(get_bool(CKA_TOKEN));
  EXPECT_TRUE(get_bool(CKA_PRIVATE));

  uint8_t buf[1024];
  CK_ATTRIBUTE d{CKA_PRIVATE_EXPONENT, buf, sizeof(buf)};
  auto s = m.Call("C_GetAttributeValue", m.fl()->C_GetAttributeValue, lease->handle(), *h, &d,
                  CK_ULONG(1));
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(CkrOf(s), facts().private_exponent_rv) << s;

  CK_MECHANISM_TYPE mechs[8];
  CK_ATTRIBUTE am{CKA_ALLOWED_MECHANISMS, mechs, sizeof(mechs)};
  auto allowed = m.Call("C_GetAttributeValue", m.fl()->C_GetAttributeValue, lease->handle(), *h,
                        &am, CK_ULONG(1));
  if (facts().keeps_allowed_mechanisms) {
    ASSERT_THAT(allowed, IsOk());
    EXPECT_EQ(am.ulValueLen, sizeof(CK_MECHANISM_TYPE));
    EXPECT_EQ(mechs[0], CKM_RSA_PKCS_OAEP);
  } else {
    EXPECT_EQ(CkrOf(allowed), CKR_ATTRIBUTE_TYPE_INVALID) << allowed;
  }

  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE ext{CKA_EXTRACTABLE, &yes, sizeof(yes)};
  const bool set = m.Call("C_SetAttributeValue", m.fl()->C_SetAttributeValue, lease->handle(), *h,
                          &ext, CK_ULONG(1))
                       .ok();
  EXPECT_EQ(set, facts().sets_extractable);
  if (set) {
    // The token let it through (tpm2-pkcs11): the re-check refuses the key from now on.
    lease->Release();
    const absl::Status recheck = backend_->RecheckKey("svc");
    EXPECT_THAT(recheck, StatusIs(absl::StatusCode::kFailedPrecondition));
    EXPECT_THAT(std::string(recheck.message()), HasSubstr("CKA_EXTRACTABLE is TRUE"));
  }
}

// A key size outside what the token generates is INVALID_ARGUMENT naming the token's range,
// found by C_GetMechanismInfo before any C_GenerateKeyPair (a TPM makes 1024..3072 bits).
TEST_P(BackendTest, KeySizeOutsideTheTokensRange) {
  Open();
  if (facts().generates_rsa_4096) return;  // nothing to refuse here (generating 4096 is slow)
  const uint64_t before = Calls(backend_->module(), "C_GenerateKeyPair");
  auto k = backend_->CreateKey("big", 4096, false);
  EXPECT_THAT(k, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(std::string(k.status().message()), HasSubstr("not 4096"));
  EXPECT_EQ(Calls(backend_->module(), "C_GenerateKeyPair"), before);
}

TEST_P(BackendTest, ImportOpenSslKeyAndDecrypt) {
  Open();
  auto host = testing::GenerateHostRsa(2048);
  ASSERT_TRUE(host);
  auto k = backend_->ImportKey("imported", testing::HostKeyParts(host.get(), true), false);
  if (!facts().imports_private_keys) {
    // A clear refusal (FAILED_PRECONDITION naming the token's answer), nothing left behind.
    EXPECT_THAT(k, StatusIs(absl::StatusCode::kFailedPrecondition));
    EXPECT_THAT(std::string(k.status().message()), HasSubstr("refuses to import"));
    auto list = backend_->ListKeys();
    ASSERT_THAT(list, IsOk());
    EXPECT_TRUE(list->empty());
    return;
  }
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ(k->bits, 2048);
  EXPECT_EQ(k->spki_der, testing::HostPublicKey(host.get()).SpkiDer());
  EXPECT_THAT(k->caps.decrypt, ContainerEq(OaepOnly(facts().decrypt)));
  for (RsaPadding p : k->caps.decrypt) ExpectDecrypts("imported", p, Path::kTokenDecrypt);
  ExpectDecrypts("imported", RsaPadding::kOaepSha256, Path::kHostUnpadding);
}

TEST_P(BackendTest, ImportWithoutCrtPartsAndOddSize) {
  Open();
  if (!facts().imports_private_keys) return;  // ImportOpenSslKeyAndDecrypt: refused
  auto host = testing::GenerateHostRsa(1032);  // an odd size, as in Wycheproof
  ASSERT_TRUE(host);
  auto k = backend_->ImportKey("no-crt", testing::HostKeyParts(host.get(), false), false);
  if (!facts().imports_without_crt) {
    // openCryptoki 3.8.1 takes no key without its CRT parameters: a clear refusal.
    EXPECT_THAT(k, StatusIs(absl::StatusCode::kFailedPrecondition));
    k = backend_->ImportKey("no-crt", testing::HostKeyParts(host.get(), true), false);
  }
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ(k->bits, 1032);
  ExpectDecrypts("no-crt", RsaPadding::kOaepSha1, Path::kTokenDecrypt);
  ExpectDecrypts("no-crt", RsaPadding::kOaepSha256, Path::kHostUnpadding);

  crypto::RsaPrivateKeyParts tiny =
      testing::HostKeyParts(testing::GenerateHostRsa(768).get(), true);
  EXPECT_THAT(backend_->ImportKey("tiny", tiny, false),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// A three-prime key given as n, e, d only (as Wycheproof's): SoftHSM2 takes it; NSS derives
// p and q from n, e, d only for two-prime keys, so there it is a clear FAILED_PRECONDITION,
// not an internal error, and nothing is left behind.
TEST_P(BackendTest, ThreePrimeKeyWithoutCrtParts) {
  Open();
  if (!facts().imports_private_keys) return;  // ImportOpenSslKeyAndDecrypt: refused
  auto three = testing::GenerateMultiPrimeRsa(2048, 3);
  ASSERT_TRUE(three);
  auto r = backend_->ImportKey("three-prime", testing::HostKeyParts(three.get(), false), false);
  if (facts().imports_multi_prime_without_crt) {
    ASSERT_THAT(r, IsOk());
    ExpectDecrypts("three-prime", RsaPadding::kOaepSha1, Path::kTokenDecrypt);
    return;
  }
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("multi-prime key cannot be imported"));
  // The name is still free.
  auto two = testing::GenerateHostRsa(2048);
  EXPECT_THAT(backend_->ImportKey("three-prime", testing::HostKeyParts(two.get(), true), false),
              IsOk());
}

TEST_P(BackendTest, MetadataAcrossReopening) {
  auto k = OpenWithKey("svc", /*allow_pkcs1=*/true);
  ASSERT_THAT(k, IsOk());
  ASSERT_THAT(backend_->CreateKey("other", 2048, false), IsOk());
  auto host = testing::GenerateHostRsa(3072);
  // (Generated in the token where it imports no keys.)
  auto imported =
      facts().imports_private_keys
          ? backend_->ImportKey("imported", testing::HostKeyParts(host.get(), true), false)
          : backend_->CreateKey("imported", 3072, false);
  ASSERT_THAT(imported, IsOk());
  EXPECT_EQ(imported->bits, 3072);
  EXPECT_THAT(imported->caps.decrypt, ContainerEq(OaepOnly(facts().decrypt)));
  for (const char* name : {"svc", "imported"}) {
    auto disabled = backend_->SetEnabled(name, false);
    ASSERT_THAT(disabled, IsOk());
    EXPECT_FALSE(disabled->enabled);
    auto now = backend_->GetKey(name);
    ASSERT_THAT(now, IsOk());
    EXPECT_FALSE(now->enabled);
  }
  auto ct = Seal(*k, RsaPadding::kOaepSha1, testing::RandomBytes(16));
  EXPECT_THAT(backend_->Decrypt("svc", RsaPadding::kOaepSha1, ct, Path::kTokenDecrypt),
              StatusIs(absl::StatusCode::kFailedPrecondition));

  Reopen();
  auto list = backend_->ListKeys();
  ASSERT_THAT(list, IsOk());
  ASSERT_EQ(list->size(), 3u);
  auto again = backend_->GetKey("svc");
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->spki_der, k->spki_der);
  auto imported_again = backend_->GetKey("imported");
  ASSERT_THAT(imported_again, IsOk());
  EXPECT_EQ(imported_again->spki_der, imported->spki_der);
  if (facts().stores_data_objects) {
    // The metadata is in the token: the new process sees what the old one wrote.
    EXPECT_FALSE(again->enabled);
    EXPECT_FALSE(imported_again->enabled);
    EXPECT_TRUE(again->allow_pkcs1);
    EXPECT_EQ(again->created_unix, k->created_unix);
    // allow_pkcs1 survived: PKCS1 is probed again (and served where the token decrypts it).
    EXPECT_EQ(again->caps.decrypt.count(RsaPadding::kPkcs1),
              facts().decrypt.count(RsaPadding::kPkcs1));
  } else {
    // The metadata lived in the old process only: the keys are served with defaults.
    EXPECT_TRUE(again->enabled);
    EXPECT_TRUE(imported_again->enabled);
    EXPECT_FALSE(again->allow_pkcs1);
    EXPECT_EQ(again->created_unix, 0);
    EXPECT_THAT(again->caps.decrypt, Not(Contains(RsaPadding::kPkcs1)));
  }
  ASSERT_THAT(backend_->SetEnabled("svc", true), IsOk());
  ExpectDecrypts("svc", RsaPadding::kOaepSha1, Path::kTokenDecrypt);
  auto other = backend_->GetKey("other");
  ASSERT_THAT(other, IsOk());
  EXPECT_TRUE(other->enabled);
  EXPECT_FALSE(other->allow_pkcs1);
}

TEST_P(BackendTest, TwoReplicasOnOneToken) {
  // Two backends on one token in one process share the module; the second sees keys the
  // first creates, and the enabled flag it writes where the token holds the metadata.
  Open();
  auto second = Pkcs11Backend::Create(Opts());
  ASSERT_THAT(second, IsOk());
  ASSERT_THAT(backend_->CreateKey("svc", 2048, false), IsOk());
  auto seen = (*second)->GetKey("svc");
  ASSERT_THAT(seen, IsOk());
  EXPECT_TRUE(seen->enabled);
  ASSERT_THAT(backend_->SetEnabled("svc", false), IsOk());
  absl::SleepFor(absl::Seconds(2.1));  // metadata_ttl
  auto later = (*second)->GetKey("svc");
  ASSERT_THAT(later, IsOk());
  EXPECT_EQ(later->enabled, !facts().stores_data_objects);
}

TEST_P(BackendTest, DuplicateNameRefused) {
  ASSERT_THAT(OpenWithKey("svc", false), IsOk());
  EXPECT_THAT(backend_->CreateKey("svc", 2048, false), StatusIs(absl::StatusCode::kAlreadyExists));
  auto host = testing::GenerateHostRsa(2048);
  EXPECT_THAT(backend_->ImportKey("svc", testing::HostKeyParts(host.get(), true), false),
              StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(backend_->CreateKey("", 2048, false), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(backend_->CreateKey("x", 1024, false), StatusIs(absl::StatusCode::kInvalidArgument));
  auto list = backend_->ListKeys();
  ASSERT_THAT(list, IsOk());
  EXPECT_EQ(list->size(), 1u);
}

TEST_P(BackendTest, WrongPinIsPermissionDeniedAndNotRetried) {
  const Module& module = *token_->module();
  auto opts = Opts();
  opts.user_pin = testing::Pin("0000");
  const uint64_t before = Calls(module, "C_Login");
  auto b = Pkcs11Backend::Create(opts);
  EXPECT_THAT(b, StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_EQ(Calls(module, "C_Login"), before + 1);

  auto slot = FindToken(module, token_->selector());
  ASSERT_THAT(slot, IsOk());
  auto pool = SessionPool::Create(token_->module(), slot->slot, testing::Pin("0000"), 2);
  EXPECT_THAT(pool, StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_EQ(Calls(module, "C_Login"), before + 2);
  // The right PIN still works (neither token locks).
  Open();
}

TEST_P(BackendTest, SessionPoolIsBoundedAndLeasesAreExclusive) {
  const std::shared_ptr<Module>& module = token_->module();
  auto slot = FindToken(*module, TokenSelector{"", "", token_->uri()});
  ASSERT_THAT(slot, IsOk());
  auto pool = SessionPool::Create(module, slot->slot, token_->user_pin(), 2);
  ASSERT_THAT(pool, IsOk());
  auto a = (*pool)->Acquire(absl::Now() + absl::Seconds(1));
  auto b = (*pool)->Acquire(absl::Now() + absl::Seconds(1));
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_NE(a->handle(), b->handle());
  EXPECT_THAT((*pool)->Acquire(absl::Now() + absl::Milliseconds(50)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ((*pool)->open_sessions(), 2u);
  a->MarkBroken();
  a->Release();
  EXPECT_EQ((*pool)->open_sessions(), 1u);
  auto c = (*pool)->Acquire(absl::Now() + absl::Seconds(1));
  ASSERT_THAT(c, IsOk());
  CK_SESSION_INFO si{};
  EXPECT_THAT(module->Call("C_GetSessionInfo", module->fl()->C_GetSessionInfo, c->handle(), &si),
              IsOk());
  EXPECT_EQ(si.state, CKS_RW_USER_FUNCTIONS);
  // Selection never by slot number: serial works too where it is unique (else it is
  // ambiguous, not a guess); a wrong label does not.
  if (facts().serial_is_unique) {
    EXPECT_THAT(FindToken(*module, TokenSelector{"", slot->serial, ""}), IsOk());
  } else {
    EXPECT_THAT(FindToken(*module, TokenSelector{"", slot->serial, ""}),
                StatusIs(absl::StatusCode::kFailedPrecondition));
  }
  EXPECT_THAT(FindToken(*module, TokenSelector{"nope", "", ""}),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(FindToken(*module, TokenSelector{"", "", "pkcs11:token=nope"}),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(FindToken(*module, TokenSelector{"", "", "not-a-uri"}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_P(BackendTest, ConcurrentDecryptsFromEightThreads) {
  auto k = OpenWithKey("svc", false, /*host_unpadding=*/true, /*pool=*/4);
  ASSERT_THAT(k, IsOk());
  const crypto::Bytes pt = testing::RandomBytes(24);
  const crypto::Bytes ct1 = Seal(*k, RsaPadding::kOaepSha1, pt);
  const crypto::Bytes ct256 = Seal(*k, RsaPadding::kOaepSha256, pt);
  crypto::Bytes bad = ct1;
  bad[7] ^= 1;
  std::atomic<int> ok{0}, failed_as_expected{0}, wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        if ((i + t) % 5 == 0) {
          auto r = backend_->Decrypt("svc", RsaPadding::kOaepSha1, bad, Path::kTokenDecrypt);
          (IsDecryptFailed(r) ? failed_as_expected : wrong)++;
          continue;
        }
        bool host = (i % 2) == 0;
        auto r =
            host ? backend_->Decrypt("svc", RsaPadding::kOaepSha256, ct256, Path::kHostUnpadding)
                 : backend_->Decrypt("svc", RsaPadding::kOaepSha1, ct1, Path::kTokenDecrypt);
        (r.ok() && crypto::Bytes(r->begin(), r->end()) == pt ? ok : wrong)++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(ok.load() + failed_as_expected.load(), 160);
  EXPECT_LE(backend_->pool().open_sessions(), 4u);
}

// IN_TOKEN: C_UnwrapKey with the service key, C_WrapKey to the device key, session objects
// destroyed. Works exactly for the token's unwrap (input) and wrap (output) paddings.
TEST_P(BackendTest, RewrapInToken) {
  auto k = OpenWithKey("svc", false);
  ASSERT_THAT(k, IsOk());
  // The key pair, and its metadata where the token holds it.
  std::vector<std::string> key_objects = {"private/token", "public/token"};
  if (facts().stores_data_objects) key_objects.push_back("data/token");
  EXPECT_THAT(ObjectKinds(*backend_), UnorderedElementsAreArray(key_objects));
  auto device = testing::GenerateHostRsa(2048);
  const crypto::Bytes pt = testing::RandomBytes(20);
  int rewrapped = 0;
  for (RsaPadding in : kAllPaddings) {
    if (in == RsaPadding::kPkcs1) continue;  // the key does not allow PKCS#1
    for (RsaPadding out : kAllPaddings) {
      auto r = backend_->RewrapInToken("svc", in, Seal(*k, in, pt),
                                       testing::HostPublicKey(device.get()), out);
      if (!facts().Unwraps(in) || !facts().Wraps(out)) {
        EXPECT_THAT(r, StatusIs(absl::StatusCode::kUnimplemented))
            << static_cast<int>(in) << " -> " << static_cast<int>(out);
        continue;
      }
      ASSERT_THAT(r, IsOk()) << static_cast<int>(in) << " -> " << static_cast<int>(out);
      auto back = crypto::RsaDecryptWithPrivateKey(testing::HostKeyDer(device.get()), out, *r);
      ASSERT_THAT(back, IsOk());
      EXPECT_EQ(crypto::Bytes(back->begin(), back->end()), pt);
      EXPECT_THAT(ObjectKinds(*backend_), UnorderedElementsAreArray(key_objects));
      ++rewrapped;
    }
  }
  // (A token that unwraps nothing, openCryptoki 3.8.1, has no IN_TOKEN: all Unimplemented.)
  if (!facts().unwrap.empty()) {
    EXPECT_GT(rewrapped, 0);
  }
  // A tampered input fails like any other decryption failure.
  for (RsaPadding in : OaepOnly(facts().unwrap)) {
    if (!facts().Wraps(in)) continue;
    crypto::Bytes bad = Seal(*k, in, pt);
    bad[3] ^= 2;
    EXPECT_TRUE(IsDecryptFailed(
        backend_->RewrapInToken("svc", in, bad, testing::HostPublicKey(device.get()), in)))
        << static_cast<int>(in);
  }
  // Session objects were destroyed: only the key pair (and metadata) are left in the token.
  EXPECT_THAT(ObjectKinds(*backend_), UnorderedElementsAreArray(key_objects));
}

// In-token CMS: the token builds the content key, the encrypted content and the encrypted
// key; the device's private key opens them on the host. Exactly the token's forms work.
TEST_P(BackendTest, EnvelopeInToken) {
  auto k = OpenWithKey("svc", false);
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ(backend_->CmsInToken(), facts().cms_in_token)
      << CmsFormSetName(backend_->CmsInToken());
  std::vector<std::string> key_objects = {"private/token", "public/token"};
  if (facts().stores_data_objects) key_objects.push_back("data/token");
  if (OaepOnly(facts().unwrap).empty()) {
    // The forms are the probe's (a secret it makes itself, wrapped), but no key unwraps a
    // sealed secret (openCryptoki 3.8.1 refuses the session secret's template), so no key
    // offers IN_TOKEN and the engine never builds CMS in this token.
    EXPECT_TRUE(k->caps.unwrap.empty());
    return;
  }
  auto device = testing::GenerateHostRsa(3072);
  const crypto::PublicKey device_pub = testing::HostPublicKey(device.get());
  const RsaPadding in = *OaepOnly(facts().unwrap).rbegin();
  int built = 0;
  for (auto t : {crypto::CmsKeyTransport::kRsaOaepSha256, crypto::CmsKeyTransport::kRsaPkcs1}) {
    for (auto c : {crypto::CmsContentCipher::kAes256Cbc, crypto::CmsContentCipher::kAes128Cbc,
                   crypto::CmsContentCipher::kDes3Cbc}) {
      const crypto::CmsOptions o{t, c};
      for (size_t len : {size_t{0}, size_t{1}, size_t{16}, size_t{33}}) {
        const crypto::Bytes pt = testing::RandomBytes(len);
        auto r = backend_->EnvelopeInToken(backend_->Resolve("svc").value(), in, Seal(*k, in, pt),
                                           device_pub, o);
        if (!facts().cms_in_token.count({t, c})) {
          EXPECT_THAT(r, StatusIs(absl::StatusCode::kUnimplemented));
          continue;
        }
        ASSERT_THAT(r, IsOk()) << CmsKeyTransportName(t) << "/" << CmsContentCipherName(c);
        const RsaPadding tp =
            t == crypto::CmsKeyTransport::kRsaPkcs1 ? RsaPadding::kPkcs1 : RsaPadding::kOaepSha256;
        auto cek = crypto::RsaDecryptWithPrivateKey(testing::HostKeyDer(device.get()), tp,
                                                    r->encrypted_key);
        ASSERT_THAT(cek, IsOk());
        EXPECT_EQ(cek->size(), crypto::CmsContentKeyLen(c));
        auto back = crypto::CmsContentDecrypt(c, *cek, r->iv, r->encrypted_content);
        ASSERT_THAT(back, IsOk());
        EXPECT_EQ(crypto::Bytes(back->begin(), back->end()), pt);
        ++built;
      }
    }
  }
  EXPECT_EQ(built, static_cast<int>(facts().cms_in_token.size()) * 4);  // an empty secret too
  if (!facts().cms_in_token.empty()) {
    const crypto::CmsOptions o = {};
    crypto::Bytes bad = Seal(*k, in, testing::RandomBytes(20));
    bad[5] ^= 1;
    EXPECT_TRUE(IsDecryptFailed(
        backend_->EnvelopeInToken(backend_->Resolve("svc").value(), in, bad, device_pub, o)));
  }
  // Every session object (secret, content key, device key) was destroyed.
  EXPECT_THAT(ObjectKinds(*backend_), UnorderedElementsAreArray(key_objects));
}

// In-token CMS to EC device keys: ECDH with an ephemeral key made in the token, KEK by the
// X9.63 KDF, content key AES-key-wrapped; the device's private key opens it on the host.
TEST_P(BackendTest, EnvelopeInTokenToEcDevices) {
  auto k = OpenWithKey("svc", false);
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ(backend_->CmsInTokenEc(), facts().ec_cms_in_token)
      << EcCmsFormSetName(backend_->CmsInTokenEc());
  std::vector<std::string> key_objects = {"private/token", "public/token"};
  if (facts().stores_data_objects) key_objects.push_back("data/token");
  // A token that unwraps nothing (openCryptoki, the TPM) builds no EC forms either (see
  // EnvelopeInToken).
  if (OaepOnly(facts().unwrap).empty()) {
    EXPECT_TRUE(facts().ec_cms_in_token.empty());
    return;
  }
  const RsaPadding in = *OaepOnly(facts().unwrap).rbegin();
  int built = 0;
  for (int curve : {NID_X9_62_prime256v1, NID_secp384r1}) {
    auto device = crypto::HostEcKey::Generate(curve);
    ASSERT_THAT(device, IsOk());
    for (auto c : {crypto::CmsContentCipher::kAes256Cbc, crypto::CmsContentCipher::kAes128Cbc}) {
      const crypto::Bytes pt = testing::RandomBytes(29);
      auto r = backend_->EnvelopeInToken(backend_->Resolve("svc").value(), in, Seal(*k, in, pt),
                                         device->public_key(), crypto::CmsOptions{{}, c});
      if (!facts().ec_cms_in_token.count({curve, c})) {
        EXPECT_THAT(r, StatusIs(absl::StatusCode::kUnimplemented));
        continue;
      }
      ASSERT_THAT(r, IsOk()) << curve << "/" << CmsContentCipherName(c);
      auto cek = device->UnwrapContentKey(c, r->ephemeral_point, r->encrypted_key);
      ASSERT_THAT(cek, IsOk());
      auto back = crypto::CmsContentDecrypt(c, *cek, r->iv, r->encrypted_content);
      ASSERT_THAT(back, IsOk());
      EXPECT_EQ(crypto::Bytes(back->begin(), back->end()), pt);
      ++built;
    }
  }
  EXPECT_EQ(built, static_cast<int>(facts().ec_cms_in_token.size()));
  // The ephemeral key pair and the KEK were destroyed with the rest.
  EXPECT_THAT(ObjectKinds(*backend_), UnorderedElementsAreArray(key_objects));
}

// The session objects of the in-token paths keep their values from the host: the unwrapped
// secret's and the generated content key's CKA_VALUE cannot be read.
TEST_P(BackendTest, InTokenSessionObjectsAreUnreadable) {
  auto k = OpenWithKey("svc", false);
  ASSERT_THAT(k, IsOk());
  auto lease = backend_->pool().Acquire(absl::Now() + absl::Seconds(5));
  ASSERT_THAT(lease, IsOk());
  auto priv = backend_->PrivateKeyHandle("svc");
  ASSERT_THAT(priv, IsOk());
  if (!OaepOnly(facts().unwrap).empty()) {
    const RsaPadding in = *OaepOnly(facts().unwrap).rbegin();
    RsaMechanism mech(in);
    Template st = SessionSecretTemplate();
    auto secret = lease->Unwrap(mech.get(), *priv, Seal(*k, in, testing::RandomBytes(24)), st);
    ASSERT_THAT(secret, IsOk());
    EXPECT_THAT(lease->GetAttribute(*secret, CKA_VALUE), Not(IsOk()));
    EXPECT_EQ(lease->GetBool(*secret, CKA_SENSITIVE).value_or(false), true);
    lease->Destroy(*secret);
  }
  if (facts().cms_in_token.empty()) return;
  for (auto c : {crypto::CmsContentCipher::kAes256Cbc, crypto::CmsContentCipher::kDes3Cbc}) {
    CK_MECHANISM gen{ContentKeyGenMechanism(c), nullptr, 0};
    Template kt = ContentKeyTemplate(c);
    auto cek = lease->GenerateKey(&gen, kt);
    ASSERT_THAT(cek, IsOk());
    EXPECT_THAT(lease->GetAttribute(*cek, CKA_VALUE), Not(IsOk()));
    EXPECT_EQ(lease->GetBool(*cek, CKA_SENSITIVE).value_or(false), true);
    EXPECT_EQ(lease->GetBool(*cek, CKA_ENCRYPT).value_or(true), false);
    lease->Destroy(*cek);
  }
}

// PKCS#1 v1.5 with bad padding: SoftHSM2 fails (CKR_GENERAL_ERROR); NSS softoken does
// implicit rejection (an invalid padding "decrypts" to a deterministic pseudo-random
// message). The probe must learn which.
TEST_P(BackendTest, Pkcs1BadPaddingIsProbed) {
  auto k = OpenWithKey("p1", /*allow_pkcs1=*/true);
  ASSERT_THAT(k, IsOk());
  if (!facts().TokenDecrypts(RsaPadding::kPkcs1)) {
    // openCryptoki 3.8.1 decrypts an empty message's block to "\x00": the probe does not use
    // its CKM_RSA_PKCS decryption at all (TokenFacts, hsm/README.md).
    EXPECT_THAT(k->caps.decrypt, Not(Contains(RsaPadding::kPkcs1)));
    EXPECT_FALSE(k->caps.pkcs1_implicit_rejection);
    GTEST_SKIP() << "the token's PKCS#1 decryption is not used";
  }
  EXPECT_THAT(k->caps.decrypt, Contains(RsaPadding::kPkcs1));
  EXPECT_EQ(k->caps.pkcs1_implicit_rejection, facts().pkcs1_implicit_rejection);
  const crypto::Bytes pt = testing::RandomBytes(32);
  const crypto::Bytes ct = Seal(*k, RsaPadding::kPkcs1, pt);
  auto good = backend_->Decrypt("p1", RsaPadding::kPkcs1, ct, Path::kTokenDecrypt);
  ASSERT_THAT(good, IsOk());
  EXPECT_EQ(crypto::Bytes(good->begin(), good->end()), pt);
  crypto::Bytes bad = ct;
  bad[200] ^= 0x40;  // a low byte: stays < n
  auto r1 = backend_->Decrypt("p1", RsaPadding::kPkcs1, bad, Path::kTokenDecrypt);
  auto r2 = backend_->Decrypt("p1", RsaPadding::kPkcs1, bad, Path::kTokenDecrypt);
  if (facts().pkcs1_implicit_rejection) {
    EXPECT_THAT(r1, IsOk());
  }
  if (r1.ok()) {
    ASSERT_THAT(r2, IsOk());
    EXPECT_EQ(crypto::Bytes(r1->begin(), r1->end()), crypto::Bytes(r2->begin(), r2->end()))
        << "implicit rejection must be deterministic";
    EXPECT_NE(crypto::Bytes(r1->begin(), r1->end()), pt);
  } else {
    EXPECT_TRUE(IsDecryptFailed(r1)) << r1.status();
  }
  // OAEP is never affected; a key without PKCS#1 is not probed.
  for (RsaPadding p : OaepOnly(facts().decrypt)) {
    crypto::Bytes bad_oaep = Seal(*k, p, pt);
    bad_oaep[200] ^= 0x40;
    EXPECT_TRUE(IsDecryptFailed(backend_->Decrypt("p1", p, bad_oaep, Path::kTokenDecrypt)))
        << static_cast<int>(p);
  }
  auto strict = backend_->CreateKey("strict", 2048, /*allow_pkcs1=*/false);
  ASSERT_THAT(strict, IsOk());
  EXPECT_FALSE(strict->caps.pkcs1_implicit_rejection);
}

INSTANTIATE_TEST_SUITE_P(Tokens, BackendTest, ::testing::ValuesIn(testing::kTokenKinds),
                         testing::TokenParamName);

// The TPM's resource manager (tpm2-abrmd) killed and restarted under a served key: tpm2-pkcs11
// never reconnects (every TPM call fails CKR_GENERAL_ERROR from then on) while C_GetTokenInfo
// keeps answering. The supervisor must see the loss (Healthy() reaches the TPM), answer items
// UNAVAILABLE (never DECRYPT_FAILED) and serve again after re-initialising the module.
TEST(TpmRecoveryTest, ResourceManagerRestartIsALossNotBadCiphertexts) {
  using ::hsmrewrap::test::TestToken;
  using ::hsmrewrap::test::TokenKind;
  const std::string missing = ::hsmrewrap::test::ModuleMissingReason(TokenKind::kTpm);
  const char* restart = getenv("HSMREWRAP_TPM_RESTART_ABRMD");
  if (!missing.empty() || restart == nullptr) GTEST_SKIP() << "no TPM stack: " << missing;
  auto token = TestToken::Create(TokenKind::kTpm);
  ASSERT_THAT(token, IsOk());
  const Pkcs11Backend::Options opts = (*token)->BackendOptions();
  (*token)->ReleaseModule();  // the supervisor's backends own the module: it can finalise it
  TokenSupervisor::Options so;
  so.max_backoff = absl::Milliseconds(500);
  auto sup = TokenSupervisor::Create(
      [opts]() -> absl::StatusOr<std::unique_ptr<Pkcs11Backend>> {
        auto b = Pkcs11Backend::Create(opts);
        if (!b.ok()) return b.status();
        return std::move(*b);
      },
      so);
  ASSERT_THAT(sup, IsOk());
  auto k = (*sup)->CreateKey("k", 2048, /*allow_pkcs1=*/false);
  ASSERT_THAT(k, IsOk());
  auto pub = crypto::PublicKey::FromSpki(k->spki_der);
  ASSERT_THAT(pub, IsOk());
  const crypto::Bytes pt = testing::RandomBytes(32);
  auto ct = crypto::RsaEncrypt(*pub, RsaPadding::kOaepSha256, pt);
  ASSERT_THAT(ct, IsOk());
  ASSERT_THAT((*sup)->Decrypt("k", RsaPadding::kOaepSha256, *ct, Path::kTokenDecrypt), IsOk());

  ASSERT_EQ(std::system(restart), 0) << restart;
  const absl::Time back = absl::Now();
  int decrypt_failed = 0, unavailable = 0;
  bool served = false;
  while (absl::Now() - back < absl::Seconds(5)) {
    auto r = (*sup)->Decrypt("k", RsaPadding::kOaepSha256, *ct, Path::kTokenDecrypt);
    if (r.ok()) {
      EXPECT_EQ(crypto::Bytes(r->begin(), r->end()), pt);
      served = true;
      break;
    }
    if (r.outcome() == Outcome::kDecryptFailed) ++decrypt_failed;
    if (r.status().code() == absl::StatusCode::kUnavailable) ++unavailable;
    absl::SleepFor(absl::Milliseconds(50));
  }
  std::cout << "tpm: abrmd restarted; " << unavailable << " UNAVAILABLE, " << decrypt_failed
            << " DECRYPT_FAILED, served again after "
            << absl::FormatDuration(absl::Now() - back) << ", reconnects "
            << (*sup)->reconnects() << "\n";
  EXPECT_EQ(decrypt_failed, 0);
  EXPECT_TRUE(served) << "not serving 5 s after tpm2-abrmd came back";
  EXPECT_GE((*sup)->reconnects(), 1u);
}

}  // namespace
}  // namespace hsmrewrap::hsm
