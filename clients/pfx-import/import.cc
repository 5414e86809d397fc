// pfx-import import: check, seal, verify, write and upload records, --jobs rows at a time.
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "clients/common/channel.h"
#include "clients/pfx-import/commands.h"
#include "clients/pfx-import/parallel.h"
#include "clients/pfx-import/pfx_import.h"
#include "clients/pfx-import/rows.h"
#include "clients/pfx-import/state.h"
#include "crypto/encoding.h"
#include "crypto/keys.h"
#include "hsmrewrap/v1/rewrap.grpc.pb.h"
#include "proto/conversions.h"

namespace hsmrewrap::pfx_import {

using crypto::PfxPurpose;
using crypto::RsaPadding;
using crypto::SecretBytes;
using crypto::SecretString;

namespace {

namespace v1 = ::hsmrewrap::v1;

constexpr char kProviderName[] = "hsm-rewrap";
constexpr size_t kMaxPfxFile = 16 * 1024 * 1024;

struct Flags {
  clients::ChannelOptions channel;
  bool service_given = false;
  std::string key_name = "default";
  std::string public_key_file;
  std::string pfx, password_file, upn, purpose = "unassigned", padding = "oaepSha512";
  std::string csv, out, out_dir;
  bool verify = false, dry_run = false, quiet = false, verbose = false;
  GraphFlags graph;
  std::string state_file;
  std::string enum_case = "camel", password_encoding = "intune";
  int jobs = 0;  // 0: hardware cores
};

// What became of one row.
struct Outcome {
  enum Kind { kImported, kSkipped, kFailed } kind = kFailed;
  std::string reason;   // for failures: the summary class
  std::string message;  // for failures: what to tell the admin
  std::string record;   // the record's JSON line for --out (also when the upload failed)
  std::string upn, thumbprint;  // for the state file
};

Outcome Fail(std::string reason, std::string message) {
  Outcome o;
  o.kind = Outcome::kFailed;
  o.reason = std::move(reason);
  o.message = std::move(message);
  return o;
}

class Importer final {
 public:
  Importer(const Flags& flags) : f_(flags) {}

