// Test harness for the integration and end-to-end tests: runs the real rewrapd on a free
// loopback port against a fresh token (SoftHSM2 embedded default, or NSS softoken) in a
// temporary directory, and gives the tests a channel and stubs.
//
// Which token: `--token=softhsm|nss` on the test binary's command line (see
// it_main.cc), else the environment variable HSMREWRAP_IT_TOKEN, else softhsm. The same
// binary runs as two ctest entries.
#pragma once

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "hsmrewrap/v1/rewrap.grpc.pb.h"

namespace hsmrewrap::it {

enum class TokenKind { kSoftHsm, kNss };

const char* TokenName(TokenKind kind);  // "softhsm" / "nss"
// Reads --token=... from argv (and removes it), else HSMREWRAP_IT_TOKEN. Returns false and
// sets *error on an unknown value.
bool ParseTokenFlag(int* argc, char** argv, std::string* error);
TokenKind CurrentToken();

// Empty when `kind` can run on this machine; otherwise the reason (for GTEST_SKIP).
std::string TokenUnavailableReason(TokenKind kind);

// Path of the rewrapd executable (compile definition, overridable by HSMREWRAP_REWRAPD).
std::string RewrapdPath();

// A fresh directory, removed recursively on destruction (kept if HSMREWRAP_IT_KEEP_TMP
// is set).
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "hsmrewrap-it");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string ReadFileOrEmpty(const std::string& path);
bool WriteFile(const std::string& path, const std::string& data, int mode = 0600);

struct CommandResult {
  int exit_code = -1;  // exit status, or -1 if it did not exit normally / could not start
  std::string out;     // stdout
  std::string err;     // stderr (and start-up errors of ours)
  std::string Describe(const std::vector<std::string>& argv) const;
};
// Runs argv[0] (looked up in PATH) with the given stdin; kills it after timeout.
CommandResult RunCommand(const std::vector<std::string>& argv, const std::string& stdin_data = "",
                         std::chrono::seconds timeout = std::chrono::seconds(120));

// Sets a deadline on a client context (default 120 s: SoftHSM key generation and big
// batches on a busy 2-core machine are slow).
void SetDeadline(grpc::ClientContext* ctx, std::chrono::seconds s = std::chrono::seconds(120));

class RewrapdHarness {
 public:
  // Prepares the token (NSS: a fresh database and PIN made with certutil), starts rewrapd,
  // waits (60 s max) for "rewrapd serving on HOST:PORT" and connects. On failure returns
  // null and sets *error, including rewrapd's stderr.
  // rewrapd logs at trace level and writes an audit log (unless extra_args set
  // --log-level / --audit-log); with the leak check on (tests/leakcheck/record.h) its
  // stdout, stderr and audit log are kept in the collection, and the PINs are recorded.
  static std::unique_ptr<RewrapdHarness> Start(TokenKind kind, std::string* error);
  // The same with more rewrapd arguments and the client side's channel credentials (TLS);
  // `module_args`, when not empty, replace the token arguments (a token the test made:
  // --module/--token/--pin-file) and `env` is set for rewrapd only.
  struct Options {
    std::vector<std::string> extra_args;
    std::shared_ptr<grpc::ChannelCredentials> credentials;  // null: plaintext
    bool wait_connected = true;  // false: a channel that may not connect (tests of refusal)
    std::vector<std::string> module_args;
    std::vector<std::pair<std::string, std::string>> env;
  };
  static std::unique_ptr<RewrapdHarness> Start(TokenKind kind, std::string* error,
                                               const Options& options);
  ~RewrapdHarness();  // Stop() if still running

  // SIGTERM and waitpid (SIGKILL after 30 s). Returns "" on a clean stop (exit 0 or killed by
  // the SIGTERM), else a description of what went wrong, with stderr.
  std::string Stop();

  TokenKind kind() const { return kind_; }
  pid_t pid() const { return pid_; }
  const std::string& address() const { return address_; }
  const std::string& dir() const { return dir_->path(); }
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  hsmrewrap::v1::Rewrap::Stub& rewrap() { return *rewrap_; }
  hsmrewrap::v1::Keys::Stub& keys() { return *keys_; }
  std::string StderrText() const;
  // rewrapd's whole stderr log file (StderrText() is its tail).
  std::string StderrPath() const { return log_dir_ + "/rewrapd.stderr"; }
  std::string StdoutText() const;
  // The command line rewrapd was started with (for messages).
  std::string CommandLine() const;

 private:
  RewrapdHarness() = default;
  TokenKind kind_ = TokenKind::kSoftHsm;
  std::unique_ptr<TempDir> dir_;
  std::string log_dir_;        // rewrapd.stdout, rewrapd.stderr, audit.jsonl
  std::string own_audit_log_;  // --audit-log given in extra_args; copied to log_dir_ on Stop()
  std::vector<std::string> argv_;
  pid_t pid_ = -1;
  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<hsmrewrap::v1::Rewrap::Stub> rewrap_;
  std::unique_ptr<hsmrewrap::v1::Keys::Stub> keys_;
};

}  // namespace hsmrewrap::it
