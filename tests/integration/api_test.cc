// API tests of the real rewrapd over gRPC: Keys, Rewrap (every output format and
// recipient form, bad input, limits, rotation, uniform decryption failures), RewrapStream,
// health and reflection. Runs once per token (--token=softhsm|nss).
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <map>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"
#include "tests/integration/it_env.h"
#include "tests/integration/it_util.h"
#include "tests/support/openssl_keys.h"

namespace hsmrewrap::it {
namespace {

const v1::Padding kOaepPaddings[] = {v1::OAEP_SHA256, v1::OAEP_SHA384, v1::OAEP_SHA512,
                                     v1::OAEP_SHA1};
const v1::OutputFormat kFormats[] = {
    v1::CMS_ENVELOPED,   v1::CMS_ENVELOPED_PKCS1, v1::RSA_OAEP_SHA1, v1::RSA_OAEP_SHA256,
    v1::RSA_OAEP_SHA384, v1::RSA_OAEP_SHA512,     v1::RSA_PKCS1};
const Rcp kRecipients[] = {Rcp::kCertDer, Rcp::kCertPem, Rcp::kSpkiDer, Rcp::kSpkiPem};

std::string Lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool ContainsAny(const std::string& text, const std::vector<std::string>& words) {
  const std::string t = Lower(text);
  for (const auto& w : words) {
    if (t.find(Lower(w)) != std::string::npos) return true;
  }
  return false;
}

std::string Join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : "|") + x;
  return s;
}

class ApiTest : public RewrapdTest {
 protected:
  // Devices and keys are made once per binary and shared by the tests.
  static const Device& Dev() {
    static Device d = MakeDevice(2048, "device-2048");
    return d;
  }
  static const Device& SmallDev() {
    static Device d = MakeDevice(1024, "device-1024");
    return d;
  }
  // A 2048-bit key without PKCS#1 and one with it.
  const ServiceKey& MainKey() { return Key("it-main", false); }
  const ServiceKey& Pkcs1Key() { return Key("it-pkcs1", true); }

  const ServiceKey& Key(const std::string& name, bool allow_pkcs1, uint32_t bits = 2048) {
    static std::map<std::string, ServiceKey> keys;
    auto it = keys.find(name);
    if (it != keys.end()) return it->second;
    ServiceKey k;
    CreateServiceKey(h_, name, bits, allow_pkcs1, &k);
    if (HasFatalFailure() || k.pub == nullptr) {
      static ServiceKey failed;  // callers ASSERT_NE(pub, nullptr)
      return failed;
    }
    return keys.emplace(name, std::move(k)).first->second;
  }

  std::string UniqueName(const std::string& base) {
    static int n = 0;
    return base + "-" + std::to_string(++n);
  }
};

// --------------------------------------------------------------------------------------
// Health and reflection
// --------------------------------------------------------------------------------------

TEST_F(ApiTest, HealthReportsServing) {
  auto stub = grpc::health::v1::Health::NewStub(h_->channel());
  grpc::ClientContext ctx;
  SetDeadline(&ctx, std::chrono::seconds(10));
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status s = stub->Check(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << "grpc.health.v1.Health/Check: " << StatusText(s);
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

// Reflection: one ServerReflectionInfo exchange with a hand-encoded
// ServerReflectionRequest{list_services: ""} (field 7), checked for our service names.
TEST_F(ApiTest, ReflectionListsServices) {
  grpc::GenericStub stub(h_->channel());
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  SetDeadline(&ctx, std::chrono::seconds(20));
  void* tag;
  bool ok = false;
  auto call =
      stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  ASSERT_TRUE(ok) << "cannot start the reflection call";
  const char request[] = {0x3a, 0x00};
  grpc::Slice slice(request, sizeof(request));
  grpc::ByteBuffer out(&slice, 1);
  call->Write(out, reinterpret_cast<void*>(2));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  ASSERT_TRUE(ok);
  grpc::ByteBuffer in;
  call->Read(&in, reinterpret_cast<void*>(3));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  std::string body;
  if (ok) {
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(in.Dump(&slices).ok());
    for (const auto& sl : slices) body.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  }
  call->WritesDone(reinterpret_cast<void*>(4));
  cq.Next(&tag, &ok);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  cq.Next(&tag, &ok);
  EXPECT_NE(body.find("hsmrewrap.v1.Rewrap"), std::string::npos)
      << "reflection does not list hsmrewrap.v1.Rewrap (status " << StatusText(status) << ")";
  EXPECT_NE(body.find("hsmrewrap.v1.Keys"), std::string::npos);
  EXPECT_NE(body.find("grpc.health.v1.Health"), std::string::npos);
  ctx.TryCancel();
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

// --------------------------------------------------------------------------------------
// Keys
// --------------------------------------------------------------------------------------

TEST_F(ApiTest, EmbeddedDefaultHasKeyNamedDefault) {
  if (!embedded()) GTEST_SKIP() << "the `default` key belongs to the embedded SoftHSM2 default";
  ServiceKey k;
  ASSERT_NO_FATAL_FAILURE(LoadServiceKey(h_, "default", &k));
  EXPECT_EQ(k.info.bits(), 2048u);
  EXPECT_TRUE(k.info.enabled());
  EXPECT_EQ(k.modulus_len, 256u);
}

TEST_F(ApiTest, CreateKeyAndListKeysFields) {
  const auto now = std::chrono::system_clock::now();
  const int64_t now_s =
      std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
  for (bool allow : {false, true}) {
    const std::string name = UniqueName(allow ? "list-pkcs1" : "list-plain");
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::CreateKeyRequest req;
    req.set_name(name);
    req.set_allow_pkcs1(allow);  // bits 0 = default 2048
    v1::KeyInfo created;
    grpc::Status s = h_->keys().CreateKey(&ctx, req, &created);
    ASSERT_TRUE(s.ok()) << "CreateKey: " << StatusText(s);
    EXPECT_EQ(created.bits(), 2048u) << "bits 0 must mean 2048";

    ServiceKey k;
    ASSERT_NO_FATAL_FAILURE(LoadServiceKey(h_, name, &k));
    const v1::KeyInfo& info = k.info;
    EXPECT_EQ(info.name(), name);
    EXPECT_EQ(info.bits(), 2048u);
    EXPECT_TRUE(info.enabled());
    EXPECT_EQ(info.allow_pkcs1(), allow);
    EXPECT_EQ(info.spki_sha256(), HexEncode(Sha256(SpkiDer(k.pub.get()))))
        << "spki_sha256 must be the lowercase hex SHA-256 of the DER SPKI";
    EXPECT_EQ(info.spki_sha256(), created.spki_sha256());
    EXPECT_TRUE(info.has_created());
    EXPECT_LE(std::llabs(info.created().seconds() - now_s), 600) << "created is not about now";
    EXPECT_FALSE(info.token_label().empty());
    if (nss()) {
      EXPECT_EQ(info.token_label(), "NSS Certificate DB");
    }

    // paths: every OAEP padding has at least one path, none unspecified, no duplicates.
    for (v1::Padding p : kOaepPaddings) {
      std::vector<int> paths;
      for (const auto& ps : info.paths()) {
        if (ps.padding() == p) paths.assign(ps.paths().begin(), ps.paths().end());
      }
      EXPECT_FALSE(paths.empty()) << name << ": no paths listed for " << PaddingName(p);
      std::set<int> uniq(paths.begin(), paths.end());
      EXPECT_EQ(uniq.size(), paths.size()) << PaddingName(p) << ": duplicate paths";
      EXPECT_EQ(uniq.count(v1::PATH_UNSPECIFIED), 0u);
      if (!host_unpadding()) {
        EXPECT_EQ(uniq.count(v1::HOST_UNPADDING), 0u)
            << "host unpadding is not allowed for this rewrapd; HOST_UNPADDING must not be "
               "offered for "
            << PaddingName(p);
      } else if (embedded() && p != v1::OAEP_SHA1) {
        // SoftHSM2 decrypts OAEP with SHA-1 (and MGF1-SHA1) only; the embedded default
        // allows host unpadding, so that is what it must offer.
        EXPECT_EQ(uniq.count(v1::HOST_UNPADDING), 1u)
            << "SoftHSM2 needs HOST_UNPADDING for " << PaddingName(p);
      }
      std::string listed;
      for (int x : paths) listed += std::string(" ") + PathName(x);
      printf("[paths] %s key %s %s:%s\n", TokenName(CurrentToken()), name.c_str(), PaddingName(p),
             listed.c_str());
    }
    if (allow) {
      EXPECT_FALSE(k.PathsFor(v1::PKCS1).empty()) << "allow_pkcs1 key lists no PKCS1 paths";
    }
    // Learned by trial: NSS softoken 3.87 does PKCS#1 implicit rejection, SoftHSM2 returns an
    // error (CKR_GENERAL_ERROR). Never reported for a key without PKCS#1.
    EXPECT_EQ(info.pkcs1_implicit_rejection(), allow && facts().pkcs1_implicit_rejection) << name;
    EXPECT_EQ(created.pkcs1_implicit_rejection(), info.pkcs1_implicit_rejection()) << name;
  }
}

TEST_F(ApiTest, CreateKeyErrors) {
  const ServiceKey& k = MainKey();
  ASSERT_NE(k.pub, nullptr) << "no service key";
  ASSERT_FALSE(k.name.empty());
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::CreateKeyRequest req;
    req.set_name(k.name);
    v1::KeyInfo info;
    grpc::Status s = h_->keys().CreateKey(&ctx, req, &info);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS) << StatusText(s);
  }
  for (uint32_t bits : {1024u, 1000u, 2047u, 5000u, 16384u}) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::CreateKeyRequest req;
    req.set_name(UniqueName("bad-bits"));
    req.set_bits(bits);
    v1::KeyInfo info;
    grpc::Status s = h_->keys().CreateKey(&ctx, req, &info);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bits << ": " << StatusText(s);
    EXPECT_FALSE(s.error_message().empty());
  }
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::CreateKeyRequest req;  // empty name
    v1::KeyInfo info;
    grpc::Status s = h_->keys().CreateKey(&ctx, req, &info);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << StatusText(s);
    EXPECT_FALSE(s.error_message().empty());
  }
  for (const char* rpc : {"GetPublicKey", "DisableKey", "EnableKey"}) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    grpc::Status s;
    if (std::string(rpc) == "GetPublicKey") {
      v1::GetPublicKeyRequest req;
      req.set_name("no-such-key");
      v1::GetPublicKeyResponse resp;
      s = h_->keys().GetPublicKey(&ctx, req, &resp);
    } else if (std::string(rpc) == "DisableKey") {
      v1::DisableKeyRequest req;
      req.set_name("no-such-key");
      v1::KeyInfo resp;
      s = h_->keys().DisableKey(&ctx, req, &resp);
    } else {
      v1::EnableKeyRequest req;
      req.set_name("no-such-key");
      v1::KeyInfo resp;
      s = h_->keys().EnableKey(&ctx, req, &resp);
    }
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND) << rpc << ": " << StatusText(s);
  }
}