  // Start-up: everything that is the same for every row. Returns an exit code or -1.
  int Init() {
    auto padding = ParsePadding(f_.padding);
    if (!padding.ok()) return Usage(padding.status().message());
    padding_ = *padding;
    enum_case_ = f_.enum_case == "pascal" ? EnumCase::kPascal : EnumCase::kCamel;
    encoding_ =
        f_.password_encoding == "utf8" ? PasswordEncoding::kUtf8 : PasswordEncoding::kIntune;
    if (f_.service_given || f_.verify || f_.public_key_file.empty()) {
      auto ch = clients::MakeChannel(f_.channel);
      if (!ch.ok()) return Usage(ch.status().message());
      channel_ = *ch;
    }
    // The service public key.
    if (!f_.public_key_file.empty()) {
      auto bytes = ReadWholeFile(f_.public_key_file, 1 << 20);
      if (!bytes.ok()) return Startup(bytes.status().message());
      auto key = crypto::PublicKey::FromAnyPublicKeyFile(
          absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(bytes->data()), bytes->size()));
      if (!key.ok()) {
        return Startup(absl::StrCat(f_.public_key_file, ": ", key.status().message(),
                                    " (expected PEM SubjectPublicKeyInfo or a CNG RSAPUBLICBLOB)"));
      }
      service_key_.emplace(std::move(*key));
    } else {
      auto stub = v1::Keys::NewStub(channel_);
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      v1::GetPublicKeyRequest req;
      req.set_name(f_.key_name);
      req.set_format(v1::DER_SPKI);
      v1::GetPublicKeyResponse resp;
      grpc::Status s = stub->GetPublicKey(&ctx, req, &resp);
      if (!s.ok()) {
        return Startup(absl::StrCat("cannot get the public key of '", f_.key_name, "' from ",
                                    f_.channel.target, ": ", s.error_message(), " (gRPC code ",
                                    static_cast<int>(s.error_code()), ")"));
      }
      auto key = crypto::PublicKey::FromSpki(absl::MakeConstSpan(
          reinterpret_cast<const uint8_t*>(resp.public_key().data()), resp.public_key().size()));
      if (!key.ok())
        return Startup(absl::StrCat("the service's public key: ", key.status().message()));
      service_key_.emplace(std::move(*key));
    }
    if (!service_key_->is_rsa()) return Startup("the service key is not an RSA key");
    modulus_len_ = static_cast<size_t>((service_key_->bits() + 7) / 8);
    max_password_ = crypto::MaxPlaintextLen(padding_, modulus_len_);
    if (max_password_ == 0) {
      return Startup(absl::StrCat(PaddingName(padding_, EnumCase::kCamel),
                                  " cannot be used with a ", service_key_->bits(), "-bit key"));
    }
    if (f_.verify && !InitVerify()) return kExitStartup;
    // Outputs.
    if (f_.out == "-") {
      out_ = &std::cout;
    } else if (!f_.out.empty()) {
      out_file_.open(f_.out, std::ios::binary | std::ios::app);
      if (!out_file_) return Startup(absl::StrCat("cannot write ", f_.out));
      out_ = &out_file_;
    }
    if (!f_.out_dir.empty()) {
      mkdir(f_.out_dir.c_str(), 0700);
      struct stat st;
      if (stat(f_.out_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        return Startup(absl::StrCat("--out-dir ", f_.out_dir, " is not a directory"));
      }
    }
    if (f_.graph.Given() && !f_.dry_run) {
      GraphClient::Options go;
      go.stop = StopFlag();
      go.on_throttle = [this](absl::Duration d) {
        throttled_wait_ms_ = absl::ToInt64Milliseconds(d);
        ++throttled_;
      };
      auto g = OpenGraph(f_.graph, std::move(go));
      if (!g.ok()) {
        return g.status().code() == absl::StatusCode::kInvalidArgument
                   ? Usage(g.status().message())
                   : Startup(g.status().message());
      }
      graph_ = std::move(*g);
      target_ = graph_.graph->RecordsUrl();
    }
    if (target_.empty()) target_ = "records";
    if (!f_.state_file.empty() && !f_.dry_run) {
      auto s = StateFile::Open(f_.state_file);
      if (!s.ok()) return Startup(s.status().message());
      state_ = std::move(*s);
    }
    return -1;
  }

  // The password for rows that do not name one: --password-file, $PFX_PASSWORD or a prompt.
  absl::StatusOr<SecretString> RunPassword() {
    std::lock_guard<std::mutex> lock(password_mu_);  // workers ask at once; prompt once
    if (run_password_) return *run_password_;
    if (!f_.password_file.empty()) {
      auto p = crypto::ReadSecretFile(f_.password_file);
      if (!p.ok()) return p.status();
      run_password_ = std::move(*p);
    } else if (const char* env = std::getenv("PFX_PASSWORD"); env != nullptr) {
      run_password_ = SecretString(env);
    } else {
      auto p = PromptNoEcho("PFX password: ");
      if (!p) {
        return absl::InvalidArgumentError(
            "no PFX password: use --password-file, $PFX_PASSWORD or run on a terminal to be "
            "prompted");
      }
      run_password_ = std::move(*p);
    }
    return *run_password_;
  }

