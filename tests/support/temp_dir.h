// A fresh temporary directory for a test, removed recursively on destruction.
#pragma once

#include <string>

namespace hsmrewrap::test {

// Made under $TMPDIR (else /tmp) as PREFIX-XXXXXX; aborts if it cannot be made. Kept (and
// its path printed) when HSMREWRAP_IT_KEEP_TMP or PFX_TEST_KEEP_TMP is set.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "hsmrewrap-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace hsmrewrap::test