TEST_F(ApiTest, CreateKey3072And4096Rewrap) {
  const Device& d = Dev();
  for (uint32_t bits : {3072u, 4096u}) {
    if (static_cast<int>(bits) > facts().max_rsa_bits) {
      // Larger than the token makes (a TPM: 3072): refused before the token is asked.
      v1::CreateKeyRequest req;
      req.set_name(UniqueName("big"));
      req.set_bits(bits);
      v1::KeyInfo info;
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      const grpc::Status s = h_->keys().CreateKey(&ctx, req, &info);
      EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << StatusText(s);
      EXPECT_NE(s.error_message().find("it takes RSA keys of 1024 to " +
                                       std::to_string(facts().max_rsa_bits)),
                std::string::npos)
          << s.error_message();
      continue;
    }
    ServiceKey k;
    ASSERT_NO_FATAL_FAILURE(CreateServiceKey(h_, UniqueName("big"), bits, false, &k));
    EXPECT_EQ(k.info.bits(), bits);
    EXPECT_EQ(k.modulus_len, bits / 8);
    v1::RewrapRequest req;
    std::vector<std::string> secrets;
    for (v1::Padding p : kOaepPaddings) {
      secrets.push_back(RandomBytes(48));
      AddItem(&req, PaddingName(p), k.name, p, Seal(k, p, secrets.back()), d, Rcp::kCertDer,
              v1::RSA_OAEP_SHA256);
    }
    v1::RewrapResponse resp;
    ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, req, &resp));
    for (int i = 0; i < resp.results_size(); ++i) {
      ExpectRewrapped(resp.results(i), req.items(i).id(), d, Rcp::kCertDer, v1::RSA_OAEP_SHA256,
                      secrets[static_cast<size_t>(i)], k, req.items(i).padding());
    }
  }
}