  int Run(RowSource& rows) {
    Progress progress(!f_.quiet && isatty(STDERR_FILENO) == 1, rows.total());
    int64_t done = 0, throttled_seen = 0;
    InstallStopHandler();
    const int jobs = f_.jobs > 0 ? f_.jobs : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    RunInOrder<Row, Outcome>(
        jobs, [&rows](Row* row) { return rows.Next(row); },
        [this](const Row& row) { return Process(row); },
        [&](Row& row, Outcome& o) {
          ++done;
          if (const int64_t t = throttled_.load(); t != throttled_seen && !f_.quiet) {
            throttled_seen = t;
            progress.Message(absl::StrCat(
                "pfx-import: Graph is throttling (429); every worker waits ",
                absl::FormatDuration(absl::Milliseconds(throttled_wait_ms_.load()))));
          }
          if (!o.record.empty() && out_ != nullptr) {
            *out_ << o.record << "\n";
            if (!*out_) o = Fail("output", "cannot write the record");
          }
          if (o.kind == Outcome::kImported && state_) {
            absl::Status s = state_->Record(o.upn, o.thumbprint, target_);
            if (!s.ok()) o = Fail("state-file", std::string(s.message()));
          }
          switch (o.kind) {
            case Outcome::kImported:
              ++imported_;
              if (f_.verbose)
                progress.Message(absl::StrCat("pfx-import: ", row.where, ": ", o.message));
              break;
            case Outcome::kSkipped:
              ++skipped_;
              if (f_.verbose)
                progress.Message(absl::StrCat("pfx-import: ", row.where, ": skipped, ", o.message));
              break;
            case Outcome::kFailed:
              ++failed_[o.reason];
              ++failed_total_;
              progress.Message(
                  absl::StrCat("pfx-import: ", row.where, ": ", o.reason, ": ", o.message));
              break;
          }
          progress.Update(done, imported_, skipped_, failed_total_);
        },
        StopFlag());
    progress.Update(done, imported_, skipped_, failed_total_, true);
    progress.Finish();
    if (out_ != nullptr) out_->flush();
    const double secs = absl::ToDoubleSeconds(absl::Now() - start_);
    std::string summary = absl::StrFormat(
        "pfx-import: %d imported%s, %d skipped, %d failed (%.1f s, %d jobs)", imported_,
        f_.dry_run ? " (dry run: not uploaded)" : "", skipped_, failed_total_, secs, jobs);
    for (const auto& [reason, n] : failed_)
      absl::StrAppend(&summary, "\n  failed ", reason, ": ", n);
    if (verified_ > 0) absl::StrAppend(&summary, "\n  verified through the service: ", verified_.load());
    if (StopFlag()->load()) {
      absl::StrAppend(&summary, "\n  interrupted: rows after the last one reported were not "
                                "started", state_ ? "; the state file is up to date" : "");
    }
    std::cerr << summary << "\n";
    if (StopFlag()->load()) return kExitInterrupted;
    return failed_total_ > 0 ? kExitRowsFailed : 0;
  }

 private:
  static int Usage(absl::string_view msg) {
    std::cerr << "pfx-import: " << msg << "\n";
    return kExitUsage;
  }
  static int Startup(absl::string_view msg) {
    std::cerr << "pfx-import: " << msg << "\n";
    return kExitStartup;
  }
  void SetDeadline(grpc::ClientContext* ctx) const {
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(f_.graph.timeout_s * 1000)));
  }

  bool InitVerify() {
    // A throw-away RSA-2048 "device" key, in memory only, for the whole run.
    EVP_PKEY* raw = EVP_RSA_gen(2048);
    if (raw == nullptr) {
      Startup("cannot generate the verification key");
      return false;
    }
    std::unique_ptr<EVP_PKEY, crypto::EvpPkeyDeleter> pkey(raw);
    auto pub = crypto::PublicKey::FromEvpPkey(pkey.get());
    if (!pub.ok()) {
      Startup(pub.status().message());
      return false;
    }
    device_spki_ = pub->SpkiDer();
    unsigned char* der = nullptr;
    const int len = i2d_PrivateKey(pkey.get(), &der);
    if (len <= 0) {
      Startup("cannot encode the verification key");
      return false;
    }
    device_private_der_.assign(der, der + len);
    OPENSSL_clear_free(der, static_cast<size_t>(len));
    rewrap_stub_ = v1::Rewrap::NewStub(channel_);
    return true;
  }

