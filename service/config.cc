#include "service/config.h"

#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <map>
#include <set>
#include <string_view>
#include <thread>
#include <utility>
#include <variant>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
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
    return absl::InvalidArgumentError(
        absl::StrCat(key, ": expected a non-negative integer (at most 4294967295), got '", v, "'"));
  }
  return absl::OkStatus();
}

// Where a key's value goes. The alternative is the key's type; the Limits members are the
// keys that may also sit under limits:.
using Field =
    std::variant<std::string Config::*, bool Config::*, uint32_t Config::*, uint32_t Limits::*>;

struct KeyDef {
  const char* name;
  Field field;
};

constexpr char kLimitsSection[] = "limits";

// The one table of keys: the YAML file and the environment both read it, and ConfigKeys()
// exports it, so the three cannot drift apart.
const KeyDef kKeyDefs[] = {
    {"state_dir", &Config::state_dir},
    {"listen", &Config::listen},
    {"module", &Config::module},
    {"init_args", &Config::init_args},
    {"token", &Config::token},
    {"token_uri", &Config::token_uri},
    {"pin_file", &Config::pin_file},
    {"log_level", &Config::log_level},
    {"default_key", &Config::default_key},
    {"allow_host_unpadding", &Config::allow_host_unpadding},
    {"in_token_cms", &Config::in_token_cms},
    {"require_in_token", &Config::require_in_token},
    {"pool_size", &Config::pool_size},
    {"workers", &Config::workers},
    {"max_concurrency", &Config::max_concurrency},
    {"max_batch_items", &Limits::max_batch_items},
    {"max_message_bytes", &Limits::max_message_bytes},
    {"max_inflight_items", &Limits::max_inflight_items},
    {"max_streams", &Limits::max_streams},
    {"max_streams_per_identity", &Limits::max_streams_per_identity},
    {"max_stream_buffer_bytes", &Limits::max_stream_buffer_bytes},
    {"max_stream_lifetime_s", &Limits::max_stream_lifetime_s},
    {"max_queued_key_calls", &Limits::max_queued_key_calls},
    {"metrics_listen", &Config::metrics_listen},
    {"selftest_interval_s", &Config::selftest_interval_s},
    {"log_format", &Config::log_format},
    {"tls_cert", &Config::tls_cert},
    {"tls_key", &Config::tls_key},
    {"client_ca", &Config::client_ca},
    {"insecure", &Config::insecure},
    {"policy", &Config::policy},
    {"audit_log", &Config::audit_log},
    {"shutdown_grace_s", &Config::shutdown_grace_s},
    {"reconnect_backoff_max_ms", &Config::reconnect_backoff_max_ms},
    {"token_call_timeout_s", &Config::token_call_timeout_s},
};

// The keys of one entry of `tokens:`.
struct TokenKeyDef {
  const char* name;
  ConfigValueType type;
};
constexpr char kTokensKey[] = "tokens";
const TokenKeyDef kTokenKeyDefs[] = {
    {"name", ConfigValueType::kString},      {"module", ConfigValueType::kString},
    {"init_args", ConfigValueType::kString}, {"token", ConfigValueType::kString},
    {"token_uri", ConfigValueType::kString}, {"pin_file", ConfigValueType::kString},
    {"pool_size", ConfigValueType::kUint32}, {"workers", ConfigValueType::kUint32},
    {"allow_host_unpadding", ConfigValueType::kBool},
    {"max_concurrency", ConfigValueType::kUint32},
};

absl::Status SetTokenValue(const std::string& name, const std::string& shown,
                           const std::string& value, TokenConfig& t) {
  std::string* str = name == "name"        ? &t.name
                     : name == "module"    ? &t.module
                     : name == "init_args" ? &t.init_args
                     : name == "token"     ? &t.token
                     : name == "token_uri" ? &t.token_uri
                     : name == "pin_file"  ? &t.pin_file
                                           : nullptr;
  if (str) {
    *str = value;
    return absl::OkStatus();
  }
  if (name == "pool_size") return ParseU32(shown, value, t.pool_size);
  if (name == "workers") return ParseU32(shown, value, t.workers);
  if (name == "max_concurrency") return ParseU32(shown, value, t.max_concurrency);
  bool b = false;
  if (auto st = ParseBool(shown, value, b); !st.ok()) return st;
  t.allow_host_unpadding = b;
  return absl::OkStatus();
}

