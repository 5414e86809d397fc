// Writes the seed corpora of the fuzz targets from the third-party vectors in
// ../shared/vectors (used as they are, never copied into the repo):
//   fuzz_seeds VECTORS_DIR OUT_DIR
// OUT_DIR/<target>/ gets one file per seed, and OUT_DIR/request.key.pem the Wycheproof
// RSA-2048 key the request seeds are sealed to (fuzz_request reads it via
// $HSMREWRAP_FUZZ_KEY). Prints how many seeds each target got.
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>

#include "crypto/encoding.h"
#include "crypto/keys.h"
#include "crypto/pfx.h"
#include "hsmrewrap/v1/rewrap.pb.h"

namespace fs = std::filesystem;
namespace crypto = hsmrewrap::crypto;
namespace v1 = hsmrewrap::v1;
using crypto::Bytes;

namespace {

std::map<std::string, int> g_counts;
fs::path g_out;

void Write(const std::string& target, const std::string& data) {
  fs::create_directories(g_out / target);
  const int n = g_counts[target]++;
  std::ofstream(g_out / target / ("seed-" + std::to_string(n)), std::ios::binary) << data;
}
std::string Str(const Bytes& b) { return std::string(b.begin(), b.end()); }

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Bytes Hex(const std::string& h) {
  auto b = crypto::HexDecode(h);
  return b.ok() ? *b : Bytes{};
}

// Raw RSA (no padding) decryption of `ct` with a PKCS#8 DER private key: the encoded
// message the token's CKM_RSA_X_509 would return.
Bytes RawDecrypt(const Bytes& pkcs8, const Bytes& ct) {
  const unsigned char* p = pkcs8.data();
  EVP_PKEY* key = d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(pkcs8.size()));
  Bytes out;
  if (key == nullptr) return out;
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new(key, nullptr);
  size_t len = 0;
  if (ctx && EVP_PKEY_decrypt_init(ctx) > 0 &&
      EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_NO_PADDING) > 0 &&
      EVP_PKEY_decrypt(ctx, nullptr, &len, ct.data(), ct.size()) > 0) {
    out.resize(len);
    if (EVP_PKEY_decrypt(ctx, out.data(), &len, ct.data(), ct.size()) > 0) {
      out.resize(len);
    } else {
      out.clear();
    }
  }
  EVP_PKEY_CTX_free(ctx);
  EVP_PKEY_free(key);
  return out;
}

int HashIndex(const std::string& sha) {
  static const std::map<std::string, int> m = {
      {"SHA-1", 0}, {"SHA-256", 1}, {"SHA-384", 2}, {"SHA-512", 3}};
  auto it = m.find(sha);
  return it == m.end() ? -1 : it->second;
}

std::vector<Bytes> g_recipients;  // DER certificates and SPKIs for cms/request seeds

void FromWycheproof(const fs::path& dir) {
  std::set<std::string> keys_seen;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (entry.path().extension() != ".json" || name.rfind("rsa_", 0) != 0) continue;
    const bool pkcs1 = name.find("pkcs1") != std::string::npos;
    nlohmann::json j = nlohmann::json::parse(ReadFile(entry.path()), nullptr, false);
    if (j.is_discarded()) continue;
    for (const auto& g : j["testGroups"]) {
      const Bytes pkcs8 = Hex(g.value("privateKeyPkcs8", ""));
      if (pkcs8.empty()) continue;
      if (keys_seen.insert(Str(pkcs8)).second) {
        Write("fuzz_keys", Str(pkcs8));
        Write("fuzz_keys", g.value("privateKeyPem", ""));
        auto parts = crypto::ParseRsaPrivateKey(pkcs8);
        if (parts.ok()) {
          auto pub = crypto::PublicKey::FromRsaComponents(parts->n, parts->e);
          if (pub.ok()) {
            Write("fuzz_keys", Str(pub->SpkiDer()));
            Write("fuzz_keys", pub->SpkiPem());
            Write("fuzz_keys", Str(pub->CngPublicBlob()));
            g_recipients.push_back(pub->SpkiDer());
          }
        }
      }
      // Decoder seeds: [selector][modulus selector = exact][em].
      int selector = 4;  // PKCS#1 v1.5
      if (!pkcs1) {
        const int h = HashIndex(g.value("sha", "")), m = HashIndex(g.value("mgfSha", ""));
        if (h < 0 || m < 0) continue;
        selector = h + 5 * m;
      }
      int n = 0;
      for (const auto& t : g["tests"]) {
        if (n++ >= 40) break;  // a sample per group is enough to reach every branch
        const Bytes em = RawDecrypt(pkcs8, Hex(t.value("ct", "")));
        if (em.empty()) continue;
        Write("fuzz_oaep", std::string{static_cast<char>(selector), 3} + Str(em));
      }
    }
  }
}

struct Pfx {
  std::string bytes;
  std::string password;
};

