#include "clients/pfx-import/csv.h"

namespace hsmrewrap::pfx_import {

bool CsvReader::Next(std::vector<std::string>* fields, std::string* error) {
  fields->clear();
  error->clear();
  for (;;) {
    // Skip blank lines.
    int c = in_.peek();
    if (c == std::char_traits<char>::eof()) return false;
    if (c == '\r' || c == '\n') {
      in_.get();
      if (c == '\n') ++line_;
      continue;
    }
    break;
  }
  record_line_ = line_;
  std::string field;
  bool quoted = false, after_quote = false, field_started = false;
  for (;;) {
    int c = in_.get();
    if (c == std::char_traits<char>::eof()) {
      if (quoted && error->empty()) *error = "unclosed quote at end of file";
      fields->push_back(std::move(field));
      return true;
    }
    const char ch = static_cast<char>(c);
    if (quoted) {
      if (ch == '"') {
        if (in_.peek() == '"') {
          in_.get();
          field.push_back('"');
        } else {
          quoted = false;
          after_quote = true;
        }
      } else {
        if (ch == '\n') ++line_;
        field.push_back(ch);
      }
      continue;
    }
    if (ch == ',') {
      fields->push_back(std::move(field));
      field.clear();
      after_quote = field_started = false;
      continue;
    }
    if (ch == '\r' && in_.peek() == '\n') continue;
    if (ch == '\n') {
      ++line_;
      fields->push_back(std::move(field));
      return true;
    }
    if (ch == '"' && !field_started) {
      quoted = field_started = true;
      continue;
    }
    if (after_quote) {
      if (error->empty()) *error = "text after a closing quote";
      after_quote = false;
    }
    field_started = true;
    field.push_back(ch);
  }
}

}  // namespace hsmrewrap::pfx_import
