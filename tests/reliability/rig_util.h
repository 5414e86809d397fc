// What the reliability tests share: a `p11-kit server` for one SoftHSM2 token (a remote token
// whose process group can be SIGKILLed: the unit going away) and the metrics address a rewrapd
// logged.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include "tests/support/files.h"
#include "tests/support/tokens.h"

namespace hsmrewrap::it {

// p11-kit server serving the SoftHSM2 token `label` on the Unix socket `socket`. SIGKILL of its
// process group (Kill) is a real token loss; Start again on the same socket is the return.
class P11KitServer {
 public:
  P11KitServer(std::string socket, std::string label)
      : socket_(std::move(socket)), label_(std::move(label)) {}
  ~P11KitServer() { Kill(); }
  P11KitServer(const P11KitServer&) = delete;
  P11KitServer& operator=(const P11KitServer&) = delete;
  bool Start() {
    unlink(socket_.c_str());
    pid_ = fork();
    if (pid_ == 0) {
      setpgid(0, 0);  // its own group: the per-connection p11-kit-remote children die with it
      execlp("p11-kit", "p11-kit", "server", "-f", "-n", socket_.c_str(), "--provider",
             test::kSoftHsmPath, ("pkcs11:token=" + label_).c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    for (int i = 0; i < 100; ++i) {
      if (access(socket_.c_str(), F_OK) == 0) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  void Kill() {
    if (pid_ <= 0) return;
    kill(-pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  const std::string& socket() const { return socket_; }

 private:
  std::string socket_, label_;
  pid_t pid_ = -1;
};

// HOST:PORT of the metrics endpoint from rewrapd's stderr log ("metrics on http://.../metrics";
// the last one: the bound address), or "".
inline std::string MetricsAddressFromLog(const std::string& stderr_path) {
  const std::string err = test::ReadFileOrEmpty(stderr_path);
  const std::string tag = "metrics on http://";
  const size_t p = err.rfind(tag);
  if (p == std::string::npos) return "";
  return err.substr(p + tag.size(), err.find('/', p + tag.size()) - p - tag.size());
}

}  // namespace hsmrewrap::it
