// rewrapd: the hsm-rewrap daemon. This file reads the command line (CLI11) into a Config
// over the YAML file and the environment; service/server.h does everything after that.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <iostream>
#include <optional>
#include <string>

#include "service/config.h"
#include "service/logging.h"
#include "service/server.h"

#ifndef HSMREWRAP_VERSION
#define HSMREWRAP_VERSION "0.0.0"
#endif

namespace hsmrewrap::service {
namespace {

// The command line; an option that is not given leaves the file's and environment's value.
struct Flags {
  std::optional<std::string> config_file, state_dir, listen, module, init_args, token, token_uri,
      pin_file, log_level, log_format, metrics_listen, tls_cert, tls_key, client_ca, policy,
      audit_log;
  std::optional<uint32_t> pool_size, max_concurrency, workers, max_batch, max_inflight, max_message,
      max_queued_key_calls, selftest_interval, shutdown_grace, reconnect_backoff_max,
      token_call_timeout;
  bool allow_host_unpadding = false, deny_host_unpadding = false, check_config = false,
       version = false, insecure = false, require_in_token = false, no_in_token_cms = false;
};

void AddFlags(CLI::App& app, Flags& f) {
  app.add_option("--config", f.config_file, "YAML configuration file")->check(CLI::ExistingFile);
  app.add_option("--state-dir", f.state_dir,
                 "state folder (default $XDG_STATE_HOME/hsm-rewrap or ~/.local/state/hsm-rewrap)");
  app.add_option("--listen", f.listen,
                 "HOST:PORT to serve gRPC on (default 127.0.0.1:50051; port 0 picks one)");
  app.add_option("--module", f.module,
                 "PKCS#11 module path (default: the embedded SoftHSM2 token)");
  app.add_option("--init-args", f.init_args,
                 "vendor C_Initialize argument string (NSS softoken needs one)");
  app.add_option("--token", f.token, "token label");
  app.add_option("--token-uri", f.token_uri,
                 "RFC 7512 PKCS#11 URI of the token (pkcs11:token=...;serial=...)");
  app.add_option("--pin-file", f.pin_file,
                 "file holding the user PIN (else $HSMREWRAP_PIN or the systemd credential 'pin')");
  app.add_flag("--allow-host-unpadding", f.allow_host_unpadding,
               "allow raw RSA in the token + OAEP/PKCS#1 unpadding on the host for paddings the "
               "token cannot do");
  app.add_flag("--deny-host-unpadding", f.deny_host_unpadding,
               "never unpad on the host (the embedded default allows it)");
  app.add_flag("--require-in-token", f.require_in_token,
               "every item must take the IN_TOKEN path; items that cannot fail UNSUPPORTED");
  app.add_flag("--no-in-token-cms", f.no_in_token_cms,
               "build CMS outputs on the host even where the token could build them");
  app.add_option("--pool-size", f.pool_size, "PKCS#11 sessions (default: 2 x cores, at least 2)");
  app.add_option("--max-concurrency", f.max_concurrency,
                 "calls inside the PKCS#11 module at once (default 0: no limit; 1 for a module "
                 "that takes one call at a time, e.g. a TPM without a resource manager)");
  app.add_option("--workers", f.workers,
                 "engine threads that run items (default: max(pool size, cores)); more than the "
                 "pool size only helps when host work is large next to the token's time");
  app.add_option("--max-batch-items", f.max_batch, "items per batch (default 1000)");
  app.add_option("--max-inflight-items", f.max_inflight, "items queued or running (default 10000)");
  app.add_option("--max-queued-key-calls", f.max_queued_key_calls,
                 "Keys calls that may wait for the key administration thread (writes) and "
                 "again for the read threads; more are RESOURCE_EXHAUSTED (default 16)");
  app.add_option("--max-message-bytes", f.max_message, "largest request message (default 16 MiB)");
  app.add_option("--log-level", f.log_level, "trace|debug|info|warn|error (default info)");
  app.add_option("--log-format", f.log_format,
                 "json or text (default: json unless stderr is a terminal)");
  app.add_option("--metrics-listen", f.metrics_listen,
                 "HOST:PORT for Prometheus metrics at GET /metrics (default off)");
  app.add_option("--selftest-interval", f.selftest_interval,
                 "seconds between known-answer self-tests (default 300; 0 = on demand)");
  app.add_option("--tls-cert", f.tls_cert,
                 "server certificate chain (PEM); with --tls-key serves TLS");
  app.add_option("--tls-key", f.tls_key, "server private key (PEM)");
  app.add_option("--client-ca", f.client_ca,
                 "CA bundle (PEM): require client certificates that chain to it (mTLS)");
  app.add_flag("--insecure", f.insecure,
               "allow plaintext gRPC on a non-loopback address (logs a warning)");
  app.add_option(
      "--policy", f.policy,
      "policy file (YAML): identities -> RPCs, keys, recipients, rate limits; SIGHUP reloads it");
  app.add_option("--audit-log", f.audit_log,
                 "append one JSON line per item and key RPC here; every RPC fails closed if it "
                 "cannot be written");
  app.add_option("--shutdown-grace", f.shutdown_grace,
                 "seconds in-flight batches get to finish after SIGTERM/SIGINT before rewrapd "
                 "stops (default 10)");
  app.add_option("--reconnect-backoff-max", f.reconnect_backoff_max,
                 "token lost: longest wait in ms between re-initialisation attempts (default 2000; "
                 "100-600000)");
  app.add_option(
      "--token-call-timeout", f.token_call_timeout,
      "seconds a PKCS#11 call may stay inside the module before the token counts as lost and the "
      "call's items are answered UNAVAILABLE (default 10; 1-3600)");
  app.add_flag("--check-config", f.check_config,
               "validate the configuration, print what rewrapd would do, exit");
  app.add_flag("--version", f.version, "print the version and exit");
}

// Flags win over the file and the environment.
void ApplyFlags(const Flags& f, Config& c) {
  if (f.state_dir) c.state_dir = *f.state_dir;
  if (f.listen) c.listen = *f.listen;
  if (f.module) c.module = *f.module;
  if (f.init_args) c.init_args = *f.init_args;
  if (f.token) c.token = *f.token;
  if (f.token_uri) c.token_uri = *f.token_uri;
  if (f.pin_file) c.pin_file = *f.pin_file;
  if (f.log_level) c.log_level = *f.log_level;
  if (f.log_format) c.log_format = *f.log_format;
  if (f.metrics_listen) c.metrics_listen = *f.metrics_listen;
  if (f.selftest_interval) c.selftest_interval_s = *f.selftest_interval;
  if (f.shutdown_grace) c.shutdown_grace_s = *f.shutdown_grace;
  if (f.reconnect_backoff_max) c.reconnect_backoff_max_ms = *f.reconnect_backoff_max;
  if (f.token_call_timeout) c.token_call_timeout_s = *f.token_call_timeout;
  if (f.pool_size) c.pool_size = *f.pool_size;
  if (f.max_concurrency) c.max_concurrency = *f.max_concurrency;
  if (f.workers) c.workers = *f.workers;
  if (f.tls_cert) c.tls_cert = *f.tls_cert;
  if (f.tls_key) c.tls_key = *f.tls_key;
  if (f.client_ca) c.client_ca = *f.client_ca;
  if (f.insecure) c.insecure = true;
  if (f.policy) c.policy = *f.policy;
  if (f.audit_log) c.audit_log = *f.audit_log;
  if (f.max_batch) c.limits.max_batch_items = *f.max_batch;
  if (f.max_inflight) c.limits.max_inflight_items = *f.max_inflight;
  if (f.max_message) c.limits.max_message_bytes = *f.max_message;
  if (f.max_queued_key_calls) c.limits.max_queued_key_calls = *f.max_queued_key_calls;
  if (f.require_in_token) c.require_in_token = true;
  if (f.no_in_token_cms) c.in_token_cms = false;
  if (f.allow_host_unpadding || f.deny_host_unpadding) {
    c.allow_host_unpadding = f.allow_host_unpadding;
    c.allow_host_unpadding_set = true;
  }
}

// The configuration file, then the environment, then the flags; finalized. Errors are
// printed; the result is then the exit status (2).
std::optional<int> ReadConfig(const Flags& f, Config& c) {
  if (f.config_file) {
    c.config_file = *f.config_file;
    if (auto st = ApplyYamlFile(*f.config_file, c); !st.ok()) {
      std::cerr << "rewrapd: " << st.message() << "\n";
      return 2;
    }
  }
  if (auto st = ApplyEnvironment(c); !st.ok()) {
    std::cerr << "rewrapd: " << st.message() << "\n";
    return 2;
  }
  if (f.allow_host_unpadding && f.deny_host_unpadding) {
    std::cerr
        << "rewrapd: --allow-host-unpadding and --deny-host-unpadding contradict each other\n";
    return 2;
  }
  ApplyFlags(f, c);
  if (auto st = Finalize(c); !st.ok()) {
    std::cerr << "rewrapd: configuration: " << st.message() << "\n";
    return 2;
  }
  return std::nullopt;
}

int Main(int argc, char** argv) {
  CLI::App app{
      "rewrapd: rewraps sealed secrets with RSA keys kept in a PKCS#11 token.\n"
      "With no arguments it creates (first run) and uses an embedded SoftHSM2 token\n"
      "under the state folder, with a 2048-bit key named 'default', and serves on\n"
      "127.0.0.1:50051. Every option is also a key of the YAML --config file and an\n"
      "HSMREWRAP_<KEY> environment variable; flags win over both.",
      "rewrapd"};
  Flags flags;
  AddFlags(app, flags);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // --help exits 0; a usage error exits 2 with the reason
  }
  if (flags.version) {
    std::cout << "rewrapd " << HSMREWRAP_VERSION << "\n";
    return 0;
  }
  Config c;
  if (auto exit_status = ReadConfig(flags, c)) return *exit_status;
  auto server = Server::Create(c, /*open_audit_log=*/!flags.check_config);
  if (!server.ok()) {
    std::cerr << "rewrapd: configuration: " << server.status().message() << "\n";
    return 2;
  }
  if (flags.check_config) {
    std::cout << "configuration is valid\n" << Describe(c);
    return 0;
  }
  SetUpLogging(c);
  return (*server)->Run();
}

}  // namespace
}  // namespace hsmrewrap::service

int main(int argc, char** argv) { return hsmrewrap::service::Main(argc, argv); }
