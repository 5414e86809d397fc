#include "service/config.h"

#include <cstdlib>
#include <thread>

#include <yaml-cpp/yaml.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "hsm/token.h"

namespace hsmrewrap::service {
namespace {

absl::Status ParseBool(const std::string& key, const std::string& v, bool& out) {
  std::string s = absl::AsciiStrToLower(v);
  if (s == "true" || s == "yes" || s == "1" || s == "on") {
    out = true;
  } else if (s == "false" || s == "no" || s == "0" || s == "off") {
    out = false;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(key, ": expected true or false, got '", v, "'"));
  }
  return absl::OkStatus();
}

absl::Status ParseU32(const std::string& key, const std::string& v, uint32_t& out) {
  if (!absl::SimpleAtoi(v, &out)) {
    return absl::InvalidArgumentError(absl::StrCat(key, ": expected a non-negative integer, got '", v, "'"));
  }
  return absl::OkStatus();
}

// One table of keys serves the YAML file and the environment alike.
absl::Status SetKey(const std::string& key, const std::string& value, Config& c) {
  if (key == "state_dir") { c.state_dir = value; return absl::OkStatus(); }
  if (key == "listen") { c.listen = value; return absl::OkStatus(); }
  if (key == "module") { c.module = value; return absl::OkStatus(); }
  if (key == "init_args") { c.init_args = value; return absl::OkStatus(); }
  if (key == "token") { c.token = value; return absl::OkStatus(); }
  if (key == "token_uri") { c.token_uri = value; return absl::OkStatus(); }
  if (key == "pin_file") { c.pin_file = value; return absl::OkStatus(); }
  if (key == "log_level") { c.log_level = value; return absl::OkStatus(); }
  if (key == "default_key") { c.default_key = value; return absl::OkStatus(); }
  if (key == "log_format") { c.log_format = value; return absl::OkStatus(); }
  if (key == "metrics_listen") { c.metrics_listen = value; return absl::OkStatus(); }
  if (key == "tls_cert") { c.tls_cert = value; return absl::OkStatus(); }
  if (key == "tls_key") { c.tls_key = value; return absl::OkStatus(); }
  if (key == "client_ca") { c.client_ca = value; return absl::OkStatus(); }
  if (key == "insecure") return ParseBool(key, value, c.insecure);
  if (key == "policy") { c.policy = value; return absl::OkStatus(); }
  if (key == "audit_log") { c.audit_log = value; return absl::OkStatus(); }
  if (key == "selftest_interval_s") return ParseU32(key, value, c.selftest_interval_s);
  if (key == "allow_host_unpadding") {
    c.allow_host_unpadding_set = true;
    return ParseBool(key, value, c.allow_host_unpadding);
  }
  if (key == "shutdown_grace_s") return ParseU32(key, value, c.shutdown_grace_s);
  if (key == "reconnect_backoff_max_ms") return ParseU32(key, value, c.reconnect_backoff_max_ms);
  if (key == "token_call_timeout_s") return ParseU32(key, value, c.token_call_timeout_s);
  if (key == "pool_size") return ParseU32(key, value, c.pool_size);
  if (key == "workers") return ParseU32(key, value, c.workers);
  if (key == "max_batch_items") return ParseU32(key, value, c.limits.max_batch_items);
  if (key == "max_message_bytes") return ParseU32(key, value, c.limits.max_message_bytes);
  if (key == "max_inflight_items") return ParseU32(key, value, c.limits.max_inflight_items);
  return absl::InvalidArgumentError(absl::StrCat("unknown configuration key '", key, "'"));
}

constexpr const char* kKeys[] = {"state_dir", "listen", "module", "init_args", "token",
                                 "token_uri", "pin_file", "log_level", "default_key",
                                 "allow_host_unpadding", "pool_size", "workers", "max_batch_items",
                                 "max_message_bytes", "max_inflight_items", "metrics_listen",
                                 "selftest_interval_s", "log_format", "tls_cert", "tls_key",
                                 "client_ca", "insecure", "policy", "audit_log", "shutdown_grace_s",
                                 "reconnect_backoff_max_ms", "token_call_timeout_s"};

}  // namespace

bool IsLoopbackListen(const std::string& listen) {
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

absl::Status CheckTransport(const Config& c) {
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return absl::InvalidArgumentError("tls_cert and tls_key go together: give both or neither");
  }
  if (!c.client_ca.empty() && !c.tls()) {
    return absl::InvalidArgumentError("client_ca needs TLS: set tls_cert and tls_key too");
  }
  if (!c.tls() && !c.insecure && !IsLoopbackListen(c.listen)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "listen ", c.listen, " is not a loopback address and TLS is off: set tls_cert, tls_key and "
        "client_ca (mTLS), or set insecure: true to serve plaintext gRPC on the network anyway"));
  }
  return absl::OkStatus();
}