TEST_F(ApiTest, GetPublicKeyFormatsAgree) {
  const ServiceKey& k = MainKey();
  ASSERT_NE(k.pub, nullptr);
  std::map<int, v1::GetPublicKeyResponse> got;
  for (v1::PublicKeyFormat f : {v1::PEM_SPKI, v1::DER_SPKI, v1::CNG_RSAPUBLICBLOB}) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::GetPublicKeyRequest req;
    req.set_name(k.name);
    req.set_format(f);
    v1::GetPublicKeyResponse resp;
    grpc::Status s = h_->keys().GetPublicKey(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << v1::PublicKeyFormat_Name(f) << ": " << StatusText(s);
    EXPECT_EQ(resp.format(), f);
    EXPECT_EQ(resp.bits(), 2048u);
    EXPECT_EQ(resp.spki_sha256(), k.info.spki_sha256());
    got[f] = resp;
  }
  const std::string der = got[v1::DER_SPKI].public_key();
  const std::string pem = got[v1::PEM_SPKI].public_key();
  const std::string cng = got[v1::CNG_RSAPUBLICBLOB].public_key();
  EXPECT_EQ(HexEncode(Sha256(der)), k.info.spki_sha256());

  // DER: SPKI with rsaEncryption and explicit NULL parameters (the only DER Intune accepts).
  const std::string rsa_alg_null = HexDecode("300d06092a864886f70d0101010500");
  EXPECT_NE(der.find(rsa_alg_null), std::string::npos)
      << "SPKI algorithm is not rsaEncryption with NULL parameters";

  // PEM: "BEGIN PUBLIC KEY" armour of the same DER.
  EXPECT_EQ(pem.rfind("-----BEGIN PUBLIC KEY-----", 0), 0u) << "PEM must start with the header";
  Pkey from_pem = ParsePublicKey(pem);
  ASSERT_NE(from_pem, nullptr) << "PEM does not parse";
  EXPECT_TRUE(SpkiDer(from_pem.get()) == der) << "PEM and DER differ";

  // CNG BCRYPT_RSAPUBLIC_BLOB: six little-endian uint32 ("RSA1", bits, len e, len n, 0, 0),
  // then e and n big-endian.
  const std::string n = RsaModulus(k.pub.get()), e = RsaExponent(k.pub.get());
  ASSERT_GE(cng.size(), 24u);
  auto le32 = [&](size_t off) {
    return static_cast<uint32_t>(static_cast<uint8_t>(cng[off])) |
           static_cast<uint32_t>(static_cast<uint8_t>(cng[off + 1])) << 8 |
           static_cast<uint32_t>(static_cast<uint8_t>(cng[off + 2])) << 16 |
           static_cast<uint32_t>(static_cast<uint8_t>(cng[off + 3])) << 24;
  };
  EXPECT_EQ(cng.substr(0, 4), "RSA1");
  EXPECT_EQ(le32(0), 0x31415352u);
  EXPECT_EQ(le32(4), 2048u) << "BitLength";
  EXPECT_EQ(le32(8), e.size()) << "cbPublicExp";
  EXPECT_EQ(le32(12), n.size()) << "cbModulus";
  EXPECT_EQ(le32(16), 0u) << "cbPrime1";
  EXPECT_EQ(le32(20), 0u) << "cbPrime2";
  EXPECT_EQ(cng.size(), 24 + e.size() + n.size());
  if (e == std::string("\x01\x00\x01", 3)) {
    EXPECT_EQ(cng.size(), 283u);
  }
  EXPECT_TRUE(cng.substr(24, e.size()) == e) << "exponent differs from the SPKI's";
  EXPECT_TRUE(cng.substr(24 + e.size()) == n) << "modulus differs from the SPKI's";

  // Format left at its default (0) is PEM.
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::GetPublicKeyRequest req;
  req.set_name(k.name);
  v1::GetPublicKeyResponse resp;
  ASSERT_TRUE(h_->keys().GetPublicKey(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.public_key(), pem);
}

TEST_F(ApiTest, ImportKeyEverySource) {
  if (!facts().imports_private_keys) {
    // A TPM makes its keys itself: an import is a clear refusal, never INTERNAL.
    Pkey key = GenerateRsa(2048);
    v1::ImportKeyRequest req;
    req.set_name(UniqueName("import-refused"));
    req.set_pkcs8(PrivateKeyPkcs8Der(key.get()));
    v1::KeyInfo info;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    const grpc::Status s = h_->keys().ImportKey(&ctx, req, &info);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << StatusText(s);
    EXPECT_NE(s.error_message().find("refuses to import this RSA private key"), std::string::npos)
        << s.error_message();
    GTEST_SKIP() << TokenName(CurrentToken()) << " imports no private keys; the refusal is checked";
  }
  const Device& d = Dev();
  struct Case {
    std::string label;
    int bits;
    Pkey key;
    v1::ImportKeyRequest req;
  };
  std::vector<Case> cases;
  auto add = [&](const std::string& label, int bits, Pkey key) {
    Case c;
    c.label = label;
    c.bits = bits;
    c.key = std::move(key);
    c.req.set_name(UniqueName("import-" + label));
    cases.push_back(std::move(c));
    return &cases.back();
  };
  {
    Case* c = add("pkcs8-der", 2048, GenerateRsa(2048));
    c->req.set_pkcs8(PrivateKeyPkcs8Der(c->key.get()));
  }
  {
    Case* c = add("pkcs8-pem", 2048, GenerateRsa(2048));
    c->req.set_pkcs8(PrivateKeyPkcs8Pem(c->key.get()));
    c->req.set_allow_pkcs1(true);
  }
  {
    Case* c = add("pkcs1-der", 2048, GenerateRsa(2048));
    c->req.set_pkcs8(PrivateKeyPkcs1Der(c->key.get()));
  }
  {
    Case* c = add("pfx", 3072, GenerateRsa(3072));
    X509Ptr cert = SelfSignedCert(c->key.get(), "pfx import");
    c->req.mutable_pfx()->set_pfx(Pkcs12(c->key.get(), cert.get(), "pfx-P@ss word"));
    c->req.mutable_pfx()->set_password("pfx-P@ss word");
  }
  {
    Case* c = add("cng", 2048, GenerateRsa(2048));
    c->req.set_cng_rsa_full_private_blob(CngFullPrivateBlob(c->key.get()));
  }
  {
    // OpenSSL rounds some odd requests down (2049 -> 2048); 2047 stays odd.
    Case* c = add("odd-2047", 2047, GenerateRsa(2047));
    c->req.set_pkcs8(PrivateKeyPkcs8Der(c->key.get()));
  }
  {
    Case* c = add("small-1024", 1024, GenerateRsa(1024));
    c->req.set_pkcs8(PrivateKeyPkcs8Der(c->key.get()));
  }
  {
    Pkey k3 = test::GenerateMultiPrimeRsa(2048, 3);
    ASSERT_NE(k3, nullptr) << "OpenSSL cannot make a three-prime key: " << OpenSslErrors();
    Case* c = add("three-prime", 2048, std::move(k3));
    c->req.set_pkcs8(PrivateKeyPkcs8Der(c->key.get()));
  }

  v1::RewrapRequest req;
  std::vector<std::string> secrets;
  std::vector<ServiceKey> keys(cases.size());
  std::vector<size_t> item_key;
  for (size_t i = 0; i < cases.size(); ++i) {
    Case& c = cases[i];
    if (c.label == "three-prime" && !facts().imports_multi_prime_without_crt) {
      // NSS softoken and openCryptoki cannot import a multi-prime key given as n, e, d (no
      // two-prime CRT form): a clear client error, not INTERNAL.
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      v1::KeyInfo info;
      grpc::Status s = h_->keys().ImportKey(&ctx, c.req, &info);
      EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
          << c.label << ": " << StatusText(s);
      EXPECT_EQ(s.error_message(),
                "this token needs the CRT parameters (p, q, dP, dQ, qInv) of a two-prime RSA "
                "key; a multi-prime key cannot be imported into it");
      continue;
    }
    ASSERT_NO_FATAL_FAILURE(ImportServiceKey(h_, c.req, &keys[i])) << c.label;
    const ServiceKey& k = keys[i];
    EXPECT_EQ(k.info.bits(), static_cast<uint32_t>(EVP_PKEY_get_bits(c.key.get()))) << c.label;
    EXPECT_EQ(k.info.spki_sha256(), HexEncode(Sha256(SpkiDer(c.key.get())))) << c.label;
    EXPECT_TRUE(SpkiDer(k.pub.get()) == SpkiDer(c.key.get())) << c.label << ": public key differs";
    EXPECT_EQ(k.info.allow_pkcs1(), c.req.allow_pkcs1()) << c.label;
    EXPECT_TRUE(k.info.enabled()) << c.label;
    std::vector<v1::Padding> pads = {v1::OAEP_SHA256, v1::OAEP_SHA1};
    if (c.bits >= 2048) pads.push_back(v1::OAEP_SHA512);
    if (c.req.allow_pkcs1()) pads.push_back(v1::PKCS1);
    for (v1::Padding p : pads) {
      secrets.push_back(RandomBytes(32));
      AddItem(&req, c.label + "/" + PaddingName(p), k.name, p, Seal(k, p, secrets.back()), d,
              Rcp::kSpkiDer, v1::CMS_ENVELOPED);
      item_key.push_back(i);
    }
  }
  v1::RewrapResponse resp;
  ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, req, &resp));
  for (int i = 0; i < resp.results_size(); ++i) {
    const size_t ui = static_cast<size_t>(i);
    ExpectRewrapped(resp.results(i), req.items(i).id(), d, Rcp::kSpkiDer, v1::CMS_ENVELOPED,
                    secrets[ui], keys[item_key[ui]], req.items(i).padding());
  }

  // Errors: duplicate name, garbage, wrong PFX password, no source.
  auto import_status = [&](const v1::ImportKeyRequest& r) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::KeyInfo info;
    return h_->keys().ImportKey(&ctx, r, &info);
  };
  {
    v1::ImportKeyRequest r = cases[0].req;  // same name again
    grpc::Status s = import_status(r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS) << StatusText(s);
  }
  {
    v1::ImportKeyRequest r;
    r.set_name(UniqueName("import-garbage"));
    r.set_pkcs8("this is not a private key");
    grpc::Status s = import_status(r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << StatusText(s);
    EXPECT_FALSE(s.error_message().empty());
  }
  {
    v1::ImportKeyRequest r = cases[3].req;
    r.set_name(UniqueName("import-pfx-wrong-password"));
    r.mutable_pfx()->set_password("wrong");
    grpc::Status s = import_status(r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << StatusText(s);
    EXPECT_FALSE(s.error_message().empty());
  }
  {
    v1::ImportKeyRequest r;
    r.set_name(UniqueName("import-cng-public"));
    std::string blob = CngFullPrivateBlob(cases[4].key.get());
    blob.resize(24 + 3 + 256);  // truncated to what a public blob carries
    r.set_cng_rsa_full_private_blob(blob);
    grpc::Status s = import_status(r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << StatusText(s);
  }
  {
    v1::ImportKeyRequest r;
    r.set_name(UniqueName("import-nothing"));
    grpc::Status s = import_status(r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << StatusText(s);
  }
}

TEST_F(ApiTest, DisableEnableKey) {
  const Device& d = Dev();
  ServiceKey k;
  ASSERT_NO_FATAL_FAILURE(CreateServiceKey(h_, UniqueName("toggle"), 2048, false, &k));
  const std::string secret = RandomAscii(20);
  const std::string ct = Seal(k, v1::OAEP_SHA256, secret);
  auto rewrap_once = [&](v1::RewrapResponse* resp) {
    v1::RewrapRequest req;
    AddItem(&req, "x", k.name, v1::OAEP_SHA256, ct, d, Rcp::kCertPem, v1::CMS_ENVELOPED);
    CallRewrap(h_, req, resp);
  };
  v1::RewrapResponse resp;
  ASSERT_NO_FATAL_FAILURE(rewrap_once(&resp));
  ExpectRewrapped(resp.results(0), "x", d, Rcp::kCertPem, v1::CMS_ENVELOPED, secret, k,
                  v1::OAEP_SHA256);
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::DisableKeyRequest req;
    req.set_name(k.name);
    v1::KeyInfo info;
    grpc::Status s = h_->keys().DisableKey(&ctx, req, &info);
    ASSERT_TRUE(s.ok()) << StatusText(s);
    EXPECT_FALSE(info.enabled());
  }
  v1::KeyInfo listed;
  ASSERT_NO_FATAL_FAILURE(FindKeyInfo(h_, k.name, &listed));
  EXPECT_FALSE(listed.enabled()) << "ListKeys still shows the disabled key enabled";
  resp.Clear();
  ASSERT_NO_FATAL_FAILURE(rewrap_once(&resp));
  ExpectItemError(resp.results(0), "x", v1::ItemError::KEY_DISABLED);
  EXPECT_EQ(resp.results(0).path(), v1::PATH_UNSPECIFIED);
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::EnableKeyRequest req;
    req.set_name(k.name);
    v1::KeyInfo info;
    grpc::Status s = h_->keys().EnableKey(&ctx, req, &info);
    ASSERT_TRUE(s.ok()) << StatusText(s);
    EXPECT_TRUE(info.enabled());
  }
  ASSERT_NO_FATAL_FAILURE(FindKeyInfo(h_, k.name, &listed));
  EXPECT_TRUE(listed.enabled());
  resp.Clear();
  ASSERT_NO_FATAL_FAILURE(rewrap_once(&resp));
  ExpectRewrapped(resp.results(0), "x", d, Rcp::kCertPem, v1::CMS_ENVELOPED, secret, k,
                  v1::OAEP_SHA256);
}

// --------------------------------------------------------------------------------------
// Rewrap: every output format and recipient form
// --------------------------------------------------------------------------------------

TEST_F(ApiTest, EveryFormatEveryRecipientEveryPadding) {
  const Device& d = Dev();
  const ServiceKey& k = Pkcs1Key();
  ASSERT_NE(k.pub, nullptr);
  v1::RewrapRequest req;
  std::vector<std::string> secrets;
  std::vector<Rcp> rcps;
  std::vector<v1::Padding> pads(std::begin(kOaepPaddings), std::end(kOaepPaddings));
  pads.push_back(v1::PKCS1);
  for (v1::Padding p : pads) {
    for (v1::OutputFormat f : kFormats) {
      for (Rcp r : kRecipients) {
        // 32..64 bytes: fits every padding and output format of a 2048-bit key.
        secrets.push_back(RandomBytes(32 + secrets.size() % 33));
        rcps.push_back(r);
        AddItem(&req, std::string(PaddingName(p)) + ">" + FormatName(f) + ">" + RcpName(r), k.name,
                p, Seal(k, p, secrets.back()), d, r, f);
      }
    }
  }
  v1::RewrapResponse resp;
  ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, req, &resp));
  std::map<std::string, std::set<std::string>> seen;  // padding>format -> paths
  for (int i = 0; i < resp.results_size(); ++i) {
    const auto& item = req.items(i);
    const size_t ui = static_cast<size_t>(i);
    ExpectRewrapped(resp.results(i), item.id(), d, rcps[ui], item.format(), secrets[ui], k,
                    item.padding());
    seen[std::string(PaddingName(item.padding())) + " -> " + FormatName(item.format())].insert(
        PathName(resp.results(i).path()));
  }
  printf("[paths] %s: padding -> format : paths seen\n", TokenName(CurrentToken()));
  for (const auto& [what, paths] : seen) {
    std::string p;
    for (const auto& x : paths) p += " " + x;
    printf("[paths]   %-40s:%s\n", what.c_str(), p.c_str());
  }
}

