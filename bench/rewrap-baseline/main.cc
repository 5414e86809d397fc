// rewrap-baseline: the ceiling rewrapd is measured against. Opens the same token as the
// service (by default rewrapd's embedded SoftHSM2 token in --state-dir), seals distinct
// passwords to the same key with the same padding, and runs exactly the token work and
// device encryption rewrapd does per item -- hsm::Pkcs11Backend::Decrypt (or
// RewrapInToken) plus OpenSSL CMS/RSA to the device -- on as many threads as cores, with
// no gRPC and with every device certificate parsed once before timing.
//
// Prints items/s (and --json FILE). Exit 0 ok, 1 an item failed, 2 usage, 3 setup.
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "crypto/cms.h"
#include "crypto/keys.h"
#include "crypto/rsa.h"
#include "hsm/pkcs11_backend.h"

namespace hsmrewrap::bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kExitFailed = 1, kExitUsage = 2, kExitSetup = 3;

bool ParsePadding(std::string s, crypto::RsaPadding* out) {
  s = absl::AsciiStrToUpper(absl::StrReplaceAll(s, {{"-", "_"}}));
  if (s == "OAEP_SHA1")
    *out = crypto::RsaPadding::kOaepSha1;
  else if (s == "OAEP_SHA256")
    *out = crypto::RsaPadding::kOaepSha256;
  else if (s == "OAEP_SHA384")
    *out = crypto::RsaPadding::kOaepSha384;
  else if (s == "OAEP_SHA512")
    *out = crypto::RsaPadding::kOaepSha512;
  else if (s == "PKCS1")
    *out = crypto::RsaPadding::kPkcs1;
  else
    return false;
  return true;
}

// Output: CMS (OAEP-SHA256 or PKCS#1 key transport) or a bare RSA padding.
struct Format {
  bool cms = true;
  crypto::CmsKeyTransport transport = crypto::CmsKeyTransport::kRsaOaepSha256;
  crypto::RsaPadding bare = crypto::RsaPadding::kOaepSha256;
};

bool ParseFormat(std::string s, Format* f) {
  s = absl::AsciiStrToUpper(absl::StrReplaceAll(s, {{"-", "_"}}));
  if (s == "CMS" || s == "CMS_ENVELOPED") return true;
  if (s == "CMS_ENVELOPED_PKCS1") {
    f->transport = crypto::CmsKeyTransport::kRsaPkcs1;
    return true;
  }
  f->cms = false;
  if (s == "RSA_PKCS1") {
    f->bare = crypto::RsaPadding::kPkcs1;
    return true;
  }
  return s.rfind("RSA_", 0) == 0 && ParsePadding(s.substr(4), &f->bare);
}

