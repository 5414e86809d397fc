// rewrap-load: measures rewrapd's throughput and latency and checks its outputs.
//
// Exit codes: 0 run finished without errors; 1 some items failed or did not verify;
// 2 usage error; 3 the service could not be reached or the work could not be prepared.
#include <fcntl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "clients/common/channel.h"
#include "clients/rewrap-load/load.h"

namespace hsmrewrap::load {
namespace {

constexpr int kExitErrors = 1, kExitUsage = 2, kExitUnreachable = 3;

// "oaep-sha1", "OAEP_SHA1" and "oaep_sha1" all name v1::OAEP_SHA1.
std::string EnumName(const std::string& s) {
  return absl::AsciiStrToUpper(absl::StrReplaceAll(s, {{"-", "_"}}));
}

bool WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
  return static_cast<bool>(out);
}

// --passwords-out: the plaintexts, hex, one a line, in a file only the user can read.
bool WritePasswords(const std::string& path, const std::vector<std::string>& passwords) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  ::close(fd);
  std::string text;
  for (const auto& p : passwords) absl::StrAppend(&text, absl::BytesToHexString(p), "\n");
  return WriteFile(path, text);
}

int Main(int argc, char** argv) {
  CLI::App app{
      "rewrap-load: load-tests rewrapd (closed loop, or open loop with --rate) and verifies a "
      "sample\n"
      "of the outputs with the device keys (every output with --verify-all).\n"
      "Exit codes: 0 no errors, 1 errors or mismatches, 2 usage, 3 unreachable / preparation "
      "failed.",
      "rewrap-load"};
  clients::ChannelOptions copts;
  clients::AddChannelFlags(app, copts);
  Options o;
  std::string padding = "OAEP_SHA256", format = "CMS_ENVELOPED", device_kind = "rsa",
              recipient = "certificate";
  std::string json_file, html_file, passwords_file;
  bool quiet = false;
  app.add_option("--key-name", o.key_name,
                 "service key the passwords are sealed to (default 'default')");
  app.add_option("--padding", padding,
                 "padding of the sealed passwords: OAEP_SHA256 (default), OAEP_SHA384, "
                 "OAEP_SHA512, OAEP_SHA1, PKCS1 (case and - vs _ do not matter)");
  app.add_option("--format", format,
                 "output format: CMS_ENVELOPED (default), CMS_ENVELOPED_PKCS1, RSA_OAEP_SHA1, "
                 "RSA_OAEP_SHA256, RSA_OAEP_SHA384, RSA_OAEP_SHA512, RSA_PKCS1");
  app.add_option("--device-bits", o.device_bits, "RSA device key size (default 2048)")
      ->check(CLI::Range(2048, 8192));
  app.add_option("--device-kind", device_kind,
                 "rsa (default), ec-p256 or ec-p384 (EC: CMS_ENVELOPED only)")
      ->check(CLI::IsMember({"rsa", "ec-p256", "ec-p384"}));
  app.add_option("--recipient", recipient,
                 "send device certificates (default) or public keys (SPKI)")
      ->check(CLI::IsMember({"certificate", "public-key"}));
  app.add_option("--devices", o.devices, "distinct device keys (default 16)")
      ->check(CLI::Range(1, 100000));
  app.add_option("--passwords", o.passwords, "distinct sealed passwords (default 2048)")
      ->check(CLI::Range(1, 10000000));
  app.add_option("--batch", o.batch, "items per RewrapRequest (default 64)")
      ->check(CLI::Range(1, 100000));
  app.add_option("--streams", o.streams, "concurrent RewrapStream calls (default 4)")
      ->check(CLI::Range(1, 10000));
  app.add_option("--depth", o.depth, "closed loop: batches in flight per stream (default 2)")
      ->check(CLI::Range(1, 1000));
  app.add_option("--rate", o.rate, "open loop: target items/s (default: closed loop)")
      ->check(CLI::NonNegativeNumber);
  app.add_option(
      "--max-outstanding", o.max_outstanding,
      "open loop: items in flight beyond which sends are skipped and counted (default 20000)");
  auto* dur = app.add_option("--duration", o.duration_s, "seconds to run (default 10)")
                  ->check(CLI::PositiveNumber);
  app.add_option("--items", o.items, "stop after this many items (rounded up to whole batches)")
      ->excludes(dur);
  app.add_flag("--verify-all", o.verify_all,
               "decrypt and check every output (default: every 100th, 1%)");
  app.add_option("--verify-every", o.verify_every, "sample: check every Nth output (default 100)")
      ->check(CLI::Range(1, 1000000));
  app.add_option("--server-pid", o.server_pid,
                 "rewrapd's pid (same host): report its CPU time and resident memory");
  app.add_option("--json", json_file, "write the report as JSON to FILE");
  app.add_option("--html", html_file, "write a self-contained HTML report with charts to FILE");
  app.add_flag("--quiet,-q", quiet, "no live progress line and no text report");
  app.add_option("--passwords-out", passwords_file,
                 "write the plaintext passwords it sealed to FILE (mode 0600, one a line, hex), "
                 "for tests that "
                 "search the service's logs for them; never on real data");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }
  if (!v1::Padding_Parse(EnumName(padding), &o.padding) || o.padding == v1::PADDING_UNSPECIFIED) {
    std::cerr << "rewrap-load: --padding: unknown padding '" << padding << "'\n";
    return kExitUsage;
  }
  if (EnumName(format) == "CMS") format = "CMS_ENVELOPED";
  if (!v1::OutputFormat_Parse(EnumName(format), &o.format)) {
    std::cerr << "rewrap-load: --format: unknown format '" << format << "'\n";
    return kExitUsage;
  }
  o.device_kind = device_kind == "rsa"       ? DeviceKind::kRsa
                  : device_kind == "ec-p256" ? DeviceKind::kEcP256
                                             : DeviceKind::kEcP384;
  o.recipient =
      recipient == "certificate" ? RecipientKind::kCertificate : RecipientKind::kPublicKey;
  o.progress = !quiet;

  auto channel = clients::MakeChannel(copts);
  if (!channel.ok()) {
    std::cerr << "rewrap-load: " << channel.status().message() << "\n";
    return kExitUsage;
  }
  auto keys = v1::Keys::NewStub(*channel);
  if (!quiet) std::cerr << "rewrap-load: preparing (sealing passwords, making device keys)...\n";
  auto work = Prepare(o, *keys);
  if (!work.ok()) {
    std::cerr << "rewrap-load: " << work.status().message() << "\n";
    return work.status().code() == absl::StatusCode::kInvalidArgument ? kExitUsage
                                                                      : kExitUnreachable;
  }
  if (!passwords_file.empty() && !WritePasswords(passwords_file, work->passwords)) {
    std::cerr << "rewrap-load: cannot write " << passwords_file << "\n";
    return kExitUsage;
  }
  Report r = Run(o, *work, *channel);
  r.target = copts.target;
  if (!quiet) std::cout << ReportText(r);
  if (!json_file.empty() && !WriteFile(json_file, ReportJson(r))) {
    std::cerr << "rewrap-load: cannot write " << json_file << "\n";
    return kExitUsage;
  }
  if (!html_file.empty() && !WriteFile(html_file, ReportHtml(r))) {
    std::cerr << "rewrap-load: cannot write " << html_file << "\n";
    return kExitUsage;
  }
  if (r.items == 0) {
    std::cerr << "rewrap-load: no item got a result\n";
    for (const auto& n : r.stream_errors) std::cerr << "  " << n << "\n";
    return kExitUnreachable;
  }
  return r.error_items > 0 || r.mismatches > 0 ? kExitErrors : 0;
}

}  // namespace
}  // namespace hsmrewrap::load

int main(int argc, char** argv) { return hsmrewrap::load::Main(argc, argv); }