ConfigValueType TypeOf(const KeyDef& d) {
  if (std::holds_alternative<std::string Config::*>(d.field)) return ConfigValueType::kString;
  if (std::holds_alternative<bool Config::*>(d.field)) return ConfigValueType::kBool;
  return ConfigValueType::kUint32;
}

const char* SectionOf(const KeyDef& d) {
  return std::holds_alternative<uint32_t Limits::*>(d.field) ? kLimitsSection : "";
}

const KeyDef* FindKey(std::string_view name) {
  for (const KeyDef& d : kKeyDefs) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

// True for a key whose value is a mapping of other keys (limits).
bool IsSection(std::string_view name) {
  if (name.empty()) return false;
  for (const KeyDef& d : kKeyDefs) {
    if (name == SectionOf(d)) return true;
  }
  return false;
}

// `key` is the name for messages (limits.max_batch_items when nested).
absl::Status SetValue(const KeyDef& d, const std::string& key, const std::string& value,
                      Config& c) {
  if (const auto* f = std::get_if<std::string Config::*>(&d.field)) {
    c.*(*f) = value;
    return absl::OkStatus();
  }
  if (const auto* f = std::get_if<bool Config::*>(&d.field)) {
    if (*f == &Config::allow_host_unpadding) c.allow_host_unpadding_set = true;
    return ParseBool(key, value, c.*(*f));
  }
  if (const auto* f = std::get_if<uint32_t Config::*>(&d.field))
    return ParseU32(key, value, c.*(*f));
  return ParseU32(key, value, c.limits.*std::get<uint32_t Limits::*>(d.field));
}

const char* Expected(ConfigValueType t) {
  switch (t) {
    case ConfigValueType::kString:
      return "a string";
    case ConfigValueType::kBool:
      return "true or false";
    case ConfigValueType::kUint32:
      return "a non-negative integer";
  }
  return "a scalar";
}

// What a node is, for messages ("got a list").
std::string KindOf(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
      return "an empty value (null)";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Scalar:
      return absl::StrCat("'", n.Scalar(), "'");
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

// 1-based line of a node, 0 when yaml-cpp does not know it.
int LineOf(const YAML::Node& n) { return n.Mark().is_null() ? 0 : n.Mark().line + 1; }

absl::Status Bad(const std::string& path, const YAML::Node& at, absl::string_view what) {
  const int line = LineOf(at);
  return absl::InvalidArgumentError(
      absl::StrCat("config ", path, line > 0 ? absl::StrCat(" line ", line) : "", ": ", what));
}

// Reads one mapping of the file: the top level (section "") or a section such as limits.
// Every node is type-checked before its text is read, so no yaml-cpp conversion can throw.
class YamlReader {
 public:
  YamlReader(const std::string& path, Config& config) : path_(path), config_(config) {}

  absl::Status ApplyMapping(const YAML::Node& map, const std::string& section) {
    for (const auto& kv : map) {
      const YAML::Node& k = kv.first;
      const YAML::Node& v = kv.second;
      const std::string in = section.empty() ? "" : absl::StrCat(section, ": ");
      if (!k.IsScalar())
        return Bad(path_, k, absl::StrCat(in, "a key must be a name, got ", KindOf(k)));
      const std::string name = k.Scalar();
      const std::string shown = section.empty() ? name : absl::StrCat(section, ".", name);
      if (section.empty() && name == kTokensKey) {
        if (auto st = FirstTime(name, shown, k); !st.ok()) return st;
        if (auto st = ApplyTokens(k, v); !st.ok()) return st;
        continue;
      }
      if (section.empty() && IsSection(name)) {
        if (auto st = FirstTime(name, shown, k); !st.ok()) return st;
        if (!v.IsMap()) {
          return Bad(path_, k,
                     absl::StrCat(name, ": expected a mapping (", SectionKeys(name), "), got ",
                                  KindOf(v)));
        }
        if (auto st = ApplyMapping(v, name); !st.ok()) return st;
        continue;
      }
      const KeyDef* d = FindKey(name);
      // A limit may also be given at the top level (max_batch_items: ..), as in the environment.
      if (d == nullptr || (!section.empty() && section != SectionOf(*d))) {
        if (section.empty())
          return Bad(path_, k, absl::StrCat("unknown configuration key '", name, "'"));
        return Bad(path_, k,
                   absl::StrCat("unknown key '", shown, "' (", section, ": takes ",
                                SectionKeys(section), ")"));
      }
      if (auto st = FirstTime(name, shown, k); !st.ok()) return st;
      if (!v.IsScalar()) {
        const char* hint = v.IsNull() && TypeOf(*d) == ConfigValueType::kString
                               ? "; write \"\" for an empty string"
                               : "";
        return Bad(
            path_, k,
            absl::StrCat(shown, ": expected ", Expected(TypeOf(*d)), ", got ", KindOf(v), hint));
      }
      if (auto st = SetValue(*d, shown, v.Scalar(), config_); !st.ok())
        return Bad(path_, k, st.message());
    }
    return absl::OkStatus();
  }

 private:
  // tokens: a list of mappings, each with the keys of kTokenKeyDefs.
  absl::Status ApplyTokens(const YAML::Node& k, const YAML::Node& v) {
    std::string keys;
    for (const auto& d : kTokenKeyDefs) absl::StrAppend(&keys, keys.empty() ? "" : ", ", d.name);
    if (!v.IsSequence() || v.size() == 0) {
      return Bad(path_, k,
                 absl::StrCat("tokens: expected a list of tokens (each a mapping of ", keys,
                              "), got ", v.IsSequence() ? "an empty list" : KindOf(v)));
    }
    config_.tokens.clear();
    config_.tokens_given = true;
    for (size_t n = 0; n < v.size(); ++n) {
      const YAML::Node& entry = v[n];
      const std::string at = absl::StrCat("tokens[", n, "]");
      if (!entry.IsMap()) {
        return Bad(path_, entry,
                   absl::StrCat(at, ": expected a mapping (", keys, "), got ", KindOf(entry)));
      }
      TokenConfig t;
      std::map<std::string, int> seen;
      for (const auto& kv : entry) {
        const YAML::Node& ek = kv.first;
        const YAML::Node& ev = kv.second;
        if (!ek.IsScalar())
          return Bad(path_, ek, absl::StrCat(at, ": a key must be a name, got ", KindOf(ek)));
        const std::string name = ek.Scalar();
        const TokenKeyDef* d = nullptr;
        for (const auto& def : kTokenKeyDefs) {
          if (name == def.name) d = &def;
        }
        const std::string shown = absl::StrCat(at, ".", name);
        if (d == nullptr) {
          return Bad(path_, ek,
                     absl::StrCat("unknown key '", shown, "' (a token takes ", keys, ")"));
        }
        if (!seen.emplace(name, LineOf(ek)).second)
          return Bad(path_, ek, absl::StrCat("'", shown, "' is given twice"));
        if (!ev.IsScalar()) {
          return Bad(path_, ek,
                     absl::StrCat(shown, ": expected ", Expected(d->type), ", got ", KindOf(ev)));
        }
        if (auto st = SetTokenValue(name, shown, ev.Scalar(), t); !st.ok())
          return Bad(path_, ek, st.message());
      }
      config_.tokens.push_back(std::move(t));
    }
    return absl::OkStatus();
  }

  // yaml-cpp keeps both entries of a repeated key and the later one would win silently. A
  // limit is the same setting at the top level and under limits:.
  absl::Status FirstTime(const std::string& name, const std::string& shown, const YAML::Node& k) {
    auto [it, inserted] = seen_.emplace(name, std::make_pair(shown, LineOf(k)));
    if (inserted) return absl::OkStatus();
    const auto& [first_shown, first_line] = it->second;
    return Bad(
        path_, k,
        absl::StrCat("'", shown, "' is given twice (also ",
                     first_shown == shown ? "" : absl::StrCat("as '", first_shown, "' "),
                     first_line > 0 ? absl::StrCat("on line ", first_line) : "earlier", ")"));
  }

  static std::string SectionKeys(const std::string& section) {
    std::string keys;
    for (const KeyDef& d : kKeyDefs) {
      if (section == SectionOf(d)) absl::StrAppend(&keys, keys.empty() ? "" : ", ", d.name);
    }
    return keys;
  }

  const std::string& path_;
  Config& config_;
  std::map<std::string, std::pair<std::string, int>> seen_;  // name -> (as written, line)
};

}  // namespace

bool IsLoopbackListen(const std::string& listen) {
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
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
        "listen ", c.listen,
        " is not a loopback address and TLS is off: set tls_cert, tls_key and "
        "client_ca (mTLS), or set insecure: true to serve plaintext gRPC on the network anyway"));
  }
  return absl::OkStatus();
}

