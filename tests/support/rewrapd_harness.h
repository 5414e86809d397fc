// The one rewrapd harness of the tests: runs the real rewrapd on a free loopback port
// against a fresh token (SoftHSM2 embedded default, NSS softoken, or a token the test made)
// in a temporary directory, waits until it serves, gives the tests a channel and stubs,
// signals and stops it, and reads its logs.
//
// Which token: `--token=softhsm|nss` on the test binary's command line (see
// it_main.cc), else the environment variable HSMREWRAP_IT_TOKEN, else softhsm. The same
// binary runs as two ctest entries.
#pragma once

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "hsmrewrap/v1/rewrap.grpc.pb.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tokens.h"

namespace hsmrewrap::test {

// TokenKind and TokenName: tests/support/tokens.h.
// Reads --token=... from argv (and removes it), else HSMREWRAP_IT_TOKEN. Returns false and
// sets *error on an unknown value.
bool ParseTokenFlag(int* argc, char** argv, std::string* error);
TokenKind CurrentToken();

// Empty when `kind` can run on this machine; otherwise the reason (for GTEST_SKIP).
std::string TokenUnavailableReason(TokenKind kind);

// Path of the rewrapd executable (compile definition, overridable by HSMREWRAP_REWRAPD).
std::string RewrapdPath();

// Sets a deadline on a client context (default 120 s: SoftHSM key generation and big
// batches on a busy 2-core machine are slow).
void SetDeadline(grpc::ClientContext* ctx, std::chrono::seconds s = std::chrono::seconds(120));

// Makes a fresh token of `kind` for a rewrapd the harness starts, where the test process itself
// sets the token up (openCryptoki, TPM: their stacks are brought up around the test by
// tests/support/hw_tokens.sh): returns the rewrapd arguments naming it (--module, --token,
// --pin-file; files in `dir`) and sets *keep to what must live while rewrapd runs. The
// integration tests' main() registers tests/support/test_token's (it needs hsmrewrap::hsm,
// which this library does not link).
using HarnessTokenMaker = std::function<std::vector<std::string>(
    TokenKind kind, const std::string& dir, std::shared_ptr<void>* keep, std::string* error)>;
void SetHarnessTokenMaker(HarnessTokenMaker maker);

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
  // Sends `sig` to rewrapd (e.g. SIGHUP to reload, SIGTERM to start a drain); false if it
  // is not running or kill() failed.
  bool Signal(int sig) const;

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
  std::shared_ptr<void> token_keep_;  // a token made by the HarnessTokenMaker
  std::string log_dir_;        // rewrapd.stdout, rewrapd.stderr, audit.jsonl
  std::string own_audit_log_;  // --audit-log given in extra_args; copied to log_dir_ on Stop()
  std::vector<std::string> argv_;
  pid_t pid_ = -1;
  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<hsmrewrap::v1::Rewrap::Stub> rewrap_;
  std::unique_ptr<hsmrewrap::v1::Keys::Stub> keys_;
};

}  // namespace hsmrewrap::test
