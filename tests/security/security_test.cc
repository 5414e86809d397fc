// Security of rewrapd: mTLS identities, the policy (identities x RPCs x keys x
// recipients), rate limits, SIGHUP reload, the audit trail and its fail-closed behaviour.
// One rewrapd (SoftHSM2 embedded default, mTLS, policy, audit log) serves the matrix; the
// fail-closed and transport checks start their own.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "grpc/health/v1/health.grpc.pb.h"
#include "hsmrewrap/v1/rewrap.grpc.pb.h"
#include "tests/integration/test_crypto.h"
#include "tests/security/pki.h"
#include "tests/security/token_session.h"
#include "tests/support/command.h"
#include "tests/support/files.h"
#include "tests/support/rewrapd_harness.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tokens.h"

namespace hsmrewrap::sec {
namespace {

namespace v1 = ::hsmrewrap::v1;
using test::RewrapdHarness;

std::string Base64(const std::string& b) {
  static const char k[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < b.size(); i += 3) {
    uint32_t v = (uint8_t(b[i]) << 16) | (uint8_t(b[i + 1]) << 8) | uint8_t(b[i + 2]);
    out += {k[v >> 18], k[(v >> 12) & 63], k[(v >> 6) & 63], k[v & 63]};
  }
  return out;  // the full 3-byte groups are enough to find a leak
}

// Everything the tests share: the PKI, the policy and the one rewrapd.
struct World {
  test::TempDir dir{"hsmrewrap-sec"};
  Issued ca = MakeCa("hsm-rewrap test CA");  // signs the server and the clients
  Issued other_ca = MakeCa("some other CA");
  Issued device_ca = MakeCa("device CA");
  Issued server, connector, rawkeys, reader, admin, limited, failing, stranger, impostor;
  Issued dev_good, dev_expired, dev_wrong_ca, dev_pinned;  // RSA device certificates
  // CN = the connector's SPIFFE ID, no URI SAN; CN of one entry and URI SAN of another.
  Issued spiffe_cn, two_entries;
  // The "eku" entry's client, and device certificates with keyEncipherment and an EKU.
  Issued eku_client, dev_email, dev_tls_client, dev_any_eku;
  std::unique_ptr<RewrapdHarness> h;
  std::map<std::string, it::Pkey> service_pub;  // key name -> public key
  std::string error;

  std::string Path(const std::string& n) const { return dir.File(n); }

  std::string PolicyText(bool reader_may_rewrap) const {
    const std::string pinned = it::HexEncode(it::Sha256(dev_pinned.cert_der));
    return "clients:\n"
           "  - name: connector\n"
           "    identities: [\"spiffe://hsm-rewrap.test/connector\"]\n"
           "    rpcs: [rewrap]\n"
           "    keys: [default]\n"
           "    recipients:\n"
           "      ca_files: [" +
           Path("device-ca.pem") +
           "]\n"
           "      fingerprints: [\"" +
           pinned +
           "\"]\n"
           "  - name: rawkeys\n"
           "    identities: [rawkeys]\n"
           "    rpcs: [rewrap]\n"
           "    keys: [\"*\"]\n"
           "    recipients: {raw_public_keys: true, service_keys: [rot]}\n"
           "  - name: reader\n"
           "    identities: [reader]\n"
           "    rpcs: [keys.read" +
           std::string(reader_may_rewrap ? ", rewrap" : "") +
           "]\n"
           "    keys: [default]\n"
           "    recipients: {raw_public_keys: true}\n"
           "  - name: admin\n"
           "    identities: [\"cn:admin\"]\n"
           "    rpcs: [keys.read, keys.admin]\n"
           "    keys: [\"*\"]\n"
           "  - name: limited\n"
           "    identities: [limited]\n"
           "    rpcs: [rewrap]\n"
           "    keys: [default]\n"
           "    recipients: {raw_public_keys: true}\n"
           "    limits: {items_per_second: 0.001, burst: 5}\n"
           "  - name: failing\n"
           "    identities: [failing]\n"
           "    rpcs: [rewrap]\n"
           "    keys: [default]\n"
           "    recipients: {raw_public_keys: true}\n"
           "    limits: {decrypt_failures_per_hour: 3}\n"
           "  - name: eku\n"
           "    identities: [\"cn:eku-client\"]\n"
           "    rpcs: [rewrap]\n"
           "    keys: [default]\n"
           "    recipients:\n"
           "      ca_files: [" +
           Path("device-ca.pem") +
           "]\n"
           "      require_eku: [emailProtection]\n";
  }

  std::shared_ptr<grpc::Channel> Channel(const Issued* client) const {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = ca.cert_pem;
    if (client) {
      o.pem_cert_chain = client->cert_pem;
      o.pem_private_key = client->key_pem;
    }
    return grpc::CreateChannel(h->address(), grpc::SslCredentials(o));
  }

  bool Init() {
    const std::string tls = "TLS Web Client Authentication";
    server = Issue(ca, "rewrapd", {"IP:127.0.0.1", "DNS:localhost"}, KeyKind::kEc, "serverAuth");
    connector = Issue(ca, "connector-host", {"URI:spiffe://hsm-rewrap.test/connector"},
                      KeyKind::kEc, "clientAuth");
    rawkeys = Issue(ca, "rawkeys", {}, KeyKind::kEc, "clientAuth");
    reader = Issue(ca, "reader", {}, KeyKind::kEc, "clientAuth");
    admin = Issue(ca, "admin", {}, KeyKind::kEc, "clientAuth");
    limited = Issue(ca, "limited", {}, KeyKind::kEc, "clientAuth");
    failing = Issue(ca, "failing", {}, KeyKind::kEc, "clientAuth");
    stranger = Issue(ca, "stranger", {}, KeyKind::kEc, "clientAuth");
    impostor = Issue(other_ca, "admin", {}, KeyKind::kEc, "clientAuth");  // right CN, wrong CA
    spiffe_cn = Issue(ca, "spiffe://hsm-rewrap.test/connector", {}, KeyKind::kEc, "clientAuth");
    two_entries =
        Issue(ca, "reader", {"URI:spiffe://hsm-rewrap.test/connector"}, KeyKind::kEc, "clientAuth");
    eku_client = Issue(ca, "eku-client", {}, KeyKind::kEc, "clientAuth");
    const Extensions encipher{"critical,keyEncipherment"};
    dev_email = Issue(device_ca, "device-email", {}, KeyKind::kRsa2048, "emailProtection", -3600,
                      86400, encipher);
    dev_tls_client = Issue(device_ca, "device-tls-client", {}, KeyKind::kRsa2048, "clientAuth",
                           -3600, 86400, encipher);
    dev_any_eku = Issue(device_ca, "device-any-eku", {}, KeyKind::kRsa2048, "anyExtendedKeyUsage",
                        -3600, 86400, encipher);
    dev_good = Issue(device_ca, "device-good", {}, KeyKind::kRsa2048, "");
    dev_expired =
        Issue(device_ca, "device-expired", {}, KeyKind::kRsa2048, "", -86400L * 10, -86400L);
    dev_wrong_ca = Issue(other_ca, "device-wrong-ca", {}, KeyKind::kRsa2048, "");
    dev_pinned =
        Issue(other_ca, "device-pinned", {}, KeyKind::kRsa2048, "");  // not from the device CA
    bool ok = test::WriteFile(Path("ca.pem"), ca.cert_pem) &&
              test::WriteFile(Path("server.pem"), server.cert_pem) &&
              test::WriteFile(Path("server.key"), server.key_pem) &&
              test::WriteFile(Path("device-ca.pem"), device_ca.cert_pem) &&
              test::WriteFile(Path("policy.yaml"), PolicyText(false));
    if (!ok) {
      error = "cannot write the PKI files";
      return false;
    }
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = ca.cert_pem;
    o.pem_cert_chain = admin.cert_pem;
    o.pem_private_key = admin.key_pem;
    RewrapdHarness::Options opts;
    opts.extra_args = {"--tls-cert",  Path("server.pem"),  "--tls-key",   Path("server.key"),
                       "--client-ca", Path("ca.pem"),      "--policy",    Path("policy.yaml"),
                       "--audit-log", Path("audit.jsonl"), "--log-level", "debug"};
    opts.credentials = grpc::SslCredentials(o);
    h = RewrapdHarness::Start(test::TokenKind::kSoftHsm, &error, opts);
    if (!h) return false;
    // Keys: "default" (embedded), "other" and "rot" created by admin.
    for (const std::string name : {"other", "rot"}) {
      grpc::ClientContext ctx;
      test::SetDeadline(&ctx);
      v1::CreateKeyRequest req;
      req.set_name(name);
      v1::KeyInfo info;
      auto st = h->keys().CreateKey(&ctx, req, &info);
      if (!st.ok()) {
        error = "admin CreateKey " + name + ": " + st.error_message() + "\n" + h->StderrText();
        return false;
      }
    }
    for (const std::string name : {"default", "other", "rot"}) {
      grpc::ClientContext ctx;
      test::SetDeadline(&ctx);
      v1::GetPublicKeyRequest req;
      req.set_name(name);
      req.set_format(v1::DER_SPKI);
      v1::GetPublicKeyResponse resp;
      auto st = h->keys().GetPublicKey(&ctx, req, &resp);
      if (!st.ok()) {
        error = "GetPublicKey " + name + ": " + st.error_message();
        return false;
      }
      service_pub[name] = it::ParsePublicKey(resp.public_key());
    }
    return true;
  }