std::string DefaultStateDir() {
  if (const char* x = std::getenv("XDG_STATE_HOME"); x && *x) return absl::StrCat(x, "/hsm-rewrap");
  if (const char* h = std::getenv("HOME"); h && *h)
    return absl::StrCat(h, "/.local/state/hsm-rewrap");
  return ".hsm-rewrap";
}

const std::vector<ConfigKey>& ConfigKeys() {
  static const std::vector<ConfigKey>* const keys = [] {
    auto* out = new std::vector<ConfigKey>;
    for (const KeyDef& d : kKeyDefs) out->push_back(ConfigKey{d.name, TypeOf(d), SectionOf(d)});
    return out;
  }();
  return *keys;
}

const std::vector<ConfigKey>& TokenConfigKeys() {
  static const std::vector<ConfigKey>* const keys = [] {
    auto* out = new std::vector<ConfigKey>;
    for (const auto& d : kTokenKeyDefs) out->push_back(ConfigKey{d.name, d.type, kTokensKey});
    return out;
  }();
  return *keys;
}

absl::Status ApplyYamlFile(const std::string& path, Config& config) {
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAllFromFile(path);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config ", path, ": ", e.what()));
  }
  if (docs.size() > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("config ", path, " holds ", docs.size(),
                     " YAML documents ('---'); a configuration is one mapping"));
  }
  // An empty file, or one with only comments (an example file with every line commented
  // out), sets nothing: the defaults apply, as for `{}`.
  if (docs.empty() || docs[0].IsNull()) return absl::OkStatus();
  const YAML::Node& root = docs[0];
  if (!root.IsMap()) {
    return Bad(
        path, root,
        absl::StrCat("the top level must be a mapping of 'key: value' lines, got ", KindOf(root)));
  }
  try {
    return YamlReader(path, config).ApplyMapping(root, "");
  } catch (const YAML::Exception& e) {
    // Not expected (every node is type-checked before it is read): kept so that a yaml-cpp
    // surprise is still a configuration error (exit 2), never std::terminate.
    return absl::InvalidArgumentError(absl::StrCat("config ", path, ": ", e.what()));
  }
}

