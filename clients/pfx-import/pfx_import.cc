#include "clients/pfx-import/pfx_import.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "clients/common/channel.h"
#include "clients/pfx-import/csv.h"
#include "clients/pfx-import/upload.h"
#include "crypto/encoding.h"
#include "crypto/keys.h"
#include "hsmrewrap/v1/rewrap.grpc.pb.h"
#include "proto/conversions.h"

namespace hsmrewrap::pfx_import {

using crypto::PfxPurpose;
using crypto::RsaPadding;
using crypto::SecretBytes;
using crypto::SecretString;

// ---------------------------------------------------------------------------------------
// Password bytes

absl::StatusOr<SecretBytes> PasswordBytes(const SecretString& text, PasswordEncoding encoding) {
  SecretBytes out;
  out.reserve(text.size());
  if (encoding == PasswordEncoding::kUtf8) {
    out.assign(text.begin(), text.end());
    return out;
  }
  // Decode UTF-8 to code points; each code point becomes one UTF-16 code unit (BMP) or two
  // (surrogates). Intune keeps the low byte of each unit, so only U+0000..U+00FF survive.
  size_t i = 0, position = 0;
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  while (i < text.size()) {
    ++position;
    const unsigned char c = s[i];
    uint32_t cp = 0;
    size_t len = 0;
    if (c < 0x80) {
      cp = c, len = 1;
    } else if ((c & 0xE0) == 0xC0) {
      cp = c & 0x1F, len = 2;
    } else if ((c & 0xF0) == 0xE0) {
      cp = c & 0x0F, len = 3;
    } else if ((c & 0xF8) == 0xF0) {
      cp = c & 0x07, len = 4;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("the password is not valid UTF-8 (byte ", i + 1, ")"));
    }
    if (i + len > text.size()) {
      return absl::InvalidArgumentError("the password is not valid UTF-8 (truncated character)");
    }
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) {
        return absl::InvalidArgumentError(
            absl::StrCat("the password is not valid UTF-8 (character ", position, ")"));
      }
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    static constexpr uint32_t kMinForLen[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLen[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return absl::InvalidArgumentError(
          absl::StrCat("the password is not valid UTF-8 (character ", position, ")"));
    }
    if (cp > 0xFF) {
      return absl::InvalidArgumentError(absl::StrCat(
          "password character ", position,
          " is above U+00FF; Intune's tooling keeps only the low byte of each UTF-16 unit, so "
          "the device would get a corrupted password (use --password-encoding utf8 only if "
          "every consumer expects UTF-8)"));
    }
    out.push_back(static_cast<uint8_t>(cp));
    i += len;
  }
  return out;
}

