// The checking side of the leak check: reads a collection directory (layout in record.h)
// and searches every collected log and audit file for every recorded secret, as raw bytes,
// lowercase and uppercase hex, and standard and URL-safe base64 (without '=' padding, so a
// padded or unpadded encoding both match). Secrets shorter than kMinSecretLen bytes are
// skipped (they would match by chance).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace hsmrewrap::leakcheck {

constexpr size_t kMinSecretLen = 8;

struct Hit {
  std::string file;      // the log file
  size_t secret = 0;     // index into ScanResult::secrets
  std::string encoding;  // raw, hex, HEX, base64, base64url
  size_t offset = 0;     // where in the file
};

struct TestSummary {
  std::string name;      // the ctest entry (directory name)
  bool ran = false;      // collect.sh marked it
  bool skipped = false;  // it said it ran nothing
  size_t logs = 0;       // non-empty log files
  size_t secrets = 0;    // secrets of >= kMinSecretLen bytes it recorded
  bool verbose = false;  // some log has a debug-level line (rewrapd ran at debug or trace)
};

struct SecretInfo {
  std::string test;  // the first test that recorded it
  size_t length = 0;
};

struct ScanResult {
  std::vector<TestSummary> tests;
  std::vector<SecretInfo> secrets;  // all distinct secrets, searched or not
  size_t searched_secrets = 0;      // those of >= kMinSecretLen bytes
  size_t short_secrets = 0;         // skipped
  size_t log_files = 0;
  size_t log_bytes = 0;
  std::vector<Hit> hits;
  std::vector<std::string> problems;  // why the collection cannot be trusted
  // One-line report per hit and problem, and the counts; never a secret's bytes.
  std::string Report() const;
  bool ok() const { return hits.empty() && problems.empty(); }
};

// Scans `root`. Problems: no test ran; a test that ran (and was not skipped) left no
// non-empty log, no searchable secret, or no debug-level log line (rewrapd did not run at
// debug or trace level, so the check would miss what only debug lines say); unreadable
// files.
ScanResult ScanCollection(const std::string& root);

// The needles for one secret (raw, hex, HEX, base64, base64url), with their names.
std::vector<std::pair<std::string, std::string>> Encodings(const std::string& secret);

// A one-pass search for many byte strings at once, indexed by their first 8 bytes: how
// ScanCollection searches each file, and how tests/security/memory_scan_test.cc searches a
// running rewrapd's memory.
class MultiSearch {
 public:
  // Adds a needle of at least 8 bytes (shorter ones are ignored; returns false) under `id`.
  bool Add(const std::string& needle, size_t id);
  // Calls found(id, offset) for every occurrence of every needle in `data`.
  void Search(std::string_view data,
              const std::function<void(size_t id, size_t offset)>& found) const;
  size_t size() const { return needles_.size(); }

 private:
  std::vector<std::pair<std::string, size_t>> needles_;
  std::unordered_multimap<uint64_t, size_t> by_prefix_;   // first 8 bytes -> index in needles_
  std::vector<bool> maybe_ = std::vector<bool>(1 << 16);  // a hash of the first 8 bytes seen
};

}  // namespace hsmrewrap::leakcheck
