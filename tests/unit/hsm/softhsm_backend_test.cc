// Pkcs11Backend against a real SoftHSM2 token (a fresh token directory per test).
#include <atomic>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/pkcs11_backend.h"
#include "hsm/token.h"
#include "tests/unit/hsm/hsm_test_util.h"

namespace hsmrewrap::hsm {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using testing::IsOk;
using ::testing::Not;
using testing::StatusIs;
using ::testing::UnorderedElementsAre;

constexpr char kUserPin[] = "1234";
constexpr char kSoPin[] = "5678";
constexpr char kLabel[] = "hsm-test";

class SoftHsmBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access(testing::kSoftHsmPath, R_OK) != 0) GTEST_SKIP() << "SoftHSM2 not installed";
    testing::SetUpSoftHsmConfig(dir_.path());
    auto m = Module::Load(testing::kSoftHsmPath, "");
    ASSERT_THAT(m, IsOk());
    module_ = *m;
    ASSERT_THAT(InitSoftToken(*module_, kLabel, testing::Pin(kSoPin), testing::Pin(kUserPin)),
                IsOk());
  }
  void TearDown() override {
    backend_.reset();
    module_.reset();
  }

  Pkcs11Backend::Options Opts(bool host_unpadding = true, size_t pool = 4) {
    Pkcs11Backend::Options o;
    o.module_path = testing::kSoftHsmPath;
    o.token.label = kLabel;
    o.user_pin = testing::Pin(kUserPin);
    o.pool_size = pool;
    o.allow_host_unpadding = host_unpadding;
    return o;
  }
  void Open(bool host_unpadding = true, size_t pool = 4) {
    auto b = Pkcs11Backend::Create(Opts(host_unpadding, pool));
    ASSERT_THAT(b, IsOk());
    backend_ = std::move(*b);
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

  testing::TempDir dir_;
  std::shared_ptr<Module> module_;
  std::unique_ptr<Pkcs11Backend> backend_;
};

TEST_F(SoftHsmBackendTest, CreateKeyProbesSoftHsmQuirks) {
  Open();
  auto k = backend_->CreateKey("svc", 2048, /*allow_pkcs1=*/true);
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ(k->bits, 2048);
  EXPECT_TRUE(k->enabled);
  EXPECT_TRUE(k->allow_pkcs1);
  EXPECT_GT(k->created_unix, 0);
  // TOKENS.md §1: OAEP with SHA-1 only; SHA-2 needs HOST_UNPADDING.
  EXPECT_THAT(k->caps.decrypt, UnorderedElementsAre(RsaPadding::kOaepSha1, RsaPadding::kPkcs1));
  EXPECT_THAT(k->caps.decrypt, Not(Contains(RsaPadding::kOaepSha256)));
  EXPECT_THAT(k->caps.unwrap, UnorderedElementsAre(RsaPadding::kOaepSha1, RsaPadding::kPkcs1));
  EXPECT_TRUE(k->caps.raw_rsa);
  // TOKENS.md §7: bad PKCS#1 padding is an error (CKR_GENERAL_ERROR), no implicit rejection.
  EXPECT_FALSE(k->caps.pkcs1_implicit_rejection);
  EXPECT_THAT(backend_->WrapPaddings(),
              UnorderedElementsAre(RsaPadding::kOaepSha1, RsaPadding::kPkcs1));
  EXPECT_EQ(backend_->TokenLabel(), kLabel);
  EXPECT_TRUE(backend_->Healthy());
}