absl::Status ApplyEnvironment(Config& config) {
  for (const KeyDef& d : kKeyDefs) {
    std::string var = absl::StrCat("HSMREWRAP_", absl::AsciiStrToUpper(d.name));
    if (const char* v = std::getenv(var.c_str()); v != nullptr) {
      auto st = SetValue(d, d.name, v, config);
      if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat(var, ": ", st.message()));
    }
  }
  return absl::OkStatus();
}

namespace {

// Token URI extras (RFC 7512): the module (module-path / module-name) and the PIN file
// (pin-source) may come from the URI; explicit settings must agree with it. A PIN in the URI
// (pin-value) is refused: URIs end up in argv, logs and config dumps. `at` prefixes messages.
absl::Status AdoptUriExtras(const std::string& at, TokenConfig& t) {
  if (t.token_uri.empty()) return absl::OkStatus();
  auto extras = hsm::ParseUriExtras(t.token_uri);
  if (!extras.ok())
    return absl::InvalidArgumentError(absl::StrCat(at, "token_uri: ", extras.status().message()));
  if (extras->has_pin_value) {
    return absl::InvalidArgumentError(absl::StrCat(
        at, "token_uri: pin-value is not accepted (a PIN must not sit in a URI); use "
            "pin-source=file:PATH or pin_file"));
  }
  // A setting the URI also gives: taken from the URI when unset, else it must agree.
  auto adopt = [&at](std::string& setting, const char* setting_name, const std::string& from_uri,
                     const char* uri_name) -> absl::Status {
    if (from_uri.empty()) return absl::OkStatus();
    if (setting.empty()) {
      setting = from_uri;
    } else if (setting != from_uri) {
      return absl::InvalidArgumentError(absl::StrCat(at, setting_name, " '", setting,
                                                     "' and token_uri's ", uri_name, " (",
                                                     from_uri, ") differ"));
    }
    return absl::OkStatus();
  };
  if (auto st = adopt(t.module, "module", extras->module_path, "module"); !st.ok()) return st;
  return adopt(t.pin_file, "pin_file", extras->pin_source, "pin-source");
}

bool ValidTokenName(const std::string& n) {
  if (n.empty() || n.size() > 64) return false;
  for (char ch : n) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '_' &&
        ch != '.')
      return false;
  }
  return true;
}