  std::string Seal(const std::string& key, const std::string& secret) const {
    return *it::RsaEncrypt(service_pub.at(key).get(), it::Pad::kOaepSha256, secret);
  }
};

World* g_world = nullptr;
bool g_world_tried = false;

World* GetWorld(std::string* error) {
  if (!g_world_tried) {
    g_world_tried = true;
    auto* w = new World();
    if (w->Init()) {
      g_world = w;
    } else {
      *error = w->error;
      delete w;
    }
  }
  if (!g_world && error->empty()) *error = "set-up failed earlier";
  return g_world;
}

// Stops the shared rewrapd after the last test (an unclean stop fails the run).
class StopWorld : public ::testing::Environment {
 public:
  void TearDown() override {
    if (g_world == nullptr) return;
    const std::string problem = g_world->h->Stop();
    if (!problem.empty()) ADD_FAILURE() << problem;
    delete g_world;
    g_world = nullptr;
  }
};
const auto* const g_stop_world = ::testing::AddGlobalTestEnvironment(new StopWorld());

// Audit records (JSON lines) whose `field` is `value`.
std::vector<nlohmann::json> AuditRecords(const std::string& path, const std::string& field,
                                         const std::string& value) {
  std::vector<nlohmann::json> out;
  std::istringstream in(test::ReadFileOrEmpty(path));
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.contains(field) && j[field] == value) out.push_back(j);
  }
  return out;
}

// The recipient rules for encryption use: device certificates from `device_ca`, with and
// without keyUsage, sub-CAs and the CA itself, rewrapped as CMS with the service key
// `service_pub` ("default") through `rewrap`. A refused one is INVALID_ITEM (with or
// without a policy) and the message names what is missing; an accepted one decrypts.
void CheckRecipientKeyUsage(
    const Issued& device_ca, EVP_PKEY* service_pub,
    const std::function<grpc::Status(const v1::RewrapRequest&, v1::RewrapResponse*)>& rewrap) {
  struct Case {
    std::string id;
    Issued cert;
    std::string refusal;  // words the refusal must contain; "" = accepted
  };
  auto issue = [&](const std::string& cn, KeyKind kind, const std::string& ku, bool is_ca) {
    return Issue(device_ca, cn, {}, kind, "", -3600, 86400, Extensions{ku, is_ca});
  };
  std::vector<Case> cases;
  cases.push_back({"rsa-no-key-usage", issue("d1", KeyKind::kRsa2048, "", false), ""});
  cases.push_back(
      {"rsa-key-encipherment",
       issue("d2", KeyKind::kRsa2048, "critical,digitalSignature,keyEncipherment", false), ""});
  cases.push_back(
      {"ec-key-agreement", issue("d3", KeyKind::kEc, "critical,keyAgreement", false), ""});
  cases.push_back({"ec-no-key-usage", issue("d4", KeyKind::kEc, "", false), ""});
  cases.push_back({"rsa-digital-signature-only",
                   issue("d5", KeyKind::kRsa2048, "critical,digitalSignature", false),
                   "keyEncipherment"});
  cases.push_back({"rsa-key-agreement-only",
                   issue("d6", KeyKind::kRsa2048, "critical,keyAgreement", false),
                   "keyEncipherment"});
  cases.push_back({"ec-digital-signature-only",
                   issue("d7", KeyKind::kEc, "critical,digitalSignature", false), "keyAgreement"});
  cases.push_back({"rsa-sub-ca",
                   issue("sub-ca", KeyKind::kRsa2048, "critical,keyCertSign,cRLSign", true),
                   "CA:TRUE"});
  cases.push_back(
      {"rsa-sub-ca-key-encipherment",
       issue("sub-ca-2", KeyKind::kRsa2048, "critical,keyEncipherment,keyCertSign", true),
       "CA:TRUE"});
  cases.push_back({"ec-sub-ca-no-key-usage", issue("sub-ca-3", KeyKind::kEc, "", true), "CA:TRUE"});
  const std::string secret = "key-usage-" + it::RandomAscii(12);
  v1::RewrapRequest req;
  auto add = [&](const std::string& id, const std::string& der) {
    v1::RewrapItem* item = req.add_items();
    item->set_id(id);
    item->set_key_name("default");
    item->set_padding(v1::OAEP_SHA256);
    item->set_ciphertext(*it::RsaEncrypt(service_pub, it::Pad::kOaepSha256, secret));
    item->set_format(v1::CMS_ENVELOPED);
    item->mutable_recipient()->set_certificate(der);
  };
  for (const Case& c : cases) add(c.id, c.cert.cert_der);
  add("the-device-ca-itself", device_ca.cert_der);
  v1::RewrapResponse resp;
  grpc::Status st = rewrap(req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(resp.results_size(), req.items_size());
  for (int i = 0; i < resp.results_size(); ++i) {
    const auto& r = resp.results(i);
    SCOPED_TRACE(r.id());
    const bool is_ca_itself = static_cast<size_t>(i) == cases.size();
    const std::string refusal = is_ca_itself ? "CA:TRUE" : cases[size_t(i)].refusal;
    if (refusal.empty()) {
      ASSERT_FALSE(r.has_error()) << r.error().message();
      const Case& c = cases[size_t(i)];
      it::CmsResult opened = it::CmsDecrypt(c.cert.key.get(), c.cert.cert.get(), r.ciphertext());
      EXPECT_TRUE(opened.ok) << opened.error;
      EXPECT_EQ(opened.plaintext, secret);
      continue;
    }
    EXPECT_EQ(r.error().code(), v1::ItemError::INVALID_ITEM) << r.error().message();
    EXPECT_NE(r.error().message().find(refusal), std::string::npos)
        << "the refusal does not name " << refusal << ": " << r.error().message();
    EXPECT_TRUE(r.ciphertext().empty());
    printf("[key-usage] %-28s -> %s \"%s\"\n", r.id().c_str(),
           v1::ItemError::Code_Name(r.error().code()).c_str(), r.error().message().c_str());
  }
}

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string skip = test::TokenUnavailableReason(test::TokenKind::kSoftHsm);
    if (!skip.empty()) GTEST_SKIP() << skip;
    std::string error;
    w_ = GetWorld(&error);
    ASSERT_NE(w_, nullptr) << error;
  }

  grpc::Status Rewrap(const Issued* who, const v1::RewrapRequest& req, v1::RewrapResponse* resp) {
    auto stub = v1::Rewrap::NewStub(w_->Channel(who));
    grpc::ClientContext ctx;
    test::SetDeadline(&ctx, std::chrono::seconds(60));
    return stub->Rewrap(&ctx, req, resp);
  }

  v1::RewrapItem Item(const std::string& id, const std::string& key, const std::string& secret) {
    v1::RewrapItem item;
    item.set_id(id);
    item.set_key_name(key);
    item.set_padding(v1::OAEP_SHA256);
    item.set_ciphertext(w_->Seal(key, secret));
    item.set_format(v1::RSA_OAEP_SHA256);
    item.mutable_recipient()->set_public_key(it::SpkiDer(w_->dev_good.key.get()));
    return item;
  }

  World* w_ = nullptr;
};

