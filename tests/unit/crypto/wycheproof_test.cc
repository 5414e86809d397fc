// Wycheproof RSAES-OAEP and RSAES-PKCS1-v1_5 decryption vectors (../shared/vectors/
// wycheproof, used unchanged) run through the HOST_UNPADDING path: OpenSSL does the raw RSA
// private operation (as the token would with CKM_RSA_X_509) and OaepUnpad / Pkcs1Unpad
// decode it. Every invalid vector must fail with the one uniform status.
#include <dirent.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "crypto/encoding.h"
#include "crypto/rsa.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/unit/crypto/test_util.h"

namespace hsmrewrap::crypto {
namespace {

using testing::EvpPkeyPtr;
using testing::SharedDir;

const absl::Status kDecryptionFailed = absl::InvalidArgumentError("decryption failed");

std::optional<HashAlg> HashByName(const std::string& name) {
  static const std::map<std::string, HashAlg> kNames = {{"SHA-1", HashAlg::kSha1},
                                                        {"SHA-256", HashAlg::kSha256},
                                                        {"SHA-384", HashAlg::kSha384},
                                                        {"SHA-512", HashAlg::kSha512}};
  auto it = kNames.find(name);
  if (it == kNames.end()) return std::nullopt;
  return it->second;
}

EvpPkeyPtr KeyFromPem(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  EVP_PKEY* k = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  return EvpPkeyPtr(k);
}

// The raw RSA private operation, as a token's CKM_RSA_X_509 would do it. nullopt when the
// ciphertext is not a valid RSA input (wrong length, >= n): the token refuses those.
std::optional<Bytes> RawDecrypt(EVP_PKEY* key, const Bytes& ct) {
  const size_t k = static_cast<size_t>(EVP_PKEY_get_size(key));
  if (ct.size() != k) return std::nullopt;
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr);
  Bytes out(k);
  size_t len = out.size();
  const bool ok = EVP_PKEY_decrypt_init(ctx) == 1 &&
                  EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_NO_PADDING) == 1 &&
                  EVP_PKEY_decrypt(ctx, out.data(), &len, ct.data(), ct.size()) == 1;
  EVP_PKEY_CTX_free(ctx);
  ERR_clear_error();
  if (!ok) return std::nullopt;
  out.resize(len);
  return out;
}

std::vector<std::string> VectorFiles(const std::string& dir, const std::string& prefix) {
  std::vector<std::string> files;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name.rfind(prefix, 0) == 0 && name.size() > 5 &&
          name.substr(name.size() - 5) == ".json") {
        files.push_back(name);
      }
    }
    closedir(d);
  }
  std::sort(files.begin(), files.end());
  return files;
}

struct Counts {
  int valid = 0, invalid = 0, refused_by_rsa = 0, skipped_groups = 0;
};

// Runs one file; `unpad` decodes a raw EM for a group.
template <typename Unpad>
Counts RunFile(const std::string& path, Unpad unpad) {
  Counts c;
  std::ifstream f(path);
  const nlohmann::json doc = nlohmann::json::parse(f);
  for (const auto& group : doc.at("testGroups")) {
    EvpPkeyPtr key = KeyFromPem(group.at("privateKeyPem").get<std::string>());
    if (!key) {
      ADD_FAILURE() << path << ": cannot load group key";
      continue;
    }
    const size_t k = static_cast<size_t>(EVP_PKEY_get_size(key.get()));
    for (const auto& t : group.at("tests")) {
      const int id = t.at("tcId").get<int>();
      const std::string result = t.at("result").get<std::string>();
      auto ct = HexDecode(t.at("ct").get<std::string>());
      if (!ct.ok()) {
        ADD_FAILURE() << path << " #" << id << ": bad hex";
        continue;
      }
      std::optional<Bytes> em = RawDecrypt(key.get(), *ct);
      if (!em) {
        // The RSA primitive itself refuses: never valid.
        EXPECT_NE(result, "valid") << path << " #" << id;
        ++c.refused_by_rsa;
        continue;
      }
      // Our API has no OAEP label: a labelled ciphertext must fail like any other.
      const bool labelled = t.contains("label") && !t.at("label").get<std::string>().empty();
      std::optional<absl::StatusOr<SecretBytes>> got = unpad(group, *em, k);
      if (!got) {
        ++c.skipped_groups;
        break;
      }
      if (result == "valid" && !labelled) {
        auto msg = HexDecode(t.at("msg").get<std::string>());
        if (!got->ok() || !msg.ok()) {
          ADD_FAILURE() << path << " #" << id << ": " << got->status();
          continue;
        }
        EXPECT_EQ(Bytes((*got)->begin(), (*got)->end()), *msg) << path << " #" << id;
        ++c.valid;
      } else if (result == "invalid" || labelled) {
        EXPECT_EQ(got->status(), kDecryptionFailed) << path << " #" << id;
        ++c.invalid;
      }  // "acceptable": either outcome is fine
    }
  }
  return c;
}

class WycheproofTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = SharedDir();
    if (!dir) GTEST_SKIP() << "shared vectors folder (HSMREWRAP_SHARED_DIR) not present";
    dir_ = *dir + "/vectors/wycheproof/";
  }
  std::string dir_;
};

TEST_F(WycheproofTest, OaepUnpad) {
  const auto files = VectorFiles(dir_, "rsa_");
  int valid = 0, invalid = 0;
  for (const std::string& name : files) {
    if (name.find("oaep") == std::string::npos) continue;
    Counts c = RunFile(dir_ + name,
                       [](const nlohmann::json& g, const Bytes& em,
                          size_t k) -> std::optional<absl::StatusOr<SecretBytes>> {
                         auto h = HashByName(g.at("sha").get<std::string>());
                         auto mgf = HashByName(g.at("mgfSha").get<std::string>());
                         if (!h || !mgf)
                           return std::nullopt;  // SHA-224, SHA-512/t: not offered by our API
                         return OaepUnpad(em, k, *h, *mgf);
                       });
    valid += c.valid;
    invalid += c.invalid;
  }
  // Sanity: the files were there and most vectors ran.
  EXPECT_GT(valid, 300);
  EXPECT_GT(invalid, 100);
}

TEST_F(WycheproofTest, Pkcs1Unpad) {
  int valid = 0, invalid = 0;
  for (const std::string& name : VectorFiles(dir_, "rsa_pkcs1_")) {
    Counts c = RunFile(
        dir_ + name,
        [](const nlohmann::json&, const Bytes& em,
           size_t k) -> std::optional<absl::StatusOr<SecretBytes>> { return Pkcs1Unpad(em, k); });
    valid += c.valid;
    invalid += c.invalid;
  }
  EXPECT_GT(valid, 100);
  EXPECT_GT(invalid, 50);
}

}  // namespace
}  // namespace hsmrewrap::crypto
