#include "tests/leakcheck/record.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <unordered_set>

namespace hsmrewrap::leakcheck {
namespace {

// ROOT/TEST, or "" when off.
const std::string& TestDir() {
  static const std::string dir = [] {
    const char* root = std::getenv("HSMREWRAP_LEAKCHECK_DIR");
    const char* test = std::getenv("HSMREWRAP_LEAKCHECK_TEST");
    if (root == nullptr || *root == '\0' || test == nullptr || *test == '\0') return std::string();
    return std::string(root) + "/" + test;
  }();
  return dir;
}

bool AppendAll(const std::string& path, const std::string& data) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  close(fd);
  return off == data.size();
}

}  // namespace

bool Enabled() { return !TestDir().empty(); }

std::string NewLogDir(const std::string& label) {
  if (!Enabled()) return "";
  static std::atomic<int> counter{0};
  const std::string dir = TestDir() + "/logs/" + std::to_string(getpid()) + "-" +
                          std::to_string(counter.fetch_add(1)) + "-" + label;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    fprintf(stderr, "[leakcheck] cannot create %s: %s\n", dir.c_str(), ec.message().c_str());
    return "";
  }
  return dir;
}

void RecordSecret(std::string_view secret) {
  if (!Enabled() || secret.empty()) return;
  static std::mutex mu;
  static std::unordered_set<std::string>* seen = new std::unordered_set<std::string>();
  std::lock_guard<std::mutex> lock(mu);
  if (!seen->emplace(secret).second) return;
  static const char kHex[] = "0123456789abcdef";
  std::string line;
  line.reserve(secret.size() * 2 + 1);
  for (unsigned char c : secret) {
    line.push_back(kHex[c >> 4]);
    line.push_back(kHex[c & 15]);
  }
  line.push_back('\n');
  std::error_code ec;
  std::filesystem::create_directories(TestDir(), ec);
  const std::string path = TestDir() + "/secrets-" + std::to_string(getpid()) + ".hex";
  if (!AppendAll(path, line)) fprintf(stderr, "[leakcheck] cannot append to %s\n", path.c_str());
}

void MarkSkipped(const std::string& why) {
  if (!Enabled()) return;
  std::error_code ec;
  std::filesystem::create_directories(TestDir(), ec);
  AppendAll(TestDir() + "/skipped", why + "\n");
}

}  // namespace hsmrewrap::leakcheck
