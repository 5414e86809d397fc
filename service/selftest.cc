#include "service/selftest.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "crypto/rsa.h"
#include "proto/conversions.h"

namespace hsmrewrap::service {
namespace {

// A fresh RSA-2048 device key: private key as PEM, public key as SPKI DER.
void MakeDeviceKey(std::string* private_pem, std::string* spki_der) {
  EVP_PKEY* pkey = EVP_RSA_gen(2048);
  if (pkey == nullptr) return;
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, pkey, nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  private_pem->assign(data, static_cast<size_t>(n));
  BIO_free(bio);
  unsigned char* der = nullptr;
  int len = i2d_PUBKEY(pkey, &der);
  if (len > 0) spki_der->assign(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  EVP_PKEY_free(pkey);
}

absl::Span<const uint8_t> Span(const std::string& s) {
  return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

}  // namespace

SelfTester::SelfTester(RewrapEngine* engine, Metrics* metrics, std::chrono::seconds interval)
    : engine_(engine), metrics_(metrics), interval_(interval) {
  MakeDeviceKey(&device_private_pem_, &device_spki_der_);
  // With several tokens, the results are per key and token.
  const bool several = engine_->tokens().size() > 1;
  auto Labels = [several](const SelfTestResult& r) {
    return several ? Metrics::Labels{{"key", r.key}, {"token", r.token}}
                   : Metrics::Labels{{"key", r.key}};
  };
  metrics_->DeclareGauge("hsmrewrap_selftest_ok",
                         "1 if the key's last known-answer self-test passed", [this, Labels] {
                           std::vector<std::pair<Metrics::Labels, double>> out;
                           for (const auto& r : Last())
                             out.push_back({Labels(r), r.ok ? 1.0 : 0.0});
                           return out;
                         });
  metrics_->DeclareGauge("hsmrewrap_selftest_last_run_timestamp_seconds",
                         "Unix time of the key's last self-test", [this, Labels] {
                           std::vector<std::pair<Metrics::Labels, double>> out;
                           for (const auto& r : Last())
                             out.push_back({Labels(r), static_cast<double>(r.time_unix)});
                           return out;
                         });
  metrics_->DeclareGauge(
      "hsmrewrap_key_refused",
      "1 for a key refused because its attributes changed while it was served (found by the "
      "self-test's re-check; the log and the SelfTest RPC say which attributes)",
      [this] {
        std::vector<std::pair<Metrics::Labels, double>> out;
        for (const auto& [key, why] : Refused()) out.push_back({{{"key", key}}, 1.0});
        return out;
      });
  if (interval_.count() > 0) thread_ = std::thread([this] { Loop(); });
}

SelfTester::~SelfTester() {
  {
    absl::MutexLock l(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void SelfTester::Loop() {
  for (;;) {
    {
      absl::MutexLock l(&mu_);
      if (stopping_) return;
    }
    for (const auto& r : RunNow()) {
      if (!r.ok) spdlog::error("self-test of key '{}' failed: {}", r.key, r.message);
    }
    absl::MutexLock l(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::FromChrono(interval_));
  }
}

std::vector<SelfTestResult> SelfTester::RunNow(const std::string& key) {
  std::set<std::string> names;
  if (!key.empty()) {
    names.insert(key);
  } else {
    auto keys = engine_->backend().ListKeys();
    if (keys.ok()) {
      for (const auto& k : *keys) {
        if (k.enabled) names.insert(k.name);
      }
    }
    // Refused keys are not listed any more; they are reported until they pass again.
    absl::MutexLock l(&mu_);
    for (const auto& [name, why] : refused_) names.insert(name);
  }
  std::vector<SelfTestResult> out;
  for (const auto& n : names) {
    for (SelfTestResult& r : TestKey(n)) {
      {
        absl::MutexLock l(&mu_);
        last_[{n, r.token}] = r;
      }
      out.push_back(std::move(r));
    }
  }
  return out;
}

std::map<std::string, std::string> SelfTester::Refused() const {
  absl::MutexLock l(&mu_);
  return refused_;
}

std::vector<SelfTestResult> SelfTester::Last() const {
  absl::MutexLock l(&mu_);
  std::vector<SelfTestResult> out;
  for (const auto& [k, r] : last_) out.push_back(r);
  return out;
}

std::vector<SelfTestResult> SelfTester::TestKey(const std::string& name) {
  std::vector<SelfTestResult> out;
  hsm::TokenSet& set = engine_->tokens();
  if (set.size() == 1) {
    out.push_back(TestKeyOn(name, std::nullopt));
    out.back().token = set.member(0).name;
    return out;
  }
  // Each token that holds the key (or may: a token that is down is tested, and fails).
  for (size_t i = 0; i < set.size(); ++i) {
    auto key = set.member(i).backend->Resolve(name);
    if (!key.ok() && key.status().code() == absl::StatusCode::kNotFound) continue;
    out.push_back(TestKeyOn(name, i));
    out.back().token = set.member(i).name;
  }
  if (out.empty()) out.push_back(TestKeyOn(name, std::nullopt));
  return out;
}

SelfTestResult SelfTester::TestKeyOn(const std::string& name, std::optional<size_t> token) {
  SelfTestResult r;
  r.key = name;
  const auto start = std::chrono::steady_clock::now();
  r.time_unix = std::chrono::duration_cast<std::chrono::seconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  auto finish = [&](bool ok, std::string message) {
    r.ok = ok;
    r.message = std::move(message);
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return r;
  };
  if (device_spki_der_.empty()) return finish(false, "could not make the throw-away device key");
  // The attributes, from the token (not the cache): a key changed while it was served is
  // refused from here on (FailedPrecondition naming the attributes).
  const absl::Status recheck = engine_->backend().RecheckKey(name);
  {
    absl::MutexLock l(&mu_);
    if (recheck.code() == absl::StatusCode::kFailedPrecondition) {
      refused_[name] = std::string(recheck.message());
    } else if (recheck.ok() || recheck.code() == absl::StatusCode::kNotFound) {
      refused_.erase(name);
    }
  }
  if (!recheck.ok()) return finish(false, std::string(recheck.message()));
  auto entry = token ? engine_->tokens().ResolveOn(*token, name) : engine_->backend().Resolve(name);
  if (!entry.ok()) return finish(false, std::string(entry.status().message()));
  // A random known answer, sealed with a padding the key serves: OAEP-SHA256 (as Intune's
  // tooling seals) where it can, else the engine's next best (a token without OAEP-SHA2
  // and without host unpadding serves OAEP-SHA1 only: testing OAEP-SHA256 there would fail
  // forever although every item it can take works).
  std::optional<crypto::RsaPadding> padding;
  const size_t member = token.value_or(0);
  for (const auto& [p, paths] : engine_->PathsFor((*entry)->info, member)) {
    if (!paths.empty()) {
      padding = p;
      break;
    }
  }
  if (!padding) {
    return finish(false, "the key serves no padding on this token (no path for any padding)");
  }
  // The output: OAEP-SHA256 to the device, or OAEP-SHA1 where the token wraps only that
  // (so an IN_TOKEN key is tested on its IN_TOKEN path).
  const std::set<crypto::RsaPadding> wraps =
      engine_->tokens().member(member).backend->WrapPaddings();
  const crypto::RsaPadding out_padding =
      !wraps.count(crypto::RsaPadding::kOaepSha256) && wraps.count(crypto::RsaPadding::kOaepSha1)
          ? crypto::RsaPadding::kOaepSha1
          : crypto::RsaPadding::kOaepSha256;
  crypto::SecretBytes secret(32);
  RAND_bytes(secret.data(), static_cast<int>(secret.size()));
  auto sealed = crypto::RsaEncrypt((*entry)->public_key, *padding, crypto::Reveal(secret));
  if (!sealed.ok())
    return finish(false, absl::StrCat("sealing failed: ", sealed.status().message()));
  v1::RewrapItem item;
  item.set_id("selftest");
  item.set_key_name(name);
  item.set_padding(proto_crypto::PaddingToProto(*padding));
  item.set_ciphertext(sealed->data(), sealed->size());
  item.mutable_recipient()->set_public_key(device_spki_der_);
  item.set_format(out_padding == crypto::RsaPadding::kOaepSha1 ? v1::RSA_OAEP_SHA1
                                                               : v1::RSA_OAEP_SHA256);
  v1::RewrapResult res = engine_->ProcessItem(item, nullptr, nullptr, nullptr, token);
  r.path = res.path();
  if (res.has_error()) {
    return finish(false, absl::StrCat(v1::ItemError::Code_Name(res.error().code()), ": ",
                                      res.error().message()));
  }
  auto opened = crypto::RsaDecryptWithPrivateKey(Span(device_private_pem_), out_padding,
                                                 Span(res.ciphertext()));
  if (!opened.ok() || *opened != secret)
    return finish(false, "the rewrapped value does not match the known answer");
  return finish(true, "");
}

}  // namespace hsmrewrap::service