  // Rewraps the sealed password to the device key through the service, decrypts it and
  // opens the PFX with the result.
  absl::Status Verify(const crypto::Bytes& sealed, const SecretString& password,
                      const SecretBytes& password_bytes,
                      absl::Span<const uint8_t> pfx, const std::string& thumbprint) {
    v1::RewrapRequest req;
    auto* item = req.add_items();
    item->set_id("verify");
    item->set_key_name(f_.key_name);
    item->set_padding(proto_crypto::PaddingToProto(padding_));
    item->set_ciphertext(sealed.data(), sealed.size());
    item->mutable_recipient()->set_public_key(device_spki_.data(), device_spki_.size());
    item->set_format(v1::RSA_OAEP_SHA256);
    v1::RewrapResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    grpc::Status s = rewrap_stub_->Rewrap(&ctx, req, &resp);
    if (!s.ok()) {
      return absl::UnavailableError(
          absl::StrCat("the service refused the rewrap: ", s.error_message(), " (gRPC code ",
                       static_cast<int>(s.error_code()), ")"));
    }
    if (resp.results_size() != 1) return absl::InternalError("the service returned no result");
    const auto& r = resp.results(0);
    if (r.has_error()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the service could not rewrap the password: ", v1::ItemError::Code_Name(r.error().code()),
          ": ", r.error().message()));
    }
    auto plain = crypto::RsaDecryptWithPrivateKey(
        absl::MakeConstSpan(device_private_der_), RsaPadding::kOaepSha256,
        absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(r.ciphertext().data()),
                            r.ciphertext().size()));
    if (!plain.ok()) {
      return absl::DataLossError("the device key cannot decrypt what the service returned");
    }
    if (*plain != password_bytes) {
      return absl::DataLossError("the password the device recovers differs from the original");
    }
    const SecretString recovered = PasswordTextFromBytes(crypto::Reveal(*plain), encoding_);
    if (recovered == password) {
      // The very text that opened this PFX a moment ago: opening it again would only repeat
      // the key derivations (600000 PBKDF2 iterations each in GnuTLS's files).
      ++verified_;
      return absl::OkStatus();
    }
    auto reopened = crypto::OpenPfx(pfx, recovered);
    if (!reopened.ok()) {
      return absl::DataLossError(absl::StrCat("the recovered password does not open the PFX: ",
                                              reopened.status().message()));
    }
    if (reopened->thumbprint != thumbprint) {
      return absl::DataLossError(
          "the PFX opened with the recovered password has another certificate");
    }
    ++verified_;
    return absl::OkStatus();
  }

  Outcome Process(const Row& row) {
    if (!row.parse_error.empty()) return Fail("manifest", row.parse_error);
    auto purpose = ParsePurpose(row.purpose);
    if (!purpose.ok()) return Fail("manifest", std::string(purpose.status().message()));
    // Password.
    SecretString password;
    if (row.password) {
      password = *row.password;
    } else if (!row.password_file.empty()) {
      auto p = crypto::ReadSecretFile(row.password_file);
      if (!p.ok()) return Fail("password-file", std::string(p.status().message()));
      password = std::move(*p);
    } else {
      auto p = RunPassword();
      if (!p.ok()) return Fail("password", std::string(p.status().message()));
      password = std::move(*p);
    }
    // The PFX.
    auto data = ReadWholeFile(row.pfx_path, kMaxPfxFile);
    if (!data.ok()) return Fail("unreadable", std::string(data.status().message()));
    const auto pfx =
        absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(data->data()), data->size());
    auto contents = crypto::OpenPfx(pfx, password);
    if (!contents.ok()) {
      return Fail(crypto::PfxProblemName(crypto::PfxProblemOf(contents.status())),
                  std::string(contents.status().message()));
    }
    absl::Status check = crypto::CheckPfxForImport(*contents, *purpose, absl::Now());
    if (!check.ok()) {
      return Fail(crypto::PfxProblemName(crypto::PfxProblemOf(check)),
                  std::string(check.message()));
    }
    if (state_ && !state_->Claim(row.upn, contents->thumbprint, target_)) {
      Outcome o;
      o.kind = Outcome::kSkipped;
      o.message = absl::StrCat(contents->thumbprint, " for ", row.upn,
                               state_->Done(row.upn, contents->thumbprint, target_)
                                   ? " already done (state file)"
                                   : " is an earlier row's record (same UPN and certificate)");
      return o;
    }
    Outcome o = Seal(row, pfx, password, *contents, *purpose);
    if (o.kind != Outcome::kImported && state_) {
      state_->Release(row.upn, contents->thumbprint, target_);
    }
    return o;
  }

  // Seals, verifies, writes --out-dir and uploads one checked PFX.
  Outcome Seal(const Row& row, absl::Span<const uint8_t> pfx, const SecretString& password,
               const crypto::PfxContents& contents, PfxPurpose purpose) {
    // Seal the password.
    auto bytes = PasswordBytes(password, encoding_);
    if (!bytes.ok()) return Fail("password-encoding", std::string(bytes.status().message()));
    if (bytes->size() > max_password_) {
      return Fail(
          "password-too-long",
          absl::StrCat("the password is ", bytes->size(), " bytes; ",
                       PaddingName(padding_, EnumCase::kCamel), " with the ", service_key_->bits(),
                       "-bit service key allows at most ", max_password_, " bytes"));
    }
    auto sealed = crypto::RsaEncrypt(*service_key_, padding_, crypto::Reveal(*bytes));
    if (!sealed.ok()) return Fail("encrypt", std::string(sealed.status().message()));
    if (f_.verify) {
      absl::Status v = Verify(*sealed, password, *bytes, pfx, contents.thumbprint);
      if (!v.ok()) return Fail("verify-failed", std::string(v.message()));
    }
    RecordInput in;
    in.thumbprint = contents.thumbprint;
    in.purpose = purpose;
    in.user_principal_name = row.upn;
    in.not_before = contents.not_before;
    in.not_after = contents.not_after;
    in.provider_name = kProviderName;
    in.key_name = f_.key_name;
    in.padding = padding_;
    in.pfx_base64 = crypto::Base64Encode(pfx);
    in.encrypted_password_base64 = crypto::Base64Encode(*sealed);
    in.created = absl::Now();
    const nlohmann::ordered_json record = BuildRecord(in, enum_case_, absl::LocalTimeZone());
    if (!f_.out_dir.empty()) {
      const std::string file =
          absl::StrCat(f_.out_dir, "/", SafeFileName(row.upn), "-", contents.thumbprint, ".json");
      std::ofstream o(file, std::ios::binary | std::ios::trunc);
      o << record.dump(2) << "\n";
      if (!o) return Fail("output", absl::StrCat("cannot write ", file));
    }
    Outcome o;
    o.record = record.dump();
    o.upn = row.upn;
    o.thumbprint = contents.thumbprint;
    std::string what = absl::StrCat(contents.thumbprint, " for ", row.upn);
    if (graph_.graph) {
      GraphResult u = graph_.graph->Call("POST", "/deviceManagement/userPfxCertificates", o.record);
      if (!u.ok()) {
        o.kind = Outcome::kFailed;
        o.reason = u.status == 0 ? "upload-network" : absl::StrCat("upload-http-", u.status);
        o.message = u.error;
        if (u.status == 409 || (u.status == 400 && u.error.find("exist") != std::string::npos)) {
          absl::StrAppend(&o.message, " (to replace a record use pfx-import update)");
        }
        return o;
      }
      absl::StrAppend(&what, " uploaded (HTTP ", u.status,
                      u.attempts > 1 ? absl::StrCat(", ", u.attempts, " attempts") : "", ")");
    } else if (f_.dry_run && f_.graph.Given()) {
      absl::StrAppend(&what, " (dry run: would POST to ",
                      f_.graph.graph_url.empty() ? kGlobalGraph : f_.graph.graph_url,
                      "/deviceManagement/userPfxCertificates)");
    }
    o.kind = Outcome::kImported;
    o.message = what;
    return o;
  }

  const Flags& f_;
  RsaPadding padding_ = RsaPadding::kOaepSha512;
  EnumCase enum_case_ = EnumCase::kCamel;
  PasswordEncoding encoding_ = PasswordEncoding::kIntune;
  std::shared_ptr<grpc::Channel> channel_;
  std::optional<crypto::PublicKey> service_key_;
  size_t modulus_len_ = 0, max_password_ = 0;
  crypto::Bytes device_spki_;
  SecretBytes device_private_der_;
  std::unique_ptr<v1::Rewrap::Stub> rewrap_stub_;
  std::ostream* out_ = nullptr;
  std::ofstream out_file_;
  GraphSession graph_;
  std::atomic<int64_t> throttled_{0}, throttled_wait_ms_{0};
  std::unique_ptr<StateFile> state_;
  std::string target_;
  std::mutex password_mu_;
  std::optional<SecretString> run_password_;  // guarded by password_mu_
  absl::Time start_ = absl::Now();
  int64_t imported_ = 0, skipped_ = 0, failed_total_ = 0;  // the collecting thread's
  std::atomic<int64_t> verified_{0};
  std::map<std::string, int64_t> failed_;
};