// The token list: the single-token keys as a list of one, or `tokens:` checked entry by entry;
// per-token defaults filled in from the top-level keys; the total of workers.
absl::Status FinalizeTokens(Config& c) {
  const bool single_keys = !c.module.empty() || !c.token.empty() || !c.token_uri.empty() ||
                           !c.init_args.empty() || !c.pin_file.empty();
  if (c.tokens_given && single_keys) {
    return absl::InvalidArgumentError(
        "tokens: is given, and so are single-token settings (module, token, token_uri, "
        "init_args or pin_file, from the file, the environment or flags): put them into the "
        "entries of tokens:");
  }
  if (!c.tokens_given) {
    TokenConfig t;
    t.module = c.module;
    t.init_args = c.init_args;
    t.token = c.token;
    t.token_uri = c.token_uri;
    t.pin_file = c.pin_file;
    t.pool_size = c.pool_size;
    if (auto st = AdoptUriExtras("", t); !st.ok()) return st;
    c.module = t.module;
    c.pin_file = t.pin_file;
    if (c.embedded()) {
      // The embedded SoftHSM2 default cannot decrypt OAEP-SHA2 natively (SoftHSM2 2.6 decrypts
      // OAEP with SHA-1 only), so it allows host unpadding unless the user said otherwise.
      if (!c.allow_host_unpadding_set) c.allow_host_unpadding = true;
      if (!c.token.empty() || !c.token_uri.empty() || !c.init_args.empty()) {
        return absl::InvalidArgumentError("token, token_uri and init_args need module to be set");
      }
    } else if (c.token.empty() && c.token_uri.empty()) {
      return absl::InvalidArgumentError(
          "with module set, name the token with token (label) or token_uri");
    }
    c.tokens = {t};
  }
  std::set<std::string> names;
  uint32_t total_workers = 0;
  for (size_t n = 0; n < c.tokens.size(); ++n) {
    TokenConfig& t = c.tokens[n];
    if (c.tokens_given) {
      const std::string at = absl::StrCat("tokens[", n, "]");
      if (!ValidTokenName(t.name)) {
        return absl::InvalidArgumentError(absl::StrCat(
            at, ".name: ", t.name.empty() ? "missing" : absl::StrCat("'", t.name, "' is not valid"),
            " (every token needs a name of 1 to 64 letters, digits, '-', '_' or '.')"));
      }
      if (!names.insert(t.name).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(at, ".name: '", t.name, "' is given to two tokens"));
      }
      const std::string prefix = absl::StrCat("tokens '", t.name, "': ");
      if (auto st = AdoptUriExtras(prefix, t); !st.ok()) return st;
      if (t.module.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            prefix, "module is missing (or module-path= in token_uri); the embedded SoftHSM2 "
                    "default is for the single-token form only"));
      }
      if (t.token.empty() && t.token_uri.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(prefix, "name the token with token (label) or token_uri"));
      }
    }
    if (t.pool_size == 0) t.pool_size = c.pool_size;
    if (t.pool_size > 256) return absl::InvalidArgumentError("pool_size: at most 256");
    if (!t.allow_host_unpadding) t.allow_host_unpadding = c.allow_host_unpadding;
    if (t.workers == 0) t.workers = t.pool_size;
    if (t.max_concurrency == 0) t.max_concurrency = c.max_concurrency;
    total_workers += t.workers;
  }
  const uint32_t cores = std::max(1u, std::thread::hardware_concurrency());
  if (c.workers == 0) c.workers = std::max(total_workers, cores);
  if (c.workers > 1024) return absl::InvalidArgumentError("workers: at most 1024");
  return absl::OkStatus();
}

}  // namespace