SecretString PasswordTextFromBytes(absl::Span<const uint8_t> bytes, PasswordEncoding encoding) {
  SecretString out;
  out.reserve(bytes.size() * 2 + 32);
  for (uint8_t b : bytes) {
    if (encoding == PasswordEncoding::kUtf8 || b < 0x80) {
      out.push_back(static_cast<char>(b));
    } else {
      out.push_back(static_cast<char>(0xC0 | (b >> 6)));
      out.push_back(static_cast<char>(0x80 | (b & 0x3F)));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Names and dates

std::string PaddingName(RsaPadding padding, EnumCase c) {
  std::string n = proto_crypto::PaddingSchemeName(padding);
  if (c == EnumCase::kPascal) n[0] = absl::ascii_toupper(n[0]);
  return n;
}

std::string PurposeName(PfxPurpose purpose, EnumCase c) {
  std::string n;
  switch (purpose) {
    case PfxPurpose::kUnassigned:
      n = "Unassigned";
      break;
    case PfxPurpose::kSmimeEncryption:
      n = "SmimeEncryption";
      break;
    case PfxPurpose::kSmimeSigning:
      n = "SmimeSigning";
      break;
  }
  if (c == EnumCase::kCamel) n[0] = absl::ascii_tolower(n[0]);
  return n;
}

absl::StatusOr<RsaPadding> ParsePadding(const std::string& name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "oaepsha256") return RsaPadding::kOaepSha256;
  if (n == "oaepsha384") return RsaPadding::kOaepSha384;
  if (n == "oaepsha512") return RsaPadding::kOaepSha512;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown padding '", name, "' (oaepSha256, oaepSha384 or oaepSha512)"));
}

absl::StatusOr<PfxPurpose> ParsePurpose(const std::string& name) {
  const std::string n = absl::AsciiStrToLower(name);
  if (n == "unassigned") return PfxPurpose::kUnassigned;
  if (n == "smimeencryption") return PfxPurpose::kSmimeEncryption;
  if (n == "smimesigning") return PfxPurpose::kSmimeSigning;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown intended purpose '", name, "' (smimeEncryption, smimeSigning or unassigned)"));
}

std::string FormatDateTimeOffset(absl::Time t, absl::TimeZone tz, bool fractional) {
  std::string out = absl::FormatTime("%Y-%m-%dT%H:%M:%S", t, tz);
  if (fractional) {
    // 100 ns ticks, as .NET DateTime; trailing zeros dropped, nothing when zero.
    const absl::Duration sub = t - absl::FromUnixSeconds(absl::ToUnixSeconds(t));
    int64_t ticks = absl::ToInt64Nanoseconds(sub) / 100;
    if (ticks < 0) ticks += 10000000;
    if (ticks != 0) {
      std::string frac = absl::StrFormat("%07d", ticks);
      while (!frac.empty() && frac.back() == '0') frac.pop_back();
      absl::StrAppend(&out, ".", frac);
    }
  }
  absl::StrAppend(&out, absl::FormatTime("%Ez", t, tz));
  return out;
}

nlohmann::ordered_json BuildRecord(const RecordInput& in, EnumCase enum_case, absl::TimeZone tz) {
  nlohmann::ordered_json j;
  j["thumbprint"] = absl::AsciiStrToLower(in.thumbprint);
  j["intendedPurpose"] = PurposeName(in.purpose, enum_case);
  j["userPrincipalName"] = in.user_principal_name;
  j["startDateTime"] = FormatDateTimeOffset(in.not_before, tz, false);
  j["expirationDateTime"] = FormatDateTimeOffset(in.not_after, tz, false);
  j["providerName"] = in.provider_name;
  j["keyName"] = in.key_name;
  j["paddingScheme"] = PaddingName(in.padding, enum_case);
  j["encryptedPfxBlob"] = in.pfx_base64;
  j["encryptedPfxPassword"] = in.encrypted_password_base64;
  const std::string created = FormatDateTimeOffset(in.created, tz, true);
  j["createdDateTime"] = created;
  j["lastModifiedDateTime"] = created;
  return j;
}

// ---------------------------------------------------------------------------------------
// The command

namespace {

namespace v1 = ::hsmrewrap::v1;

constexpr int kExitRowsFailed = 1, kExitUsage = 2, kExitStartup = 3;
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
  std::string graph_url, token_file, state_file;
  std::string enum_case = "camel", password_encoding = "intune";
  double timeout_s = 30;
};

// One PFX to import.
struct Row {
  int number = 0;     // 1-based data row (CSV) or 1
  std::string where;  // "row 12 (path)" for messages
  std::string pfx_path;
  std::optional<SecretString> password;  // from the manifest; else the run's password
  std::string password_file;             // from the manifest
  std::string upn;
  std::string purpose;
  std::string parse_error;  // a manifest problem: the row fails with it
};

struct Outcome {
  enum Kind { kImported, kSkipped, kFailed } kind = kFailed;
  std::string reason;   // for failures: the summary class
  std::string message;  // for failures: what to tell the admin
};

Outcome Fail(std::string reason, std::string message) {
  Outcome o;
  o.kind = Outcome::kFailed;
  o.reason = std::move(reason);
  o.message = std::move(message);
  return o;
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path, size_t limit) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::string data;
  char buf[65536];
  while (in.read(buf, sizeof(buf)) || in.gcount() > 0) {
    data.append(buf, static_cast<size_t>(in.gcount()));
    if (data.size() > limit) {
      return absl::InvalidArgumentError(absl::StrCat(path, " is larger than ", limit, " bytes"));
    }
  }
  return data;
}

// Reads a line from the terminal with echo off. Returns nullopt if there is no terminal.
std::optional<SecretString> PromptNoEcho(const std::string& prompt) {
  FILE* tty = std::fopen("/dev/tty", "r+");
  if (tty == nullptr) return std::nullopt;
  // Unbuffered: a stdio buffer would keep a copy of the typed password, freed unwiped.
  std::setvbuf(tty, nullptr, _IONBF, 0);
  const int fd = fileno(tty);
  if (!isatty(fd)) {
    std::fclose(tty);
    return std::nullopt;
  }
  struct termios old_t, new_t;
  tcgetattr(fd, &old_t);
  new_t = old_t;
  new_t.c_lflag &= ~static_cast<tcflag_t>(ECHO);
  std::fputs(prompt.c_str(), tty);
  std::fflush(tty);
  tcsetattr(fd, TCSAFLUSH, &new_t);
  SecretString out;
  out.reserve(4096);
  for (int c; (c = std::fgetc(tty)) != EOF && c != '\n';) {
    if (c != '\r') out.push_back(static_cast<char>(c));
  }
  tcsetattr(fd, TCSAFLUSH, &old_t);
  std::fputs("\n", tty);
  std::fclose(tty);
  return out;
}

std::string DirName(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string Resolve(const std::string& base_dir, const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  return absl::StrCat(base_dir, "/", path);
}

// Row sources: one --pfx, or a CSV manifest read one row at a time.
class RowSource {
 public:
  virtual ~RowSource() = default;
  virtual bool Next(Row* row) = 0;
  virtual int64_t total() const = 0;  // for the progress display; -1 = unknown
};

class SingleRow final : public RowSource {
 public:
  explicit SingleRow(Row r) : row_(std::move(r)) {}
  bool Next(Row* row) override {
    if (done_) return false;
    done_ = true;
    *row = row_;
    return true;
  }
  int64_t total() const override { return 1; }

 private:
  Row row_;
  bool done_ = false;
};

// Manifest columns (header names, case-insensitive; any order; unknown columns refused):
//   pfxPath (required), userPrincipalName (required), password, passwordFile,
//   intendedPurpose.
class CsvRows final : public RowSource {
 public:
  static absl::StatusOr<std::unique_ptr<CsvRows>> Open(const std::string& path,
                                                       const std::string& default_purpose) {
    std::unique_ptr<CsvRows> r(new CsvRows());
    r->in_.open(path, std::ios::binary);
    if (!r->in_) return absl::NotFoundError(absl::StrCat("cannot read the manifest ", path));
    r->base_dir_ = DirName(path);
    r->default_purpose_ = default_purpose;
    // Count data rows for the progress display (a cheap newline count).
    {
      std::ifstream count(path, std::ios::binary);
      std::string line;
      int64_t n = 0;
      while (std::getline(count, line)) {
        if (!absl::StripAsciiWhitespace(line).empty()) ++n;
      }
      r->total_ = n > 0 ? n - 1 : 0;
    }
    r->reader_ = std::make_unique<CsvReader>(r->in_);
    std::vector<std::string> header;
    std::string err;
    if (!r->reader_->Next(&header, &err)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": the manifest is empty"));
    }
    if (!err.empty()) return absl::InvalidArgumentError(absl::StrCat(path, " header: ", err));
    if (!header.empty() && header[0].rfind("\xEF\xBB\xBF", 0) == 0) header[0].erase(0, 3);
    for (size_t i = 0; i < header.size(); ++i) {
      const std::string h = absl::AsciiStrToLower(absl::StripAsciiWhitespace(header[i]));
      int* slot = h == "pfxpath"             ? &r->c_path_
                  : h == "userprincipalname" ? &r->c_upn_
                  : h == "password"          ? &r->c_password_
                  : h == "passwordfile"      ? &r->c_password_file_
                  : h == "intendedpurpose"   ? &r->c_purpose_
                                             : nullptr;
      if (slot == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": unknown column '", header[i],
            "' (columns: pfxPath, userPrincipalName, password, passwordFile, intendedPurpose)"));
      }
      if (*slot >= 0) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": column '", header[i], "' twice"));
      }
      *slot = static_cast<int>(i);
    }
    if (r->c_path_ < 0 || r->c_upn_ < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": the header must name the columns pfxPath and userPrincipalName"));
    }
    return r;
  }

  bool Next(Row* row) override {
    std::vector<std::string> f;
    std::string err;
    if (!reader_->Next(&f, &err)) return false;
    *row = Row();
    row->number = ++n_;
    auto field = [&](int c) -> std::string {
      return c >= 0 && static_cast<size_t>(c) < f.size() ? f[static_cast<size_t>(c)] : "";
    };
    const std::string raw_path(absl::StripAsciiWhitespace(field(c_path_)));
    row->pfx_path = Resolve(base_dir_, raw_path);
    row->where = absl::StrCat("row ", row->number, " (line ", reader_->line(), ", ",
                              raw_path.empty() ? "no pfxPath" : raw_path, ")");
    row->upn = std::string(absl::StripAsciiWhitespace(field(c_upn_)));
    // Not through field(), which returns a copy that would be freed unwiped.
    if (c_password_ >= 0 && static_cast<size_t>(c_password_) < f.size() &&
        !f[static_cast<size_t>(c_password_)].empty()) {
      std::string& p = f[static_cast<size_t>(c_password_)];
      row->password = SecretString(p.data(), p.size());
      crypto::Cleanse(p.data(), p.size());
    }
    const std::string pwf(absl::StripAsciiWhitespace(field(c_password_file_)));
    if (!pwf.empty()) row->password_file = Resolve(base_dir_, pwf);
    row->purpose = std::string(absl::StripAsciiWhitespace(field(c_purpose_)));
    if (row->purpose.empty()) row->purpose = default_purpose_;
    if (!err.empty()) {
      row->parse_error = err;
    } else if (f.size() > static_cast<size_t>(columns())) {
      row->parse_error = absl::StrCat("the row has ", f.size(), " fields, the header ", columns());
    } else if (raw_path.empty()) {
      row->parse_error = "pfxPath is empty";
    } else if (row->upn.empty()) {
      row->parse_error = "userPrincipalName is empty";
    } else if (row->password && !row->password_file.empty()) {
      row->parse_error = "both password and passwordFile are set";
    }
    return true;
  }
  int64_t total() const override { return total_; }

 private:
  CsvRows() = default;
  int columns() const {
    int n = 0;
    for (int c : {c_path_, c_upn_, c_password_, c_password_file_, c_purpose_})
      n = std::max(n, c + 1);
    return n;
  }
  std::ifstream in_;
  std::unique_ptr<CsvReader> reader_;
  std::string base_dir_, default_purpose_;
  int c_path_ = -1, c_upn_ = -1, c_password_ = -1, c_password_file_ = -1, c_purpose_ = -1;
  int n_ = 0;
  int64_t total_ = 0;
};