constexpr char kDescription[] =
    R"(pfx-import: import users' PFX (PKCS#12) files into Intune as userPFXCertificate
records whose password is sealed to an hsm-rewrap service key.

For each PFX: opens it with its password and checks it (not a PKCS#12, wrong password, no
private key, no certificate, key/certificate mismatch, expired, not yet valid, KeyUsage
against the intended purpose), seals the password to the service key and writes the record
(INTEROP.md §4.2). Optionally verifies it through the service and uploads it to Graph.

Input: one file (--pfx with --upn) or a CSV manifest (--csv) with a header row naming
  pfxPath            PFX path (relative paths are relative to the CSV file)   required
  userPrincipalName  the owner's UPN                                           required
  password           the PFX password in clear                                optional
  passwordFile       a file holding the password (one trailing newline cut)    optional
  intendedPurpose    smimeEncryption | smimeSigning | unassigned               optional
Rows without password/passwordFile use the run's password. Rows are streamed.

Passwords: --password-file FILE, else $PFX_PASSWORD, else a no-echo prompt on the terminal.
Never on the command line. Password bytes are Intune's (low byte of each UTF-16 unit);
characters above U+00FF are refused unless --password-encoding utf8.

Upload (with --graph-url, or app sign-in: --tenant and --client-id): POST
{graph}/deviceManagement/userPfxCertificates, signed in as an app (--client-secret-file or
--client-cert/--client-key) or with a bearer token from --token-file or $GRAPH_TOKEN; a 429
makes every worker wait Retry-After; a 401 gets one new token and one re-send.