std::vector<Pfx> FromPfxFiles(const fs::path& vectors) {
  std::vector<Pfx> out;
  const std::pair<const char*, const char*> files[] = {
      {"pkcs12/openssl.p12", "foo"},
      {"pkcs12/windows.p12", "foo"},
      {"pkcs12/pbes2_sha256.p12", "foo"},
      {"pkcs12/no_encryption.p12", "foo"},
      {"pkcs12/empty_password.p12", ""},
      {"pkcs12/unicode_password.p12", "Hello, \xe4\xb8\x96\xe7\x95\x8c"},
      {"pkcs12/empty_password_ber_nested.p12", ""},
      {"pkcs12/bad1.p12", ""},
      {"pkcs12/bad2.p12", ""},
      {"pkcs12/bad3.p12", ""},
      {"intune/testcert.pfx", "TestCert"}};
  for (const auto& [file, password] : files) {
    const fs::path p = vectors / file;
    if (!fs::exists(p)) continue;
    const std::string bytes = ReadFile(p);
    Write("fuzz_pfx", bytes);
    out.push_back({bytes, password});
    auto contents = crypto::OpenPfx(
        absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()),
        crypto::SecretString(password));
    if (!contents.ok() || !contents->certificate) continue;
    unsigned char* der = nullptr;
    const int len = i2d_X509(contents->certificate.get(), &der);
    if (len <= 0) continue;
    Bytes cert(der, der + len);
    OPENSSL_free(der);
    Write("fuzz_keys", Str(cert));
    g_recipients.insert(g_recipients.begin(), cert);
  }
  return out;
}

void CmsSeeds() {
  const std::string plaintext = "seed password";
  uint8_t opts = 0;
  for (const Bytes& r : g_recipients) {
    Write("fuzz_cms", std::string{static_cast<char>(opts++), static_cast<char>(plaintext.size())} +
                          plaintext + Str(r));
  }
}

// RewrapRequests whose ciphertexts are the Wycheproof RSA-2048 OAEP vectors (sealed to the
// key written to request.key.pem), to device certificates from the PFX files.
void RequestSeeds(const fs::path& wycheproof, const std::vector<Pfx>& pfxs) {
  const std::pair<const char*, v1::Padding> files[] = {
      {"rsa_oaep_2048_sha1_mgf1sha1_test.json", v1::OAEP_SHA1},
      {"rsa_oaep_2048_sha256_mgf1sha256_test.json", v1::OAEP_SHA256},
      {"rsa_oaep_2048_sha512_mgf1sha512_test.json", v1::OAEP_SHA512},
      {"rsa_pkcs1_2048_test.json", v1::PKCS1}};
  std::string key_pem;
  int format = 0;
  for (const auto& [file, padding] : files) {
    if (!fs::exists(wycheproof / file)) continue;
    nlohmann::json j = nlohmann::json::parse(ReadFile(wycheproof / file), nullptr, false);
    if (j.is_discarded()) continue;
    for (const auto& g : j["testGroups"]) {
      const std::string pem = g.value("privateKeyPem", "");
      if (key_pem.empty()) key_pem = pem;
      if (pem != key_pem) continue;  // every request seed is sealed to one key
      v1::RewrapRequest req;
      int n = 0;
      for (const auto& t : g["tests"]) {
        if (!t.value("label", "").empty()) continue;
        auto* item = req.add_items();
        item->set_id("t" + std::to_string(t.value("tcId", 0)));
        item->set_key_name(n % 5 == 4 ? "oaep-only" : "default");
        item->set_padding(padding);
        const Bytes ct = Hex(t.value("ct", ""));
        item->set_ciphertext(Str(ct));
        item->set_format(static_cast<v1::OutputFormat>(format++ % 7));
        if (!g_recipients.empty()) {
          const Bytes& r = g_recipients[n % g_recipients.size()];
          if (n % 3 == 2) {
            item->mutable_recipient()->set_service_key("default");
          } else {
            item->mutable_recipient()->set_certificate(Str(r));
          }
        }
        if (++n % 8 == 0) {
          Write("fuzz_request", req.SerializeAsString());
          req.Clear();
        }
      }
      if (req.items_size() > 0) Write("fuzz_request", req.SerializeAsString());
    }
  }
  // Apple payloads: the PFX goes into the item.
  if (!pfxs.empty() && !g_recipients.empty()) {
    v1::RewrapRequest req;
    auto* item = req.add_items();
    item->set_id("apple");
    item->set_key_name("default");
    item->set_padding(v1::OAEP_SHA1);
    item->set_ciphertext(std::string(256, '\x01'));
    item->set_format(v1::APPLE_ENCRYPTED_PAYLOAD);
    item->mutable_recipient()->set_certificate(Str(g_recipients.front()));
    item->set_pfx(pfxs.back().bytes);
    Write("fuzz_request", req.SerializeAsString());
  }
  if (!key_pem.empty()) std::ofstream(g_out / "request.key.pem") << key_pem;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 || std::string(argv[1]) == "--help") {
    std::cerr << "usage: fuzz_seeds VECTORS_DIR OUT_DIR\n"
                 "Writes OUT_DIR/<fuzz target>/seed-N from Wycheproof and the PKCS#12 files.\n";
    return argc == 2 ? 0 : 2;
  }
  const fs::path vectors = argv[1];
  g_out = argv[2];
  if (!fs::exists(vectors / "wycheproof")) {
    std::cerr << "fuzz_seeds: " << vectors << "/wycheproof not found\n";
    return 1;
  }
  fs::create_directories(g_out);
  FromWycheproof(vectors / "wycheproof");
  const auto pfxs = FromPfxFiles(vectors);
  CmsSeeds();
  RequestSeeds(vectors / "wycheproof", pfxs);
  for (const auto& [target, n] : g_counts) std::cout << target << ": " << n << " seeds\n";
  return 0;
}
