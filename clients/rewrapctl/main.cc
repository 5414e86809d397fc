// rewrapctl: administers rewrapd's keys and checks its health over gRPC.
//
// Exit codes: 0 success; 1 the service refused (the gRPC status is printed);
// 2 usage error; 3 the service could not be reached; 4 health is not SERVING.
#include <CLI/CLI.hpp>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "clients/common/channel.h"
#include "crypto/keys.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "hsmrewrap/v1/rewrap.grpc.pb.h"

namespace hsmrewrap::clients {
namespace {

namespace v1 = ::hsmrewrap::v1;
using nlohmann::json;

constexpr int kExitRefused = 1, kExitUsage = 2, kExitUnreachable = 3, kExitNotServing = 4;

int Report(const grpc::Status& s) {
  std::cerr << "rewrapctl: " << (s.error_message().empty() ? "error" : s.error_message())
            << " (gRPC code " << s.error_code() << ")\n";
  return (s.error_code() == grpc::StatusCode::UNAVAILABLE ||
          s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
             ? kExitUnreachable
             : kExitRefused;
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::cerr << "rewrapctl: cannot read " << path << "\n";
    std::exit(kExitUsage);
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// "CMS_ENVELOPED[AES_256_CBC,AES_128_CBC]" or "RSA_OAEP_SHA256".
std::string InTokenName(const v1::InTokenOutput& o) {
  std::string s = v1::OutputFormat_Name(o.format());
  if (o.content_ciphers_size() == 0 && o.ec_curves_size() == 0) return s;
  std::string ciphers;
  for (int c : o.content_ciphers()) {
    absl::StrAppend(&ciphers, ciphers.empty() ? "" : ",",
                    v1::ContentCipher_Name(static_cast<v1::ContentCipher>(c)));
  }
  for (const auto& curve : o.ec_curves()) {
    absl::StrAppend(&ciphers, ciphers.empty() ? "" : ",", "EC ", curve);
  }
  return absl::StrCat(s, "[", ciphers, "]");
}

json InTokenJson(const google::protobuf::RepeatedPtrField<v1::InTokenOutput>& outputs) {
  json in_token = json::array();
  for (const auto& o : outputs) {
    json ciphers = json::array();
    for (int c : o.content_ciphers()) {
      ciphers.push_back(v1::ContentCipher_Name(static_cast<v1::ContentCipher>(c)));
    }
    json curves = json::array();
    for (const auto& c : o.ec_curves()) curves.push_back(c);
    in_token.push_back(json{{"format", v1::OutputFormat_Name(o.format())},
                            {"content_ciphers", ciphers},
                            {"ec_curves", curves}});
  }
  return in_token;
}

json PathsJson(const google::protobuf::RepeatedPtrField<v1::PathSupport>& support) {
  json paths = json::object();
  for (const auto& p : support) {
    json list = json::array();
    for (int path : p.paths()) list.push_back(v1::Path_Name(static_cast<v1::Path>(path)));
    paths[v1::Padding_Name(p.padding())] = list;
  }
  return paths;
}

json KeyJson(const v1::KeyInfo& k) {
  json in_token = InTokenJson(k.in_token_outputs());
  json paths = PathsJson(k.paths());
  json tokens = json::array();
  for (const auto& t : k.tokens()) {
    tokens.push_back(json{{"name", t.name()},
                          {"token_label", t.token_label()},
                          {"up", t.up()},
                          {"state", v1::KeyTokenInfo::State_Name(t.state())},
                          {"message", t.message()},
                          {"enabled", t.enabled()},
                          {"spki_sha256", t.spki_sha256()},
                          {"paths", PathsJson(t.paths())},
                          {"in_token_outputs", InTokenJson(t.in_token_outputs())}});
  }
  return json{
      {"name", k.name()},
      {"bits", k.bits()},
      {"enabled", k.enabled()},
      {"allow_pkcs1", k.allow_pkcs1()},
      {"created", k.has_created() ? absl::FormatTime(absl::RFC3339_sec,
                                                     absl::FromUnixSeconds(k.created().seconds()),
                                                     absl::UTCTimeZone())
                                  : ""},
      {"spki_sha256", k.spki_sha256()},
      {"token", k.token_label()},
      {"paths", paths},
      {"in_token_outputs", in_token},
      {"tokens", tokens},
      {"clone_advice", k.clone_advice()}};
}

// The paths per padding and the in-token outputs, indented by `indent`.
void PrintPaths(const google::protobuf::RepeatedPtrField<v1::PathSupport>& support,
                const google::protobuf::RepeatedPtrField<v1::InTokenOutput>& outputs,
                const char* indent) {
  for (const auto& p : support) {
    std::string list;
    for (int path : p.paths())
      absl::StrAppend(&list, list.empty() ? "" : " > ", v1::Path_Name(static_cast<v1::Path>(path)));
    std::printf("%s%-12s %s\n", indent, v1::Padding_Name(p.padding()).c_str(),
                list.empty() ? "(not available)" : list.c_str());
  }
  std::string outs;
  for (const auto& o : outputs) absl::StrAppend(&outs, " ", InTokenName(o));
  std::printf("%s%-12s%s\n", indent, "in token:", outs.empty() ? " (none)" : outs.c_str());
}

void PrintKeys(const std::vector<v1::KeyInfo>& keys, const std::string& output) {
  if (output == "json") {
    json arr = json::array();
    for (const auto& k : keys) arr.push_back(KeyJson(k));
    std::cout << arr.dump(2) << "\n";
    return;
  }
  std::printf("%-24s %5s %-8s %-6s %-20s %s\n", "NAME", "BITS", "STATE", "PKCS1", "CREATED",
              "SPKI SHA-256");
  for (const auto& k : keys) {
    json j = KeyJson(k);
    std::printf("%-24s %5u %-8s %-6s %-20s %s\n", k.name().c_str(), k.bits(),
                k.enabled() ? "enabled" : "disabled", k.allow_pkcs1() ? "yes" : "no",
                j["created"].get<std::string>().c_str(), k.spki_sha256().c_str());
    if (k.tokens_size() <= 1) {
      PrintPaths(k.paths(), k.in_token_outputs(), "    ");
      continue;
    }
    // Several tokens: what each one gives.
    for (const auto& t : k.tokens()) {
      const std::string state = v1::KeyTokenInfo::State_Name(t.state());
      std::printf("  token %s (%s)%s: %s%s%s\n", t.name().c_str(), t.token_label().c_str(),
                  t.up() ? "" : " DOWN", state.c_str(), t.message().empty() ? "" : ": ",
                  t.message().c_str());
      if (t.state() == v1::KeyTokenInfo::SERVING) PrintPaths(t.paths(), t.in_token_outputs(), "      ");
    }
    if (!k.clone_advice().empty()) std::printf("  clone: %s\n", k.clone_advice().c_str());
  }
}

int Run(int argc, char** argv) {
  CLI::App app{
      "rewrapctl: manage rewrapd's service keys and check its health.\n"
      "Exit codes: 0 ok, 1 refused by the service, 2 usage, 3 unreachable, 4 not serving.",
      "rewrapctl"};
  app.require_subcommand(1);
  ChannelOptions copts;
  AddChannelFlags(app, copts);
  std::string output = "table";
  app.add_option("--output,-o", output, "table or json")->check(CLI::IsMember({"table", "json"}));
  double timeout_s = 30;
  app.add_option("--timeout", timeout_s, "seconds per call (default 30)");

  auto* keys = app.add_subcommand("keys", "manage service keys");
  keys->require_subcommand(1);
  auto* list =
      keys->add_subcommand("list", "list the keys, their state and the paths the token gives them");
  std::string name;
  uint32_t bits = 2048;
  bool allow_pkcs1 = false;
  auto* create = keys->add_subcommand("create", "generate a key in the token");
  create->add_option("name", name, "key name")->required();
  create->add_option("--bits", bits, "2048, 3072 or 4096")
      ->check(CLI::IsMember({2048, 3072, 4096}));
  create->add_flag("--allow-pkcs1", allow_pkcs1, "also accept PKCS#1 v1.5 sealed secrets (legacy)");
  std::string create_token;
  create->add_option("--token", create_token,
                     "with several tokens: the one to create the key on (config tokens: name; "
                     "default: the first that is up); clone it to the others with the HSM's tools");
  auto* import = keys->add_subcommand("import", "import an existing private key into the token");
  import->add_option("name", name, "key name")->required();
  std::string pkcs8_file, pfx_file, pfx_password_file, cng_file;
  auto* src = import->add_option_group("source", "exactly one key source");
  src->add_option("--pkcs8", pkcs8_file, "PKCS#8 (or PKCS#1) private key, PEM or DER");
  src->add_option("--pfx", pfx_file,
                  "PKCS#12 file (password from --password-file or $PFX_PASSWORD)");
  src->add_option("--cng-blob", cng_file, "RSAFULLPRIVATEBLOB written by Export-IntunePrivateKey");
  src->require_option(1);
  import->add_option("--password-file", pfx_password_file, "file holding the PFX password");
  import->add_flag("--allow-pkcs1", allow_pkcs1, "also accept PKCS#1 v1.5 sealed secrets (legacy)");
  std::vector<std::string> import_tokens;
  import->add_option("--tokens", import_tokens,
                     "with several tokens: the ones to import into (config tokens: names, comma "
                     "separated; default: every token)")
      ->delimiter(',');
  auto* exp = keys->add_subcommand("export-public", "write the public key");
  exp->add_option("name", name, "key name")->required();
  std::string format = "pem", out_file = "-";
  exp->add_option("--format", format,
                  "pem (SPKI), der (SPKI) or cng (RSAPUBLICBLOB, as Export-IntunePublicKey)")
      ->check(CLI::IsMember({"pem", "der", "cng"}));
  exp->add_option("--out", out_file, "file to write ('-' = stdout, the default)");
  auto* enable = keys->add_subcommand("enable", "allow rewraps with a key again");
  enable->add_option("name", name, "key name")->required();
  auto* disable = keys->add_subcommand("disable", "refuse rewraps with a key (KEY_DISABLED)");
  disable->add_option("name", name, "key name")->required();
  auto* selftest = app.add_subcommand(
      "selftest", "run the known-answer self-test now (exit 0 when every key passes)");
  std::string selftest_key;
  selftest->add_option("name", selftest_key, "key to test (default: every enabled key)");
  auto* health = app.add_subcommand("health", "check rewrapd's gRPC health (exit 0 when SERVING)");
  std::string service;
  health->add_option("--service", service, "service name to check ('' = the whole server)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // --help exits 0; a usage error exits 2 with the reason
  }
  auto channel = MakeChannel(copts);
  if (!channel.ok()) {
    std::cerr << "rewrapctl: " << channel.status().message() << "\n";
    return kExitUsage;
  }
  auto ctx = [&] {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
    return c;
  };
  auto keys_stub = v1::Keys::NewStub(*channel);

  if (*health) {
    auto stub = grpc::health::v1::Health::NewStub(*channel);
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    grpc::health::v1::HealthCheckResponse resp;
    auto s = stub->Check(ctx().get(), req, &resp);
    if (!s.ok()) return Report(s);
    const std::string st = grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status());
    if (output == "json")
      std::cout << json{{"status", st}}.dump() << "\n";
    else
      std::cout << st << "\n";
    return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : kExitNotServing;
  }
  if (*selftest) {
    v1::SelfTestRequest req;
    req.set_name(selftest_key);
    v1::SelfTestResponse resp;
    auto s = keys_stub->SelfTest(ctx().get(), req, &resp);
    if (!s.ok()) return Report(s);
    bool all_ok = resp.results_size() > 0;
    json arr = json::array();
    for (const auto& r : resp.results()) {
      all_ok = all_ok && r.ok();
      arr.push_back({{"name", r.name()},
                     {"ok", r.ok()},
                     {"message", r.message()},
                     {"path", v1::Path_Name(r.path())},
                     {"seconds", r.seconds()}});
      if (output != "json") {
        std::printf("%-24s %-4s %-15s %7.1f ms %s\n", r.name().c_str(), r.ok() ? "ok" : "FAIL",
                    v1::Path_Name(r.path()).c_str(), r.seconds() * 1000, r.message().c_str());
      }
    }
    if (output == "json") std::cout << arr.dump(2) << "\n";
    if (resp.results_size() == 0) std::cerr << "rewrapctl: no enabled key to test\n";
    return all_ok ? 0 : kExitRefused;
  }
  if (*list) {
    v1::ListKeysResponse resp;
    auto s = keys_stub->ListKeys(ctx().get(), v1::ListKeysRequest(), &resp);
    if (!s.ok()) return Report(s);
    PrintKeys({resp.keys().begin(), resp.keys().end()}, output);
    return 0;
  }
  if (*create || *import || *enable || *disable) {
    v1::KeyInfo info;
    grpc::Status s;
    if (*create) {
      v1::CreateKeyRequest req;
      req.set_name(name);
      req.set_bits(bits);
      req.set_allow_pkcs1(allow_pkcs1);
      req.set_token(create_token);
      s = keys_stub->CreateKey(ctx().get(), req, &info);
    } else if (*import) {
      v1::ImportKeyRequest req;
      req.set_name(name);
      req.set_allow_pkcs1(allow_pkcs1);
      for (const auto& t : import_tokens) req.add_tokens(t);
      if (!pkcs8_file.empty()) req.set_pkcs8(ReadFileOrDie(pkcs8_file));
      if (!cng_file.empty()) req.set_cng_rsa_full_private_blob(ReadFileOrDie(cng_file));
      if (!pfx_file.empty()) {
        req.mutable_pfx()->set_pfx(ReadFileOrDie(pfx_file));
        if (!pfx_password_file.empty()) {
          auto pw = crypto::ReadSecretFile(pfx_password_file);
          if (!pw.ok()) {
            std::cerr << "rewrapctl: " << pw.status().message() << "\n";
            return kExitUsage;
          }
          req.mutable_pfx()->set_password(pw->data(), pw->size());
        } else if (const char* env = std::getenv("PFX_PASSWORD")) {
          req.mutable_pfx()->set_password(env);
        }
      }
      s = keys_stub->ImportKey(ctx().get(), req, &info);
      if (req.has_pfx())
        crypto::Cleanse(req.mutable_pfx()->mutable_password()->data(), req.pfx().password().size());
    } else if (*enable) {
      v1::EnableKeyRequest req;
      req.set_name(name);
      s = keys_stub->EnableKey(ctx().get(), req, &info);
    } else {
      v1::DisableKeyRequest req;
      req.set_name(name);
      s = keys_stub->DisableKey(ctx().get(), req, &info);
    }
    if (!s.ok()) return Report(s);
    PrintKeys({info}, output);
    return 0;
  }
  if (*exp) {
    v1::GetPublicKeyRequest req;
    req.set_name(name);
    req.set_format(format == "pem"   ? v1::PEM_SPKI
                   : format == "der" ? v1::DER_SPKI
                                     : v1::CNG_RSAPUBLICBLOB);
    v1::GetPublicKeyResponse resp;
    auto s = keys_stub->GetPublicKey(ctx().get(), req, &resp);
    if (!s.ok()) return Report(s);
    if (out_file == "-") {
      std::cout << resp.public_key();
    } else {
      std::ofstream out(out_file, std::ios::binary);
      out << resp.public_key();
      if (!out) {
        std::cerr << "rewrapctl: cannot write " << out_file << "\n";
        return kExitUsage;
      }
      std::cerr << "wrote " << out_file << " (" << resp.bits() << "-bit key, SPKI SHA-256 "
                << resp.spki_sha256() << ")\n";
    }
    return 0;
  }
  return kExitUsage;
}

}  // namespace
}  // namespace hsmrewrap::clients

int main(int argc, char** argv) { return hsmrewrap::clients::Run(argc, argv); }