TEST_F(SoftHsmBackendTest, NoPkcs1NoHostUnpaddingUnlessAllowed) {
  Open(/*host_unpadding=*/false);
  auto k = backend_->CreateKey("strict", 2048, /*allow_pkcs1=*/false);
  ASSERT_THAT(k, IsOk());
  EXPECT_THAT(k->caps.decrypt, ElementsAre(RsaPadding::kOaepSha1));
  EXPECT_FALSE(k->caps.raw_rsa);
  auto ct = Seal(*k, RsaPadding::kPkcs1, testing::RandomBytes(16));
  EXPECT_THAT(backend_->Decrypt("strict", RsaPadding::kPkcs1, ct, Path::kTokenDecrypt),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  ct = Seal(*k, RsaPadding::kOaepSha256, testing::RandomBytes(16));
  EXPECT_THAT(backend_->Decrypt("strict", RsaPadding::kOaepSha256, ct, Path::kHostUnpadding),
              StatusIs(absl::StatusCode::kUnimplemented));
  EXPECT_THAT(backend_->Decrypt("strict", RsaPadding::kOaepSha256, ct, Path::kTokenDecrypt),
              StatusIs(absl::StatusCode::kUnimplemented));
}

TEST_F(SoftHsmBackendTest, DecryptRoundTrips) {
  Open();
  ASSERT_THAT(backend_->CreateKey("svc", 2048, true), IsOk());
  ExpectDecrypts("svc", RsaPadding::kOaepSha1, Path::kTokenDecrypt);
  ExpectDecrypts("svc", RsaPadding::kPkcs1, Path::kTokenDecrypt);
  ExpectDecrypts("svc", RsaPadding::kOaepSha1, Path::kHostUnpadding);
  ExpectDecrypts("svc", RsaPadding::kOaepSha256, Path::kHostUnpadding);
  ExpectDecrypts("svc", RsaPadding::kOaepSha384, Path::kHostUnpadding);
  ExpectDecrypts("svc", RsaPadding::kOaepSha512, Path::kHostUnpadding);
  ExpectDecrypts("svc", RsaPadding::kPkcs1, Path::kHostUnpadding);
  EXPECT_THAT(
      backend_->Decrypt("nope", RsaPadding::kOaepSha1, crypto::Bytes(256, 1), Path::kTokenDecrypt),
      StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(SoftHsmBackendTest, TamperedCiphertextFailsUniformly) {
  Open(/*host_unpadding=*/true, /*pool=*/1);
  auto k = backend_->CreateKey("svc", 2048, true);
  ASSERT_THAT(k, IsOk());
  const crypto::Bytes pt = testing::RandomBytes(32);
  struct Case {
    RsaPadding padding;
    Path path;
  };
  for (Case c : {Case{RsaPadding::kOaepSha1, Path::kTokenDecrypt},
                 Case{RsaPadding::kPkcs1, Path::kTokenDecrypt},
                 Case{RsaPadding::kOaepSha256, Path::kHostUnpadding},
                 Case{RsaPadding::kPkcs1, Path::kHostUnpadding}}) {
    crypto::Bytes ct = Seal(*k, c.padding, pt);
    for (size_t pos : {size_t{0}, size_t{1}, size_t{100}, ct.size() - 1}) {
      crypto::Bytes bad = ct;
      bad[pos] ^= 0x40;
      auto r = backend_->Decrypt("svc", c.padding, bad, c.path);
      // PKCS#1 v1.5 has a small chance of a tampered input still unpadding; never OAEP.
      if (c.padding == RsaPadding::kPkcs1 && r.ok()) continue;
      EXPECT_TRUE(IsDecryptFailed(r)) << r.status() << " " << PathName(c.path);
    }
    auto good = backend_->Decrypt("svc", c.padding, ct, c.path);
    ASSERT_THAT(good, IsOk());
    EXPECT_EQ(crypto::Bytes(good->begin(), good->end()), pt);
  }
  // Every failure discarded its session; the pool still serves.
  EXPECT_GT(backend_->pool().discarded_sessions(), 0u);
  EXPECT_LE(backend_->pool().open_sessions(), 1u);
}

TEST_F(SoftHsmBackendTest, EmptyAndShortCiphertextDoNotPoisonSessions) {
  Open(/*host_unpadding=*/true, /*pool=*/1);
  auto k = backend_->CreateKey("svc", 2048, false);
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

TEST_F(SoftHsmBackendTest, KeyAttributesAreProtected) {
  Open(/*host_unpadding=*/false);
  ASSERT_THAT(backend_->CreateKey("svc", 2048, false), IsOk());
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
  EXPECT_EQ(CkrOf(s), CKR_ATTRIBUTE_SENSITIVE) << s;

  CK_MECHANISM_TYPE mechs[8];
  CK_ATTRIBUTE am{CKA_ALLOWED_MECHANISMS, mechs, sizeof(mechs)};
  ASSERT_THAT(m.Call("C_GetAttributeValue", m.fl()->C_GetAttributeValue, lease->handle(), *h, &am,
                     CK_ULONG(1)),
              IsOk());
  EXPECT_EQ(am.ulValueLen, sizeof(CK_MECHANISM_TYPE));
  EXPECT_EQ(mechs[0], CKM_RSA_PKCS_OAEP);

  CK_BBOOL yes = CK_TRUE;
  CK_ATTRIBUTE ext{CKA_EXTRACTABLE, &yes, sizeof(yes)};
  EXPECT_FALSE(m.Call("C_SetAttributeValue", m.fl()->C_SetAttributeValue, lease->handle(), *h, &ext,
                      CK_ULONG(1))
                   .ok());
}

TEST_F(SoftHsmBackendTest, ImportOpenSslKeyAndDecrypt) {
  Open();
  auto host = testing::GenerateHostRsa(2048);
  ASSERT_TRUE(host);
  auto k = backend_->ImportKey("imported", testing::HostKeyParts(host.get(), true), false);
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ(k->bits, 2048);
  EXPECT_EQ(k->spki_der, testing::HostPublicKey(host.get()).SpkiDer());
  EXPECT_THAT(k->caps.decrypt, ElementsAre(RsaPadding::kOaepSha1));
  ExpectDecrypts("imported", RsaPadding::kOaepSha1, Path::kTokenDecrypt);
  ExpectDecrypts("imported", RsaPadding::kOaepSha256, Path::kHostUnpadding);
}

TEST_F(SoftHsmBackendTest, ImportWithoutCrtPartsAndOddSize) {
  Open();
  auto host = testing::GenerateHostRsa(1032);  // an odd size, as in Wycheproof
  ASSERT_TRUE(host);
  auto k = backend_->ImportKey("no-crt", testing::HostKeyParts(host.get(), false), false);
  ASSERT_THAT(k, IsOk());
  EXPECT_EQ(k->bits, 1032);
  ExpectDecrypts("no-crt", RsaPadding::kOaepSha1, Path::kTokenDecrypt);
  ExpectDecrypts("no-crt", RsaPadding::kOaepSha256, Path::kHostUnpadding);

  // A three-prime key given as n, e, d only (as Wycheproof's): SoftHSM takes it.
  auto three = testing::GenerateMultiPrimeRsa(2048, 3);
  ASSERT_TRUE(three);
  ASSERT_THAT(backend_->ImportKey("three-prime", testing::HostKeyParts(three.get(), false), false),
              IsOk());
  ExpectDecrypts("three-prime", RsaPadding::kOaepSha1, Path::kTokenDecrypt);

  crypto::RsaPrivateKeyParts tiny =
      testing::HostKeyParts(testing::GenerateHostRsa(768).get(), true);
  EXPECT_THAT(backend_->ImportKey("tiny", tiny, false),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(SoftHsmBackendTest, MetadataSurvivesReopening) {
  Open();
  auto k = backend_->CreateKey("svc", 2048, /*allow_pkcs1=*/true);
  ASSERT_THAT(k, IsOk());
  ASSERT_THAT(backend_->CreateKey("other", 2048, false), IsOk());
  auto disabled = backend_->SetEnabled("svc", false);
  ASSERT_THAT(disabled, IsOk());
  EXPECT_FALSE(disabled->enabled);
  auto ct = Seal(*k, RsaPadding::kOaepSha1, testing::RandomBytes(16));
  EXPECT_THAT(backend_->Decrypt("svc", RsaPadding::kOaepSha1, ct, Path::kTokenDecrypt),
              StatusIs(absl::StatusCode::kFailedPrecondition));

  // A new process: finalise the module and load the token from disk again.
  backend_.reset();
  module_.reset();
  Open();
  auto list = backend_->ListKeys();
  ASSERT_THAT(list, IsOk());
  ASSERT_EQ(list->size(), 2u);
  auto again = backend_->GetKey("svc");
  ASSERT_THAT(again, IsOk());
  EXPECT_FALSE(again->enabled);
  EXPECT_TRUE(again->allow_pkcs1);
  EXPECT_EQ(again->created_unix, k->created_unix);
  EXPECT_EQ(again->spki_der, k->spki_der);
  EXPECT_THAT(again->caps.decrypt, Contains(RsaPadding::kPkcs1));
  ASSERT_THAT(backend_->SetEnabled("svc", true), IsOk());
  ExpectDecrypts("svc", RsaPadding::kOaepSha1, Path::kTokenDecrypt);
  auto other = backend_->GetKey("other");
  ASSERT_THAT(other, IsOk());
  EXPECT_TRUE(other->enabled);
  EXPECT_FALSE(other->allow_pkcs1);
}

TEST_F(SoftHsmBackendTest, TwoReplicasAgreeOnMetadata) {
  // Two backends on one token in one process share the module; the second sees keys the
  // first creates and the enabled flag it writes.
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
  EXPECT_FALSE(later->enabled);
}

TEST_F(SoftHsmBackendTest, DuplicateNameRefused) {
  Open();
  ASSERT_THAT(backend_->CreateKey("svc", 2048, false), IsOk());
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

uint64_t Calls(const Module& m, const std::string& fn) {
  for (const auto& s : m.CallStats()) {
    if (s.function == fn) return s.calls;
  }
  return 0;
}

TEST_F(SoftHsmBackendTest, WrongPinIsPermissionDeniedAndNotRetried) {
  auto opts = Opts();
  opts.user_pin = testing::Pin("0000");
  const uint64_t before = Calls(*module_, "C_Login");
  auto b = Pkcs11Backend::Create(opts);
  EXPECT_THAT(b, StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_EQ(Calls(*module_, "C_Login"), before + 1);

  auto slot = FindToken(*module_, TokenSelector{kLabel, "", ""});
  ASSERT_THAT(slot, IsOk());
  auto pool = SessionPool::Create(module_, slot->slot, testing::Pin("0000"), 2);
  EXPECT_THAT(pool, StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_EQ(Calls(*module_, "C_Login"), before + 2);
  // The right PIN still works (SoftHSM does not lock).
  Open();
}

TEST_F(SoftHsmBackendTest, SessionPoolIsBoundedAndLeasesAreExclusive) {
  auto slot = FindToken(*module_, TokenSelector{"", "", std::string("pkcs11:token=") + kLabel});
  ASSERT_THAT(slot, IsOk());
  auto pool = SessionPool::Create(module_, slot->slot, testing::Pin(kUserPin), 2);
  ASSERT_THAT(pool, IsOk());
  auto a = (*pool)->Acquire(absl::Now() + absl::Seconds(1));
  auto b = (*pool)->Acquire(absl::Now() + absl::Seconds(1));
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_NE(a->handle(), b->handle());
  EXPECT_THAT((*pool)->Acquire(absl::Now() + absl::Milliseconds(50)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ((*pool)->open_sessions(), 2u);
  CK_SESSION_HANDLE broken = a->handle();
  a->MarkBroken();
  a->Release();
  EXPECT_EQ((*pool)->open_sessions(), 1u);
  auto c = (*pool)->Acquire(absl::Now() + absl::Seconds(1));
  ASSERT_THAT(c, IsOk());
  CK_SESSION_INFO si{};
  EXPECT_THAT(module_->Call("C_GetSessionInfo", module_->fl()->C_GetSessionInfo, c->handle(), &si),
              IsOk());
  EXPECT_EQ(si.state, CKS_RW_USER_FUNCTIONS);
  (void)broken;
  // Selection never by slot number: serial works too; a wrong label does not.
  EXPECT_THAT(FindToken(*module_, TokenSelector{"", slot->serial, ""}), IsOk());
  EXPECT_THAT(FindToken(*module_, TokenSelector{"nope", "", ""}),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(FindToken(*module_, TokenSelector{"", "", "pkcs11:token=nope"}),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(FindToken(*module_, TokenSelector{"", "", "not-a-uri"}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(SoftHsmBackendTest, ConcurrentDecryptsFromEightThreads) {
  Open(/*host_unpadding=*/true, /*pool=*/4);
  auto k = backend_->CreateKey("svc", 2048, false);
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

TEST_F(SoftHsmBackendTest, RewrapInTokenWithOaepSha1) {
  Open();
  auto k = backend_->CreateKey("svc", 2048, false);
  ASSERT_THAT(k, IsOk());
  const auto kKeyObjects = UnorderedElementsAre("private/token", "public/token", "data/token");
  EXPECT_THAT(ObjectKinds(*backend_), kKeyObjects);
  auto device = testing::GenerateHostRsa(2048);
  const crypto::Bytes pt = testing::RandomBytes(20);
  auto out =
      backend_->RewrapInToken("svc", RsaPadding::kOaepSha1, Seal(*k, RsaPadding::kOaepSha1, pt),
                              testing::HostPublicKey(device.get()), RsaPadding::kOaepSha1);
  ASSERT_THAT(out, IsOk());
  EXPECT_THAT(ObjectKinds(*backend_), kKeyObjects);
  auto back = crypto::RsaDecryptWithPrivateKey(testing::HostKeyDer(device.get()),
                                               RsaPadding::kOaepSha1, *out);
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(crypto::Bytes(back->begin(), back->end()), pt);
  // SoftHSM cannot unwrap OAEP-SHA256 nor wrap with it.
  EXPECT_THAT(
      backend_->RewrapInToken("svc", RsaPadding::kOaepSha256, Seal(*k, RsaPadding::kOaepSha256, pt),
                              testing::HostPublicKey(device.get()), RsaPadding::kOaepSha1),
      StatusIs(absl::StatusCode::kUnimplemented));
  // A tampered input fails like any other decryption failure.
  crypto::Bytes bad = Seal(*k, RsaPadding::kOaepSha1, pt);
  bad[3] ^= 2;
  EXPECT_TRUE(IsDecryptFailed(backend_->RewrapInToken("svc", RsaPadding::kOaepSha1, bad,
                                                      testing::HostPublicKey(device.get()),
                                                      RsaPadding::kOaepSha1)));
  // Session objects were destroyed: only the key pair and metadata are left in the token.
  EXPECT_THAT(ObjectKinds(*backend_),
              UnorderedElementsAre("private/token", "public/token", "data/token"));
}

}  // namespace
}  // namespace hsmrewrap::hsm