std::string DefaultStateDir() {
  if (const char* x = std::getenv("XDG_STATE_HOME"); x && *x) return absl::StrCat(x, "/hsm-rewrap");
  if (const char* h = std::getenv("HOME"); h && *h) return absl::StrCat(h, "/.local/state/hsm-rewrap");
  return ".hsm-rewrap";
}

absl::Status ApplyYamlFile(const std::string& path, Config& config) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config ", path, ": ", e.what()));
  }
  if (root.IsNull()) return absl::OkStatus();
  if (!root.IsMap()) return absl::InvalidArgumentError(absl::StrCat("config ", path, ": top level must be a mapping"));
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    const YAML::Node& v = kv.second;
    if (key == "limits") {  // nested form: limits: {max_batch_items: ..}
      if (!v.IsMap()) return absl::InvalidArgumentError(absl::StrCat("config ", path, ": 'limits' must be a mapping"));
      for (const auto& lv : v) {
        auto st = SetKey(lv.first.as<std::string>(), lv.second.as<std::string>(), config);
        if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat("config ", path, ": limits.", st.message()));
      }
      continue;
    }
    if (!v.IsScalar()) {
      return absl::InvalidArgumentError(absl::StrCat("config ", path, ": '", key, "' must be a scalar"));
    }
    auto st = SetKey(key, v.as<std::string>(), config);
    if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat("config ", path, ": ", st.message()));
  }
  return absl::OkStatus();
}

