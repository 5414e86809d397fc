// Every Wycheproof RSAES-OAEP and RSAES-PKCS1-v1_5 decryption vector in
// ${HSMREWRAP_SHARED_DIR}/vectors/wycheproof through the service API:
//   ImportKey(privateKeyPkcs8) per group (a key shared by several groups is imported once),
//   one Rewrap call per group with every test's `ct` to an OpenSSL device key
//   (RSA_OAEP_SHA256 when `msg` fits, else CMS_ENVELOPED), OpenSSL decrypts, compare to `msg`.
// valid -> must decrypt to msg; invalid -> DECRYPT_FAILED (INVALID_ITEM only when the
// ciphertext is not modulus-sized, counted apart); acceptable -> either. PKCS#1 v1.5 on a
// key whose ListKeys entry says pkcs1_implicit_rejection (NSS softoken): an invalid vector
// may instead be rewrapped to a pseudo-random secret that is not `msg` and is the same when
// the group is rewrapped a second time (counted apart; never for OAEP), or answered
// INVALID_ITEM "too long for the recipient" in both rounds when that pseudo-random secret does
// not fit the output format (as a real secret of that length would not). A three-prime key
// that the token refuses with FAILED_PRECONDITION (NSS) skips its group. Every
// DECRYPT_FAILED message of the run must be byte-identical. Groups and tests the API
// cannot express are skipped and counted. Prints a table per file and writes it to
// <build>/tests/integration/wycheproof_<token>.txt.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "tests/integration/it_env.h"
#include "tests/integration/it_util.h"
#include "tests/support/test_token.h"
#include "tests/leakcheck/record.h"

#ifndef HSMREWRAP_SHARED_DIR
#define HSMREWRAP_SHARED_DIR ""
#endif
#ifndef HSMREWRAP_IT_BINARY_DIR
#define HSMREWRAP_IT_BINARY_DIR "."
#endif

namespace hsmrewrap::it {
namespace {

using nlohmann::json;

struct FileStats {
  std::string file;
  int tests = 0;
  int valid = 0, valid_ok = 0;
  int invalid = 0, invalid_decrypt_failed = 0, invalid_len = 0, invalid_accepted = 0;
  int invalid_implicit_rejection = 0;  // PKCS#1, token does implicit rejection
  int acceptable = 0, acceptable_ok = 0, acceptable_rejected = 0;
  int failures = 0;
  int groups = 0, groups_skipped = 0;
  std::map<std::string, int> skipped;  // reason -> tests
  std::map<std::string, int> paths;    // path -> successful items
};

// Why the API cannot express an OAEP group, or "".
std::string GroupSkipReason(const json& g) {
  const std::string sha = g.value("sha", ""), mgf_sha = g.value("mgfSha", "");
  for (const char* h : {"SHA-224", "SHA-512/224", "SHA-512/256"}) {
    if (sha == h) return h;
  }
  if (g.value("mgf", "MGF1") != "MGF1") return "MGF not MGF1";
  if (mgf_sha != sha) return "MGF1 hash != OAEP hash";
  if (sha != "SHA-1" && sha != "SHA-256" && sha != "SHA-384" && sha != "SHA-512") {
    return "hash " + sha;
  }
  return "";
}

v1::Padding OaepPadding(const std::string& sha) {
  if (sha == "SHA-1") return v1::OAEP_SHA1;
  if (sha == "SHA-256") return v1::OAEP_SHA256;
  if (sha == "SHA-384") return v1::OAEP_SHA384;
  return v1::OAEP_SHA512;
}

std::string PadRight(std::string s, size_t w) {
  if (s.size() < w) s.append(w - s.size(), ' ');
  return s;
}

// ImportKey, GetPublicKey(DER) and the ListKeys entry, without gtest ASSERTs (one failed
// import must not stop the run). Returns "" or what went wrong; *import_code is the
// ImportKey status code.
std::string ImportNoAssert(RewrapdHarness* h, const v1::ImportKeyRequest& req, ServiceKey* out,
                           grpc::StatusCode* import_code) {
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::KeyInfo info;
    grpc::Status s = h->keys().ImportKey(&ctx, req, &info);
    *import_code = s.error_code();
    if (!s.ok()) return "ImportKey: " + StatusText(s);
  }
  out->name = req.name();
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::GetPublicKeyRequest g;
    g.set_name(req.name());
    g.set_format(v1::DER_SPKI);
    v1::GetPublicKeyResponse resp;
    grpc::Status s = h->keys().GetPublicKey(&ctx, g, &resp);
    if (!s.ok()) return "GetPublicKey: " + StatusText(s);
    out->pub = ParsePublicKey(resp.public_key());
    if (!out->pub) return "GetPublicKey(DER_SPKI) does not parse";
    out->modulus_len = static_cast<size_t>(EVP_PKEY_get_size(out->pub.get()));
  }
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::ListKeysResponse list;
  grpc::Status s = h->keys().ListKeys(&ctx, v1::ListKeysRequest(), &list);
  if (!s.ok()) return "ListKeys: " + StatusText(s);
  for (const auto& k : list.keys()) {
    if (k.name() == req.name()) {
      out->info = k;
      return "";
    }
  }
  return "ListKeys does not list " + req.name();
}

