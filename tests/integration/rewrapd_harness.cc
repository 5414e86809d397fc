#include "tests/integration/rewrapd_harness.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "tests/leakcheck/record.h"

#ifndef HSMREWRAP_REWRAPD_PATH
#define HSMREWRAP_REWRAPD_PATH "rewrapd"
#endif

namespace hsmrewrap::it {
namespace {

constexpr char kNssModule[] = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so";
constexpr char kNssTokenLabel[] = "NSS Certificate DB";
constexpr char kReadyPrefix[] = "rewrapd serving on ";

TokenKind g_token = TokenKind::kSoftHsm;

std::string RandomToken(size_t n) {
  static const char kAlphabet[] = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
  std::random_device rd;
  std::string s;
  for (size_t i = 0; i < n; ++i) s.push_back(kAlphabet[rd() % (sizeof(kAlphabet) - 1)]);
  return s;
}

bool FindInPath(const std::string& name) {
  const char* path = getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    if (!dir.empty() && access((dir + "/" + name).c_str(), X_OK) == 0) return true;
  }
  return false;
}

std::vector<char*> CArgv(std::vector<std::string>& argv) {
  std::vector<char*> out;
  for (auto& a : argv) out.push_back(a.data());
  out.push_back(nullptr);
  return out;
}

std::string Tail(const std::string& s, size_t n = 8000) {
  return s.size() <= n ? s : "...(truncated)...\n" + s.substr(s.size() - n);
}

bool HasFlag(const std::vector<std::string>& args, const std::string& flag) {
  for (const auto& a : args) {
    if (a == flag || a.rfind(flag + "=", 0) == 0) return true;
  }
  return false;
}

// The value of `--flag VALUE` or `--flag=VALUE` in args, or "".
std::string FlagValue(const std::vector<std::string>& args, const std::string& flag) {
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == flag && i + 1 < args.size()) return args[i + 1];
    if (args[i].rfind(flag + "=", 0) == 0) return args[i].substr(flag.size() + 1);
  }
  return "";
}

}  // namespace

const char* TokenName(TokenKind kind) { return kind == TokenKind::kNss ? "nss" : "softhsm"; }

bool ParseTokenFlag(int* argc, char** argv, std::string* error) {
  std::string value;
  if (const char* env = getenv("HSMREWRAP_IT_TOKEN")) value = env;
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--token=", 0) == 0) {
      value = a.substr(8);
    } else {
      argv[out++] = argv[i];
    }
  }
  *argc = out;
  argv[out] = nullptr;
  if (value.empty() || value == "softhsm") {
    g_token = TokenKind::kSoftHsm;
  } else if (value == "nss") {
    g_token = TokenKind::kNss;
  } else {
    *error = "unknown token '" + value + "' (expected softhsm or nss)";
    return false;
  }
  return true;
}

TokenKind CurrentToken() { return g_token; }

std::string RewrapdPath() {
  if (const char* env = getenv("HSMREWRAP_REWRAPD")) return env;
  return HSMREWRAP_REWRAPD_PATH;
}

std::string TokenUnavailableReason(TokenKind kind) {
  if (access(RewrapdPath().c_str(), X_OK) != 0) {
    // Not a skip reason: the build should have made it. Reported by Start().
    return "";
  }
  if (kind == TokenKind::kNss) {
    if (access(kNssModule, R_OK) != 0) {
      return std::string("NSS softoken not installed: ") + kNssModule +
             " is missing (install libnss3)";
    }
    if (!FindInPath("certutil")) {
      return "certutil not found in PATH (install libnss3-tools); it creates the NSS database";
    }
  } else {
    if (access("/usr/lib/softhsm/libsofthsm2.so", R_OK) != 0) {
      return "SoftHSM2 not installed: /usr/lib/softhsm/libsofthsm2.so is missing (install "
             "softhsm2)";
    }
  }
  return "";
}

TempDir::TempDir(const std::string& prefix) {
  std::string tmpl = std::filesystem::temp_directory_path().string() + "/" + prefix + "-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    perror("mkdtemp");
    abort();
  }
  path_ = buf.data();
}

