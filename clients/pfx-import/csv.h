// A streaming RFC 4180 CSV reader: one row at a time, so manifests with tens of thousands
// of rows never sit in memory whole.
#pragma once

#include <istream>
#include <string>
#include <vector>

namespace hsmrewrap::pfx_import {

class CsvReader final {
 public:
  explicit CsvReader(std::istream& in) : in_(in) {}

  // Reads the next record into *fields. Returns false at end of input. Quoted fields may
  // contain commas, doubled quotes and line breaks; CRLF and LF line ends are accepted;
  // blank lines are skipped. A malformed record (text after a closing quote, an unclosed
  // quote at end of input) sets *error and still returns true with what was read.
  bool Next(std::vector<std::string>* fields, std::string* error);
  // 1-based physical line number where the last record returned by Next started.
  int line() const { return record_line_; }

 private:
  std::istream& in_;
  int line_ = 1;
  int record_line_ = 0;
};

}  // namespace hsmrewrap::pfx_import