class WycheproofTest : public RewrapdTest {};

TEST_F(WycheproofTest, EveryVectorThroughTheApi) {
  const std::filesystem::path dir =
      std::filesystem::path(HSMREWRAP_SHARED_DIR) / "vectors" / "wycheproof";
  if (std::string(HSMREWRAP_SHARED_DIR).empty() || !std::filesystem::is_directory(dir)) {
    GTEST_SKIP() << "Wycheproof vectors not found at " << dir
                 << " (set the CMake cache variable HSMREWRAP_SHARED_DIR to the shared folder)";
  }
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.is_regular_file() && e.path().extension() == ".json") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  ASSERT_FALSE(files.empty()) << "no .json files in " << dir;

  const Device device = MakeDevice(2048, "wycheproof device");
  std::map<std::string, ServiceKey> imported;  // (allow_pkcs1 + pkcs8 hex) -> key
  std::map<std::string, std::vector<std::string>> decrypt_failed_messages;  // msg -> where
  std::vector<FileStats> all;
  int key_counter = 0;

  for (const auto& path : files) {
    FileStats st;
    st.file = path.filename().string();
    std::ifstream in(path);
    json doc;
    try {
      doc = json::parse(in);
    } catch (const std::exception& ex) {
      ADD_FAILURE() << st.file << ": does not parse: " << ex.what();
      continue;
    }
    const std::string algorithm = doc.value("algorithm", "");
    const bool pkcs1 = algorithm == "RSAES-PKCS1-v1_5";
    if (!pkcs1 && algorithm != "RSAES-OAEP") {
      printf("[wycheproof] %s: algorithm '%s' is not RSA decryption; ignored\n", st.file.c_str(),
             algorithm.c_str());
      continue;
    }
    int reported = 0;
    auto fail = [&](const std::string& what) {
      ++st.failures;
      if (++reported <= 40) ADD_FAILURE() << st.file << " " << what;
    };

    int gi = 0;
    for (const json& g : doc.at("testGroups")) {
      ++gi;
      ++st.groups;
      const json& tests = g.at("tests");
      st.tests += static_cast<int>(tests.size());
      const std::string skip = pkcs1 ? "" : GroupSkipReason(g);
      if (!skip.empty()) {
        ++st.groups_skipped;
        st.skipped[skip] += static_cast<int>(tests.size());
        continue;
      }
      const v1::Padding padding = pkcs1 ? v1::PKCS1 : OaepPadding(g.value("sha", ""));

      // Import the group's key (once per distinct key and allow_pkcs1).
      const std::string pkcs8_hex = g.at("privateKeyPkcs8").get<std::string>();
      const std::string cache_key = (pkcs1 ? "1:" : "0:") + pkcs8_hex;
      auto kit = imported.find(cache_key);
      if (kit == imported.end()) {
        v1::ImportKeyRequest req;
        std::string stem = path.stem().string();
        req.set_name("wp-" + stem.substr(0, 40) + "-g" + std::to_string(gi) + "-" +
                     std::to_string(++key_counter));
        req.set_pkcs8(HexDecode(pkcs8_hex));
        leakcheck::RecordSecret(req.pkcs8());  // imported key material: never logged
        req.set_allow_pkcs1(pkcs1);
        ServiceKey k;
        grpc::StatusCode import_code = grpc::StatusCode::OK;
        const std::string err = ImportNoAssert(h_, req, &k, &import_code);
        const bool three_primes = st.file.find("three_primes") != std::string::npos;
        const test::TokenFacts& facts = test::FactsOf(CurrentToken());
        if (!err.empty() && three_primes && !facts.imports_multi_prime_without_crt &&
            import_code == grpc::StatusCode::FAILED_PRECONDITION) {
          // NSS softoken and openCryptoki cannot import a multi-prime key given as n, e, d:
          // the service says so as a client error. Any other error (or token) stays a failure.
          printf("[wycheproof] %s group %d: %s\n", st.file.c_str(), gi, err.c_str());
          ++st.groups_skipped;
          st.skipped["token cannot import multi-prime keys"] += static_cast<int>(tests.size());
          continue;
        }
        const int bits = g.value("keySize", 0);
        if (!err.empty() && bits > facts.max_rsa_bits &&
            import_code == grpc::StatusCode::INVALID_ARGUMENT &&
            err.find("it takes RSA keys of") != std::string::npos) {
          // Larger than the token's C_GetMechanismInfo maximum (openCryptoki 3.8.1: 4096): a
          // clear client error before the token is asked.
          printf("[wycheproof] %s group %d: %s\n", st.file.c_str(), gi, err.c_str());
          ++st.groups_skipped;
          st.skipped["key larger than the token takes"] += static_cast<int>(tests.size());
          continue;
        }
        if (!err.empty()) {
          fail("group " + std::to_string(gi) + " (" + std::to_string(g.value("keySize", 0)) +
               " bits): " + err + "; its tests are not run");
          st.skipped["ImportKey failed"] += static_cast<int>(tests.size());
          continue;
        }
        kit = imported.emplace(cache_key, std::move(k)).first;
      }
      const ServiceKey& key = kit->second;
      const std::set<int> advertised = key.PathsFor(padding);
      if (advertised.empty()) {
        // ListKeys says the key has no path for this padding on this token (openCryptoki's
        // PKCS#1 decryption is not used, hsm/README.md, and host unpadding is off outside the
        // embedded default): the service refuses such items UNSUPPORTED (api_test checks
        // that); the vectors cannot be run here.
        ++st.groups_skipped;
        st.skipped["padding not served on this token"] += static_cast<int>(tests.size());
        continue;
      }

      v1::RewrapRequest req;
      std::vector<const json*> items;
      for (const json& t : tests) {
        if (!pkcs1 && !t.value("label", "").empty()) {
          st.skipped["non-empty label"]++;
          continue;
        }
        const std::string msg = HexDecode(t.at("msg").get<std::string>());
        if (t.value("result", "") != "invalid")
          leakcheck::RecordSecret(msg);  // rewrapped: never logged
        const v1::OutputFormat format = msg.size() <= MaxPlaintext(Pad::kOaepSha256, 256)
                                            ? v1::RSA_OAEP_SHA256
                                            : v1::CMS_ENVELOPED;
        AddItem(&req, "tc" + std::to_string(t.at("tcId").get<int>()), key.name, padding,
                HexDecode(t.at("ct").get<std::string>()), device, Rcp::kSpkiDer, format);
        items.push_back(&t);
      }
      if (items.empty()) continue;

      grpc::ClientContext ctx;
      SetDeadline(&ctx, std::chrono::seconds(300));
      v1::RewrapResponse resp;
      grpc::Status s = h_->rewrap().Rewrap(&ctx, req, &resp);
      if (!s.ok() || resp.results_size() != req.items_size()) {
        fail("group " + std::to_string(gi) + ": Rewrap of " + std::to_string(req.items_size()) +
             " items: " + StatusText(s) + ", " + std::to_string(resp.results_size()) + " results");
        continue;
      }
      // PKCS#1 on a token with implicit rejection: the same batch again, to check that an
      // invalid vector that was rewrapped gives the same secret every time.
      const bool implicit_rejection = pkcs1 && key.info.pkcs1_implicit_rejection();
      v1::RewrapResponse again;
      if (implicit_rejection) {
        grpc::ClientContext ctx2;
        SetDeadline(&ctx2, std::chrono::seconds(300));
        grpc::Status s2 = h_->rewrap().Rewrap(&ctx2, req, &again);
        if (!s2.ok() || again.results_size() != req.items_size()) {
          fail("group " + std::to_string(gi) + ": second Rewrap of " +
               std::to_string(req.items_size()) + " items: " + StatusText(s2) + ", " +
               std::to_string(again.results_size()) + " results");
          continue;
        }
      }
      for (size_t i = 0; i < items.size(); ++i) {
        const json& t = *items[i];
        const v1::RewrapItem& item = req.items(static_cast<int>(i));
        const v1::RewrapResult& r = resp.results(static_cast<int>(i));
        const std::string result = t.at("result").get<std::string>();
        const std::string where = "tcId " + std::to_string(t.at("tcId").get<int>()) + " (" +
                                  result + ", " + t.value("comment", "") + ")";
        if (r.id() != item.id()) fail(where + ": result id '" + r.id() + "' out of order");
        bool decrypted_ok = false;
        std::string accepted_detail;
        std::string implicit_rejection_problem;  // "" = a proper implicit rejection
        if (!r.has_error()) {
          std::string why;
          auto pt = DecryptOutput(device, item.format(), false, r.ciphertext(), &why);
          const std::string msg = HexDecode(t.at("msg").get<std::string>());
          if (result == "invalid" && implicit_rejection) {
            const v1::RewrapResult& r2 = again.results(static_cast<int>(i));
            std::string why2;
            std::optional<std::string> pt2;
            if (!r2.has_error()) {
              pt2 = DecryptOutput(device, item.format(), false, r2.ciphertext(), &why2);
            }
            if (!pt) {
              implicit_rejection_problem = "output does not decrypt: " + why;
            } else if (*pt == msg) {
              implicit_rejection_problem = "the device got msg";
            } else if (r2.has_error()) {
              implicit_rejection_problem =
                  "not deterministic: rewrapped, then " + std::string(CodeName(r2.error().code()));
            } else if (!pt2 || *pt2 != *pt) {
              implicit_rejection_problem =
                  "not deterministic: the second rewrap gave " +
                  (pt2 ? "a different secret" : "an undecryptable output: " + why2);
            }
            accepted_detail = pt ? "the device got " + std::to_string(pt->size()) + " bytes"
                                 : "output does not decrypt: " + why;
          } else if (result == "invalid") {
            // Counted (and failed) below as "invalid accepted"; say what the device got.
            accepted_detail =
                pt ? "the device got " + std::to_string(pt->size()) + " bytes" +
                         (*pt == msg ? " (= msg)" : " (!= msg, e.g. implicit rejection)")
                   : "output does not decrypt: " + why;
          } else if (!pt) {
            fail(where + ": output does not decrypt: " + why);
          } else if (*pt != msg) {
            fail(where + ": decrypts to " + HexEncode(*pt) + ", want " + HexEncode(msg));
          } else {
            decrypted_ok = true;
          }
          st.paths[PathName(r.path())]++;
          if (advertised.count(r.path()) == 0) {
            fail(where + ": path " + PathName(r.path()) + " not advertised by ListKeys");
          }
          if (CurrentToken() == TokenKind::kNss && !pkcs1 && r.path() == v1::HOST_UNPADDING) {
            fail(where + ": HOST_UNPADDING on NSS");
          }
        } else if (r.error().code() == v1::ItemError::DECRYPT_FAILED) {
          decrypt_failed_messages[r.error().message()].push_back(st.file + " " + where);
          if (!r.ciphertext().empty()) fail(where + ": DECRYPT_FAILED with a ciphertext");
        }
        const bool is_len = item.ciphertext().size() != key.modulus_len;
        const auto code = r.error().code();
        if (result == "valid") {
          ++st.valid;
          if (decrypted_ok) {
            ++st.valid_ok;
          } else if (r.has_error()) {
            fail(where + ": valid vector failed: " + CodeName(code) + " \"" + r.error().message() +
                 "\"");
          }
        } else if (result == "invalid") {
          ++st.invalid;
          if (!r.has_error() && implicit_rejection && implicit_rejection_problem.empty()) {
            ++st.invalid_implicit_rejection;
          } else if (!r.has_error() && implicit_rejection) {
            ++st.invalid_accepted;
            fail(where + ": invalid vector rewrapped, but not a proper implicit rejection: " +
                 implicit_rejection_problem + " (path " + PathName(r.path()) + "; " +
                 accepted_detail + ")");
          } else if (!r.has_error()) {
            ++st.invalid_accepted;
            fail(where + ": invalid vector was accepted (path " + PathName(r.path()) + "; " +
                 accepted_detail + ")");
          } else if (code == v1::ItemError::DECRYPT_FAILED) {
            ++st.invalid_decrypt_failed;
            if (implicit_rejection && !again.results(static_cast<int>(i)).has_error()) {
              fail(where + ": not deterministic: DECRYPT_FAILED, then rewrapped");
            }
          } else if (code == v1::ItemError::INVALID_ITEM && is_len) {
            ++st.invalid_len;
          } else if (code == v1::ItemError::INVALID_ITEM && implicit_rejection &&
                     r.error().message() ==
                         "the unsealed secret is too long for the recipient key with this output "
                         "format") {
            // Implicit rejection gave a pseudo-random secret too long for the output format:
            // the answer any secret of that length gets, on every path.
            ++st.invalid_implicit_rejection;
            const v1::RewrapResult& r2 = again.results(static_cast<int>(i));
            if (!r2.has_error() || r2.error().code() != code) {
              fail(where + ": not deterministic: too long for the output, then " +
                   (r2.has_error() ? std::string(CodeName(r2.error().code())) : "rewrapped"));
            }
          } else {
            fail(where + ": invalid vector gave " + CodeName(code) + " \"" + r.error().message() +
                 "\" (want DECRYPT_FAILED" + (is_len ? " or INVALID_ITEM" : "") + "); ct " +
                 std::to_string(item.ciphertext().size()) + " bytes, modulus " +
                 std::to_string(key.modulus_len));
          }
        } else {
          ++st.acceptable;
          if (decrypted_ok) {
            ++st.acceptable_ok;
          } else if (r.has_error() && (code == v1::ItemError::DECRYPT_FAILED ||
                                       (code == v1::ItemError::INVALID_ITEM && is_len))) {
            ++st.acceptable_rejected;
          } else if (r.has_error()) {
            fail(where + ": acceptable vector gave " + CodeName(code) + " \"" +
                 r.error().message() + "\"");
          }
        }
      }
    }
    all.push_back(st);
  }

  // The table.
  std::ostringstream out;
  out << "Wycheproof through rewrapd on " << TokenName(CurrentToken()) << " (" << files.size()
      << " files in " << dir.string() << ")\n";
  out << "valid: decrypted to msg / valid run; invalid: DECRYPT_FAILED + INVALID_ITEM(length) / "
         "invalid run; inv.IR: invalid PKCS#1 vectors rewrapped by the token's implicit rejection "
         "(pseudo-random secret != msg, same on a second rewrap; only for keys with "
         "pkcs1_implicit_rejection);\ninv.acc: invalid vectors the service rewrapped otherwise "
         "(failures); acceptable: decrypted + rejected;\nfail: failed checks; skipped: tests by "
         "reason; paths: of the successful items\n\n";
  out << PadRight("file", 56) << PadRight("tests", 6) << PadRight("valid", 10)
      << PadRight("invalid", 14) << PadRight("inv.IR", 8) << PadRight("inv.acc", 9)
      << PadRight("accept", 8) << PadRight("fail", 5) << "skipped | paths\n";
  FileStats total;
  total.file = "TOTAL";
  auto line = [&](const FileStats& s) {
    std::string skipped;
    for (const auto& [why, n] : s.skipped) {
      skipped += (skipped.empty() ? "" : ", ") + why + ": " + std::to_string(n);
    }
    if (skipped.empty()) skipped = "-";
    std::string paths;
    for (const auto& [p, n] : s.paths)
      paths += (paths.empty() ? "" : ", ") + p + ": " + std::to_string(n);
    if (paths.empty()) paths = "-";
    out << PadRight(s.file, 56) << PadRight(std::to_string(s.tests), 6)
        << PadRight(std::to_string(s.valid_ok) + "/" + std::to_string(s.valid), 10)
        << PadRight(std::to_string(s.invalid_decrypt_failed) + "+" + std::to_string(s.invalid_len) +
                        "/" + std::to_string(s.invalid),
                    14)
        << PadRight(std::to_string(s.invalid_implicit_rejection), 8)
        << PadRight(std::to_string(s.invalid_accepted), 9)
        << PadRight(std::to_string(s.acceptable_ok) + "+" + std::to_string(s.acceptable_rejected),
                    8)
        << PadRight(std::to_string(s.failures), 5) << skipped << " | " << paths << "\n";
  };
  for (const auto& s : all) {
    line(s);
    total.tests += s.tests;
    total.valid += s.valid;
    total.valid_ok += s.valid_ok;
    total.invalid += s.invalid;
    total.invalid_decrypt_failed += s.invalid_decrypt_failed;
    total.invalid_len += s.invalid_len;
    total.invalid_accepted += s.invalid_accepted;
    total.invalid_implicit_rejection += s.invalid_implicit_rejection;
    total.acceptable += s.acceptable;
    total.acceptable_ok += s.acceptable_ok;
    total.acceptable_rejected += s.acceptable_rejected;
    total.failures += s.failures;
    for (const auto& [k, n] : s.skipped) total.skipped[k] += n;
    for (const auto& [k, n] : s.paths) total.paths[k] += n;
  }
  line(total);
  out << "\nkeys imported: " << imported.size() << "\n";
  out << "distinct DECRYPT_FAILED messages: " << decrypt_failed_messages.size() << "\n";
  for (const auto& [m, where] : decrypt_failed_messages) {
    out << "  " << where.size() << " x \"" << m << "\"\n";
  }
  const std::string table = out.str();
  printf("\n%s\n", table.c_str());
  const std::string report =
      std::string(HSMREWRAP_IT_BINARY_DIR) + "/wycheproof_" + TokenName(CurrentToken()) + ".txt";
  EXPECT_TRUE(WriteFile(report, table, 0644)) << "cannot write " << report;
  printf("[wycheproof] table written to %s\n", report.c_str());

  EXPECT_LE(decrypt_failed_messages.size(), 1u)
      << "DECRYPT_FAILED messages differ (padding oracle): see the table";
  EXPECT_GT(total.invalid_decrypt_failed, 0) << "no invalid vector was rejected at all";
  EXPECT_EQ(total.failures, 0) << "see the failures above and the table";
}

}  // namespace
}  // namespace hsmrewrap::it
