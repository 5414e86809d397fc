// oracle-timing: does the time rewrapd takes to answer reveal why a decryption failed?
//
// Imports the Wycheproof RSA-2048 keys (OAEP-SHA1 and PKCS#1 v1.5) into rewrapd with
// ImportKey, groups the files' vectors into classes (valid; invalid padding; ciphertext not
// reduced (c >= n); for OAEP, encrypted with a label), sends `--samples` one-item Rewrap
// calls per class in random interleaved order, times each call on the client, and per
// padding compares every pair of classes with Welch's t on the 10%-trimmed samples. A pair
// of invalid classes that differ (|t| > 4.5, the usual TVLA threshold) is a timing oracle.
// Valid vs invalid is printed for reference only: success is visible in the response; so is
// "c >= n", which depends on public values only (SoftHSM2/OpenSSL reject it before the
// private-key operation, so it is much faster).
#include <grpcpp/grpcpp.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "hsmrewrap/v1/rewrap.grpc.pb.h"

namespace v1 = ::hsmrewrap::v1;

namespace {

struct Vector {
  std::string ct;
};
struct Class {
  std::string name;
  std::vector<Vector> vectors;
  std::vector<double> micros;
  std::map<std::string, int> outcomes;
};

std::string Hex(const std::string& h) { return absl::HexStringToBytes(h); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

std::vector<double> Trimmed(std::vector<double> v, double frac) {
  std::sort(v.begin(), v.end());
  const size_t cut = static_cast<size_t>(static_cast<double>(v.size()) * frac);
  return std::vector<double>(v.begin() + static_cast<long>(cut), v.end() - static_cast<long>(cut));
}

double WelchT(const std::vector<double>& a, const std::vector<double>& b) {
  auto stats = [](const std::vector<double>& v, double* mean, double* var) {
    double s = 0;
    for (double x : v) s += x;
    *mean = s / static_cast<double>(v.size());
    double q = 0;
    for (double x : v) q += (x - *mean) * (x - *mean);
    *var = q / static_cast<double>(v.size() - 1);
  };
  double ma, va, mb, vb;
  stats(a, &ma, &va);
  stats(b, &mb, &vb);
  return (ma - mb) /
         std::sqrt(va / static_cast<double>(a.size()) + vb / static_cast<double>(b.size()));
}

std::string DeviceSpki() {
  EVP_PKEY* k = EVP_RSA_gen(2048);
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(k, &der);
  std::string s(reinterpret_cast<char*>(der), static_cast<size_t>(n));
  OPENSSL_free(der);
  EVP_PKEY_free(k);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"oracle-timing: timing of rewrapd's answers per Wycheproof ciphertext class"};
  std::string target = "127.0.0.1:50051", vectors = "../shared/vectors/wycheproof";
  int samples = 2000;
  double threshold = 4.5;
  app.add_option("--target", target, "rewrapd HOST:PORT (plaintext loopback)");
  app.add_option("--vectors", vectors, "folder with the Wycheproof JSON files");
  app.add_option("--samples", samples, "calls per class (default 2000)");
  app.add_option("--threshold", threshold,
                 "|t| above which a pair counts as different (default 4.5)");
  CLI11_PARSE(app, argc, argv);

  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto keys = v1::Keys::NewStub(channel);
  auto rewrap = v1::Rewrap::NewStub(channel);
  const std::string device = DeviceSpki();
  std::mt19937_64 rng(std::random_device{}());
  const std::string suffix = std::to_string(rng() % 1000000);

  struct Suite {
    const char* file;
    v1::Padding padding;
    bool pkcs1;
  };
  const Suite suites[] = {{"rsa_oaep_2048_sha1_mgf1sha1_test.json", v1::OAEP_SHA1, false},
                          {"rsa_pkcs1_2048_test.json", v1::PKCS1, true}};
  int leaks = 0;
  for (const Suite& suite : suites) {
    std::ifstream in(vectors + "/" + suite.file);
    if (!in) {
      fprintf(stderr, "oracle-timing: cannot read %s/%s\n", vectors.c_str(), suite.file);
      return 2;
    }
    nlohmann::json j = nlohmann::json::parse(in);
    const auto& group = j["testGroups"][0];
    const std::string key = std::string(suite.pkcs1 ? "wp-pkcs1-" : "wp-oaep-") + suffix;
    {
      v1::ImportKeyRequest req;
      req.set_name(key);
      req.set_pkcs8(Hex(group["privateKeyPkcs8"].get<std::string>()));
      req.set_allow_pkcs1(suite.pkcs1);
      v1::KeyInfo info;
      grpc::ClientContext ctx;
      auto st = keys->ImportKey(&ctx, req, &info);
      if (!st.ok()) {
        fprintf(stderr, "oracle-timing: ImportKey %s: %s\n", key.c_str(),
                st.error_message().c_str());
        return 1;
      }
      printf("\n== %s  key %s  %s%s\n", suite.file, key.c_str(),
             v1::Padding_Name(suite.padding).c_str(),
             info.pkcs1_implicit_rejection() ? "  (token does PKCS#1 implicit rejection)" : "");
    }
    const size_t modulus_len = 256;
    std::map<std::string, Class> classes;
    for (const auto& t : group["tests"]) {
      std::string ct = Hex(t["ct"].get<std::string>());
      if (ct.size() != modulus_len) continue;  // wrong length: INVALID_ITEM before the token
      std::vector<std::string> flags = t["flags"].get<std::vector<std::string>>();
      const bool has = [&] {
        return std::find(flags.begin(), flags.end(), "EncryptionWithLabel") != flags.end();
      }();
      std::string cls;
      if (t["result"] == "valid") {
        cls = has ? "label (valid with a label: fails here)" : "valid";
      } else if (std::find(flags.begin(), flags.end(), "InvalidOaepPadding") != flags.end() ||
                 std::find(flags.begin(), flags.end(), "InvalidPkcs1Padding") != flags.end()) {
        cls = "invalid padding";
      } else {
        cls = "c >= n (not reduced)";
      }
      classes[cls].name = cls;
      classes[cls].vectors.push_back({ct});
    }
    // Interleaved schedule: every class gets `samples` calls, cycling through its vectors.
    std::vector<std::pair<Class*, size_t>> schedule;
    for (auto& [name, c] : classes) {
      for (int i = 0; i < samples; ++i)
        schedule.emplace_back(&c, static_cast<size_t>(i) % c.vectors.size());
    }
    std::shuffle(schedule.begin(), schedule.end(), rng);
    // Warm-up (connection, caches).
    for (size_t i = 0; i < std::min<size_t>(200, schedule.size()); ++i) {
      v1::RewrapRequest req;
      auto* it = req.add_items();
      it->set_id("w");
      it->set_key_name(key);
      it->set_padding(suite.padding);
      it->set_ciphertext(schedule[i].first->vectors[schedule[i].second].ct);
      it->set_format(v1::RSA_OAEP_SHA256);
      it->mutable_recipient()->set_public_key(device);
      v1::RewrapResponse resp;
      grpc::ClientContext ctx;
      (void)rewrap->Rewrap(&ctx, req, &resp);
    }
    for (const auto& [c, idx] : schedule) {
      v1::RewrapRequest req;
      auto* it = req.add_items();
      it->set_id("s");
      it->set_key_name(key);
      it->set_padding(suite.padding);
      it->set_ciphertext(c->vectors[idx].ct);
      it->set_format(v1::RSA_OAEP_SHA256);
      it->mutable_recipient()->set_public_key(device);
      v1::RewrapResponse resp;
      grpc::ClientContext ctx;
      const auto t0 = std::chrono::steady_clock::now();
      auto st = rewrap->Rewrap(&ctx, req, &resp);
      const auto t1 = std::chrono::steady_clock::now();
      c->micros.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      std::string outcome = !st.ok() ? "rpc " + std::to_string(st.error_code())
                            : resp.results(0).has_error()
                                ? v1::ItemError::Code_Name(resp.results(0).error().code())
                                : "OK " + v1::Path_Name(resp.results(0).path());
      c->outcomes[outcome]++;
    }
    printf("%-40s %8s %6s %10s %10s  %s\n", "class", "vectors", "calls", "median_us", "trim_mean",
           "outcomes");
    for (auto& [name, c] : classes) {
      auto tr = Trimmed(c.micros, 0.1);
      double mean = 0;
      for (double x : tr) mean += x;
      mean /= static_cast<double>(tr.size());
      std::string outs;
      for (const auto& [o, n] : c.outcomes) outs += o + "=" + std::to_string(n) + " ";
      printf("%-40s %8zu %6zu %10.1f %10.1f  %s\n", name.c_str(), c.vectors.size(), c.micros.size(),
             Median(c.micros), mean, outs.c_str());
    }
    printf("pairs (Welch t on 10%%-trimmed samples; |t| > %.1f = distinguishable):\n", threshold);
    for (auto a = classes.begin(); a != classes.end(); ++a) {
      for (auto b = std::next(a); b != classes.end(); ++b) {
        const double t = WelchT(Trimmed(a->second.micros, 0.1), Trimmed(b->second.micros, 0.1));
        const bool involves_valid = a->first == "valid" || b->first == "valid";
        // c >= n is decided from public values (the ciphertext and the modulus): its timing
        // teaches nothing about any plaintext.
        const bool involves_public =
            a->first.rfind("c >= n", 0) == 0 || b->first.rfind("c >= n", 0) == 0;
        const bool diff = std::fabs(t) > threshold;
        if (diff && !involves_valid && !involves_public) ++leaks;
        printf("  %-40s vs %-40s t=%7.2f  %s\n", a->first.c_str(), b->first.c_str(), t,
               !diff             ? "no difference"
               : involves_public ? "different (c >= n is public: no secret involved)"
               : involves_valid  ? "different (success vs failure: visible in the response anyway)"
                                 : "DIFFERENT: timing oracle between failure classes");
      }
    }
  }
  printf("\nverdict: %s\n", leaks ? "TIMING DIFFERENCES BETWEEN FAILURE CLASSES"
                                  : "no timing difference between failure classes");
  return leaks ? 3 : 0;
}