TEST_F(ApiTest, NssBareRsaOutputsAreInToken) {
  if (!nss()) GTEST_SKIP() << "NSS softoken only: it unwraps and wraps OAEP in the token";
  const Device& d = Dev();
  const ServiceKey& k = MainKey();
  ASSERT_NE(k.pub, nullptr) << "no service key";
  v1::RewrapRequest req;
  for (v1::Padding p : kOaepPaddings) {
    for (v1::OutputFormat f :
         {v1::RSA_OAEP_SHA1, v1::RSA_OAEP_SHA256, v1::RSA_OAEP_SHA384, v1::RSA_OAEP_SHA512}) {
      AddItem(&req, std::string(PaddingName(p)) + ">" + FormatName(f), k.name, p,
              Seal(k, p, RandomBytes(32)), d, Rcp::kSpkiDer, f);
    }
  }
  v1::RewrapResponse resp;
  ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, req, &resp));
  for (int i = 0; i < resp.results_size(); ++i) {
    EXPECT_FALSE(resp.results(i).has_error())
        << req.items(i).id() << ": " << resp.results(i).error().message();
    EXPECT_EQ(resp.results(i).path(), v1::IN_TOKEN)
        << req.items(i).id() << ": got " << PathName(resp.results(i).path());
  }
}

// A secret too long for the recipient is INVALID_ITEM with one message on every
// path (IN_TOKEN on NSS for OAEP outputs, TOKEN_DECRYPT elsewhere) and token, never
// DECRYPT_FAILED; one byte shorter rewraps, and says on which path.
TEST_F(ApiTest, SecretTooLongForTheRecipientIsInvalidOnEveryPath) {
  const Device& d = Dev();
  const ServiceKey& k = Key("it-3072", false, 3072);  // OAEP-SHA1 seals up to 318 bytes
  ASSERT_NE(k.pub, nullptr) << "no service key";
  struct Out {
    v1::OutputFormat format;
    size_t max;  // longest secret to a 2048-bit device key
  };
  const Out outs[] = {
      {v1::RSA_OAEP_SHA1, 256 - 42}, {v1::RSA_OAEP_SHA256, 256 - 66}, {v1::RSA_PKCS1, 256 - 11}};
  v1::RewrapRequest req;
  std::vector<std::string> fits;
  for (const Out& o : outs) {
    fits.push_back(RandomAscii(o.max));
    AddItem(&req, std::string("fits-") + FormatName(o.format), k.name, v1::OAEP_SHA1,
            Seal(k, v1::OAEP_SHA1, fits.back()), d, Rcp::kSpkiDer, o.format);
    AddItem(&req, std::string("long-") + FormatName(o.format), k.name, v1::OAEP_SHA1,
            Seal(k, v1::OAEP_SHA1, RandomAscii(o.max + 1)), d, Rcp::kSpkiDer, o.format);
  }
  v1::RewrapResponse resp;
  ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, req, &resp));
  std::set<int> paths;
  for (size_t i = 0; i < std::size(outs); ++i) {
    const auto& ok = resp.results(static_cast<int>(2 * i));
    const auto& bad = resp.results(static_cast<int>(2 * i + 1));
    ExpectRewrapped(ok, req.items(static_cast<int>(2 * i)).id(), d, Rcp::kSpkiDer, outs[i].format,
                    fits[i], k, v1::OAEP_SHA1);
    paths.insert(ok.path());
    printf("[api] %s: a secret of the maximum length went %s\n", FormatName(outs[i].format),
           PathName(ok.path()));
    ASSERT_TRUE(bad.has_error()) << bad.id();
    EXPECT_EQ(bad.error().code(), v1::ItemError::INVALID_ITEM)
        << bad.id() << ": " << CodeName(bad.error().code());
    EXPECT_EQ(bad.error().message(),
              "the unsealed secret is too long for the recipient key with this output format")
        << bad.id();
  }
  if (nss()) {
    EXPECT_TRUE(paths.count(v1::IN_TOKEN)) << "NSS rewraps OAEP outputs in the token";
  }
}

