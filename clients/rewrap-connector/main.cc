// rewrap-connector: turns (sealed password, device certificate) requests into device
// outputs through rewrapd. See docs/rewrap-connector.md.
//
// Exit codes: 0 every request succeeded; 1 at least one request failed (each has its
// error line); 2 usage or I/O error (nothing or not everything was processed).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fstream>
#include <iostream>

#include "clients/common/channel.h"
#include "clients/rewrap-connector/connector.h"

namespace hsmrewrap::connector {
namespace {

constexpr int kExitFailedItems = 1, kExitUsage = 2;

constexpr char kDescription[] =
    R"(rewrap-connector: rewraps sealed PFX passwords to devices through rewrapd.

Input (--in, JSON Lines, one request per line):
  {"id": "r1", "keyName": "default", "paddingScheme": "oaepSha512",
   "encryptedPfxPassword": "<base64 RSA ciphertext>",
   "deviceCertificate": "<base64 DER or PEM>"   (or "devicePublicKey": "<base64 DER SPKI or PEM>"),
   "format": "cms", "contentCipher": "aes256", "pfx": "<base64 PKCS#12, format apple only>"}
  paddingScheme (Graph names, case-insensitive): oaepSha256, oaepSha384, oaepSha512,
    oaepSha1, pkcs1; none = oaepSha512; the Graph integers 0..5 too.
  format: cms (default; CMS EnvelopedData, RSA-OAEP-SHA256 key transport or ECDH for EC
    certificates), cmsPkcs1 (PKCS#1 v1.5 key transport, as .NET EnvelopedCms), rsaOaepSha256,
    rsaOaepSha1, rsaOaepSha384, rsaOaepSha512, rsaPkcs1 (bare RSA ciphertext), apple (Apple
    EncryptedPayloadContent: the com.apple.security.pkcs12 payload plist, CMS-encrypted to a
    device certificate; needs "pfx" or "encryptedPfxBlob").
  contentCipher (CMS formats): aes256 (default), aes128, 3des (old Windows clients only).

Output (--out, JSON Lines): exactly one line per non-empty input line, IN INPUT ORDER,
each carrying the request's id:
  {"id": "r1", "output": "<base64>", "path": "HOST_UNPADDING", "token": "hsm-rewrap"}
  {"id": "r2", "error": {"code": "DECRYPT_FAILED", "message": "..."}, "path": "PATH_UNSPECIFIED",
   "line": 2, "attempts": 1}
  Error codes are the service's ItemError codes (INVALID_ITEM also for lines that do not
  parse), or the gRPC code of a stream that failed for good (UNAVAILABLE, DEADLINE_EXCEEDED...).

Rotation (--reseal --to KEY): input lines are userPFXCertificate records (as pfx-import
--out writes them); output the same records with encryptedPfxPassword re-sealed to KEY
inside the service, keyName = KEY and paddingScheme = --to-padding. Failed records are
written as error lines (to --errors FILE if given).

Replicas: streams are spread round robin over the --target addresses (one channel each).
Retries: UNAVAILABLE, DEADLINE_EXCEEDED (no answer within --deadline) and a broken stream
send the items again on a new stream to the next replica of --target (round robin), as do item errors
UNAVAILABLE and RESOURCE_EXHAUSTED; exponential backoff with jitter, at most
--max-attempts tries per item. A summary goes to stderr at the end.

Exit codes: 0 all requests succeeded; 1 some failed; 2 usage or I/O error.)";

int Main(int argc, char** argv) {
  CLI::App app{kDescription, "rewrap-connector"};
  clients::ChannelOptions copts;
  clients::AddChannelFlags(app, copts);
  Options o;
  std::string in_path = "-", out_path = "-", errors_path, cipher = "aes256",
              to_padding = "oaepSha512";
  app.add_option("--in", in_path, "request file, JSON Lines ('-' = stdin, the default)");
  app.add_option("--out", out_path, "result file, JSON Lines ('-' = stdout, the default)");
  app.add_option("--errors", errors_path, "write failed results here instead of --out");
  app.add_option("--batch", o.batch, "items per RewrapStream request (1..1000, default 100)")
      ->check(CLI::Range(1, 1000));
  app.add_option("--streams", o.streams, "concurrent RewrapStreams (default 4)")
      ->check(CLI::Range(1, 256));
  app.add_option("--inflight", o.inflight, "batches in flight per stream (1..8, default 4)")
      ->check(CLI::Range(1, 8));
  app.add_option("--window", o.window,
                 "most input lines held in memory at once (default batch*streams*inflight*2)");
  app.add_option(
         "--deadline", o.deadline_s,
         "seconds a batch may wait for its answer before it is retried elsewhere (default 30)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-attempts", o.max_attempts,
                 "tries per item before it is reported failed (default 8)")
      ->check(CLI::Range(1, 100));
  app.add_option("--content-cipher", cipher,
                 "default contentCipher for CMS formats: aes256, aes128, 3des");
  auto* reseal = app.add_flag("--reseal", o.reseal,
                              "rotation: re-seal userPFXCertificate records to --to KEY");
  app.add_option("--to", o.reseal_to, "--reseal: the new service key")->needs(reseal);
  app.add_option("--to-padding", to_padding,
                 "--reseal: padding of the new seal (default oaepSha512)")
      ->needs(reseal);
  bool progress = isatty(STDERR_FILENO) == 1, no_progress = false;
  app.add_flag("--no-progress", no_progress,
               "no progress line (it is shown when stderr is a terminal)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }
  o.progress = progress && !no_progress;
  auto c = ParseContentCipher(cipher);
  if (!c.ok()) {
    std::cerr << "rewrap-connector: --content-cipher: " << c.status().message() << "\n";
    return kExitUsage;
  }
  o.default_cipher = *c;
  if (o.reseal) {
    if (o.reseal_to.empty()) {
      std::cerr << "rewrap-connector: --reseal needs --to KEY\n";
      return kExitUsage;
    }
    auto p = ParsePaddingScheme(nlohmann::json(to_padding));
    if (!p.ok()) {
      std::cerr << "rewrap-connector: --to-padding: " << p.status().message() << "\n";
      return kExitUsage;
    }
    o.reseal_padding = *p;
  }

  // One channel per replica: the connector spreads its streams over them itself and moves
  // a failed stream to the next replica (a single round-robin channel would pin all early
  // streams to whichever replica connected first).
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (const std::string& t : clients::SplitTargets(copts.target)) {
    clients::ChannelOptions one = copts;
    one.target = t;
    auto channel = clients::MakeChannel(one);
    if (!channel.ok()) {
      std::cerr << "rewrap-connector: " << channel.status().message() << "\n";
      return kExitUsage;
    }
    channels.push_back(*std::move(channel));
  }
  if (channels.empty()) {
    std::cerr << "rewrap-connector: --target is empty\n";
    return kExitUsage;
  }

  std::ios::sync_with_stdio(false);
  std::ifstream in_file;
  std::istream* in = &std::cin;
  if (in_path != "-") {
    in_file.open(in_path, std::ios::binary);
    if (!in_file) {
      std::cerr << "rewrap-connector: cannot read " << in_path << "\n";
      return kExitUsage;
    }
    in = &in_file;
  }
  std::ofstream out_file, errors_file;
  std::ostream* out = &std::cout;
  if (out_path != "-") {
    out_file.open(out_path, std::ios::binary | std::ios::trunc);
    if (!out_file) {
      std::cerr << "rewrap-connector: cannot write " << out_path << "\n";
      return kExitUsage;
    }
    out = &out_file;
  }
  std::ostream* errors = nullptr;
  if (!errors_path.empty()) {
    errors_file.open(errors_path, std::ios::binary | std::ios::trunc);
    if (!errors_file) {
      std::cerr << "rewrap-connector: cannot write " << errors_path << "\n";
      return kExitUsage;
    }
    errors = &errors_file;
  }

  auto summary = connector::Run(o, channels, *in, *out, errors);
  if (!summary.ok()) {
    std::cerr << "rewrap-connector: " << summary.status().message() << "\n";
    return kExitUsage;
  }
  out->flush();
  if (!*out || (errors && !*errors)) {
    std::cerr << "rewrap-connector: writing the results failed\n";
    return kExitUsage;
  }
  std::cerr << FormatSummary(*summary);
  return summary->failed > 0 ? kExitFailedItems : 0;
}

}  // namespace
}  // namespace hsmrewrap::connector

int main(int argc, char** argv) { return hsmrewrap::connector::Main(argc, argv); }
