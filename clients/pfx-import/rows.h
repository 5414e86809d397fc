// Rows for pfx-import: one --pfx or a CSV manifest read one row at a time; the progress
// display; small file and terminal helpers shared by the commands.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "crypto/secret.h"

namespace hsmrewrap::pfx_import {

// One PFX to import.
struct Row {
  int number = 0;     // 1-based data row (CSV) or 1
  std::string where;  // "row 12 (line 13, path)" for messages
  std::string pfx_path;
  std::optional<crypto::SecretString> password;  // from the manifest; else the run's password
  std::string password_file;                     // from the manifest
  std::string upn;
  std::string purpose;
  std::string parse_error;  // a manifest problem: the row fails with it
};

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
absl::StatusOr<std::unique_ptr<RowSource>> OpenCsvRows(const std::string& path,
                                                       const std::string& default_purpose);

// Progress bar with rate and ETA on stderr (only when enabled and total > 1). Not
// thread-safe: the thread that collects results owns it.
class Progress final {
 public:
  Progress(bool enabled, int64_t total)
      : enabled_(enabled && total > 1), total_(total), start_(absl::Now()) {}
  void Update(int64_t done, int64_t ok, int64_t skipped, int64_t failed, bool force = false);
  // Prints a message above the bar.
  void Message(const std::string& msg);
  void Finish();

 private:
  bool enabled_;
  int64_t total_;
  absl::Time start_, last_ = absl::InfinitePast();
  std::string line_;
};

absl::StatusOr<std::string> ReadWholeFile(const std::string& path, size_t limit);
// Reads a line from the terminal with echo off. nullopt if there is no terminal.
std::optional<crypto::SecretString> PromptNoEcho(const std::string& prompt);
// Asks a yes/no question on the terminal; nullopt if there is no terminal.
std::optional<bool> AskYesNo(const std::string& question);
std::string SafeFileName(const std::string& s);

}  // namespace hsmrewrap::pfx_import