// --------------------------------------------------------------------------------------
// Bad input: each bad item fails alone, with its own code and message
// --------------------------------------------------------------------------------------

TEST_F(ApiTest, BadItemsFailAloneInOneBatch) {
  const Device& d = Dev();
  const Device& small = SmallDev();
  const ServiceKey& k = MainKey();
  ASSERT_NE(k.pub, nullptr) << "no service key";
  ServiceKey disabled;
  ASSERT_NO_FATAL_FAILURE(CreateServiceKey(h_, UniqueName("disabled"), 2048, false, &disabled));
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::DisableKeyRequest dr;
    dr.set_name(disabled.name);
    v1::KeyInfo info;
    ASSERT_TRUE(h_->keys().DisableKey(&ctx, dr, &info).ok());
  }
  struct Expect {
    enum Kind { kGood, kError, kDuplicate } kind;
    v1::ItemError::Code code = v1::ItemError::CODE_UNSPECIFIED;
    std::vector<std::string> words;  // the message must contain one (case-insensitive)
    std::string secret;
    Rcp rcp = Rcp::kCertDer;
    std::vector<v1::ItemError::Code> also_ok;  // other acceptable codes
  };
  v1::RewrapRequest req;
  std::vector<Expect> want;
  auto good = [&](const std::string& id, v1::Padding p, v1::OutputFormat f, Rcp r) {
    Expect e{Expect::kGood};
    e.secret = RandomAscii(24);
    e.rcp = r;
    AddItem(&req, id, k.name, p, Seal(k, p, e.secret), d, r, f);
    want.push_back(e);
  };
  auto bad = [&](v1::ItemError::Code code, std::vector<std::string> words) {
    Expect e{Expect::kError};
    e.code = code;
    e.words = std::move(words);
    want.push_back(e);
    return req.add_items();
  };
  auto fill = [&](v1::RewrapItem* it, const std::string& id) {
    it->set_id(id);
    it->set_key_name(k.name);
    it->set_padding(v1::OAEP_SHA256);
    it->set_ciphertext(Seal(k, v1::OAEP_SHA256, RandomAscii(24)));
    SetRecipient(it, d, Rcp::kCertDer);
    it->set_format(v1::CMS_ENVELOPED);
    return it;
  };
  const std::vector<std::string> kLen = {"length", "modulus", "size", "bytes", "empty"};
  const std::vector<std::string> kRecip = {"recipient",  "certificate", "public key",
                                           "public_key", "parse",       "spki"};

  good("good-1", v1::OAEP_SHA256, v1::CMS_ENVELOPED, Rcp::kCertDer);
  fill(bad(v1::ItemError::INVALID_ITEM, kLen), "ct-short")->mutable_ciphertext()->pop_back();
  fill(bad(v1::ItemError::INVALID_ITEM, kLen), "ct-long")->mutable_ciphertext()->push_back('\0');
  fill(bad(v1::ItemError::INVALID_ITEM, kLen), "ct-empty")->clear_ciphertext();
  good("good-2", v1::OAEP_SHA1, v1::RSA_OAEP_SHA256, Rcp::kSpkiPem);
  fill(bad(v1::ItemError::INVALID_ITEM, kRecip), "cert-garbage")
      ->mutable_recipient()
      ->set_certificate("this is not a certificate");
  fill(bad(v1::ItemError::INVALID_ITEM, kRecip), "cert-truncated")
      ->mutable_recipient()
      ->set_certificate(d.cert_der.substr(0, d.cert_der.size() / 2));
  fill(bad(v1::ItemError::INVALID_ITEM, kRecip), "spki-garbage")
      ->mutable_recipient()
      ->set_public_key(RandomBytes(100));
  fill(bad(v1::ItemError::INVALID_ITEM, kRecip), "spki-bad-pem")
      ->mutable_recipient()
      ->set_public_key("-----BEGIN PUBLIC KEY-----\nAAAAAAAA\n-----END PUBLIC KEY-----\n");
  fill(bad(v1::ItemError::INVALID_ITEM, kRecip), "spki-is-cert")
      ->mutable_recipient()
      ->set_public_key(d.cert_der);
  fill(bad(v1::ItemError::INVALID_ITEM, {"recipient"}), "no-recipient")->clear_recipient();
  fill(bad(v1::ItemError::INVALID_ITEM, {"2048", "small", "short", "weak"}), "device-1024-cert")
      ->mutable_recipient()
      ->set_certificate(small.cert_der);
  fill(bad(v1::ItemError::INVALID_ITEM, {"2048", "small", "short", "weak"}), "device-1024-spki")
      ->mutable_recipient()
      ->set_public_key(small.spki_pem);
  good("good-3", v1::OAEP_SHA512, v1::RSA_PKCS1, Rcp::kCertPem);
  fill(bad(v1::ItemError::INVALID_ITEM, {"padding"}), "padding-99")
      ->set_padding(static_cast<v1::Padding>(99));
  fill(bad(v1::ItemError::INVALID_ITEM, {"padding"}), "padding-unspecified")
      ->set_padding(v1::PADDING_UNSPECIFIED);
  fill(bad(v1::ItemError::INVALID_ITEM, {"format"}), "format-99")
      ->set_format(static_cast<v1::OutputFormat>(99));
  fill(bad(v1::ItemError::INVALID_ITEM, {"id"}), "");
  good("dup", v1::OAEP_SHA384, v1::CMS_ENVELOPED_PKCS1, Rcp::kSpkiDer);
  {
    // A second item with the same id: it (and possibly the first) fails as a duplicate.
    Expect e{Expect::kDuplicate};
    e.code = v1::ItemError::INVALID_ITEM;
    e.words = {"duplicate", "more than once", "unique"};
    want.push_back(e);
    fill(req.add_items(), "dup");
  }
  fill(bad(v1::ItemError::KEY_NOT_FOUND, {}), "unknown-key")->set_key_name("no-such-key");
  fill(bad(v1::ItemError::KEY_DISABLED, {}), "disabled-key")->set_key_name(disabled.name);
  {
    v1::RewrapItem* it = fill(bad(v1::ItemError::UNSUPPORTED, {}), "pkcs1-not-allowed");
    it->set_padding(v1::PKCS1);
    it->set_ciphertext(Seal(k, v1::PKCS1, RandomAscii(24)));
  }
  {
    v1::RewrapItem* it = fill(bad(v1::ItemError::DECRYPT_FAILED, {}), "tampered");
    (*it->mutable_ciphertext())[100] ^= 0x01;
  }
  {
    v1::RewrapItem* it = fill(bad(v1::ItemError::KEY_NOT_FOUND, {}), "rotation-to-unknown-key");
    want.back().also_ok = {v1::ItemError::INVALID_ITEM};
    it->mutable_recipient()->set_service_key("no-such-key");
    it->set_format(v1::RSA_OAEP_SHA256);
  }
  good("good-4", v1::OAEP_SHA256, v1::RSA_OAEP_SHA512, Rcp::kSpkiDer);

  ASSERT_EQ(static_cast<size_t>(req.items_size()), want.size());
  v1::RewrapResponse resp;
  ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, req, &resp));
  std::string decrypt_failed_message;
  for (int i = 0; i < resp.results_size(); ++i) {
    const auto& item = req.items(i);
    const auto& r = resp.results(i);
    const Expect& e = want[static_cast<size_t>(i)];
    SCOPED_TRACE("item #" + std::to_string(i) + " id '" + item.id() + "'");
    EXPECT_EQ(r.id(), item.id()) << "results out of order";
    if (e.kind == Expect::kGood) {
      const bool first_dup_rejected =
          item.id() == "dup" && r.has_error() && r.error().code() == v1::ItemError::INVALID_ITEM;
      if (!first_dup_rejected) {
        ExpectRewrapped(r, item.id(), d, e.rcp, item.format(), e.secret, k, item.padding());
      }
      continue;
    }
    ASSERT_TRUE(r.has_error()) << "should have failed, succeeded with path " << PathName(r.path());
    const bool code_ok =
        r.error().code() == e.code ||
        std::find(e.also_ok.begin(), e.also_ok.end(), r.error().code()) != e.also_ok.end();
    EXPECT_TRUE(code_ok) << "got " << CodeName(r.error().code()) << " \"" << r.error().message()
                         << "\", want " << CodeName(e.code);
    EXPECT_FALSE(r.error().message().empty());
    EXPECT_TRUE(r.ciphertext().empty());
    if (!e.words.empty()) {
      EXPECT_TRUE(ContainsAny(r.error().message(), e.words))
          << "message \"" << r.error().message()
          << "\" does not say what is wrong (expected one of " << Join(e.words) << ")";
    }
    if (e.code == v1::ItemError::DECRYPT_FAILED) {
      decrypt_failed_message = r.error().message();
    } else {
      // Rejected before any token call.
      EXPECT_EQ(r.path(), v1::PATH_UNSPECIFIED)
          << "a path was reported for an item rejected up front";
    }
    printf("[bad-input] %-26s -> %s \"%s\"\n", item.id().empty() ? "(empty id)" : item.id().c_str(),
           CodeName(r.error().code()), r.error().message().c_str());
  }
  // No INVALID_ITEM message may equal the DECRYPT_FAILED text.
  for (const auto& r : resp.results()) {
    if (r.error().code() == v1::ItemError::INVALID_ITEM) {
      EXPECT_NE(r.error().message(), decrypt_failed_message);
    }
  }
}

