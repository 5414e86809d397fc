// Small file and PATH helpers of the tests.
#pragma once

#include <string>

namespace hsmrewrap::test {

// The whole file, or "" if it cannot be read.
std::string ReadFileOrEmpty(const std::string& path);
// Creates or truncates `path` with `mode` (also applied to an existing file); false on error.
bool WriteFile(const std::string& path, const std::string& data, int mode = 0600);
// True when an executable `name` is in $PATH.
bool FindInPath(const std::string& name);
// The last `n` bytes of `s`, marked as truncated when longer (for failure messages).
std::string Tail(const std::string& s, size_t n = 8000);

}  // namespace hsmrewrap::test