TempDir::~TempDir() {
  if (getenv("HSMREWRAP_IT_KEEP_TMP")) {
    fprintf(stderr, "keeping %s\n", path_.c_str());
    return;
  }
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return "";
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool WriteFile(const std::string& path, const std::string& data, int mode) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return false;
  fchmod(fd, mode);
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      close(fd);
      return false;
    }
    off += static_cast<size_t>(n);
  }
  return close(fd) == 0;
}

std::string CommandResult::Describe(const std::vector<std::string>& argv) const {
  std::string cmd;
  for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
  return "command: " + cmd + "\nexit code: " + std::to_string(exit_code) + "\nstdout:\n" +
         Tail(out) + "\nstderr:\n" + Tail(err);
}

CommandResult RunCommand(const std::vector<std::string>& argv_in, const std::string& stdin_data,
                         std::chrono::seconds timeout) {
  CommandResult r;
  std::vector<std::string> argv = argv_in;
  std::vector<char*> cargv = CArgv(argv);
  int in_pipe[2], out_pipe[2], err_pipe[2];
  if (pipe2(in_pipe, O_CLOEXEC) != 0 || pipe2(out_pipe, O_CLOEXEC) != 0 ||
      pipe2(err_pipe, O_CLOEXEC) != 0) {
    r.err = std::string("pipe: ") + strerror(errno);
    return r;
  }
  pid_t pid = fork();
  if (pid < 0) {
    r.err = std::string("fork: ") + strerror(errno);
    return r;
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(in_pipe[0], 0);
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    execvp(cargv[0], cargv.data());
    const char msg[] = "exec failed\n";
    (void)!write(2, msg, sizeof(msg) - 1);
    _exit(127);
  }
  close(in_pipe[0]);
  close(out_pipe[1]);
  close(err_pipe[1]);
  // Feed stdin (small inputs only: a password or a few KB), then close it.
  size_t off = 0;
  signal(SIGPIPE, SIG_IGN);
  while (off < stdin_data.size()) {
    ssize_t n = write(in_pipe[1], stdin_data.data() + off, stdin_data.size() - off);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  close(in_pipe[1]);

  auto deadline = std::chrono::steady_clock::now() + timeout;
  bool out_open = true, err_open = true;
  char buf[4096];
  while (out_open || err_open) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      kill(pid, SIGKILL);
      r.err += "\n[harness] timed out after " + std::to_string(timeout.count()) + " s; killed";
      break;
    }
    pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
    int pr = poll(fds, 2, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (pr < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      bool& open_flag = i == 0 ? out_open : err_open;
      if (!open_flag || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = read(fds[i].fd, buf, sizeof(buf));
      if (n <= 0) {
        open_flag = false;
      } else {
        (i == 0 ? r.out : r.err).append(buf, static_cast<size_t>(n));
      }
    }
  }
  close(out_pipe[0]);
  close(err_pipe[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

void SetDeadline(grpc::ClientContext* ctx, std::chrono::seconds s) {
  ctx->set_deadline(std::chrono::system_clock::now() + s);
}

std::unique_ptr<RewrapdHarness> RewrapdHarness::Start(TokenKind kind, std::string* error) {
  return Start(kind, error, Options());
}

std::unique_ptr<RewrapdHarness> RewrapdHarness::Start(TokenKind kind, std::string* error,
                                                      const Options& options) {
  std::unique_ptr<RewrapdHarness> h(new RewrapdHarness());
  h->kind_ = kind;
  h->dir_ = std::make_unique<TempDir>(std::string("rewrapd-") + TokenName(kind));
  const std::string dir = h->dir_->path();
  const std::string rewrapd = RewrapdPath();
  if (access(rewrapd.c_str(), X_OK) != 0) {
    *error = "rewrapd executable not found at " + rewrapd +
             " (build the `rewrapd` target, or set HSMREWRAP_REWRAPD)";
    return nullptr;
  }
  const std::string state = dir + "/state";
  mkdir(state.c_str(), 0700);
  // rewrapd's stdout, stderr and audit log: in the leak check's collection when it is on
  // (kept after the run, searched for the recorded secrets), else in the temp dir.
  h->log_dir_ = leakcheck::NewLogDir(std::string("rewrapd-") + TokenName(kind));
  if (h->log_dir_.empty()) h->log_dir_ = dir;

  h->argv_ = {rewrapd};
  if (!options.module_args.empty()) {
    h->argv_.insert(h->argv_.end(), options.module_args.begin(), options.module_args.end());
  } else if (kind == TokenKind::kNss) {
    const std::string db = dir + "/nssdb";
    mkdir(db.c_str(), 0700);
    const std::string pin_file = dir + "/nss.pin";
    const std::string pin = "it-" + RandomToken(16);
    leakcheck::RecordSecret(pin);
    if (!WriteFile(pin_file, pin, 0600)) {
      *error = "cannot write " + pin_file;
      return nullptr;
    }
    std::vector<std::string> certutil = {"certutil", "-N", "-d", "sql:" + db, "-f", pin_file};
    CommandResult cr = RunCommand(certutil);
    if (cr.exit_code != 0) {
      *error = "certutil failed to create the NSS database:\n" + cr.Describe(certutil);
      return nullptr;
    }
    const std::string init_args =
        "configdir='sql:" + db + "' certPrefix='' keyPrefix='' secmod='secmod.db' flags=";
    h->argv_.insert(h->argv_.end(), {"--module", kNssModule, "--init-args", init_args, "--token",
                                     kNssTokenLabel, "--pin-file", pin_file});
  }
  h->argv_.insert(h->argv_.end(), {"--listen", "127.0.0.1:0", "--state-dir", state});
  h->argv_.insert(h->argv_.end(), options.extra_args.begin(), options.extra_args.end());
  // The most verbose logging and an audit log, unless the test chose its own: the leak
  // check searches both for every secret the tests used.
  if (!HasFlag(options.extra_args, "--log-level"))
    h->argv_.insert(h->argv_.end(), {"--log-level", "trace"});
  if (HasFlag(options.extra_args, "--audit-log")) {
    h->own_audit_log_ = FlagValue(options.extra_args, "--audit-log");
  } else {
    h->argv_.insert(h->argv_.end(), {"--audit-log", h->log_dir_ + "/audit.jsonl"});
  }
  // The child's environment, built before fork (only async-signal-safe calls after it).
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv = *e;
    bool overridden = false;
    for (const auto& [k, v] : options.env) overridden |= kv.compare(0, k.size() + 1, k + "=") == 0;
    if (!overridden) env.push_back(kv);
  }
  for (const auto& [k, v] : options.env) env.push_back(k + "=" + v);
  std::vector<char*> cenv = CArgv(env);

  const std::string out_path = h->log_dir_ + "/rewrapd.stdout";
  const std::string err_path = h->log_dir_ + "/rewrapd.stderr";
  std::vector<std::string> argv = h->argv_;
  std::vector<char*> cargv = CArgv(argv);
  pid_t pid = fork();
  if (pid < 0) {
    *error = std::string("fork: ") + strerror(errno);
    return nullptr;
  }
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec. Dies with the test process.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int devnull = open("/dev/null", O_RDONLY);
    if (out < 0 || err < 0 || devnull < 0) _exit(126);
    dup2(devnull, 0);
    dup2(out, 1);
    dup2(err, 2);
    execve(cargv[0], cargv.data(), cenv.data());
    _exit(127);
  }
  h->pid_ = pid;

  // Wait for the ready line in rewrapd's stdout.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  std::string line;
  while (true) {
    std::string out = ReadFileOrEmpty(out_path);
    size_t p = out.find(kReadyPrefix);
    if (p != std::string::npos) {
      size_t eol = out.find('\n', p);
      if (eol != std::string::npos) {
        line = out.substr(p, eol - p);
        break;
      }
    }
    int status = 0;
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) {
      h->pid_ = -1;
      std::string how =
          WIFEXITED(status)     ? "exited with status " + std::to_string(WEXITSTATUS(status))
          : WIFSIGNALED(status) ? "was killed by signal " + std::to_string(WTERMSIG(status))
                                : "stopped";
      *error = "rewrapd " + how + " before it printed \"" + kReadyPrefix + "HOST:PORT\".\n" +
               h->CommandLine() + "\nstdout:\n" + Tail(out) + "\nstderr:\n" + h->StderrText();
      return nullptr;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      *error = "rewrapd did not print \"" + std::string(kReadyPrefix) +
               "HOST:PORT\" within 60 s.\n" + h->CommandLine() + "\nstdout:\n" + Tail(out) +
               "\nstderr:\n" + h->StderrText();
      h->Stop();
      return nullptr;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  // The embedded SoftHSM2 token's PINs, made by rewrapd on its first start.
  for (const char* pin_file : {"/user.pin", "/so.pin"}) {
    leakcheck::RecordSecret(ReadFileOrEmpty(state + pin_file));
  }
  h->address_ = line.substr(strlen(kReadyPrefix));
  while (!h->address_.empty() && isspace(static_cast<unsigned char>(h->address_.back()))) {
    h->address_.pop_back();
  }
  if (h->address_.empty() || h->address_.find(':') == std::string::npos ||
      h->address_.substr(h->address_.rfind(':') + 1) == "0") {
    *error = "rewrapd's ready line has no usable HOST:PORT: \"" + line + "\"";
    h->Stop();
    return nullptr;
  }

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  h->channel_ = grpc::CreateCustomChannel(
      h->address_, options.credentials ? options.credentials : grpc::InsecureChannelCredentials(),
      args);
  if (options.wait_connected &&
      !h->channel_->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(15))) {
    *error = "cannot connect to rewrapd at " + h->address_ + "\nstderr:\n" + h->StderrText();
    h->Stop();
    return nullptr;
  }
  h->rewrap_ = hsmrewrap::v1::Rewrap::NewStub(h->channel_);
  h->keys_ = hsmrewrap::v1::Keys::NewStub(h->channel_);
  return h;
}

std::string RewrapdHarness::StderrText() const {
  return Tail(ReadFileOrEmpty(log_dir_ + "/rewrapd.stderr"));
}

std::string RewrapdHarness::StdoutText() const {
  return Tail(ReadFileOrEmpty(log_dir_ + "/rewrapd.stdout"));
}

std::string RewrapdHarness::CommandLine() const {
  std::string s = "command:";
  for (const auto& a : argv_) s += " '" + a + "'";
  return s;
}

std::string RewrapdHarness::Stop() {
  if (pid_ <= 0) return "";
  rewrap_.reset();
  keys_.reset();
  channel_.reset();
  kill(pid_, SIGTERM);
  int status = 0;
  bool exited = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    pid_t w = waitpid(pid_, &status, WNOHANG);
    if (w == pid_) {
      exited = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::string problem;
  if (!exited) {
    kill(pid_, SIGKILL);
    waitpid(pid_, &status, 0);
    problem = "rewrapd did not stop within 30 s of SIGTERM; killed with SIGKILL";
  } else if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
    problem = "rewrapd exited with status " + std::to_string(WEXITSTATUS(status)) + " on SIGTERM";
  } else if (WIFSIGNALED(status) && WTERMSIG(status) != SIGTERM) {
    problem = "rewrapd died of signal " + std::to_string(WTERMSIG(status)) + " on SIGTERM";
  }
  pid_ = -1;
  // An audit log the test placed itself (in its own temp dir) joins the collection.
  struct stat st;
  if (!own_audit_log_.empty() && log_dir_ != dir_->path() &&
      stat(own_audit_log_.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
    WriteFile(log_dir_ + "/own-audit.jsonl", ReadFileOrEmpty(own_audit_log_));
  }
  if (!problem.empty()) problem += "\nstderr:\n" + StderrText();
  return problem;
}

RewrapdHarness::~RewrapdHarness() { Stop(); }

}  // namespace hsmrewrap::it