TEST_F(ApiTest, EmptyBatchIsInvalidArgument) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::RewrapRequest req;
  v1::RewrapResponse resp;
  grpc::Status s = h_->rewrap().Rewrap(&ctx, req, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << StatusText(s);
  EXPECT_TRUE(ContainsAny(s.error_message(), {"empty", "no items", "at least"}))
      << "unclear message: " << s.error_message();
}

TEST_F(ApiTest, BatchLimitOf1000Items) {
  const Device& d = Dev();
  const ServiceKey& k = MainKey();
  ASSERT_NE(k.pub, nullptr) << "no service key";
  // 1000 items are accepted: 20 real ones, the rest fail cheaply (unknown key).
  v1::RewrapRequest req;
  std::vector<std::string> secrets;
  for (int i = 0; i < 1000; ++i) {
    if (i % 50 == 0) {
      secrets.push_back(RandomAscii(16));
      AddItem(&req, "i" + std::to_string(i), k.name, v1::OAEP_SHA1,
              Seal(k, v1::OAEP_SHA1, secrets.back()), d, Rcp::kSpkiDer, v1::RSA_OAEP_SHA256);
    } else {
      AddItem(&req, "i" + std::to_string(i), "no-such-key", v1::OAEP_SHA256,
              std::string(256, '\x01'), d, Rcp::kSpkiDer, v1::RSA_OAEP_SHA256);
    }
  }
  {
    v1::RewrapResponse resp;
    ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, req, &resp));
    size_t s = 0;
    for (int i = 0; i < 1000; ++i) {
      if (i % 50 == 0) {
        ExpectRewrapped(resp.results(i), "i" + std::to_string(i), d, Rcp::kSpkiDer,
                        v1::RSA_OAEP_SHA256, secrets[s++], k, v1::OAEP_SHA1);
      } else {
        ExpectItemError(resp.results(i), "i" + std::to_string(i), v1::ItemError::KEY_NOT_FOUND);
      }
    }
  }
  // 1001 items: the whole call is refused with a clear message.
  *req.add_items() = req.items(1);
  req.mutable_items(1000)->set_id("i1000");
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::RewrapResponse resp;
  grpc::Status s = h_->rewrap().Rewrap(&ctx, req, &resp);
  EXPECT_TRUE(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
              s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED)
      << StatusText(s);
  EXPECT_TRUE(ContainsAny(s.error_message(), {"1000", "batch", "items", "too many"}))
      << "unclear message: " << s.error_message();
  EXPECT_EQ(resp.results_size(), 0);
}

// --------------------------------------------------------------------------------------
// Rotation
// --------------------------------------------------------------------------------------

TEST_F(ApiTest, RotationThroughServiceKeyRecipient) {
  const Device& d = Dev();
  ServiceKey a, b;
  ASSERT_NO_FATAL_FAILURE(CreateServiceKey(h_, UniqueName("rotate-a"), 2048, false, &a));
  ASSERT_NO_FATAL_FAILURE(CreateServiceKey(h_, UniqueName("rotate-b"), 3072, false, &b));
  struct Case {
    v1::Padding from;
    v1::OutputFormat format;  // for the service_key recipient
    v1::Padding then;         // how B reads it
  };
  const Case cases[] = {{v1::OAEP_SHA256, v1::RSA_OAEP_SHA256, v1::OAEP_SHA256},
                        {v1::OAEP_SHA512, v1::RSA_OAEP_SHA1, v1::OAEP_SHA1},
                        {v1::OAEP_SHA1, v1::RSA_OAEP_SHA384, v1::OAEP_SHA384},
                        // CMS_ENVELOPED (the default) means RSA_OAEP_SHA512 for service keys.
                        {v1::OAEP_SHA256, v1::CMS_ENVELOPED, v1::OAEP_SHA512}};
  v1::RewrapRequest step1;
  std::vector<std::string> secrets;
  for (const Case& c : cases) {
    secrets.push_back(RandomAscii(30));
    v1::RewrapItem* it = step1.add_items();
    it->set_id(std::string("a>b ") + PaddingName(c.from) + " " + FormatName(c.format));
    it->set_key_name(a.name);
    it->set_padding(c.from);
    it->set_ciphertext(Seal(a, c.from, secrets.back()));
    it->mutable_recipient()->set_service_key(b.name);
    it->set_format(c.format);
  }
  v1::RewrapResponse r1;
  ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, step1, &r1));
  v1::RewrapRequest step2;
  for (size_t i = 0; i < std::size(cases); ++i) {
    const auto& r = r1.results(static_cast<int>(i));
    ASSERT_FALSE(r.has_error()) << step1.items(static_cast<int>(i)).id() << ": "
                                << CodeName(r.error().code()) << " " << r.error().message();
    EXPECT_EQ(r.ciphertext().size(), b.modulus_len) << "rotation output must be bare RSA for B";
    EXPECT_EQ(a.PathsFor(cases[i].from).count(r.path()), 1u) << PathName(r.path());
    // The rotated ciphertext is B's: OpenSSL can't check it (no private key), B can.
    AddItem(&step2, "b>device " + std::to_string(i), b.name, cases[i].then, r.ciphertext(), d,
            Rcp::kCertDer, v1::CMS_ENVELOPED);
  }
  v1::RewrapResponse r2;
  ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, step2, &r2));
  for (size_t i = 0; i < std::size(cases); ++i) {
    ExpectRewrapped(r2.results(static_cast<int>(i)), step2.items(static_cast<int>(i)).id(), d,
                    Rcp::kCertDer, v1::CMS_ENVELOPED, secrets[i], b, cases[i].then);
  }
}