// Progress bar with rate and ETA on stderr (only when stderr is a terminal).
class Progress final {
 public:
  Progress(bool enabled, int64_t total)
      : enabled_(enabled && total > 1), total_(total), start_(absl::Now()) {}
  void Update(int64_t done, int64_t ok, int64_t skipped, int64_t failed, bool force = false) {
    if (!enabled_) return;
    const absl::Time now = absl::Now();
    if (!force && now - last_ < absl::Milliseconds(100)) return;
    last_ = now;
    const double secs = absl::ToDoubleSeconds(now - start_);
    const double rate = secs > 0 ? static_cast<double>(done) / secs : 0;
    const int width = 30;
    const int filled = total_ > 0 ? static_cast<int>(width * done / total_) : 0;
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(width, '.');
    std::string eta = "--:--";
    if (rate > 0 && total_ >= done) {
      const int64_t left = static_cast<int64_t>(static_cast<double>(total_ - done) / rate);
      eta = absl::StrFormat("%d:%02d", left / 60, left % 60);
    }
    line_ = absl::StrFormat("\r[%s] %d/%d %.1f/s ETA %s  ok %d skip %d fail %d", bar, done, total_,
                            rate, eta, ok, skipped, failed);
    std::cerr << line_ << "\x1b[K" << std::flush;
  }
  // Prints a message above the bar.
  void Message(const std::string& msg) {
    if (enabled_ && !line_.empty()) std::cerr << "\r\x1b[K";
    std::cerr << msg << "\n";
    if (enabled_ && !line_.empty()) std::cerr << line_ << std::flush;
  }
  void Finish() {
    if (enabled_ && !line_.empty()) std::cerr << "\n";
  }

