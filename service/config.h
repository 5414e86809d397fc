// rewrapd configuration: built-in defaults, then the YAML file (--config), then
// HSMREWRAP_* environment variables, then command-line flags (last wins).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace hsmrewrap::service {

struct Limits {
  uint32_t max_batch_items = 1000;         // items in one RewrapRequest
  uint32_t max_message_bytes = 16u << 20;  // gRPC receive limit
  uint32_t max_inflight_items = 10000;     // items queued or running in the engine
  // RewrapStream calls: open at once in all and per caller identity, the answer bytes one
  // stream may hold that its caller has not read (it reads no further batch past that), and
  // how long one stream may stay open (it then ends UNAVAILABLE: open a new one).
  uint32_t max_streams = 256;
  uint32_t max_streams_per_identity = 32;
  uint32_t max_stream_buffer_bytes = 8u << 20;
  uint32_t max_stream_lifetime_s = 3600;
  uint32_t max_queued_key_calls = 16;      // Keys calls waiting, per queue (writes, reads)
};

// One token of a set (config `tokens:`): the single-token keys plus a name.
struct TokenConfig {
  std::string name;       // unique in the set; results and metrics carry it
  std::string module;     // empty only for the embedded default (single-token form)
  std::string init_args;
  std::string token;      // label
  std::string token_uri;  // RFC 7512 URI (module-path= / module-name= / pin-source= too)
  std::string pin_file;
  uint32_t pool_size = 0;  // 0 = the top-level pool_size
  uint32_t workers = 0;    // engine threads this token adds; 0 = its pool_size
  uint32_t max_concurrency = 0;  // calls inside the module at once; 0 = the top-level value
  std::optional<bool> allow_host_unpadding;  // unset = the top-level allow_host_unpadding
  bool embedded() const { return module.empty(); }
};

struct Config {
  std::string config_file;  // --config
  std::string state_dir;    // --state-dir (embedded default keeps its token here)
  std::string listen = "127.0.0.1:50051";
  std::string module;     // --module; empty = embedded SoftHSM2 default
  std::string init_args;  // --init-args (vendor C_Initialize pReserved string)
  std::string token;      // --token LABEL
  std::string token_uri;  // RFC 7512 URI selecting the token (pkcs11:token=...)
  std::string pin_file;   // --pin-file; else $HSMREWRAP_PIN or systemd credential "pin"
  bool allow_host_unpadding = false;
  bool allow_host_unpadding_set = false;  // true when the user said so either way
  bool in_token_cms = true;       // build CMS outputs in the token where it can
  bool require_in_token = false;  // every item must take IN_TOKEN (else UNSUPPORTED)
  uint32_t pool_size = 0;                 // PKCS#11 sessions; 0 = 2 x cores (at least 2)
  uint32_t workers = 0;                   // engine threads; 0 = max(pool_size, cores)
  // Calls inside the PKCS#11 module at once (0 = no limit): a module that takes one call at a
  // time (a TPM without a resource manager) is driven through this instead of failing.
  uint32_t max_concurrency = 0;
  Limits limits;
  // The tokens (config `tokens:`, a YAML list). Finalize makes it one entry from the
  // single-token keys above when the list is not given; after Finalize every entry has its
  // module, pin_file, pool_size, workers and allow_host_unpadding filled in, and `workers`
  // is the total.
  std::vector<TokenConfig> tokens;
  bool tokens_given = false;  // the list came from the file
  std::string log_level = "info";
  std::string log_format;               // "json" (one JSON object a line) or "text"; empty = json
                                        // unless stderr is a terminal
  std::string metrics_listen;           // HOST:PORT for Prometheus GET /metrics; empty = off
  uint32_t selftest_interval_s = 300;   // known-answer self-test period; 0 = on demand only
  std::string default_key = "default";  // key the embedded default creates
  // Security (docs/operator-guide.md "Security").
  std::string tls_cert;   // server certificate chain (PEM); with tls_key turns TLS on
  std::string tls_key;    // server private key (PEM)
  std::string client_ca;  // CA bundle (PEM) client certificates must chain to (mTLS)
  bool insecure = false;  // allow plaintext gRPC on a non-loopback address
  std::string policy;     // policy file (YAML): identities -> RPCs, keys, recipients, limits
  std::string audit_log;  // audit file: one JSON line per item; empty = off
  // Reliability (docs/operator-guide.md "Reliability").
  uint32_t shutdown_grace_s = 10;            // SIGTERM: how long in-flight batches may finish
  uint32_t reconnect_backoff_max_ms = 2000;  // token lost: longest wait between re-initialisations
  uint32_t token_call_timeout_s =
      10;  // a token call inside the module longer than this: token lost

  bool embedded() const { return module.empty(); }
  bool tls() const { return !tls_cert.empty(); }
};

// The default state folder: $XDG_STATE_HOME/hsm-rewrap, else ~/.local/state/hsm-rewrap.
std::string DefaultStateDir();

// The value a configuration key takes: YAML scalar text, or an environment variable's text.
enum class ConfigValueType { kString, kBool, kUint32 };

// One key of the YAML file, also read from the environment as HSMREWRAP_<NAME>.
struct ConfigKey {
  const char* name;
  ConfigValueType type;
  // A mapping the key may also sit in ("limits" for limits: {max_batch_items: ..}), or "".
  const char* section;
};

// The keys an entry of `tokens:` takes.
const std::vector<ConfigKey>& TokenConfigKeys();

// Every key ApplyYamlFile and ApplyEnvironment accept, from the table they read (so a test
// that walks this list covers a key added later).
const std::vector<ConfigKey>& ConfigKeys();

// Applies a YAML file's keys onto `config`. The file is one mapping; unknown keys, a key
// given twice, a value of the wrong type (a list or mapping where a scalar belongs, an empty
// value, a scalar where limits: wants a mapping) and an empty file are InvalidArgument
// errors naming the key (typos matter); nothing here throws.
absl::Status ApplyYamlFile(const std::string& path, Config& config);
// Applies HSMREWRAP_<KEY> environment variables (e.g. HSMREWRAP_LISTEN).
absl::Status ApplyEnvironment(Config& config);
// Fills derived defaults and checks values; returns a clear error.
absl::Status Finalize(Config& config);

// True when HOST of HOST:PORT is a loopback address (127.0.0.0/8, ::1, localhost).
bool IsLoopbackListen(const std::string& listen);
// TLS settings are complete, and plaintext gRPC is served on loopback only unless insecure.
absl::Status CheckTransport(const Config& config);

// A human summary of what rewrapd will do (for --check-config and the start banner).
std::string Describe(const Config& config);

}  // namespace hsmrewrap::service