// --------------------------------------------------------------------------------------
// Uniform decryption failures (no padding oracle)
// --------------------------------------------------------------------------------------

TEST_F(ApiTest, DecryptFailedIsUniform) {
  const Device& d = Dev();
  const ServiceKey& p1 = Pkcs1Key();
  ASSERT_NE(p1.pub, nullptr) << "no service key";
  const ServiceKey& k = MainKey();
  ASSERT_NE(k.pub, nullptr) << "no service key";
  ServiceKey other;
  ASSERT_NO_FATAL_FAILURE(CreateServiceKey(h_, UniqueName("other"), 2048, true, &other));
  v1::RewrapRequest req;
  std::vector<bool> expect_fail;
  auto add = [&](const std::string& id, const ServiceKey& key, v1::Padding p, std::string ct,
                 v1::OutputFormat f, bool fail) {
    AddItem(&req, id, key.name, p, ct, d, Rcp::kSpkiDer, f);
    expect_fail.push_back(fail);
  };
  auto tamper = [](std::string ct, size_t at) {
    ct[at % ct.size()] ^= 0x40;
    return ct;
  };
  const std::string secret = RandomAscii(24);
  for (const ServiceKey* key : {&p1, &k}) {
    const std::string tag = key == &p1 ? "pkcs1-key " : "oaep-key ";
    for (v1::Padding p : kOaepPaddings) {
      for (size_t at : {0u, 1u, 128u, 255u}) {
        for (v1::OutputFormat f : {v1::RSA_OAEP_SHA256, v1::CMS_ENVELOPED}) {
          add(tag + "tampered " + PaddingName(p) + " @" + std::to_string(at) + " " + FormatName(f),
              *key, p, tamper(Seal(*key, p, secret), at), f, true);
        }
      }
      add(tag + "wrong key " + PaddingName(p), *key, p, Seal(other, p, secret), v1::CMS_ENVELOPED,
          true);
    }
    add(tag + "OAEP-SHA256 read as OAEP-SHA1", *key, v1::OAEP_SHA1,
        Seal(*key, v1::OAEP_SHA256, secret), v1::RSA_OAEP_SHA256, true);
    add(tag + "OAEP-SHA1 read as OAEP-SHA512", *key, v1::OAEP_SHA512,
        Seal(*key, v1::OAEP_SHA1, secret), v1::RSA_OAEP_SHA256, true);
    add(tag + "random < n", *key, v1::OAEP_SHA256, std::string(1, '\0') + RandomBytes(255),
        v1::RSA_OAEP_SHA256, true);
    add(tag + "all 0xff (>= n)", *key, v1::OAEP_SHA256, std::string(256, '\xff'),
        v1::RSA_OAEP_SHA256, true);
    add(tag + "good", *key, v1::OAEP_SHA256, Seal(*key, v1::OAEP_SHA256, secret),
        v1::RSA_OAEP_SHA256, false);
  }
  // PKCS#1 v1.5 on the key that allows it.
  for (size_t at : {0u, 1u, 2u, 128u, 255u}) {
    add("pkcs1 tampered @" + std::to_string(at), p1, v1::PKCS1,
        tamper(Seal(p1, v1::PKCS1, secret), at), v1::RSA_OAEP_SHA256, true);
  }
  add("pkcs1 wrong key", p1, v1::PKCS1, Seal(other, v1::PKCS1, secret), v1::CMS_ENVELOPED, true);
  add("OAEP-SHA256 read as PKCS1", p1, v1::PKCS1, Seal(p1, v1::OAEP_SHA256, secret),
      v1::RSA_OAEP_SHA256, true);
  add("PKCS1 read as OAEP-SHA256", p1, v1::OAEP_SHA256, Seal(p1, v1::PKCS1, secret),
      v1::RSA_OAEP_SHA256, true);
  add("pkcs1 random < n", p1, v1::PKCS1, std::string(1, '\0') + RandomBytes(255),
      v1::RSA_OAEP_SHA256, true);
  add("pkcs1 good", p1, v1::PKCS1, Seal(p1, v1::PKCS1, secret), v1::RSA_OAEP_SHA256, false);

  // A token with PKCS#1 implicit rejection (ListKeys says so; NSS softoken) answers an
  // invalid PKCS#1 ciphertext with a deterministic pseudo-random secret instead of an error:
  // such an item may be rewrapped, but never to the secret, and the same ciphertext must
  // give the same secret in both rounds (or DECRYPT_FAILED in both). Never for OAEP.
  const bool implicit_rejection = p1.info.pkcs1_implicit_rejection();
  printf("[decrypt-failed] key %s: pkcs1_implicit_rejection=%s\n", p1.name.c_str(),
         implicit_rejection ? "true" : "false");
  std::map<std::string, std::string> outcome[2];  // round -> item id -> "F" or "P:" + plaintext
  int implicit_rejections = 0;
  std::map<std::string, std::vector<std::string>> messages;  // message -> item ids
  std::set<size_t> sizes;  // serialized size of each DECRYPT_FAILED result, id excluded
  for (int round = 0; round < 2; ++round) {
    v1::RewrapResponse resp;
    ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, req, &resp));
    for (int i = 0; i < resp.results_size(); ++i) {
      const auto& r = resp.results(i);
      const auto& item = req.items(i);
      if (!expect_fail[static_cast<size_t>(i)]) {
        const ServiceKey& key = item.key_name() == p1.name ? p1 : k;
        ExpectRewrapped(r, item.id(), d, Rcp::kSpkiDer, item.format(), secret, key, item.padding());
        continue;
      }
      EXPECT_EQ(r.id(), item.id());
      const bool may_implicitly_reject =
          implicit_rejection && item.padding() == v1::PKCS1 && item.key_name() == p1.name;
      if (may_implicitly_reject) {
        if (r.has_error() && r.error().code() == v1::ItemError::INVALID_ITEM &&
            r.error().message().find("too long for the recipient") != std::string::npos) {
          // The pseudo-random secret did not fit the output, as a real one of that length
          // would not: the same answer as on the host path.
          outcome[round][item.id()] = "L";
          continue;
        }
        if (r.has_error()) {
          outcome[round][item.id()] = "F";
        } else {
          std::string why;
          auto pt = DecryptOutput(d, item.format(), false, r.ciphertext(), &why);
          if (!pt) {
            ADD_FAILURE() << item.id() << ": implicit rejection output does not decrypt: " << why;
          } else {
            EXPECT_NE(*pt, secret) << item.id() << ": a bad PKCS#1 ciphertext gave the secret";
            outcome[round][item.id()] = "P:" + *pt;
            ++implicit_rejections;
          }
          EXPECT_EQ(p1.PathsFor(v1::PKCS1).count(r.path()), 1u)
              << item.id() << ": path " << PathName(r.path()) << " not advertised";
          continue;
        }
      }
      if (!r.has_error()) {
        std::string why;
        auto pt = DecryptOutput(d, item.format(), false, r.ciphertext(), &why);
        ADD_FAILURE() << item.id() << ": a bad ciphertext was rewrapped instead of DECRYPT_FAILED "
                      << "(path " << PathName(r.path()) << "; the device got "
                      << (pt ? std::to_string(pt->size()) + " bytes" +
                                   (*pt == secret ? " = the secret"
                                                  : " != the secret: implicit rejection?")
                             : "nothing decryptable: " + why)
                      << ")";
        continue;
      }
      EXPECT_EQ(r.error().code(), v1::ItemError::DECRYPT_FAILED)
          << item.id() << ": " << CodeName(r.error().code()) << " \"" << r.error().message()
          << "\"";
      EXPECT_TRUE(r.ciphertext().empty());
      messages[r.error().message()].push_back(item.id());
      // The same bytes on the wire, whatever the cause: the serialized result minus its id.
      sizes.insert(r.ByteSizeLong() - r.id().size());
    }
  }
  for (const auto& [id, first] : outcome[0]) {
    auto it = outcome[1].find(id);
    EXPECT_TRUE(it != outcome[1].end() && it->second == first)
        << id << ": implicit rejection is not deterministic (round 1: "
        << (first == "F" ? "DECRYPT_FAILED" : "rewrapped") << ", round 2: "
        << (it == outcome[1].end() ? "missing"
            : it->second == "F"    ? "DECRYPT_FAILED"
            : it->second == first  ? "same"
                                   : "a different secret")
        << ")";
  }
  EXPECT_EQ(outcome[0].size(), outcome[1].size());
  printf("[decrypt-failed] %d PKCS#1 items rewrapped by implicit rejection (2 rounds)\n",
         implicit_rejections);
  EXPECT_EQ(messages.size(), 1u) << "DECRYPT_FAILED messages differ";
  EXPECT_EQ(sizes.size(), 1u) << "DECRYPT_FAILED results differ in size";
  for (const auto& [m, ids] : messages) {
    printf("[decrypt-failed] %zu items: \"%s\"\n", ids.size(), m.c_str());
    if (messages.size() > 1) {
      for (const auto& id : ids) printf("    %s\n", id.c_str());
    }
  }
}