 private:
  bool enabled_;
  int64_t total_;
  absl::Time start_, last_ = absl::InfinitePast();
  std::string line_;
};

std::string SafeFileName(const std::string& s) {
  std::string out;
  for (char c : s) {
    out.push_back(absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' ||
                          c == '_' || c == '@'
                      ? c
                      : '_');
  }
  return out;
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
    if (!f_.graph_url.empty()) {
      GraphUploader::Options uo;
      uo.graph_url = f_.graph_url;
      if (!f_.token_file.empty()) {
        auto t = crypto::ReadSecretFile(f_.token_file);
        if (!t.ok()) return Startup(t.status().message());
        uo.token = std::move(*t);
      } else if (const char* env = std::getenv("GRAPH_TOKEN"); env != nullptr && *env != 0) {
        uo.token = SecretString(env);
      } else if (!f_.dry_run) {
        return Usage("uploading needs a bearer token: --token-file FILE or $GRAPH_TOKEN");
      }
      uo.on_wait = [this](absl::Duration d) {
        if (progress_ != nullptr && !f_.quiet) {
          progress_->Message(absl::StrCat("pfx-import: Graph is throttling (429); retrying in ",
                                          absl::FormatDuration(d)));
        }
      };
      if (!f_.dry_run) {
        auto u = GraphUploader::Create(std::move(uo));
        if (!u.ok()) return Startup(u.status().message());
        uploader_ = std::move(*u);
        target_ = uploader_->endpoint();
      }
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
    progress_ = &progress;
    Row row;
    int64_t done = 0;
    while (rows.Next(&row)) {
      Outcome o = Process(row);
      ++done;
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
    }
    progress.Update(done, imported_, skipped_, failed_total_, true);
    progress.Finish();
    progress_ = nullptr;
    if (out_ != nullptr) out_->flush();
    const double secs = absl::ToDoubleSeconds(absl::Now() - start_);
    std::string summary = absl::StrFormat(
        "pfx-import: %d imported%s, %d skipped, %d failed (%.1f s)", imported_,
        f_.dry_run ? " (dry run: not uploaded)" : "", skipped_, failed_total_, secs);
    for (const auto& [reason, n] : failed_)
      absl::StrAppend(&summary, "\n  failed ", reason, ": ", n);
    if (verified_ > 0) absl::StrAppend(&summary, "\n  verified through the service: ", verified_);
    std::cerr << summary << "\n";
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
                      std::chrono::milliseconds(static_cast<int64_t>(f_.timeout_s * 1000)));
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
  absl::Status Verify(const crypto::Bytes& sealed, const SecretBytes& password_bytes,
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
    auto reopened = crypto::OpenPfx(pfx, PasswordTextFromBytes(crypto::Reveal(*plain), encoding_));
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
    if (state_ && state_->Done(row.upn, contents->thumbprint, target_)) {
      Outcome o;
      o.kind = Outcome::kSkipped;
      o.message =
          absl::StrCat(contents->thumbprint, " for ", row.upn, " already done (state file)");
      return o;
    }
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
      absl::Status v = Verify(*sealed, *bytes, pfx, contents->thumbprint);
      if (!v.ok()) return Fail("verify-failed", std::string(v.message()));
    }
    RecordInput in;
    in.thumbprint = contents->thumbprint;
    in.purpose = *purpose;
    in.user_principal_name = row.upn;
    in.not_before = contents->not_before;
    in.not_after = contents->not_after;
    in.provider_name = kProviderName;
    in.key_name = f_.key_name;
    in.padding = padding_;
    in.pfx_base64 = crypto::Base64Encode(pfx);
    in.encrypted_password_base64 = crypto::Base64Encode(*sealed);
    in.created = absl::Now();
    const nlohmann::ordered_json record = BuildRecord(in, enum_case_, absl::LocalTimeZone());
    if (out_ != nullptr) {
      *out_ << record.dump() << "\n";
      if (!*out_) return Fail("output", "cannot write the record");
    }
    if (!f_.out_dir.empty()) {
      const std::string file =
          absl::StrCat(f_.out_dir, "/", SafeFileName(row.upn), "-", contents->thumbprint, ".json");
      std::ofstream o(file, std::ios::binary | std::ios::trunc);
      o << record.dump(2) << "\n";
      if (!o) return Fail("output", absl::StrCat("cannot write ", file));
    }
    std::string what = absl::StrCat(contents->thumbprint, " for ", row.upn);
    if (uploader_) {
      UploadResult u = uploader_->Post(record.dump());
      if (!u.ok) return Fail(u.reason, u.message);
      absl::StrAppend(&what, " uploaded (HTTP ", u.http_status,
                      u.attempts > 1 ? absl::StrCat(", ", u.attempts, " attempts") : "", ")");
    } else if (f_.dry_run && !f_.graph_url.empty()) {
      absl::StrAppend(&what, " (dry run: would POST to ", f_.graph_url,
                      "/deviceManagement/userPfxCertificates)");
    }
    if (state_) {
      absl::Status s = state_->Record(row.upn, contents->thumbprint, target_);
      if (!s.ok()) return Fail("state-file", std::string(s.message()));
    }
    Outcome o;
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
  std::unique_ptr<GraphUploader> uploader_;
  std::unique_ptr<StateFile> state_;
  std::string target_;
  std::optional<SecretString> run_password_;
  Progress* progress_ = nullptr;
  absl::Time start_ = absl::Now();
  int64_t imported_ = 0, skipped_ = 0, failed_total_ = 0, verified_ = 0;
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

Upload: POST {--graph-url}/deviceManagement/userPfxCertificates with a bearer token from
--token-file or $GRAPH_TOKEN; 429/503 are re-sent after Retry-After.

Exit codes: 0 every row imported or skipped; 1 at least one row failed; 2 usage error;
3 start-up failure (service unreachable, key unusable, output not writable).)";

}  // namespace

int RunPfxImport(int argc, char** argv) {
  Flags f;
  CLI::App app{kDescription, "pfx-import"};
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
  app.add_option("--graph-url", f.graph_url,
                 "Graph base URL, e.g. https://graph.microsoft.com/beta");
  app.add_option("--token-file", f.token_file,
                 "file holding the Graph bearer token (else $GRAPH_TOKEN)");
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
  app.add_option("--timeout", f.timeout_s, "seconds per service call (default 30)");
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
  if (!f.token_file.empty() && f.graph_url.empty()) return usage("--token-file needs --graph-url");
  if (auto p = ParsePurpose(f.purpose); !p.ok()) return usage(std::string(p.status().message()));
  if (auto p = ParsePadding(f.padding); !p.ok()) return usage(std::string(p.status().message()));
  if (f.out.empty() && f.out_dir.empty() && f.graph_url.empty()) f.out = "-";

  Importer importer(f);
  if (int rc = importer.Init(); rc >= 0) return rc;
  std::unique_ptr<RowSource> rows;
  if (!f.csv.empty()) {
    auto r = CsvRows::Open(f.csv, f.purpose);
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