absl::Status Finalize(Config& c) {
  if (c.state_dir.empty()) c.state_dir = DefaultStateDir();
  // Defaults measured in docs/benchmarks.md: a local, CPU-bound token runs best with as many
  // workers as sessions (no worker waits for a session) and with two sessions per core;
  // extra workers waiting for a session only add context switches.
  const uint32_t cores = std::max(1u, std::thread::hardware_concurrency());
  if (c.pool_size == 0) c.pool_size = std::max(2u, 2 * cores);
  if (c.pool_size > 256) return absl::InvalidArgumentError("pool_size: at most 256");
  if (c.limits.max_batch_items == 0)
    return absl::InvalidArgumentError("max_batch_items must be at least 1");
  if (c.limits.max_inflight_items < c.limits.max_batch_items) {
    return absl::InvalidArgumentError("max_inflight_items must be at least max_batch_items");
  }
  if (c.limits.max_queued_key_calls == 0)
    return absl::InvalidArgumentError("max_queued_key_calls must be at least 1");
  if (c.limits.max_message_bytes < 4096)
    return absl::InvalidArgumentError("max_message_bytes must be at least 4096");
  if (c.limits.max_streams == 0 || c.limits.max_streams_per_identity == 0)
    return absl::InvalidArgumentError(
        "max_streams and max_streams_per_identity must be at least 1");
  if (c.limits.max_stream_buffer_bytes < 4096)
    return absl::InvalidArgumentError("max_stream_buffer_bytes must be at least 4096");
  if (c.limits.max_stream_lifetime_s == 0)
    return absl::InvalidArgumentError("max_stream_lifetime_s must be at least 1");
  if (c.listen.find(':') == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen: expected HOST:PORT, got '", c.listen, "'"));
  }
  if (auto st = CheckTransport(c); !st.ok()) return st;
  if (auto st = FinalizeTokens(c); !st.ok()) return st;
  if (auto key = hsm::KeyNameFromNameOrUri(c.default_key); key.ok()) {
    c.default_key = *key;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("default_key: ", key.status().message()));
  }
  if (!c.log_format.empty() && c.log_format != "json" && c.log_format != "text") {
    return absl::InvalidArgumentError(
        absl::StrCat("log_format: json or text, not '", c.log_format, "'"));
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
  if (!level_ok)
    return absl::InvalidArgumentError(absl::StrCat("log_level: unknown level '", c.log_level, "'"));
  return absl::OkStatus();
}