// --------------------------------------------------------------------------------------
// RewrapStream and concurrency
// --------------------------------------------------------------------------------------

TEST_F(ApiTest, RewrapStreamSeveralBatches) {
  const Device& d = Dev();
  const ServiceKey& k = MainKey();
  ASSERT_NE(k.pub, nullptr) << "no service key";
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  auto stream = h_->rewrap().RewrapStream(&ctx);
  ASSERT_NE(stream, nullptr);
  const int kBatches = 6;
  std::vector<v1::RewrapRequest> reqs(kBatches);
  std::vector<std::vector<std::string>> secrets(kBatches);
  for (int b = 0; b < kBatches; ++b) {
    for (int i = 0; i < 4 + b; ++i) {
      const v1::Padding p = kOaepPaddings[static_cast<size_t>(i) % 4];
      secrets[static_cast<size_t>(b)].push_back(RandomAscii(20));
      AddItem(&reqs[static_cast<size_t>(b)], "b" + std::to_string(b) + "i" + std::to_string(i),
              k.name, p, Seal(k, p, secrets[static_cast<size_t>(b)].back()), d, Rcp::kCertDer,
              b % 2 ? v1::CMS_ENVELOPED : v1::RSA_OAEP_SHA256);
    }
  }
  auto check = [&](int b, const v1::RewrapResponse& resp) {
    const auto& req = reqs[static_cast<size_t>(b)];
    ASSERT_EQ(resp.results_size(), req.items_size()) << "batch " << b;
    for (int i = 0; i < req.items_size(); ++i) {
      ExpectRewrapped(resp.results(i), req.items(i).id(), d, Rcp::kCertDer, req.items(i).format(),
                      secrets[static_cast<size_t>(b)][static_cast<size_t>(i)], k,
                      req.items(i).padding());
    }
  };
  // Three batches in lock-step, then three written before any is read.
  for (int b = 0; b < 3; ++b) {
    ASSERT_TRUE(stream->Write(reqs[static_cast<size_t>(b)])) << "write batch " << b;
    v1::RewrapResponse resp;
    ASSERT_TRUE(stream->Read(&resp)) << "no response to batch " << b;
    ASSERT_NO_FATAL_FAILURE(check(b, resp));
  }
  for (int b = 3; b < kBatches; ++b) {
    ASSERT_TRUE(stream->Write(reqs[static_cast<size_t>(b)])) << "write batch " << b;
  }
  for (int b = 3; b < kBatches; ++b) {
    v1::RewrapResponse resp;
    ASSERT_TRUE(stream->Read(&resp)) << "no response to batch " << b;
    ASSERT_NO_FATAL_FAILURE(check(b, resp));
  }
  stream->WritesDone();
  v1::RewrapResponse extra;
  EXPECT_FALSE(stream->Read(&extra)) << "more responses than requests";
  grpc::Status s = stream->Finish();
  EXPECT_TRUE(s.ok()) << StatusText(s);
}

TEST_F(ApiTest, ConcurrentCallsAllCorrect) {
  const Device& d = Dev();
  const ServiceKey& k = MainKey();
  ASSERT_NE(k.pub, nullptr);
  const int kThreads = 4, kCalls = 3, kItems = 12;
  std::atomic<int> bad{0};
  std::vector<std::string> errors(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int c = 0; c < kCalls; ++c) {
        v1::RewrapRequest req;
        std::vector<std::string> secrets;
        for (int i = 0; i < kItems; ++i) {
          const v1::Padding p = kOaepPaddings[static_cast<size_t>(i + t) % 4];
          secrets.push_back(RandomAscii(16));
          auto ct = RsaEncrypt(k.pub.get(), PadOf(p), secrets.back());
          AddItem(&req, std::to_string(t) + "." + std::to_string(c) + "." + std::to_string(i),
                  k.name, p, ct.value_or(""), d, Rcp::kSpkiDer, v1::RSA_OAEP_SHA256);
        }
        grpc::ClientContext ctx;
        SetDeadline(&ctx);
        v1::RewrapResponse resp;
        grpc::Status s = h_->rewrap().Rewrap(&ctx, req, &resp);
        if (!s.ok() || resp.results_size() != kItems) {
          ++bad;
          errors[static_cast<size_t>(t)] += "call failed: " + StatusText(s) + "\n";
          continue;
        }
        for (int i = 0; i < kItems; ++i) {
          const auto& r = resp.results(i);
          std::string why;
          auto pt = r.has_error()
                        ? std::nullopt
                        : DecryptOutput(d, v1::RSA_OAEP_SHA256, false, r.ciphertext(), &why);
          if (r.id() != req.items(i).id() || !pt || *pt != secrets[static_cast<size_t>(i)]) {
            ++bad;
            errors[static_cast<size_t>(t)] +=
                req.items(i).id() + " wrong: " + r.error().message() + why + "\n";
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  std::string all;
  for (const auto& e : errors) all += e;
  EXPECT_EQ(bad.load(), 0) << all;
}

}  // namespace
}  // namespace hsmrewrap::it