// The identities x RPCs x keys x recipients matrix against what the policy says.
TEST_F(SecurityTest, Matrix) {
  struct Who {
    const char* name;
    const Issued* cert;
  };
  const Who whos[] = {{"connector", &w_->connector},
                      {"rawkeys", &w_->rawkeys},
                      {"reader", &w_->reader},
                      {"admin", &w_->admin},
                      {"stranger", &w_->stranger}};
  enum Rcp { kCaChained, kWrongCa, kExpired, kPinned, kRawKey, kServiceKeyRot, kServiceKeyOther };
  const char* rcp_names[] = {"ca-chained", "wrong-ca",        "expired",          "pinned",
                             "raw-key",    "service-key rot", "service-key other"};
  const std::string keys[] = {"default", "other"};
  // The policy, written out: may `who` rewrap with `key` to `rcp`?
  auto allowed = [](const std::string& who, const std::string& key, Rcp rcp) {
    if (who == "connector") return key == "default" && (rcp == kCaChained || rcp == kPinned);
    if (who == "rawkeys") return rcp == kRawKey || rcp == kServiceKeyRot;
    return false;
  };
  const std::set<std::string> may_rewrap = {"connector", "rawkeys"};
  const std::set<std::string> may_read = {"reader", "admin"};
  const std::map<std::string, std::set<std::string>> readable = {
      {"reader", {"default"}}, {"admin", {"default", "other", "rot"}}};
  const std::string secret = "matrix-" + it::RandomAscii(12);
  int checked = 0;
  for (const Who& who : whos) {
    SCOPED_TRACE(who.name);
    // Rewrap: one batch, every key x recipient.
    v1::RewrapRequest req;
    std::vector<std::pair<std::string, Rcp>> expect;
    for (const auto& key : keys) {
      for (int r = kCaChained; r <= kServiceKeyOther; ++r) {
        v1::RewrapItem item = Item(std::string(key) + "/" + rcp_names[r], key, secret);
        auto* rc = item.mutable_recipient();
        switch (static_cast<Rcp>(r)) {
          case kCaChained:
            rc->set_certificate(w_->dev_good.cert_der);
            item.set_format(v1::CMS_ENVELOPED);
            break;
          case kWrongCa:
            rc->set_certificate(w_->dev_wrong_ca.cert_der);
            item.set_format(v1::CMS_ENVELOPED);
            break;
          case kExpired:
            rc->set_certificate(w_->dev_expired.cert_der);
            item.set_format(v1::CMS_ENVELOPED);
            break;
          case kPinned:
            rc->set_certificate(w_->dev_pinned.cert_pem);
            item.set_format(v1::CMS_ENVELOPED);
            break;
          case kRawKey:
            break;
          case kServiceKeyRot:
            rc->set_service_key("rot");
            break;
          case kServiceKeyOther:
            rc->set_service_key("other");
            break;
        }
        *req.add_items() = item;
        expect.emplace_back(key, static_cast<Rcp>(r));
      }
    }
    v1::RewrapResponse resp;
    grpc::Status st = Rewrap(who.cert, req, &resp);
    if (!may_rewrap.count(who.name)) {
      EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
      ++checked;
    } else {
      ASSERT_TRUE(st.ok()) << st.error_message();
      ASSERT_EQ(resp.results_size(), req.items_size());
      for (int i = 0; i < resp.results_size(); ++i) {
        const auto& r = resp.results(i);
        const bool ok = allowed(who.name, expect[size_t(i)].first, expect[size_t(i)].second);
        if (ok) {
          EXPECT_FALSE(r.has_error()) << r.id() << ": " << r.error().message();
        } else {
          EXPECT_EQ(r.error().code(), v1::ItemError::PERMISSION_DENIED)
              << r.id() << ": " << r.error().message();
          EXPECT_TRUE(r.ciphertext().empty());
        }
        ++checked;
      }
    }
    // Keys: ListKeys / GetPublicKey (keys.read), DisableKey of a missing key (keys.admin:
    // NOT_FOUND proves the call got through), CreateKey with a bad name (INVALID_ARGUMENT).
    auto keys_stub = v1::Keys::NewStub(w_->Channel(who.cert));
    {
      grpc::ClientContext ctx;
      test::SetDeadline(&ctx);
      v1::ListKeysResponse lr;
      st = keys_stub->ListKeys(&ctx, v1::ListKeysRequest(), &lr);
      if (may_read.count(who.name)) {
        ASSERT_TRUE(st.ok()) << st.error_message();
        std::set<std::string> names;
        for (const auto& k : lr.keys()) names.insert(k.name());
        EXPECT_EQ(names, readable.at(who.name));
      } else {
        EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
      }
      ++checked;
    }
    for (const auto& key : keys) {
      grpc::ClientContext ctx;
      test::SetDeadline(&ctx);
      v1::GetPublicKeyRequest gr;
      gr.set_name(key);
      v1::GetPublicKeyResponse gresp;
      st = keys_stub->GetPublicKey(&ctx, gr, &gresp);
      const bool ok = may_read.count(who.name) && readable.at(who.name).count(key);
      EXPECT_EQ(st.error_code(), ok ? grpc::StatusCode::OK : grpc::StatusCode::PERMISSION_DENIED)
          << key;
      ++checked;
    }
    {
      grpc::ClientContext ctx;
      test::SetDeadline(&ctx);
      v1::DisableKeyRequest dr;
      dr.set_name("no-such-key");
      v1::KeyInfo info;
      st = keys_stub->DisableKey(&ctx, dr, &info);
      EXPECT_EQ(st.error_code(), std::string(who.name) == "admin"
                                     ? grpc::StatusCode::NOT_FOUND
                                     : grpc::StatusCode::PERMISSION_DENIED)
          << st.error_message();
      ++checked;
    }
  }
  printf("[matrix] %d outcomes checked\n", checked);
}

