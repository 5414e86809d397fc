#include "tests/support/rewrapd_harness.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <map>
#include <random>
#include <thread>

#include "tests/leakcheck/record.h"
#include "tests/support/command.h"
#include "tests/support/files.h"
#include "tests/support/tokens.h"

#ifndef HSMREWRAP_REWRAPD_PATH
#define HSMREWRAP_REWRAPD_PATH "rewrapd"
#endif

namespace hsmrewrap::test {
namespace {

constexpr char kReadyPrefix[] = "rewrapd serving on ";

TokenKind g_token = TokenKind::kSoftHsm;

std::string RandomToken(size_t n) {
  static const char kAlphabet[] = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
  std::random_device rd;
  std::string s;
  for (size_t i = 0; i < n; ++i) s.push_back(kAlphabet[rd() % (sizeof(kAlphabet) - 1)]);
  return s;
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
  } else if (value == "opencryptoki") {
    g_token = TokenKind::kOpenCryptoki;
  } else if (value == "tpm") {
    g_token = TokenKind::kTpm;
  } else {
    *error = "unknown token '" + value + "' (expected softhsm, nss, opencryptoki or tpm)";
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
  if (std::string why = ModuleMissingReason(kind); !why.empty()) return why;
  if (kind == TokenKind::kNss && !FindInPath("certutil")) {
    return "certutil not found in PATH (install libnss3-tools); it creates the NSS database";
  }
  return "";
}

void SetDeadline(grpc::ClientContext* ctx, std::chrono::seconds s) {
  ctx->set_deadline(std::chrono::system_clock::now() + s);
}

namespace {
HarnessTokenMaker& TokenMaker() {
  static auto* maker = new HarnessTokenMaker();
  return *maker;
}
}  // namespace

void SetHarnessTokenMaker(HarnessTokenMaker maker) { TokenMaker() = std::move(maker); }

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
    const std::string init_args = NssInitArgs(db);
    h->argv_.insert(h->argv_.end(), {"--module", kNssSoftokenPath, "--init-args", init_args,
                                     "--token", kNssKeyTokenLabel, "--pin-file", pin_file});
  } else if (kind == TokenKind::kOpenCryptoki || kind == TokenKind::kTpm) {
    if (!TokenMaker()) {
      *error = std::string("no token maker for ") + TokenName(kind) +
               " (SetHarnessTokenMaker: the integration tests' main registers it)";
      return nullptr;
    }
    std::vector<std::string> args = TokenMaker()(kind, dir, &h->token_keep_, error);
    if (args.empty()) return nullptr;
    h->argv_.insert(h->argv_.end(), args.begin(), args.end());
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
  std::map<std::string, std::string> env_vars;
  for (const auto& [k, v] : options.env) env_vars[k] = v;
  std::vector<std::string> env = ChildEnvironment(env_vars);
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

bool RewrapdHarness::Signal(int sig) const { return pid_ > 0 && kill(pid_, sig) == 0; }

RewrapdHarness::~RewrapdHarness() { Stop(); }

}  // namespace hsmrewrap::test
