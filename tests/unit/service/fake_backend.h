// A KeyBackend fake for engine tests: keys are OpenSSL keys in memory and decryption is
// real (so outputs can be checked), while capabilities and failures are set by the test.
#pragma once

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <map>
#include <mutex>

#include "crypto/rsa.h"
#include "hsm/backend.h"

namespace hsmrewrap::testing {

// A PEM PKCS#8 RSA private key of `bits`, made with OpenSSL.
std::string MakeRsaPrivateKeyPem(int bits);
// Its SubjectPublicKeyInfo as DER.
crypto::Bytes SpkiOfPrivatePem(const std::string& pem);

class FakeBackend final : public hsm::KeyBackend {
 public:
  struct Key {
    hsm::KeyInfo info;
    std::string private_pem;
  };
  // Adds a key with the given capabilities.
  void AddKey(const std::string& name, int bits, hsm::KeyCapabilities caps,
              bool allow_pkcs1 = false);
  // Same with a given PEM private key of `bits` (e.g. a test vector's key).
  void AddKeyPem(const std::string& name, std::string private_pem, int bits,
                 hsm::KeyCapabilities caps, bool allow_pkcs1 = false);
  void SetWrapPaddings(std::set<crypto::RsaPadding> p) { wrap_ = std::move(p); }
  // Every Decrypt/RewrapInToken fails with this outcome (and status, for kRetryable and
  // kRefused) while set; kOk clears it.
  void FailWith(hsm::Outcome o, absl::Status s = absl::OkStatus()) {
    std::lock_guard<std::mutex> l(mu_);
    fail_outcome_ = o;
    fail_ = std::move(s);
  }
  const Key& key(const std::string& name) { return keys_.at(name); }
  int decrypt_calls() const { return decrypt_calls_; }
  std::vector<hsm::Path> paths_used() {
    std::lock_guard<std::mutex> l(mu_);
    return paths_;
  }

  using hsm::KeyBackend::Decrypt;
  using hsm::KeyBackend::RewrapInToken;

  absl::StatusOr<std::vector<hsm::KeyInfo>> ListKeys() override;
  absl::StatusOr<hsm::KeyRefPtr> Resolve(const std::string& name) override;
  absl::StatusOr<hsm::KeyInfo> CreateKey(const std::string& name, int bits,
                                         bool allow_pkcs1) override;
  absl::StatusOr<hsm::KeyInfo> ImportKey(const std::string&, const crypto::RsaPrivateKeyParts&,
                                         bool) override {
    return absl::UnimplementedError("fake");
  }
  absl::StatusOr<hsm::KeyInfo> SetEnabled(const std::string& name, bool enabled) override;
  hsm::OpResult<crypto::SecretBytes> Decrypt(const hsm::KeyRefPtr& key, crypto::RsaPadding padding,
                                             absl::Span<const uint8_t> ciphertext,
                                             hsm::Path path) override;
  hsm::OpResult<crypto::Bytes> RewrapInToken(const hsm::KeyRefPtr& key,
                                             crypto::RsaPadding in_padding,
                                             absl::Span<const uint8_t> ciphertext,
                                             const crypto::PublicKey& device_key,
                                             crypto::RsaPadding out_padding) override;
  std::set<crypto::RsaPadding> WrapPaddings() override { return wrap_; }
  std::string TokenLabel() override { return label_; }
  void SetTokenLabel(std::string l) { label_ = std::move(l); }
  bool Healthy() override { return healthy_.load(); }
  // While false, Healthy() is false and every key call and operation fails Unavailable.
  void SetHealthy(bool up) { healthy_.store(up); }
  // Calls of Decrypt/RewrapInToken that reached this fake (any outcome).
  int op_calls() const { return op_calls_.load(); }

 private:
  std::mutex mu_;
  std::map<std::string, Key> keys_;
  std::set<crypto::RsaPadding> wrap_;
  hsm::Outcome fail_outcome_ = hsm::Outcome::kOk;
  absl::Status fail_;
  std::atomic<int> decrypt_calls_{0};
  std::vector<hsm::Path> paths_;
  std::string label_ = "fake";
  std::atomic<bool> healthy_{true};
  std::atomic<int> op_calls_{0};
};

}  // namespace hsmrewrap::testing