absl::Status ApplyEnvironment(Config& config) {
  for (const char* key : kKeys) {
    std::string var = absl::StrCat("HSMREWRAP_", absl::AsciiStrToUpper(key));
    if (const char* v = std::getenv(var.c_str()); v != nullptr) {
      auto st = SetKey(key, v, config);
      if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat(var, ": ", st.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status Finalize(Config& c) {
  if (c.state_dir.empty()) c.state_dir = DefaultStateDir();
  // Defaults measured in docs/benchmarks.md: a local, CPU-bound token runs best with as many
  // workers as sessions (no worker waits for a session) and with two sessions per core;
  // extra workers waiting for a session only add context switches.
  const uint32_t cores = std::max(1u, std::thread::hardware_concurrency());
  if (c.pool_size == 0) c.pool_size = std::max(2u, 2 * cores);
  if (c.pool_size > 256) return absl::InvalidArgumentError("pool_size: at most 256");
  if (c.workers == 0) c.workers = std::max(c.pool_size, cores);
  if (c.workers > 1024) return absl::InvalidArgumentError("workers: at most 1024");
  if (c.limits.max_batch_items == 0) return absl::InvalidArgumentError("max_batch_items must be at least 1");
  if (c.limits.max_inflight_items < c.limits.max_batch_items) {
    return absl::InvalidArgumentError("max_inflight_items must be at least max_batch_items");
  }
  if (c.limits.max_message_bytes < 4096) return absl::InvalidArgumentError("max_message_bytes must be at least 4096");
  if (c.listen.find(':') == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("listen: expected HOST:PORT, got '", c.listen, "'"));
  }
  if (auto st = CheckTransport(c); !st.ok()) return st;
  // The module (module-path / module-name) and the PIN file (pin-source) may come from the
  // token URI (RFC 7512); explicit settings must agree with it. A PIN in the URI
  // (pin-value) is refused: URIs end up in argv, logs and config dumps.
  if (!c.token_uri.empty()) {
    auto extras = hsm::ParseUriExtras(c.token_uri);
    if (!extras.ok()) return absl::InvalidArgumentError(absl::StrCat("token_uri: ", extras.status().message()));
    if (extras->has_pin_value) {
      return absl::InvalidArgumentError(
          "token_uri: pin-value is not accepted (a PIN must not sit in a URI); use pin-source=file:PATH or pin_file");
    }
    // A setting the URI also gives: taken from the URI when unset, else it must agree.
    auto adopt = [](std::string& setting, const char* setting_name, const std::string& from_uri,
                    const char* uri_name) -> absl::Status {
      if (from_uri.empty()) return absl::OkStatus();
      if (setting.empty()) {
        setting = from_uri;
      } else if (setting != from_uri) {
        return absl::InvalidArgumentError(
            absl::StrCat(setting_name, " '", setting, "' and token_uri's ", uri_name, " (", from_uri, ") differ"));
      }
      return absl::OkStatus();
    };
    if (auto st = adopt(c.module, "module", extras->module_path, "module"); !st.ok()) return st;
    if (auto st = adopt(c.pin_file, "pin_file", extras->pin_source, "pin-source"); !st.ok()) return st;
  }
  if (auto key = hsm::KeyNameFromNameOrUri(c.default_key); key.ok()) {
    c.default_key = *key;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("default_key: ", key.status().message()));
  }
  if (c.embedded()) {
    // The embedded SoftHSM2 default cannot decrypt OAEP-SHA2 natively (TOKENS.md §1), so it
    // allows host unpadding unless the user said otherwise.
    if (!c.allow_host_unpadding_set) c.allow_host_unpadding = true;
    if (!c.token.empty() || !c.token_uri.empty() || !c.init_args.empty()) {
      return absl::InvalidArgumentError("token, token_uri and init_args need module to be set");
    }
  } else if (c.token.empty() && c.token_uri.empty()) {
    return absl::InvalidArgumentError("with module set, name the token with token (label) or token_uri");
  }
  if (!c.log_format.empty() && c.log_format != "json" && c.log_format != "text") {
    return absl::InvalidArgumentError(absl::StrCat("log_format: json or text, not '", c.log_format, "'"));
  }
  if (c.reconnect_backoff_max_ms < 100 || c.reconnect_backoff_max_ms > 600000) {
    return absl::InvalidArgumentError("reconnect_backoff_max_ms: 100 to 600000");
  }
  if (c.token_call_timeout_s < 1 || c.token_call_timeout_s > 3600) {
    return absl::InvalidArgumentError("token_call_timeout_s: 1 to 3600");
  }
  static const char* kLevels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
  bool level_ok = false;
  for (const char* l : kLevels) level_ok |= (c.log_level == l);
  if (!level_ok) return absl::InvalidArgumentError(absl::StrCat("log_level: unknown level '", c.log_level, "'"));
  return absl::OkStatus();
}

std::string Describe(const Config& c) {
  std::string s;
  absl::StrAppend(&s, "listen:               ", c.listen, "\n");
  absl::StrAppend(&s, "state dir:            ", c.state_dir, "\n");
  if (c.embedded()) {
    absl::StrAppend(&s, "token:                embedded SoftHSM2 token 'hsm-rewrap' in ", c.state_dir,
                    "/tokens (created on first run, key '", c.default_key, "')\n");
  } else {
    absl::StrAppend(&s, "module:               ", c.module, "\n");
    if (!c.init_args.empty()) absl::StrAppend(&s, "init args:            ", c.init_args, "\n");
    absl::StrAppend(&s, "token:                ", c.token_uri.empty() ? "label " + c.token : c.token_uri, "\n");
    absl::StrAppend(&s, "PIN from:             ",
                    c.pin_file.empty() ? "$HSMREWRAP_PIN or systemd credential 'pin'" : c.pin_file, "\n");
  }
  absl::StrAppend(&s, "host unpadding:       ", c.allow_host_unpadding ? "ALLOWED" : "denied", "\n");
  absl::StrAppend(&s, "session pool:         ", c.pool_size, " sessions, ", c.workers, " workers\n");
  absl::StrAppend(&s, "metrics:              ",
                  c.metrics_listen.empty() ? "off" : "http://" + c.metrics_listen + "/metrics", "\n");
  absl::StrAppend(&s, "self-test:            ",
                  c.selftest_interval_s ? absl::StrCat("every ", c.selftest_interval_s, " s") : "on demand", "\n");
  absl::StrAppend(&s, "transport:            ",
                  !c.tls() ? (c.insecure && !IsLoopbackListen(c.listen) ? "PLAINTEXT (insecure)" : "plaintext (loopback)")
                  : c.client_ca.empty() ? "TLS (no client certificates)" : "mTLS (client certificates required)", "\n");
  absl::StrAppend(&s, "policy:               ", c.policy.empty() ? "none (every caller may do everything)" : c.policy, "\n");
  absl::StrAppend(&s, "audit log:            ", c.audit_log.empty() ? "off" : c.audit_log, "\n");
  absl::StrAppend(&s, "token loss:           re-initialise with backoff up to ", c.reconnect_backoff_max_ms,
                  " ms; a call inside the token over ", c.token_call_timeout_s,
                  " s counts as a loss (its items UNAVAILABLE)\n");
  absl::StrAppend(&s, "shutdown:             in-flight batches get ", c.shutdown_grace_s, " s after SIGTERM\n");
  absl::StrAppend(&s, "limits:               ", c.limits.max_batch_items, " items/batch, ",
                  c.limits.max_message_bytes, " bytes/message, ", c.limits.max_inflight_items,
                  " items in flight\n");
  return s;
}

}  // namespace hsmrewrap::service