Rows run --jobs at a time (default: cores); records come out in input order. Ctrl-C lets
the rows in flight finish, keeps the state file and exits 130.

Other commands: pfx-import list | remove | update (pfx-import COMMAND --help).

Exit codes: 0 every row imported or skipped; 1 at least one row failed; 2 usage error;
3 start-up failure (service unreachable, key unusable, output not writable); 130 Ctrl-C.)";

}  // namespace

int RunImport(int argc, char** argv) {
  Flags f;
  CLI::App app{kDescription, "pfx-import [import]"};
  app.get_formatter()->column_width(34);
  clients::AddChannelFlags(app, f.channel);
  auto* service =
      app.add_option("--service", f.channel.target, "rewrapd address HOST:PORT (same as --target)");
  app.add_option("--key-name", f.key_name,
                 "service key name; also the record's keyName (default: default)");
  app.add_option("--public-key-file", f.public_key_file,
                 "service public key: PEM SPKI or CNG RSAPUBLICBLOB (Export-IntunePublicKey); "
                 "without it the key is fetched from --service");
  auto* pfx = app.add_option("--pfx", f.pfx, "one PFX file to import (needs --upn)");
  app.add_option("--password-file", f.password_file, "file holding the PFX password");
  app.add_option("--upn", f.upn, "userPrincipalName for --pfx");
  app.add_option("--purpose", f.purpose,
                 "intended purpose: smimeEncryption, smimeSigning or unassigned (default; also "
                 "the default for CSV rows)");
  app.add_option("--padding", f.padding, "oaepSha256, oaepSha384 or oaepSha512 (default)");
  auto* csv = app.add_option("--csv", f.csv, "CSV manifest for bulk import (see above)");
  pfx->excludes(csv);
  app.add_option("--out", f.out, "write records as JSON Lines to FILE (appended; '-' = stdout)");
  app.add_option("--out-dir", f.out_dir,
                 "write each record to DIR/<upn>-<thumbprint>.json (indented)");
  app.add_flag("--verify", f.verify,
               "rewrap each sealed password through the service to a throw-away device key, "
               "decrypt it and open the PFX with it, before anything is written or uploaded");
  AddGraphFlags(app, f.graph, /*add_timeout=*/false);
  app.add_option("--jobs,-j", f.jobs, "rows checked, sealed, verified and uploaded in parallel "
                                      "(default: cores)")
      ->check(CLI::Range(1, 256));
  app.add_option(
      "--state-file", f.state_file,
      "JSON Lines file of successes; a re-run skips rows already done for the same target");
  app.add_flag("--dry-run", f.dry_run,
               "check, seal and write records, but upload nothing and keep no state");
  app.add_option("--enum-case", f.enum_case,
                 "camel (Graph docs, default) or pascal (PowerShell module)")
      ->check(CLI::IsMember({"camel", "pascal"}));
  app.add_option("--password-encoding", f.password_encoding,
                 "intune (low byte of each UTF-16 unit, default) or utf8")
      ->check(CLI::IsMember({"intune", "utf8"}));
  app.add_option("--timeout", f.graph.timeout_s, "seconds per service or Graph call (default 30)");
  app.add_flag("--quiet,-q", f.quiet, "no progress bar");
  app.add_flag("--verbose,-v", f.verbose, "one line per imported or skipped row");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);  // prints help or the parse error
    return rc == 0 ? 0 : kExitUsage;
  }
  f.service_given = service->count() > 0 || app.get_option("--target")->count() > 0;
  auto usage = [](const std::string& m) {
    std::cerr << "pfx-import: " << m << " (see --help)\n";
    return kExitUsage;
  };
  if (f.pfx.empty() == f.csv.empty()) return usage("give exactly one of --pfx FILE or --csv FILE");
  if (!f.pfx.empty() && f.upn.empty()) return usage("--pfx needs --upn");
  if (f.verify && !f.service_given) return usage("--verify needs --service HOST:PORT");
  if (f.public_key_file.empty() && !f.service_given) {
    return usage("give --service HOST:PORT (to fetch the key) or --public-key-file FILE");
  }
  if (!f.graph.token_file.empty() && f.graph.graph_url.empty()) {
    return usage("--token-file needs --graph-url");
  }
  if (auto p = ParsePurpose(f.purpose); !p.ok()) return usage(std::string(p.status().message()));
  if (auto p = ParsePadding(f.padding); !p.ok()) return usage(std::string(p.status().message()));
  if (f.out.empty() && f.out_dir.empty() && !f.graph.Given()) f.out = "-";

  Importer importer(f);
  if (int rc = importer.Init(); rc >= 0) return rc;
  std::unique_ptr<RowSource> rows;
  if (!f.csv.empty()) {
    auto r = OpenCsvRows(f.csv, f.purpose);
    if (!r.ok()) return usage(std::string(r.status().message()));
    rows = std::move(*r);
  } else {
    Row row;
    row.number = 1;
    row.where = f.pfx;
    row.pfx_path = f.pfx;
    row.upn = f.upn;
    row.purpose = f.purpose;
    rows = std::make_unique<SingleRow>(std::move(row));
  }
  return importer.Run(*rows);
}

}  // namespace hsmrewrap::pfx_import