TEST_F(SecurityTest, ClientWithoutCertificateIsRefused) {
  auto stub = v1::Keys::NewStub(w_->Channel(nullptr));
  grpc::ClientContext ctx;
  test::SetDeadline(&ctx, std::chrono::seconds(10));
  v1::ListKeysResponse lr;
  auto st = stub->ListKeys(&ctx, v1::ListKeysRequest(), &lr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
}

TEST_F(SecurityTest, ClientCertificateFromAnotherCaIsRefused) {
  auto stub = v1::Keys::NewStub(w_->Channel(&w_->impostor));  // CN=admin, but another CA
  grpc::ClientContext ctx;
  test::SetDeadline(&ctx, std::chrono::seconds(10));
  v1::ListKeysResponse lr;
  auto st = stub->ListKeys(&ctx, v1::ListKeysRequest(), &lr);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
}

TEST_F(SecurityTest, PlaintextClientIsRefused) {
  auto ch = grpc::CreateChannel(w_->h->address(), grpc::InsecureChannelCredentials());
  auto stub = v1::Keys::NewStub(ch);
  grpc::ClientContext ctx;
  test::SetDeadline(&ctx, std::chrono::seconds(10));
  v1::ListKeysResponse lr;
  EXPECT_EQ(stub->ListKeys(&ctx, v1::ListKeysRequest(), &lr).error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

TEST_F(SecurityTest, ItemsPerSecondLimitIsPerIdentity) {
  v1::RewrapRequest req;
  const std::string secret = "rl-" + it::RandomAscii(8);
  for (int i = 0; i < 10; ++i) *req.add_items() = Item("i" + std::to_string(i), "default", secret);
  v1::RewrapResponse resp;
  ASSERT_TRUE(Rewrap(&w_->limited, req, &resp).ok());
  int ok = 0, exhausted = 0;
  for (const auto& r : resp.results()) {
    if (!r.has_error())
      ++ok;
    else if (r.error().code() == v1::ItemError::RESOURCE_EXHAUSTED)
      ++exhausted;
  }
  EXPECT_EQ(ok, 5) << "burst 5";
  EXPECT_EQ(exhausted, 5);
  // Another identity is not affected.
  v1::RewrapResponse other;
  ASSERT_TRUE(Rewrap(&w_->rawkeys, req, &other).ok());
  for (const auto& r : other.results()) EXPECT_FALSE(r.has_error()) << r.error().message();
  EXPECT_NE(w_->h->StderrText().find("rate limit: identity 'limited'"), std::string::npos)
      << "no warning logged";
}

TEST_F(SecurityTest, DecryptFailureBudgetIsPerIdentity) {
  v1::RewrapRequest bad;
  for (int i = 0; i < 3; ++i) {
    auto item = Item("bad" + std::to_string(i), "default", "x");
    std::string ct = item.ciphertext();
    ct[5] ^= 0x20;
    item.set_ciphertext(ct);
    *bad.add_items() = item;
  }
  v1::RewrapResponse resp;
  ASSERT_TRUE(Rewrap(&w_->failing, bad, &resp).ok());
  for (const auto& r : resp.results()) EXPECT_EQ(r.error().code(), v1::ItemError::DECRYPT_FAILED);
  v1::RewrapRequest good;
  *good.add_items() = Item("good", "default", "fine");
  ASSERT_TRUE(Rewrap(&w_->failing, good, &resp).ok());
  EXPECT_EQ(resp.results(0).error().code(), v1::ItemError::RESOURCE_EXHAUSTED)
      << resp.results(0).error().message();
  ASSERT_TRUE(Rewrap(&w_->rawkeys, good, &resp).ok());
  EXPECT_FALSE(resp.results(0).has_error()) << "another identity must not be limited";
}

TEST_F(SecurityTest, AuditRecordsEveryItemWithoutSecrets) {
  const std::string secret = "audit-" + it::RandomAscii(16);
  v1::RewrapRequest req;
  *req.add_items() = Item("audit-ok", "default", secret);
  *req.add_items() = Item("audit-denied", "other", secret);
  v1::RewrapResponse resp;
  ASSERT_TRUE(Rewrap(&w_->reader, req, &resp).error_code() == grpc::StatusCode::PERMISSION_DENIED);
  ASSERT_TRUE(Rewrap(&w_->rawkeys, req, &resp).ok());
  const std::string audit = test::ReadFileOrEmpty(w_->Path("audit.jsonl"));
  std::map<std::string, nlohmann::json> by_id;
  bool reader_denied = false;
  std::istringstream in(audit);
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << "not JSON: " << line;
    for (const char* f : {"time", "identity", "rpc", "outcome"})
      EXPECT_TRUE(j.contains(f)) << f << " in " << line;
    if (j.value("id", "").rfind("audit-", 0) == 0) by_id[j["id"]] = j;
    if (j["identity"] == "reader" && j["rpc"] == "Rewrap" && j["outcome"] == "PERMISSION_DENIED")
      reader_denied = true;
  }
  EXPECT_TRUE(reader_denied) << "the refused call is not in the audit log";
  ASSERT_EQ(by_id.size(), 2u) << audit;
  EXPECT_EQ(by_id["audit-ok"]["identity"], "rawkeys");
  EXPECT_EQ(by_id["audit-ok"]["key"], "default");
  EXPECT_EQ(by_id["audit-ok"]["outcome"], "OK");
  EXPECT_EQ(by_id["audit-ok"]["path"], "HOST_UNPADDING");
  EXPECT_EQ(by_id["audit-ok"]["recipient_sha256"],
            it::HexEncode(it::Sha256(it::SpkiDer(w_->dev_good.key.get()))));
  EXPECT_EQ(by_id["audit-denied"]["outcome"], "OK") << "rawkeys may use every key";
  for (const std::string& needle : {secret, it::HexEncode(secret), Base64(secret)}) {
    EXPECT_EQ(audit.find(needle), std::string::npos) << "plaintext in the audit log";
  }
  for (const auto& item : req.items()) {
    EXPECT_EQ(audit.find(it::HexEncode(item.ciphertext()).substr(0, 32)), std::string::npos);
    EXPECT_EQ(audit.find(Base64(item.ciphertext()).substr(0, 32)), std::string::npos);
  }
}

// The clients' --tls-cert/--tls-key/--ca work against rewrapd's mTLS.
TEST_F(SecurityTest, RewrapctlWithClientCertificate) {
  ASSERT_TRUE(test::WriteFile(w_->Path("admin.pem"), w_->admin.cert_pem) &&
              test::WriteFile(w_->Path("admin.key"), w_->admin.key_pem));
  std::vector<std::string> args = {HSMREWRAP_REWRAPCTL_PATH,
                                   "--target",
                                   w_->h->address(),
                                   "--ca",
                                   w_->Path("ca.pem"),
                                   "--tls-cert",
                                   w_->Path("admin.pem"),
                                   "--tls-key",
                                   w_->Path("admin.key"),
                                   "keys",
                                   "list"};
  auto r = test::RunCommand(args, "", std::chrono::seconds(30));
  EXPECT_EQ(r.exit_code, 0) << r.Describe(args);
  EXPECT_NE(r.out.find("rot"), std::string::npos) << r.out;
  std::vector<std::string> no_cert = {HSMREWRAP_REWRAPCTL_PATH,
                                      "--target",
                                      w_->h->address(),
                                      "--ca",
                                      w_->Path("ca.pem"),
                                      "keys",
                                      "list"};
  r = test::RunCommand(no_cert, "", std::chrono::seconds(30));
  EXPECT_NE(r.exit_code, 0) << r.Describe(no_cert);
}

// Policy identities are typed: the bare SPIFFE ID in the connector's entry is a URI SAN, so
// a certificate whose CN spells it (and has no URI SAN) is nobody.
TEST_F(SecurityTest, CnSpellingAUriIsNotThatUri) {
  v1::RewrapRequest req;
  *req.add_items() = Item("spiffe-cn", "default", "not-for-you");
  req.mutable_items(0)->mutable_recipient()->set_certificate(w_->dev_good.cert_der);
  req.mutable_items(0)->set_format(v1::CMS_ENVELOPED);
  v1::RewrapResponse resp;
  grpc::Status st = Rewrap(&w_->spiffe_cn, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  EXPECT_EQ(resp.results_size(), 0);
  EXPECT_NE(st.error_message().find("cn:spiffe://hsm-rewrap.test/connector"), std::string::npos)
      << st.error_message();
  // The real connector (URI SAN) still may.
  ASSERT_TRUE(Rewrap(&w_->connector, req, &resp).ok());
  EXPECT_FALSE(resp.results(0).has_error()) << resp.results(0).error().message();
}

// A certificate whose CN is in one entry and whose URI SAN is in another gets neither.
TEST_F(SecurityTest, CertificateMatchingTwoEntriesIsRefusedAsAmbiguous) {
  v1::RewrapRequest req;
  *req.add_items() = Item("two-entries", "default", "ambiguous");
  req.mutable_items(0)->mutable_recipient()->set_certificate(w_->dev_good.cert_der);
  req.mutable_items(0)->set_format(v1::CMS_ENVELOPED);
  v1::RewrapResponse resp;
  grpc::Status st = Rewrap(&w_->two_entries, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  for (const char* word : {"ambiguous", "'connector'", "'reader'",
                           "uri:spiffe://hsm-rewrap.test/connector", "cn:reader"}) {
    EXPECT_NE(st.error_message().find(word), std::string::npos)
        << word << " not in: " << st.error_message();
  }
  // Key RPCs too (reader's keys.read right does not apply either).
  auto keys = v1::Keys::NewStub(w_->Channel(&w_->two_entries));
  grpc::ClientContext ctx;
  test::SetDeadline(&ctx);
  v1::ListKeysResponse lr;
  EXPECT_EQ(keys->ListKeys(&ctx, v1::ListKeysRequest(), &lr).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

// Rewrap and key-RPC audit records say which certificate name matched the entry.
TEST_F(SecurityTest, AuditRecordsTheMatchedName) {
  v1::RewrapRequest req;
  *req.add_items() = Item("matched-connector", "default", "matched");
  req.mutable_items(0)->mutable_recipient()->set_certificate(w_->dev_good.cert_der);
  req.mutable_items(0)->set_format(v1::CMS_ENVELOPED);
  v1::RewrapResponse resp;
  ASSERT_TRUE(Rewrap(&w_->connector, req, &resp).ok());
  auto keys = v1::Keys::NewStub(w_->Channel(&w_->reader));
  grpc::ClientContext ctx;
  test::SetDeadline(&ctx);
  v1::GetPublicKeyRequest gr;
  gr.set_name("default");
  v1::GetPublicKeyResponse gresp;
  ASSERT_TRUE(keys->GetPublicKey(&ctx, gr, &gresp).ok());
  auto rewraps = AuditRecords(w_->Path("audit.jsonl"), "id", "matched-connector");
  ASSERT_EQ(rewraps.size(), 1u);
  EXPECT_EQ(rewraps[0]["identity"], "connector");
  EXPECT_EQ(rewraps[0].value("matched", ""), "uri:spiffe://hsm-rewrap.test/connector")
      << rewraps[0].dump();
  bool reader_seen = false;
  for (const auto& j : AuditRecords(w_->Path("audit.jsonl"), "identity", "reader")) {
    if (j["rpc"] != "GetPublicKey") continue;
    reader_seen = true;
    EXPECT_EQ(j.value("matched", ""), "cn:reader") << j.dump();
  }
  EXPECT_TRUE(reader_seen) << "no GetPublicKey record of reader";
}

// Certificate recipients must be fit for encryption, with a policy (here) as without one
// (SecurityStandalone.RecipientKeyUsageHoldsWithoutAPolicy).
TEST_F(SecurityTest, RecipientCertificateMustBeFitForEncryption) {
  CheckRecipientKeyUsage(w_->device_ca, w_->service_pub.at("default").get(),
                         [&](const v1::RewrapRequest& req, v1::RewrapResponse* resp) {
                           return Rewrap(&w_->connector, req, resp);
                         });
}

// require_eku (entry "eku": emailProtection): a recipient certificate without that EKU is
// refused, naming it; anyExtendedKeyUsage and no EKU at all do not satisfy it. Entries
// without require_eku (connector) take the same certificates.
TEST_F(SecurityTest, RequireEkuRefusesOtherUsages) {
  const std::string secret = "eku-" + it::RandomAscii(12);
  struct Case {
    const char* id;
    const Issued* device;
    const char* refusal;  // nullptr = accepted
  };
  const Case cases[] = {{"email", &w_->dev_email, nullptr},
                        {"tls-client", &w_->dev_tls_client, "it has clientAuth"},
                        {"any-eku", &w_->dev_any_eku, "it has anyExtendedKeyUsage"},
                        {"no-eku", &w_->dev_good, "it has no extendedKeyUsage"}};
  v1::RewrapRequest req;
  for (const Case& c : cases) {
    v1::RewrapItem item = Item(c.id, "default", secret);
    item.mutable_recipient()->set_certificate(c.device->cert_der);
    item.set_format(v1::CMS_ENVELOPED);
    *req.add_items() = item;
  }
  for (const Issued* who : {&w_->eku_client, &w_->connector}) {
    const bool requires_eku = who == &w_->eku_client;
    SCOPED_TRACE(requires_eku ? "eku" : "connector");
    v1::RewrapResponse resp;
    grpc::Status st = Rewrap(who, req, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_EQ(resp.results_size(), req.items_size());
    for (int i = 0; i < resp.results_size(); ++i) {
      const Case& c = cases[i];
      const auto& r = resp.results(i);
      SCOPED_TRACE(c.id);
      if (c.refusal == nullptr || !requires_eku) {
        ASSERT_FALSE(r.has_error()) << r.error().message();
        it::CmsResult opened =
            it::CmsDecrypt(c.device->key.get(), c.device->cert.get(), r.ciphertext());
        EXPECT_TRUE(opened.ok) << opened.error;
        EXPECT_EQ(opened.plaintext, secret);
        continue;
      }
      EXPECT_EQ(r.error().code(), v1::ItemError::PERMISSION_DENIED) << r.error().message();
      for (const char* word : {"emailProtection", c.refusal}) {
        EXPECT_NE(r.error().message().find(word), std::string::npos)
            << word << " not in: " << r.error().message();
      }
      EXPECT_TRUE(r.ciphertext().empty());
    }
  }
}

// Last of the shared-rewrapd tests: changes the policy.
TEST_F(SecurityTest, SighupReloadsPolicyWithoutDroppingTraffic) {
  std::atomic<bool> stop{false};
  std::atomic<int> calls{0}, failures{0};
  std::thread traffic([&] {
    while (!stop.load()) {
      v1::RewrapRequest req;
      *req.add_items() = Item("t", "default", "traffic");
      req.mutable_items(0)->mutable_recipient()->set_certificate(w_->dev_good.cert_der);
      req.mutable_items(0)->set_format(v1::CMS_ENVELOPED);
      v1::RewrapResponse resp;
      auto st = Rewrap(&w_->connector, req, &resp);
      ++calls;
      if (!st.ok() || resp.results(0).has_error()) ++failures;
    }
  });
  auto reader_can_rewrap = [&] {
    v1::RewrapRequest req;
    *req.add_items() = Item("r", "default", "reload");
    v1::RewrapResponse resp;
    return Rewrap(&w_->reader, req, &resp).ok() && !resp.results(0).has_error();
  };
  auto wait_for = [&](bool want) {
    for (int i = 0; i < 100; ++i) {
      if (reader_can_rewrap() == want) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  };
  EXPECT_FALSE(reader_can_rewrap());
  ASSERT_TRUE(test::WriteFile(w_->Path("policy.yaml"), w_->PolicyText(true)));
  w_->h->Signal(SIGHUP);
  EXPECT_TRUE(wait_for(true)) << "the reloaded policy did not apply";
  // A broken file: the old policy stays, and the log says why.
  ASSERT_TRUE(
      test::WriteFile(w_->Path("policy.yaml"), "clients:\n  - name: x\n    rpcs: [teleport]\n"));
  w_->h->Signal(SIGHUP);
  bool logged = false;
  for (int i = 0; i < 100 && !logged; ++i) {
    logged = w_->h->StderrText().find("policy not reloaded") != std::string::npos;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(logged) << w_->h->StderrText();
  EXPECT_NE(w_->h->StderrText().find("teleport"), std::string::npos)
      << "the log does not say what is wrong";
  EXPECT_TRUE(reader_can_rewrap()) << "a bad policy file replaced the good one";
  ASSERT_TRUE(test::WriteFile(w_->Path("policy.yaml"), w_->PolicyText(false)));
  w_->h->Signal(SIGHUP);
  EXPECT_TRUE(wait_for(false));
  stop = true;
  traffic.join();
  EXPECT_GT(calls.load(), 0);
  EXPECT_EQ(failures.load(), 0) << "traffic failed during reloads";
}

// A rewrapd whose audit log cannot be written stops serving and says so.
TEST(SecurityStandalone, AuditLogFailureFailsClosed) {
  if (!test::TokenUnavailableReason(test::TokenKind::kSoftHsm).empty()) GTEST_SKIP();
  if (access("/dev/full", W_OK) != 0) GTEST_SKIP() << "no /dev/full";
  std::string error;
  RewrapdHarness::Options opts;
  opts.extra_args = {"--audit-log", "/dev/full"};
  auto h = RewrapdHarness::Start(test::TokenKind::kSoftHsm, &error, opts);
  ASSERT_NE(h, nullptr) << error;
  // A read is audited too: its answer is withheld when its record cannot be written.
  grpc::ClientContext gctx;
  test::SetDeadline(&gctx);
  v1::GetPublicKeyRequest gr;
  gr.set_name("default");
  v1::GetPublicKeyResponse gresp;
  auto gst = h->keys().GetPublicKey(&gctx, gr, &gresp);
  EXPECT_EQ(gst.error_code(), grpc::StatusCode::UNAVAILABLE) << gst.error_message();
  EXPECT_TRUE(gresp.public_key().empty());
  // The service key's public key, from the token itself.
  const std::string state = h->dir() + "/state";
  setenv("SOFTHSM2_CONF", (state + "/softhsm2.conf").c_str(), 1);
  std::string spki;
  {
    auto token = TokenSession::Open("hsm-rewrap", test::ReadFileOrEmpty(state + "/user.pin"));
    ASSERT_TRUE(token.ok()) << token.status();
    auto der = (*token)->PublicKeyDer("default");
    ASSERT_TRUE(der.ok()) << der.status();
    spki = *der;
  }
  auto pub = it::ParsePublicKey(spki);
  ASSERT_TRUE(pub);
  auto device = it::GenerateRsa(2048);
  v1::RewrapRequest req;
  auto* item = req.add_items();
  item->set_id("a");
  item->set_key_name("default");
  item->set_padding(v1::OAEP_SHA256);
  item->set_ciphertext(*it::RsaEncrypt(pub.get(), it::Pad::kOaepSha256, "fail-closed"));
  item->set_format(v1::RSA_OAEP_SHA256);
  item->mutable_recipient()->set_public_key(it::SpkiDer(device.get()));
  for (int round = 0; round < 2; ++round) {
    grpc::ClientContext ctx;
    test::SetDeadline(&ctx);
    v1::RewrapResponse resp;
    ASSERT_TRUE(h->rewrap().Rewrap(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.results(0).error().code(), v1::ItemError::UNAVAILABLE) << "round " << round;
    EXPECT_TRUE(resp.results(0).ciphertext().empty());
  }
  auto health = grpc::health::v1::Health::NewStub(h->channel());
  grpc::health::v1::HealthCheckResponse hr;
  bool not_serving = false;
  for (int i = 0; i < 50 && !not_serving; ++i) {
    grpc::ClientContext ctx;
    test::SetDeadline(&ctx);
    grpc::health::v1::HealthCheckRequest hreq;
    hreq.set_service("hsmrewrap.v1.Rewrap");
    not_serving = health->Check(&ctx, hreq, &hr).ok() &&
                  hr.status() == grpc::health::v1::HealthCheckResponse::NOT_SERVING;
    if (!not_serving) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(not_serving);
  EXPECT_NE(h->StderrText().find("AUDIT LOG /dev/full CANNOT BE WRITTEN"), std::string::npos)
      << h->StderrText();
  EXPECT_EQ(h->Stop(), "");
}

// A SoftHSM2 token of the test's own in `dir` (SOFTHSM2_CONF is set for this process and so
// for every rewrapd it starts), and the arguments that start rewrapd on it: its keys stay
// across restarts.
std::vector<std::string> OwnSoftToken(const test::TempDir& dir, const std::string& label,
                                      std::string* why) {
  test::SetUpSoftHsmConfig(dir.path());
  const std::string pin = "sec-" + it::RandomAscii(12);
  test::WriteFile(dir.File("user.pin"), pin, 0600);
  std::vector<std::string> cmd = {"softhsm2-util", "--init-token", "--free", "--label",
                                  label,           "--pin",        pin,      "--so-pin",
                                  "sec-so-5678"};
  test::CommandResult r = test::RunCommand(cmd);
  if (r.exit_code != 0) {
    *why = r.Describe(cmd);
    return {};
  }
  return {"--module", test::kSoftHsmPath, "--token", label, "--pin-file", dir.File("user.pin")};
}

// Key administration with a broken audit log fails closed like rewraps: every key RPC is
// UNAVAILABLE, whether its own record is the first that cannot be written or the log is
// known to be broken already, and nothing changes in the token.
TEST(SecurityStandalone, KeyRpcsFailClosedWithTheAuditLog) {
  if (!test::TokenUnavailableReason(test::TokenKind::kSoftHsm).empty()) GTEST_SKIP();
  if (access("/dev/full", W_OK) != 0) GTEST_SKIP() << "no /dev/full";
  test::TempDir dir("hsmrewrap-audit-keys");
  std::string error;
  const std::vector<std::string> token = OwnSoftToken(dir, "audit-keys", &error);
  ASSERT_FALSE(token.empty()) << error;
  auto start = [&](const std::string& audit_log) {
    RewrapdHarness::Options x;
    x.module_args = token;
    x.extra_args = {"--audit-log", audit_log, "--selftest-interval", "0"};
    return RewrapdHarness::Start(test::TokenKind::kSoftHsm, &error, x);
  };
  auto list = [](RewrapdHarness& h, std::map<std::string, bool>* keys) {
    grpc::ClientContext ctx;
    test::SetDeadline(&ctx);
    v1::ListKeysResponse lr;
    grpc::Status st = h.keys().ListKeys(&ctx, v1::ListKeysRequest(), &lr);
    for (const auto& k : lr.keys()) (*keys)[k.name()] = k.enabled();
    return st;
  };
  // With a writable audit log: "keep" (enabled) and "off" (disabled).
  {
    auto h = start(dir.File("audit.jsonl"));
    ASSERT_NE(h, nullptr) << error;
    for (const std::string name : {"keep", "off"}) {
      grpc::ClientContext ctx;
      test::SetDeadline(&ctx);
      v1::CreateKeyRequest req;
      req.set_name(name);
      v1::KeyInfo info;
      auto st = h->keys().CreateKey(&ctx, req, &info);
      ASSERT_TRUE(st.ok()) << name << ": " << st.error_message();
    }
    grpc::ClientContext ctx;
    test::SetDeadline(&ctx);
    v1::DisableKeyRequest req;
    req.set_name("off");
    v1::KeyInfo info;
    ASSERT_TRUE(h->keys().DisableKey(&ctx, req, &info).ok());
    EXPECT_EQ(h->Stop(), "");
    // Each change: the record of the attempt before the token work, then its outcome.
    std::vector<std::string> records;
    std::istringstream in(test::ReadFileOrEmpty(dir.File("audit.jsonl")));
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      ASSERT_FALSE(j.is_discarded()) << line;
      records.push_back(j.value("rpc", "") + " " + j.value("key", "") + " " +
                        j.value("outcome", ""));
    }
    EXPECT_EQ(records, (std::vector<std::string>{"CreateKey keep STARTED", "CreateKey keep OK",
                                                 "CreateKey off STARTED", "CreateKey off OK",
                                                 "DisableKey off STARTED", "DisableKey off OK"}));
  }
  const std::string pkcs8 = it::PrivateKeyPkcs8Der(it::GenerateRsa(2048).get());
  struct Rpc {
    const char* name;
    std::function<grpc::Status(RewrapdHarness&)> call;
  };
  auto unary = [](auto method, auto req, auto resp) {
    return [method, req, resp](RewrapdHarness& h) mutable {
      grpc::ClientContext ctx;
      test::SetDeadline(&ctx);
      return (h.keys().*method)(&ctx, req, &resp);
    };
  };
  v1::CreateKeyRequest create;
  create.set_name("new");
  v1::ImportKeyRequest import;
  import.set_name("imported");
  import.set_pkcs8(pkcs8);
  v1::DisableKeyRequest disable;
  disable.set_name("keep");
  v1::EnableKeyRequest enable;
  enable.set_name("off");
  v1::GetPublicKeyRequest get;
  get.set_name("keep");
  get.set_format(v1::DER_SPKI);
  using Keys = v1::Keys::Stub;
  const std::vector<Rpc> admin = {{"CreateKey", unary(&Keys::CreateKey, create, v1::KeyInfo())},
                                  {"ImportKey", unary(&Keys::ImportKey, import, v1::KeyInfo())},
                                  {"DisableKey", unary(&Keys::DisableKey, disable, v1::KeyInfo())},
                                  {"EnableKey", unary(&Keys::EnableKey, enable, v1::KeyInfo())}};
  const std::vector<Rpc> reads = {
      {"ListKeys", unary(&Keys::ListKeys, v1::ListKeysRequest(), v1::ListKeysResponse())},
      {"GetPublicKey", unary(&Keys::GetPublicKey, get, v1::GetPublicKeyResponse())},
      {"SelfTest", unary(&Keys::SelfTest, v1::SelfTestRequest(), v1::SelfTestResponse())}};
  // Each key administration RPC once as the first call of a rewrapd whose audit log cannot
  // be written (its own record is the one that fails), then every other key RPC.
  for (size_t first = 0; first < admin.size(); ++first) {
    auto h = start("/dev/full");
    ASSERT_NE(h, nullptr) << error;
    std::vector<const Rpc*> order;
    for (size_t i = 0; i < admin.size(); ++i) order.push_back(&admin[(first + i) % admin.size()]);
    for (const Rpc& r : reads) order.push_back(&r);
    for (size_t i = 0; i < order.size(); ++i) {
      grpc::Status st = order[i]->call(*h);
      EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE)
          << order[i]->name << " (call " << i << " of a rewrapd whose audit log is /dev/full): "
          << (st.ok() ? "OK" : st.error_message());
      EXPECT_NE(st.error_message().find("audit log cannot be written"), std::string::npos)
          << order[i]->name << ": " << st.error_message();
    }
    EXPECT_EQ(h->Stop(), "");
  }
  // Nothing changed: the same two keys in the same states.
  auto h = start(dir.File("audit.jsonl"));
  ASSERT_NE(h, nullptr) << error;
  std::map<std::string, bool> keys;
  ASSERT_TRUE(list(*h, &keys).ok());
  EXPECT_EQ(keys, (std::map<std::string, bool>{{"keep", true}, {"off", false}}));
  EXPECT_EQ(h->Stop(), "");
}

// The engine applies the recipient key-usage rules to every certificate recipient, also
// when no policy file is set.
TEST(SecurityStandalone, RecipientKeyUsageHoldsWithoutAPolicy) {
  if (!test::TokenUnavailableReason(test::TokenKind::kSoftHsm).empty()) GTEST_SKIP();
  std::string error;
  auto h = RewrapdHarness::Start(test::TokenKind::kSoftHsm, &error);
  ASSERT_NE(h, nullptr) << error;
  grpc::ClientContext gctx;
  test::SetDeadline(&gctx);
  v1::GetPublicKeyRequest gr;
  gr.set_name("default");
  v1::GetPublicKeyResponse gresp;
  ASSERT_TRUE(h->keys().GetPublicKey(&gctx, gr, &gresp).ok());
  auto pub = it::ParsePublicKey(gresp.public_key());
  const Issued device_ca = MakeCa("device CA without a policy");
  CheckRecipientKeyUsage(device_ca, pub.get(),
                         [&](const v1::RewrapRequest& req, v1::RewrapResponse* resp) {
                           grpc::ClientContext ctx;
                           test::SetDeadline(&ctx, std::chrono::seconds(60));
                           return h->rewrap().Rewrap(&ctx, req, resp);
                         });
  EXPECT_EQ(h->Stop(), "");
}

// A key planted in the token with unsafe attributes (pkcs11-tool: sign role, extractable,
// no CKA_ALLOWED_MECHANISMS) is refused, and the refusal names the attributes.
TEST(SecurityStandalone, KeyWithUnsafeAttributesIsRefused) {
  if (!test::TokenUnavailableReason(test::TokenKind::kSoftHsm).empty()) GTEST_SKIP();
  if (access("/usr/bin/pkcs11-tool", X_OK) != 0)
    GTEST_SKIP() << "pkcs11-tool not installed (opensc)";
  std::string error;
  auto h = RewrapdHarness::Start(test::TokenKind::kSoftHsm, &error);
  ASSERT_NE(h, nullptr) << error;
  const std::string state = h->dir() + "/state";
  setenv("SOFTHSM2_CONF", (state + "/softhsm2.conf").c_str(), 1);
  std::vector<std::string> gen = {"pkcs11-tool",
                                  "--module",
                                  "/usr/lib/softhsm/libsofthsm2.so",
                                  "--token-label",
                                  "hsm-rewrap",
                                  "--login",
                                  "--pin",
                                  test::ReadFileOrEmpty(state + "/user.pin"),
                                  "--keypairgen",
                                  "--key-type",
                                  "rsa:2048",
                                  "--label",
                                  "planted",
                                  "--usage-decrypt",
                                  "--usage-sign",
                                  "--extractable"};
  auto r = test::RunCommand(gen);
  ASSERT_EQ(r.exit_code, 0) << r.Describe({"pkcs11-tool", "--keypairgen", "..."});
  grpc::ClientContext ctx;
  test::SetDeadline(&ctx);
  v1::GetPublicKeyRequest gr;
  gr.set_name("planted");
  v1::GetPublicKeyResponse gresp;
  auto st = h->keys().GetPublicKey(&ctx, gr, &gresp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  for (const char* phrase : {"CKA_SIGN is TRUE", "CKA_EXTRACTABLE is TRUE",
                             "CKA_NEVER_EXTRACTABLE is FALSE", "CKA_ALLOWED_MECHANISMS is empty"}) {
    EXPECT_NE(st.error_message().find(phrase), std::string::npos)
        << phrase << " not in: " << st.error_message();
  }
  // A rewrap with it fails with that reason, not as a decryption failure.
  v1::RewrapRequest req;
  auto* item = req.add_items();
  item->set_id("p");
  item->set_key_name("planted");
  item->set_padding(v1::OAEP_SHA256);
  item->set_ciphertext(std::string(256, '\x01'));
  item->mutable_recipient()->set_public_key(it::SpkiDer(it::GenerateRsa(2048).get()));
  grpc::ClientContext rctx;
  test::SetDeadline(&rctx);
  v1::RewrapResponse resp;
  ASSERT_TRUE(h->rewrap().Rewrap(&rctx, req, &resp).ok());
  EXPECT_EQ(resp.results(0).error().code(), v1::ItemError::UNSUPPORTED)
      << resp.results(0).error().message();
  EXPECT_NE(resp.results(0).error().message().find("CKA_SIGN is TRUE"), std::string::npos);
  grpc::ClientContext lctx;
  test::SetDeadline(&lctx);
  v1::ListKeysResponse lr;
  ASSERT_TRUE(h->keys().ListKeys(&lctx, v1::ListKeysRequest(), &lr).ok());
  for (const auto& k : lr.keys()) EXPECT_NE(k.name(), "planted") << "an unsafe key is listed";
  EXPECT_NE(h->StderrText().find("key 'planted' has unsafe attributes"), std::string::npos)
      << h->StderrText();
  EXPECT_EQ(h->Stop(), "");
}

// One item sealed (OAEP-SHA256) to service key `key`, rewrapped to a device key.
v1::RewrapResult RewrapOne(RewrapdHarness& h, const std::string& key, EVP_PKEY* key_pub) {
  v1::RewrapRequest req;
  auto* item = req.add_items();
  item->set_id("one");
  item->set_key_name(key);
  item->set_padding(v1::OAEP_SHA256);
  item->set_ciphertext(*it::RsaEncrypt(key_pub, it::Pad::kOaepSha256, it::RandomBytes(32)));
  item->set_format(v1::RSA_OAEP_SHA256);
  static const it::Pkey device = it::GenerateRsa(2048);
  item->mutable_recipient()->set_public_key(it::SpkiDer(device.get()));
  grpc::ClientContext ctx;
  test::SetDeadline(&ctx);
  v1::RewrapResponse resp;
  grpc::Status st = h.rewrap().Rewrap(&ctx, req, &resp);
  if (!st.ok() || resp.results_size() != 1) {
    v1::RewrapResult r;
    r.mutable_error()->set_message("the call failed: " + st.error_message());
    return r;
  }
  return resp.results(0);
}

it::Pkey ServicePublicKey(RewrapdHarness& h, const std::string& key) {
  grpc::ClientContext ctx;
  test::SetDeadline(&ctx);
  v1::GetPublicKeyRequest req;
  req.set_name(key);
  req.set_format(v1::DER_SPKI);
  v1::GetPublicKeyResponse resp;
  if (!h.keys().GetPublicKey(&ctx, req, &resp).ok()) return nullptr;
  return it::ParsePublicKey(resp.public_key());
}

// Keys rewrapd creates or imports cannot be changed, not even with the PIN: both objects
// have CKA_MODIFIABLE=FALSE (SoftHSM2), so nobody can give them a signing role later.
TEST(SecurityStandalone, KeysRewrapdMakesAreReadOnly) {
  if (!test::TokenUnavailableReason(test::TokenKind::kSoftHsm).empty()) GTEST_SKIP();
  std::string error;
  RewrapdHarness::Options opts;
  opts.extra_args = {"--selftest-interval", "0"};
  auto h = RewrapdHarness::Start(test::TokenKind::kSoftHsm, &error, opts);
  ASSERT_NE(h, nullptr) << error;
  const std::string state = h->dir() + "/state";
  setenv("SOFTHSM2_CONF", (state + "/softhsm2.conf").c_str(), 1);
  auto token = TokenSession::Open("hsm-rewrap", test::ReadFileOrEmpty(state + "/user.pin"));
  ASSERT_TRUE(token.ok()) << token.status();
  TokenSession& t = **token;
  // CreateKey, ImportKey and the embedded default key (CreateKey at the first start).
  {
    grpc::ClientContext ctx;
    test::SetDeadline(&ctx);
    v1::CreateKeyRequest req;
    req.set_name("made");
    v1::KeyInfo info;
    auto st = h->keys().CreateKey(&ctx, req, &info);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  {
    grpc::ClientContext ctx;
    test::SetDeadline(&ctx);
    v1::ImportKeyRequest req;
    req.set_name("imported");
    req.set_pkcs8(it::PrivateKeyPkcs8Der(it::GenerateRsa(2048).get()));
    v1::KeyInfo info;
    auto st = h->keys().ImportKey(&ctx, req, &info);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  for (const std::string name : {"made", "imported", "default"}) {
    for (CK_OBJECT_CLASS cls : {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY}) {
      auto modifiable = t.GetBool(name, cls, CKA_MODIFIABLE);
      ASSERT_TRUE(modifiable.ok()) << name << ": " << modifiable.status();
      EXPECT_FALSE(*modifiable) << name << (cls == CKO_PRIVATE_KEY ? " private" : " public")
                                << " key is modifiable";
    }
    absl::Status set = t.SetBool(name, CKO_PRIVATE_KEY, CKA_SIGN, true);
    EXPECT_FALSE(set.ok()) << name << ": CKA_SIGN could be set on a key rewrapd made";
  }
  token->reset();
  EXPECT_EQ(h->Stop(), "");
}

// A modifiable key (made by another tool, or by rewrapd before its keys were read-only)
// whose attributes someone with the PIN changes while rewrapd serves it is refused from the
// next self-test on: the self-test names the key and the attribute, and rewrap items get
// UNSUPPORTED naming the attribute, as for a key refused at start-up.
TEST(SecurityStandalone, KeyAttributesAreRecheckedBySelfTest) {
  if (!test::TokenUnavailableReason(test::TokenKind::kSoftHsm).empty()) GTEST_SKIP();
  std::string error;
  RewrapdHarness::Options opts;
  opts.extra_args = {"--selftest-interval", "0"};
  auto h = RewrapdHarness::Start(test::TokenKind::kSoftHsm, &error, opts);
  ASSERT_NE(h, nullptr) << error;
  const std::string state = h->dir() + "/state";
  setenv("SOFTHSM2_CONF", (state + "/softhsm2.conf").c_str(), 1);
  auto token = TokenSession::Open("hsm-rewrap", test::ReadFileOrEmpty(state + "/user.pin"));
  ASSERT_TRUE(token.ok()) << token.status();
  TokenSession& t = **token;
  {
    grpc::ClientContext ctx;
    test::SetDeadline(&ctx);
    v1::CreateKeyRequest req;
    req.set_name("made");
    v1::KeyInfo info;
    auto st = h->keys().CreateKey(&ctx, req, &info);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }

  // Made by another tool, modifiable, with the attributes rewrapd requires: served.
  ASSERT_TRUE(t.GenerateModifiableServiceKey("mod").ok());
  auto mod_pub = ServicePublicKey(*h, "mod");
  ASSERT_TRUE(mod_pub) << h->StderrText();
  v1::RewrapResult r = RewrapOne(*h, "mod", mod_pub.get());
  ASSERT_FALSE(r.has_error()) << r.error().message();

  // Someone with the PIN gives it a signing role.
  ASSERT_TRUE(t.SetBool("mod", CKO_PRIVATE_KEY, CKA_SIGN, true).ok());
  auto self_test = [&](const std::string& name, v1::SelfTestResponse* resp) {
    grpc::ClientContext ctx;
    test::SetDeadline(&ctx);
    v1::SelfTestRequest req;
    req.set_name(name);
    return h->keys().SelfTest(&ctx, req, resp);
  };
  auto result_of = [](const v1::SelfTestResponse& resp, const std::string& name) {
    for (const auto& result : resp.results()) {
      if (result.name() == name) return result;
    }
    v1::SelfTestResult none;
    none.set_ok(true);
    none.set_message("no result for " + name);
    return none;
  };
  v1::SelfTestResponse st_resp;
  ASSERT_TRUE(self_test("", &st_resp).ok());
  v1::SelfTestResult mod_result = result_of(st_resp, "mod");
  EXPECT_FALSE(mod_result.ok()) << "the self-test did not notice: " << mod_result.message();
  EXPECT_NE(mod_result.message().find("CKA_SIGN is TRUE"), std::string::npos)
      << mod_result.message();
  for (const std::string name : {"default", "made"}) {
    EXPECT_TRUE(result_of(st_resp, name).ok())
        << name << ": " << result_of(st_resp, name).message();
  }
  // From then on the key is refused, at once.
  r = RewrapOne(*h, "mod", mod_pub.get());
  EXPECT_EQ(r.error().code(), v1::ItemError::UNSUPPORTED) << r.error().message();
  EXPECT_NE(r.error().message().find("CKA_SIGN is TRUE"), std::string::npos) << r.error().message();
  EXPECT_TRUE(r.ciphertext().empty());
  // Every later self-test still names it (also one of that key alone).
  st_resp.Clear();
  ASSERT_TRUE(self_test("", &st_resp).ok());
  EXPECT_FALSE(result_of(st_resp, "mod").ok());
  st_resp.Clear();
  ASSERT_TRUE(self_test("mod", &st_resp).ok());
  ASSERT_EQ(st_resp.results_size(), 1);
  EXPECT_FALSE(st_resp.results(0).ok());
  EXPECT_NE(st_resp.results(0).message().find("CKA_SIGN is TRUE"), std::string::npos)
      << st_resp.results(0).message();
  // The other keys are served as before.
  auto default_pub = ServicePublicKey(*h, "default");
  ASSERT_TRUE(default_pub);
  r = RewrapOne(*h, "default", default_pub.get());
  EXPECT_FALSE(r.has_error()) << r.error().message();
  const std::string log = h->StderrText();
  EXPECT_NE(log.find("key 'mod'"), std::string::npos) << log;
  EXPECT_NE(log.find("CKA_SIGN is TRUE"), std::string::npos) << log;
  token->reset();
  EXPECT_EQ(h->Stop(), "");
}

// The periodic self-test re-checks the attributes too (no RPC): CKA_DERIVE set on a
// modifiable key is refused within a self-test interval, and the metrics name the key.
TEST(SecurityStandalone, PeriodicSelfTestRefusesKeyWhoseAttributesChanged) {
  if (!test::TokenUnavailableReason(test::TokenKind::kSoftHsm).empty()) GTEST_SKIP();
  std::string error;
  RewrapdHarness::Options opts;
  opts.extra_args = {"--selftest-interval", "1", "--metrics-listen", "127.0.0.1:0"};
  auto h = RewrapdHarness::Start(test::TokenKind::kSoftHsm, &error, opts);
  ASSERT_NE(h, nullptr) << error;
  const std::string state = h->dir() + "/state";
  setenv("SOFTHSM2_CONF", (state + "/softhsm2.conf").c_str(), 1);
  auto token = TokenSession::Open("hsm-rewrap", test::ReadFileOrEmpty(state + "/user.pin"));
  ASSERT_TRUE(token.ok()) << token.status();
  ASSERT_TRUE((*token)->GenerateModifiableServiceKey("mod").ok());
  auto mod_pub = ServicePublicKey(*h, "mod");
  ASSERT_TRUE(mod_pub) << h->StderrText();
  v1::RewrapResult r = RewrapOne(*h, "mod", mod_pub.get());
  ASSERT_FALSE(r.has_error()) << r.error().message();
  ASSERT_TRUE((*token)->SetBool("mod", CKO_PRIVATE_KEY, CKA_DERIVE, true).ok());
  bool refused = false;
  for (int i = 0; i < 150 && !refused; ++i) {
    r = RewrapOne(*h, "mod", mod_pub.get());
    refused = r.error().code() == v1::ItemError::UNSUPPORTED;
    if (!refused) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(refused) << "still served 15 s after CKA_DERIVE was set: " << r.error().message();
  EXPECT_NE(r.error().message().find("CKA_DERIVE is TRUE"), std::string::npos)
      << r.error().message();
  const std::string err = test::ReadFileOrEmpty(h->StderrPath());
  const std::string tag = "metrics on http://";
  const size_t p = err.rfind(tag);
  ASSERT_NE(p, std::string::npos) << err;
  const std::string metrics =
      err.substr(p + tag.size(), err.find('/', p + tag.size()) - p - tag.size());
  const std::string text =
      test::RunCommand({"curl", "-s", "--max-time", "5", "http://" + metrics + "/metrics"}).out;
  EXPECT_NE(text.find("hsmrewrap_selftest_ok{key=\"mod\"} 0"), std::string::npos) << text;
  EXPECT_NE(text.find("hsmrewrap_key_refused{key=\"mod\"} 1"), std::string::npos) << text;
  EXPECT_NE(text.find("hsmrewrap_selftest_ok{key=\"default\"} 1"), std::string::npos) << text;
  token->reset();
  EXPECT_EQ(h->Stop(), "");
}

// Plaintext gRPC only on loopback unless insecure; TLS settings must be complete.
TEST(SecurityStandalone, TransportRules) {
  auto check = [](std::vector<std::string> args) {
    args.insert(args.begin(), test::RewrapdPath());
    args.push_back("--check-config");
    return test::RunCommand(args);
  };
  auto r = check({"--listen", "0.0.0.0:50051"});
  EXPECT_EQ(r.exit_code, 2) << r.Describe({});
  EXPECT_NE(r.err.find("not a loopback address and TLS is off"), std::string::npos) << r.err;
  r = check({"--listen", "0.0.0.0:50051", "--insecure"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("PLAINTEXT (insecure)"), std::string::npos) << r.out;
  r = check({"--listen", "[::1]:50051"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = check({"--tls-cert", "/nonexistent.pem"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("tls_cert and tls_key go together"), std::string::npos) << r.err;
  r = check({"--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("/nonexistent.pem"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace hsmrewrap::sec
