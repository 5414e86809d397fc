#include "tests/leakcheck/scan.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <unordered_map>

namespace hsmrewrap::leakcheck {
namespace fs = std::filesystem;
namespace {

bool ReadAll(const fs::path& p, std::string* out) {
  std::ifstream f(p, std::ios::binary);
  if (!f) return false;
  std::ostringstream ss;
  ss << f.rdbuf();
  *out = ss.str();
  return true;
}

std::string Hex(const std::string& s, const char* digits) {
  std::string out;
  out.reserve(s.size() * 2);
  for (unsigned char c : s) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

bool Unhex(const std::string& hex, std::string* out) {
  if (hex.size() % 2 != 0) return false;
  auto v = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  out->clear();
  for (size_t i = 0; i < hex.size(); i += 2) {
    int hi = v(hex[i]), lo = v(hex[i + 1]);
    if (hi < 0 || lo < 0) return false;
    out->push_back(static_cast<char>(hi * 16 + lo));
  }
  return true;
}

// Base64 without '=' padding.
std::string Base64(const std::string& s, bool url) {
  const char* a = url ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                      : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < s.size(); i += 3) {
    uint32_t v =
        (uint32_t(uint8_t(s[i])) << 16) | (uint32_t(uint8_t(s[i + 1])) << 8) | uint8_t(s[i + 2]);
    out += {a[v >> 18], a[(v >> 12) & 63], a[(v >> 6) & 63], a[v & 63]};
  }
  if (i + 1 == s.size()) {
    uint32_t v = uint32_t(uint8_t(s[i])) << 16;
    out += {a[v >> 18], a[(v >> 12) & 63]};
  } else if (i + 2 == s.size()) {
    uint32_t v = (uint32_t(uint8_t(s[i])) << 16) | (uint32_t(uint8_t(s[i + 1])) << 8);
    out += {a[v >> 18], a[(v >> 12) & 63], a[(v >> 6) & 63]};
  }
  return out;
}

uint64_t Prefix8(const char* p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

// 16 bits of a multiplicative hash of a prefix: a cheap first test before the map.
size_t Hash16(uint64_t prefix) {
  return static_cast<size_t>((prefix * 0x9E3779B97F4A7C15ull) >> 48);
}

struct Needle {
  std::string bytes;
  size_t secret;
  std::string encoding;
};

}  // namespace

std::vector<std::pair<std::string, std::string>> Encodings(const std::string& secret) {
  std::vector<std::pair<std::string, std::string>> e = {
      {"raw", secret},
      {"hex", Hex(secret, "0123456789abcdef")},
      {"HEX", Hex(secret, "0123456789ABCDEF")},
      {"base64", Base64(secret, false)},
      {"base64url", Base64(secret, true)},
  };
  // A secret whose hex has no letters has one hex form; whose base64 has no '+' or '/',
  // one base64 form: keep one of each.
  std::vector<std::pair<std::string, std::string>> out;
  for (auto& [name, bytes] : e) {
    bool dup = false;
    for (auto& o : out) dup |= o.second == bytes;
    if (!dup) out.emplace_back(name, bytes);
  }
  return out;
}

bool MultiSearch::Add(const std::string& needle, size_t id) {
  if (needle.size() < 8) return false;
  maybe_[Hash16(Prefix8(needle.data()))] = true;
  by_prefix_.emplace(Prefix8(needle.data()), needles_.size());
  needles_.emplace_back(needle, id);
  return true;
}

void MultiSearch::Search(std::string_view data,
                         const std::function<void(size_t id, size_t offset)>& found) const {
  if (needles_.empty()) return;
  for (size_t pos = 0; pos + 8 <= data.size(); ++pos) {
    const uint64_t prefix = Prefix8(data.data() + pos);
    if (!maybe_[Hash16(prefix)]) continue;
    auto range = by_prefix_.equal_range(prefix);
    for (auto it = range.first; it != range.second; ++it) {
      const auto& [bytes, id] = needles_[it->second];
      if (data.compare(pos, bytes.size(), bytes) == 0) found(id, pos);
    }
  }
}

ScanResult ScanCollection(const std::string& root) {
  ScanResult r;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) {
    r.problems.push_back("collection directory " + root +
                         " does not exist: no test collected anything");
    return r;
  }
  // 1. Tests, their secrets and their log files.
  std::map<std::string, size_t> secret_index;  // bytes -> index
  std::vector<std::string> secret_bytes;
  std::vector<std::pair<fs::path, size_t>> logs;  // file, index into r.tests
  std::vector<fs::path> test_dirs;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    if (e.is_directory()) test_dirs.push_back(e.path());
  }
  std::sort(test_dirs.begin(), test_dirs.end());
  for (const auto& dir : test_dirs) {
    TestSummary t;
    t.name = dir.filename().string();
    t.ran = fs::exists(dir / "ran", ec);
    t.skipped = fs::exists(dir / "skipped", ec);
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      if (!e.is_regular_file() || name.rfind("secrets-", 0) != 0) continue;
      std::string text;
      if (!ReadAll(e.path(), &text)) {
        r.problems.push_back("cannot read " + e.path().string());
        continue;
      }
      std::istringstream lines(text);
      std::string line, secret;
      while (std::getline(lines, line)) {
        if (line.empty()) continue;
        if (!Unhex(line, &secret) || secret.empty()) {
          r.problems.push_back("bad line in " + e.path().string());
          continue;
        }
        if (secret.size() >= kMinSecretLen) ++t.secrets;
        auto [it, added] = secret_index.emplace(secret, secret_bytes.size());
        if (added) {
          secret_bytes.push_back(secret);
          r.secrets.push_back({t.name, secret.size()});
        }
      }
    }
    if (fs::is_directory(dir / "logs", ec)) {
      for (const auto& e : fs::recursive_directory_iterator(dir / "logs", ec)) {
        if (!e.is_regular_file()) continue;
        logs.emplace_back(e.path(), r.tests.size());
        if (e.file_size(ec) > 0) ++t.logs;
      }
    }
    r.tests.push_back(t);
  }
  std::sort(logs.begin(), logs.end());
  for (const auto& [path, test] : logs) {
    std::string text;
    if (ReadAll(path, &text) && text.find("\"level\":\"debug\"") != std::string::npos)
      r.tests[test].verbose = true;
  }

  // 2. The collection must be able to catch something.
  size_t ran = 0;
  for (const auto& t : r.tests) {
    if (!t.ran) continue;
    ++ran;
    if (t.skipped) continue;
    if (t.logs == 0) {
      r.problems.push_back("test " + t.name +
                           " ran but left no non-empty rewrapd log or audit file: its "
                           "collection is broken");
    }
    if (t.logs > 0 && !t.verbose) {
      r.problems.push_back("test " + t.name +
                           ": no log has a \"level\":\"debug\" line: rewrapd did not run at "
                           "debug or trace level");
    }
    if (t.secrets == 0) {
      r.problems.push_back("test " + t.name + " ran but recorded no secret of at least " +
                           std::to_string(kMinSecretLen) + " bytes: its recording is broken");
    }
  }
  if (ran == 0) r.problems.push_back("no test ran through tests/leakcheck/collect.sh in " + root);

  // 3. Needles, indexed by their first 8 bytes: one pass over each file finds all of them.
  std::vector<Needle> needles;
  MultiSearch search;
  for (size_t i = 0; i < secret_bytes.size(); ++i) {
    if (secret_bytes[i].size() < kMinSecretLen) {
      ++r.short_secrets;
      continue;
    }
    ++r.searched_secrets;
    for (auto& [name, bytes] : Encodings(secret_bytes[i])) {
      if (search.Add(bytes, needles.size())) needles.push_back({bytes, i, name});
    }
  }

  for (const auto& [path, test] : logs) {
    std::string text;
    if (!ReadAll(path, &text)) {
      r.problems.push_back("cannot read " + path.string());
      continue;
    }
    ++r.log_files;
    r.log_bytes += text.size();
    if (text.size() < 8) continue;
    std::set<std::pair<size_t, std::string>> seen;  // one hit per secret and encoding per file
    const std::string file = path.string();  // a structured binding cannot be captured (C++17)
    search.Search(text, [&](size_t id, size_t pos) {
      const Needle& n = needles[id];
      if (seen.emplace(n.secret, n.encoding).second) {
        r.hits.push_back({file, n.secret, n.encoding, pos});
      }
    });
  }
  return r;
}

std::string ScanResult::Report() const {
  std::ostringstream o;
  for (const auto& h : hits) {
    const SecretInfo& s = secrets[h.secret];
    o << "LEAK: " << h.file << " @" << h.offset << " contains secret #" << h.secret << " ("
      << s.length << " bytes, recorded by " << s.test << ") as " << h.encoding << "\n";
  }
  for (const auto& p : problems) o << "PROBLEM: " << p << "\n";
  size_t ran = 0, skipped = 0;
  for (const auto& t : tests) {
    if (!t.ran) continue;
    ++ran;
    skipped += t.skipped;
    o << "  " << t.name << ": " << t.logs << " log files, " << t.secrets << " secrets"
      << (t.skipped ? " (skipped)" : "") << "\n";
  }
  o << "checked " << log_files << " log/audit files (" << log_bytes << " bytes) of " << ran
    << " tests (" << skipped << " skipped) for " << searched_secrets
    << " secrets (raw, hex, HEX, base64, base64url); " << short_secrets << " secrets shorter than "
    << kMinSecretLen << " bytes not searched (they would match by "
    << "chance); " << hits.size() << " hits\n";
  return o.str();
}

}  // namespace hsmrewrap::leakcheck
