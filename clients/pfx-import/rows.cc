#include "clients/pfx-import/rows.h"

#include <termios.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "clients/pfx-import/csv.h"

namespace hsmrewrap::pfx_import {

using crypto::SecretString;

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

std::optional<bool> AskYesNo(const std::string& question) {
  FILE* tty = std::fopen("/dev/tty", "r+");
  if (tty == nullptr) return std::nullopt;
  if (!isatty(fileno(tty))) {
    std::fclose(tty);
    return std::nullopt;
  }
  std::fputs(question.c_str(), tty);
  std::fputs(" [y/N] ", tty);
  std::fflush(tty);
  std::string answer;
  for (int c; (c = std::fgetc(tty)) != EOF && c != '\n';) answer.push_back(static_cast<char>(c));
  std::fclose(tty);
  const std::string a = absl::AsciiStrToLower(absl::StripAsciiWhitespace(answer));
  return a == "y" || a == "yes";
}

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

namespace {

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


}  // namespace

absl::StatusOr<std::unique_ptr<RowSource>> OpenCsvRows(const std::string& path,
                                                       const std::string& default_purpose) {
  auto r = CsvRows::Open(path, default_purpose);
  if (!r.ok()) return r.status();
  return std::unique_ptr<RowSource>(std::move(*r));
}

void Progress::Update(int64_t done, int64_t ok, int64_t skipped, int64_t failed, bool force) {
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

void Progress::Message(const std::string& msg) {
  if (enabled_ && !line_.empty()) std::cerr << "\r\x1b[K";
  std::cerr << msg << "\n";
  if (enabled_ && !line_.empty()) std::cerr << line_ << std::flush;
}

void Progress::Finish() {
  if (enabled_ && !line_.empty()) std::cerr << "\n";
}

}  // namespace hsmrewrap::pfx_import
