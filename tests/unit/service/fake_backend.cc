#include "tests/unit/service/fake_backend.h"

#include <openssl/x509.h>

namespace hsmrewrap::testing {

std::string MakeRsaPrivateKeyPem(int bits) {
  EVP_PKEY* pkey = EVP_RSA_gen(static_cast<unsigned>(bits));
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, pkey, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<size_t>(n));
  BIO_free(bio);
  EVP_PKEY_free(pkey);
  return pem;
}

crypto::Bytes SpkiOfPrivatePem(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  EVP_PKEY* pkey = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(pkey, &der);
  crypto::Bytes out(der, der + n);
  OPENSSL_free(der);
  EVP_PKEY_free(pkey);
  return out;
}

void FakeBackend::AddKey(const std::string& name, int bits, hsm::KeyCapabilities caps,
                         bool allow_pkcs1) {
  AddKeyPem(name, MakeRsaPrivateKeyPem(bits), bits, std::move(caps), allow_pkcs1);
}

void FakeBackend::AddKeyPem(const std::string& name, std::string private_pem, int bits,
                            hsm::KeyCapabilities caps, bool allow_pkcs1) {
  Key k;
  k.private_pem = std::move(private_pem);
  k.info.name = name;
  k.info.bits = bits;
  k.info.allow_pkcs1 = allow_pkcs1;
  k.info.spki_der = SpkiOfPrivatePem(k.private_pem);
  k.info.caps = std::move(caps);
  std::lock_guard<std::mutex> l(mu_);
  keys_[name] = std::move(k);
}

absl::StatusOr<std::vector<hsm::KeyInfo>> FakeBackend::ListKeys() {
  if (!healthy_.load()) return absl::UnavailableError("fake token is down");
  std::lock_guard<std::mutex> l(mu_);
  std::vector<hsm::KeyInfo> out;
  for (auto& [n, k] : keys_) out.push_back(k.info);
  return out;
}

absl::StatusOr<hsm::KeyRefPtr> FakeBackend::Resolve(const std::string& name) {
  if (!healthy_.load()) return absl::UnavailableError("fake token is down");
  hsm::KeyInfo info;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = keys_.find(name);
    if (it == keys_.end()) return absl::NotFoundError("no such key");
    info = it->second.info;
  }
  auto pub = crypto::PublicKey::FromSpki(info.spki_der);
  if (!pub.ok()) return pub.status();
  const size_t len = static_cast<size_t>((pub->bits() + 7) / 8);
  return std::make_shared<const hsm::KeyRef>(hsm::KeyRef{
      std::move(info), *std::move(pub), len, 0, reinterpret_cast<uint64_t>(this)});
}

absl::StatusOr<hsm::KeyInfo> FakeBackend::CreateKey(const std::string& name, int bits,
                                                    bool allow_pkcs1) {
  AddKey(name, bits, {}, allow_pkcs1);
  return KeyBackend::GetKey(name);
}

absl::StatusOr<hsm::KeyInfo> FakeBackend::SetEnabled(const std::string& name, bool enabled) {
  if (!healthy_.load()) return absl::UnavailableError("fake token is down");
  std::lock_guard<std::mutex> l(mu_);
  auto it = keys_.find(name);
  if (it == keys_.end()) return absl::NotFoundError("no such key");
  it->second.info.enabled = enabled;
  return it->second.info;
}

hsm::OpResult<crypto::SecretBytes> FakeBackend::Decrypt(const hsm::KeyRefPtr& key,
                                                        crypto::RsaPadding padding,
                                                        absl::Span<const uint8_t> ciphertext,
                                                        hsm::Path path) {
  using R = hsm::OpResult<crypto::SecretBytes>;
  decrypt_calls_++;
  op_calls_++;
  if (!healthy_.load()) return R::Retryable(absl::UnavailableError("fake token is down"));
  std::string pem;
  {
    std::lock_guard<std::mutex> l(mu_);
    paths_.push_back(path);
    switch (fail_outcome_) {
      case hsm::Outcome::kOk:
        break;
      case hsm::Outcome::kDecryptFailed:
        return R::DecryptFailed();
      case hsm::Outcome::kRetryable:
        return R::Retryable(fail_);
      case hsm::Outcome::kRefused:
        return R::Refused(fail_);
    }
    pem = keys_.at(key->info.name).private_pem;
  }
  auto out = crypto::RsaDecryptWithPrivateKey(
      absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(pem.data()), pem.size()), padding,
      ciphertext);
  if (!out.ok()) return R::DecryptFailed();
  return *std::move(out);
}

hsm::OpResult<crypto::Bytes> FakeBackend::RewrapInToken(const hsm::KeyRefPtr& key,
                                                        crypto::RsaPadding in_padding,
                                                        absl::Span<const uint8_t> ciphertext,
                                                        const crypto::PublicKey& device_key,
                                                        crypto::RsaPadding out_padding) {
  using R = hsm::OpResult<crypto::Bytes>;
  auto plain = Decrypt(key, in_padding, ciphertext, hsm::Path::kInToken);
  if (!plain.ok()) return R::From(plain);
  const size_t max =
      crypto::MaxPlaintextLen(out_padding, static_cast<size_t>((device_key.bits() + 7) / 8));
  if (plain->size() > max) return R::Refused(absl::InvalidArgumentError(hsm::kSecretTooLongText));
  auto out = crypto::RsaEncrypt(device_key, out_padding, crypto::Reveal(*plain));
  if (!out.ok()) return R::Refused(out.status());
  return *std::move(out);
}

}  // namespace hsmrewrap::testing