std::unique_ptr<X509, crypto::X509Deleter> SelfSigned(EVP_PKEY* k, int serial) {
  std::unique_ptr<X509, crypto::X509Deleter> c(X509_new());
  X509_set_version(c.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(c.get()), 1000 + serial);
  X509_gmtime_adj(X509_getm_notBefore(c.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(c.get()), 86400L * 30);
  X509_NAME* name = X509_get_subject_name(c.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("baseline device"), -1, -1, 0);
  X509_set_issuer_name(c.get(), name);
  X509_set_pubkey(c.get(), k);
  X509_sign(c.get(), k, EVP_sha256());
  return c;
}

int Main(int argc, char** argv) {
  CLI::App app{
      "rewrap-baseline: the no-gRPC ceiling for rewrapd on the same token, key, padding and device "
      "encryption",
      "rewrap-baseline"};
  std::string state_dir, module = "/usr/lib/softhsm/libsofthsm2.so", token = "hsm-rewrap", pin_file;
  std::string key_name = "default", padding_name = "OAEP_SHA256", format_name = "CMS_ENVELOPED",
              json_file;
  int device_bits = 2048, create_bits = 0;
  unsigned threads = std::max(1u, std::thread::hardware_concurrency()), devices = 16,
           passwords = 2048;
  double duration_s = 10;
  app.add_option("--state-dir", state_dir,
                 "rewrapd's state folder (embedded SoftHSM2 token: softhsm2.conf, user.pin)");
  app.add_option("--module", module, "PKCS#11 module (default the SoftHSM2 module)");
  app.add_option("--token", token, "token label (default hsm-rewrap, the embedded token)");
  app.add_option("--pin-file", pin_file, "user PIN file (default STATE_DIR/user.pin)");
  app.add_option("--key-name", key_name, "service key (default 'default')");
  app.add_option("--create-bits", create_bits,
                 "create the key with this size if it does not exist");
  app.add_option("--padding", padding_name,
                 "padding of the sealed passwords (default OAEP_SHA256)");
  app.add_option(
      "--format", format_name,
      "CMS_ENVELOPED (default), CMS_ENVELOPED_PKCS1 or RSA_OAEP_SHA1/256/384/512, RSA_PKCS1");
  app.add_option("--device-bits", device_bits, "RSA device key size (default 2048)");
  app.add_option("--devices", devices, "distinct device certificates (default 16)")
      ->check(CLI::Range(1, 100000));
  app.add_option("--passwords", passwords, "distinct sealed passwords (default 2048)")
      ->check(CLI::Range(1, 10000000));
  app.add_option("--threads", threads, "worker threads = PKCS#11 sessions (default: cores)")
      ->check(CLI::Range(1, 1024));
  app.add_option("--duration", duration_s, "seconds to run (default 10)")
      ->check(CLI::PositiveNumber);
  app.add_option("--json", json_file, "write the result as JSON");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }
  crypto::RsaPadding padding;
  Format format;
  if (!ParsePadding(padding_name, &padding) || !ParseFormat(format_name, &format)) {
    std::cerr << "rewrap-baseline: unknown --padding or --format\n";
    return kExitUsage;
  }
  if (!state_dir.empty()) {
    ::setenv("SOFTHSM2_CONF", (state_dir + "/softhsm2.conf").c_str(), 1);
    if (pin_file.empty()) pin_file = state_dir + "/user.pin";
  }
  if (pin_file.empty()) {
    std::cerr << "rewrap-baseline: give --state-dir or --pin-file\n";
    return kExitUsage;
  }
  auto pin = crypto::ReadSecretFile(pin_file);
  if (!pin.ok()) {
    std::cerr << "rewrap-baseline: " << pin.status().message() << "\n";
    return kExitSetup;
  }
  hsm::Pkcs11Backend::Options bo;
  bo.module_path = module;
  bo.token.label = token;
  bo.user_pin = *pin;
  bo.pool_size = threads;
  bo.allow_host_unpadding = true;
  auto backend = hsm::Pkcs11Backend::Create(std::move(bo));
  if (!backend.ok()) {
    std::cerr << "rewrap-baseline: " << backend.status().ToString() << "\n";
    return kExitSetup;
  }
  auto info = (*backend)->GetKey(key_name);
  if (!info.ok() && info.status().code() == absl::StatusCode::kNotFound && create_bits > 0) {
    info = (*backend)->CreateKey(key_name, create_bits, false);
  }
  if (!info.ok()) {
    std::cerr << "rewrap-baseline: key " << key_name << ": " << info.status().ToString() << "\n";
    return kExitSetup;
  }
  auto pub = crypto::PublicKey::FromSpki(info->spki_der);
  if (!pub.ok()) return kExitSetup;

  // The same choice of path as the engine.
  const bool in_token = !format.cms && info->caps.unwrap.count(padding) &&
                        (*backend)->WrapPaddings().count(format.bare);
  hsm::Path path = hsm::Path::kTokenDecrypt;
  if (!in_token && !info->caps.decrypt.count(padding)) {
    if (!info->caps.raw_rsa) {
      std::cerr << "rewrap-baseline: the token cannot decrypt this padding\n";
      return kExitSetup;
    }
    path = hsm::Path::kHostUnpadding;
  }
  const char* path_name = in_token ? "IN_TOKEN" : hsm::PathName(path);

  // Prepared before timing: sealed passwords, parsed device certificates.
  std::vector<crypto::Bytes> sealed;
  for (unsigned i = 0; i < passwords; ++i) {
    unsigned char pw[18];
    RAND_bytes(pw, sizeof(pw));
    auto ct = crypto::RsaEncrypt(*pub, padding, absl::MakeConstSpan(pw, sizeof(pw)));
    if (!ct.ok()) return kExitSetup;
    sealed.push_back(*std::move(ct));
  }
  std::vector<crypto::Certificate> certs;
  for (unsigned i = 0; i < devices; ++i) {
    std::unique_ptr<EVP_PKEY, crypto::EvpPkeyDeleter> k(
        EVP_RSA_gen(static_cast<unsigned>(device_bits)));
    auto x = SelfSigned(k.get(), static_cast<int>(i));
    unsigned char* der = nullptr;
    const int len = i2d_X509(x.get(), &der);
    auto c = crypto::Certificate::Parse(absl::MakeConstSpan(der, static_cast<size_t>(len)));
    OPENSSL_free(der);
    if (!c.ok()) return kExitSetup;
    certs.push_back(*std::move(c));
  }

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> done{0}, failed{0};
  auto work = [&](unsigned t) {
    for (uint64_t i = t; !stop.load(std::memory_order_relaxed); i += threads) {
      const crypto::Bytes& ct = sealed[i % sealed.size()];
      const crypto::Certificate& cert = certs[i % certs.size()];
      absl::StatusOr<crypto::Bytes> out;
      if (in_token) {
        auto wrapped =
            (*backend)->RewrapInToken(key_name, padding, ct, cert.public_key(), format.bare);
        if (wrapped.ok()) {
          out = *std::move(wrapped);
        } else {
          out = wrapped.status();
        }
      } else {
        auto plain = (*backend)->Decrypt(key_name, padding, ct, path);
        if (!plain.ok()) {
          out = plain.status();
        } else if (format.cms) {
          crypto::CmsOptions opts;
          opts.key_transport = format.transport;
          out = crypto::CmsEnvelopeToCertificate(cert, crypto::Reveal(*plain), opts);
        } else {
          out = crypto::RsaEncrypt(cert.public_key(), format.bare, crypto::Reveal(*plain));
        }
      }
      if (!out.ok()) {
        if (failed.fetch_add(1) == 0)
          std::cerr << "rewrap-baseline: " << out.status().ToString() << "\n";
      }
      done.fetch_add(1, std::memory_order_relaxed);
    }
  };
  auto cpu_now = [] {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  };
  const double cpu0 = cpu_now();
  const auto t0 = Clock::now();
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) pool.emplace_back(work, t);
  std::this_thread::sleep_for(std::chrono::duration<double>(duration_s));
  stop.store(true);
  for (auto& th : pool) th.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  const double rate = static_cast<double>(done.load()) / elapsed;
  // CPU per item is steadier than items/s on a machine shared with other work.
  const double cpu_us =
      done.load() > 0 ? (cpu_now() - cpu0) * 1e6 / static_cast<double>(done.load()) : 0;
  std::printf(
      "baseline: key %s (%d bits), %s, %s to %d-bit device certificates, path %s, %u threads: "
      "%llu items in %.2f s = %.1f items/s (%.0f CPU us/item), %llu failed\n",
      key_name.c_str(), info->bits, padding_name.c_str(), format_name.c_str(), device_bits,
      path_name, threads, static_cast<unsigned long long>(done.load()), elapsed, rate, cpu_us,
      static_cast<unsigned long long>(failed.load()));
  if (!json_file.empty()) {
    nlohmann::json j{
        {"key_name", key_name},  {"key_bits", info->bits},     {"padding", padding_name},
        {"format", format_name}, {"device_bits", device_bits}, {"path", path_name},
        {"threads", threads},    {"items", done.load()},       {"failed", failed.load()},
        {"elapsed_s", elapsed},  {"items_per_s", rate},        {"cpu_us_per_item", cpu_us}};
    std::ofstream(json_file) << j.dump(2) << "\n";
  }
  return failed.load() > 0 ? kExitFailed : 0;
}

}  // namespace
}  // namespace hsmrewrap::bench

int main(int argc, char** argv) { return hsmrewrap::bench::Main(argc, argv); }