std::string Describe(const Config& c) {
  std::string s;
  absl::StrAppend(&s, "listen:               ", c.listen, "\n");
  absl::StrAppend(&s, "state dir:            ", c.state_dir, "\n");
  auto pin_from = [](const std::string& pin_file) {
    return pin_file.empty() ? std::string("$HSMREWRAP_PIN or systemd credential 'pin'") : pin_file;
  };
  if (c.tokens_given) {
    absl::StrAppend(&s, "tokens:               ", c.tokens.size(),
                    " (items go to the least loaded token that holds their key, and fail over)\n");
    for (const TokenConfig& t : c.tokens) {
      absl::StrAppend(&s, "  - ", t.name, ": module ", t.module, ", ",
                      t.token_uri.empty() ? "label " + t.token : t.token_uri, "\n");
      if (!t.init_args.empty()) absl::StrAppend(&s, "      init args: ", t.init_args, "\n");
      absl::StrAppend(&s, "      PIN from ", pin_from(t.pin_file), "; ", t.pool_size,
                      " sessions, ", t.workers, " workers; host unpadding ",
                      t.allow_host_unpadding.value_or(false) ? "ALLOWED" : "denied",
                      t.max_concurrency ? absl::StrCat("; at most ", t.max_concurrency,
                                                       " calls in the module at once")
                                        : "",
                      "\n");
    }
  } else if (c.embedded()) {
    absl::StrAppend(&s, "token:                embedded SoftHSM2 token 'hsm-rewrap' in ",
                    c.state_dir, "/tokens (created on first run, key '", c.default_key, "')\n");
  } else {
    absl::StrAppend(&s, "module:               ", c.module, "\n");
    if (!c.init_args.empty()) absl::StrAppend(&s, "init args:            ", c.init_args, "\n");
    absl::StrAppend(
        &s, "token:                ", c.token_uri.empty() ? "label " + c.token : c.token_uri, "\n");
    absl::StrAppend(&s, "PIN from:             ", pin_from(c.pin_file), "\n");
  }
  if (!c.tokens_given) {
    absl::StrAppend(&s, "host unpadding:       ", c.allow_host_unpadding ? "ALLOWED" : "denied",
                    "\n");
  }
  absl::StrAppend(&s, "in-token CMS:         ", c.in_token_cms ? "where the token builds it" : "off",
                  "\n");
  absl::StrAppend(&s, "require IN_TOKEN:     ",
                  c.require_in_token ? "yes (items that cannot take it fail UNSUPPORTED)"
                                     : "no (per key in the policy file)",
                  "\n");
  if (c.tokens_given) {
    absl::StrAppend(&s, "workers:              ", c.workers, " in all\n");
  } else {
    absl::StrAppend(&s, "session pool:         ", c.pool_size, " sessions, ", c.workers,
                    " workers",
                    c.max_concurrency ? absl::StrCat(", at most ", c.max_concurrency,
                                                     " calls in the module at once")
                                      : "",
                    "\n");
  }
  absl::StrAppend(&s, "metrics:              ",
                  c.metrics_listen.empty() ? "off" : "http://" + c.metrics_listen + "/metrics",
                  "\n");
  absl::StrAppend(
      &s, "self-test:            ",
      c.selftest_interval_s ? absl::StrCat("every ", c.selftest_interval_s, " s") : "on demand",
      "\n");
  absl::StrAppend(&s, "transport:            ",
                  !c.tls() ? (c.insecure && !IsLoopbackListen(c.listen) ? "PLAINTEXT (insecure)"
                                                                        : "plaintext (loopback)")
                  : c.client_ca.empty() ? "TLS (no client certificates)"
                                        : "mTLS (client certificates required)",
                  "\n");
  absl::StrAppend(&s, "policy:               ",
                  c.policy.empty() ? "none (every caller may do everything)" : c.policy, "\n");
  absl::StrAppend(&s, "audit log:            ", c.audit_log.empty() ? "off" : c.audit_log, "\n");
  absl::StrAppend(&s, "token loss:           re-initialise with backoff up to ",
                  c.reconnect_backoff_max_ms, " ms; a call inside the token over ",
                  c.token_call_timeout_s, " s counts as a loss (its items UNAVAILABLE)\n");
  absl::StrAppend(&s, "shutdown:             in-flight batches get ", c.shutdown_grace_s,
                  " s after SIGTERM\n");
  absl::StrAppend(&s, "limits:               ", c.limits.max_batch_items, " items/batch, ",
                  c.limits.max_message_bytes, " bytes/message, ", c.limits.max_inflight_items,
                  " items in flight, ", c.limits.max_queued_key_calls,
                  " key calls queued (each of writes, reads)\n");
  absl::StrAppend(&s, "streams:              ", c.limits.max_streams, " open (",
                  c.limits.max_streams_per_identity, " per identity), ",
                  c.limits.max_stream_buffer_bytes, " unread answer bytes each, ",
                  c.limits.max_stream_lifetime_s, " s lifetime\n");
  return s;
}

}  // namespace hsmrewrap::service
