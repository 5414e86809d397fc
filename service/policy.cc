#include "service/policy.h"

#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include <map>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace hsmrewrap::service {
namespace {

absl::Status Bad(const std::string& where, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
}

absl::StatusOr<std::vector<std::string>> StringList(const YAML::Node& n, const std::string& where) {
  std::vector<std::string> out;
  if (n.IsScalar()) {
    out.push_back(n.as<std::string>());
    return out;
  }
  if (!n.IsSequence()) return Bad(where, "expected a list of strings");
  for (const auto& v : n) {
    if (!v.IsScalar()) return Bad(where, "expected a list of strings");
    out.push_back(v.as<std::string>());
  }
  return out;
}

absl::StatusOr<bool> Bool(const YAML::Node& n, const std::string& where) {
  std::string s = n.IsScalar() ? absl::AsciiStrToLower(n.as<std::string>()) : "";
  if (s == "true" || s == "yes") return true;
  if (s == "false" || s == "no") return false;
  return Bad(where, "expected true or false");
}

absl::StatusOr<double> Number(const YAML::Node& n, const std::string& where) {
  double d = 0;
  if (!n.IsScalar() || !absl::SimpleAtod(n.as<std::string>(), &d) || d < 0) {
    return Bad(where, "expected a non-negative number");
  }
  return d;
}

// One store per CA file; PARTIAL_CHAIN lets an intermediate CA in the file be the anchor.
absl::StatusOr<std::shared_ptr<X509_STORE>> LoadCaFile(const std::string& file,
                                                       const std::string& where) {
  std::shared_ptr<X509_STORE> store(X509_STORE_new(), X509_STORE_free);
  if (!store) return absl::InternalError("X509_STORE_new failed");
  FILE* f = std::fopen(file.c_str(), "r");
  if (f == nullptr) return Bad(where, absl::StrCat("cannot read CA file ", file));
  int count = 0;
  while (X509* x = PEM_read_X509(f, nullptr, nullptr, nullptr)) {
    X509_STORE_add_cert(store.get(), x);
    X509_free(x);
    ++count;
  }
  std::fclose(f);
  ERR_clear_error();
  if (count == 0) return Bad(where, absl::StrCat("CA file ", file, " holds no PEM certificate"));
  X509_STORE_set_flags(store.get(), X509_V_FLAG_PARTIAL_CHAIN);
  return store;
}

bool IsHex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

// "emailProtection" for a named OID, else the dotted form.
std::string OidName(const ASN1_OBJECT* o) {
  const int nid = OBJ_obj2nid(o);
  const char* sn = nid == NID_undef ? nullptr : OBJ_nid2sn(nid);
  if (sn != nullptr) return sn;
  char buf[128];
  const int n = OBJ_obj2txt(buf, sizeof buf, o, 1);
  ERR_clear_error();
  return n > 0 && static_cast<size_t>(n) < sizeof buf ? std::string(buf) : std::string("?");
}

std::string OidDotted(const ASN1_OBJECT* o) {
  char buf[128];
  const int n = OBJ_obj2txt(buf, sizeof buf, o, 1);
  ERR_clear_error();
  return n > 0 && static_cast<size_t>(n) < sizeof buf ? std::string(buf) : std::string("?");
}

absl::StatusOr<Policy::Recipients::Eku> ParseEku(const std::string& text, const std::string& at) {
  // A short name (emailProtection), a long name or a dotted OID.
  ASN1_OBJECT* o = text.empty() ? nullptr : OBJ_txt2obj(text.c_str(), 0);
  ERR_clear_error();
  if (o == nullptr) {
    return Bad(at, absl::StrCat("'", text,
                                "' is neither a dotted OID nor a name OpenSSL knows for one "
                                "(e.g. emailProtection or 1.3.6.1.5.5.7.3.4)"));
  }
  std::shared_ptr<ASN1_OBJECT> oid(o, ASN1_OBJECT_free);
  if (OBJ_obj2nid(o) == NID_anyExtendedKeyUsage) {
    return Bad(at,
               "anyExtendedKeyUsage cannot be required (it would admit any purpose); name the "
               "usage the device certificates carry, e.g. emailProtection");
  }
  const std::string name = OidName(o), dotted = OidDotted(o);
  return Policy::Recipients::Eku{name == dotted ? dotted : absl::StrCat(name, " (", dotted, ")"),
                                 std::move(oid)};
}

// keys: { <key name or "*">: { require_in_token: bool } }
absl::Status ParseKeys(const YAML::Node& n, const std::string& where,
                       std::map<std::string, Policy::KeySettings>& out) {
  if (!n.IsMap()) return Bad(where, "expected a mapping of key names to their settings");
  for (const auto& kv : n) {
    const std::string name = kv.first.as<std::string>();
    const std::string at = absl::StrCat(where, ".", name);
    if (name.empty()) return Bad(at, "empty key name");
    if (!kv.second.IsMap()) return Bad(at, "expected a mapping (require_in_token: true)");
    Policy::KeySettings settings;
    for (const auto& setting : kv.second) {
      const std::string k = setting.first.as<std::string>();
      if (k != "require_in_token") {
        return Bad(absl::StrCat(at, ".", k), "unknown key (expected require_in_token)");
      }
      const std::string v = setting.second.as<std::string>();
      if (v != "true" && v != "false") {
        return Bad(absl::StrCat(at, ".", k), "expected true or false");
      }
      settings.require_in_token = v == "true";
    }
    out[name] = settings;
  }
  return absl::OkStatus();
}

absl::Status ParseRecipients(const YAML::Node& n, const std::string& where, Policy::Recipients& r) {
  if (!n.IsMap()) return Bad(where, "expected a mapping");
  for (const auto& kv : n) {
    const std::string k = kv.first.as<std::string>();
    const std::string at = absl::StrCat(where, ".", k);
    if (k == "ca_files") {
      auto files = StringList(kv.second, at);
      if (!files.ok()) return files.status();
      for (const auto& f : *files) {
        auto store = LoadCaFile(f, at);
        if (!store.ok()) return store.status();
        r.ca_stores.push_back(*std::move(store));
        r.ca_files.push_back(f);
      }
    } else if (k == "fingerprints") {
      auto fps = StringList(kv.second, at);
      if (!fps.ok()) return fps.status();
      for (auto f : *fps) {
        f.erase(std::remove(f.begin(), f.end(), ':'), f.end());
        f = absl::AsciiStrToLower(f);
        if (!IsHex64(f))
          return Bad(at, absl::StrCat("'", f, "' is not a SHA-256 in hex (64 digits)"));
        r.fingerprints.insert(f);
      }
    } else if (k == "raw_public_keys") {
      auto b = Bool(kv.second, at);
      if (!b.ok()) return b.status();
      r.raw_public_keys = *b;
    } else if (k == "service_keys") {
      auto keys = StringList(kv.second, at);
      if (!keys.ok()) return keys.status();
      r.service_keys.insert(keys->begin(), keys->end());
    } else if (k == "require_eku") {
      auto ekus = StringList(kv.second, at);
      if (!ekus.ok()) return ekus.status();
      if (ekus->empty())
        return Bad(at, "expected at least one extendedKeyUsage (leave require_eku out for none)");
      for (const auto& e : *ekus) {
        auto eku = ParseEku(e, at);
        if (!eku.ok()) return eku.status();
        r.require_eku.push_back(*std::move(eku));
      }
    } else {
      return Bad(at,
                 "unknown key (expected ca_files, fingerprints, raw_public_keys, service_keys, "
                 "require_eku)");
    }
  }
  return absl::OkStatus();
}

absl::Status ParseLimits(const YAML::Node& n, const std::string& where, RateLimits& l) {
  if (!n.IsMap()) return Bad(where, "expected a mapping");
  for (const auto& kv : n) {
    const std::string k = kv.first.as<std::string>();
    const std::string at = absl::StrCat(where, ".", k);
    auto v = Number(kv.second, at);
    if (!v.ok()) return v.status();
    if (k == "items_per_second") {
      l.items_per_second = *v;
    } else if (k == "burst") {
      l.burst = *v;
    } else if (k == "decrypt_failures_per_hour") {
      l.decrypt_failures_per_hour = static_cast<uint32_t>(*v);
    } else {
      return Bad(at, "unknown key (expected items_per_second, burst, decrypt_failures_per_hour)");
    }
  }
  return absl::OkStatus();
}

absl::Status ParseClient(const YAML::Node& n, const std::string& where, Policy::Client& c) {
  if (!n.IsMap()) return Bad(where, "expected a mapping");
  // The only limit on padding-oracle probing by a caller with rights (OK vs DECRYPT_FAILED
  // is visible with any allowed recipient), so it is on unless the entry says 0.
  c.limits.decrypt_failures_per_hour = kDefaultDecryptFailuresPerHour;
  for (const auto& kv : n) {
    const std::string k = kv.first.as<std::string>();
    const std::string at = absl::StrCat(where, ".", k);
    if (k == "name") {
      c.name = kv.second.as<std::string>();
    } else if (k == "identities") {
      auto ids = StringList(kv.second, at);
      if (!ids.ok()) return ids.status();
      for (const auto& text : *ids) {
        auto id = Policy::ParseIdentity(text);
        if (!id.ok()) return Bad(at, std::string(id.status().message()));
        c.identities.insert(*std::move(id));
      }
    } else if (k == "anonymous") {
      auto b = Bool(kv.second, at);
      if (!b.ok()) return b.status();
      c.anonymous = *b;
    } else if (k == "rpcs") {
      auto rpcs = StringList(kv.second, at);
      if (!rpcs.ok()) return rpcs.status();
      for (const auto& r : *rpcs) {
        if (r == "rewrap")
          c.rpcs.insert(RpcClass::kRewrap);
        else if (r == "keys.read")
          c.rpcs.insert(RpcClass::kKeysRead);
        else if (r == "keys.admin")
          c.rpcs.insert(RpcClass::kKeysAdmin);
        else
          return Bad(at, absl::StrCat("unknown RPC class '", r,
                                      "' (expected rewrap, keys.read, keys.admin)"));
      }
    } else if (k == "keys") {
      auto keys = StringList(kv.second, at);
      if (!keys.ok()) return keys.status();
      c.keys.insert(keys->begin(), keys->end());
    } else if (k == "recipients") {
      if (auto st = ParseRecipients(kv.second, at, c.recipients); !st.ok()) return st;
    } else if (k == "limits") {
      if (auto st = ParseLimits(kv.second, at, c.limits); !st.ok()) return st;
    } else {
      return Bad(
          at, "unknown key (expected name, identities, anonymous, rpcs, keys, recipients, limits)");
    }
  }
  if (c.name.empty()) return Bad(where, "every client needs a name");
  if (c.identities.empty() && !c.anonymous)
    return Bad(where, "give identities (or anonymous: true)");
  return absl::OkStatus();
}

// Verifies `cert` against `store` at the current time (validity included).
bool Chains(X509_STORE* store, X509* cert, std::string* why) {
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  if (ctx == nullptr) return false;
  bool ok = false;
  if (X509_STORE_CTX_init(ctx, store, cert, nullptr) == 1) {
    ok = X509_verify_cert(ctx) == 1;
    if (!ok) *why = X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx));
  }
  X509_STORE_CTX_free(ctx);
  ERR_clear_error();
  return ok;
}

}  // namespace

const char* RpcClassName(RpcClass c) {
  switch (c) {
    case RpcClass::kRewrap:
      return "rewrap";
    case RpcClass::kKeysRead:
      return "keys.read";
    case RpcClass::kKeysAdmin:
      return "keys.admin";
  }
  return "?";
}

absl::Status Policy::Client::CheckCertificate(const crypto::Certificate& cert) const {
  if (recipients.fingerprints.count(cert.Sha256Hex())) {
    if (X509_cmp_current_time(X509_get0_notBefore(cert.get())) >= 0 ||
        X509_cmp_current_time(X509_get0_notAfter(cert.get())) <= 0) {
      return absl::PermissionDeniedError(
          "recipient certificate is listed but outside its validity period");
    }
    return CheckRequiredEku(cert);
  }
  std::string why = "no device CA is configured for this client";
  for (const auto& store : recipients.ca_stores) {
    if (Chains(store.get(), cert.get(), &why)) return CheckRequiredEku(cert);
  }
  return absl::PermissionDeniedError(absl::StrCat("recipient certificate is not allowed for '",
                                                  name,
                                                  "': it does not verify against the "
                                                  "policy's device CAs (",
                                                  why, ") and its SHA-256 is not listed"));
}

absl::Status Policy::Client::CheckRequiredEku(const crypto::Certificate& cert) const {
  if (recipients.require_eku.empty()) return absl::OkStatus();
  int crit = -1;
  auto* eku = static_cast<EXTENDED_KEY_USAGE*>(
      X509_get_ext_d2i(cert.get(), NID_ext_key_usage, &crit, nullptr));
  ERR_clear_error();
  bool found = false;
  std::vector<std::string> has;  // what the certificate carries, for the message
  const int n = eku == nullptr ? 0 : sk_ASN1_OBJECT_num(eku);
  for (int i = 0; i < n; ++i) {
    const ASN1_OBJECT* o = sk_ASN1_OBJECT_value(eku, i);
    for (const auto& want : recipients.require_eku) found |= OBJ_cmp(o, want.oid.get()) == 0;
    if (has.size() < 8) has.push_back(OidName(o));  // bounded: the certificate is the caller's
  }
  if (n > 8) has.push_back("...");
  const bool malformed = eku == nullptr && crit >= 0;
  EXTENDED_KEY_USAGE_free(eku);
  if (found) return absl::OkStatus();
  std::vector<std::string> wanted;
  for (const auto& w : recipients.require_eku) wanted.push_back(w.name);
  std::string carries = crit == -1   ? "it has no extendedKeyUsage"
                        : crit == -2 ? "it has two extendedKeyUsage extensions"
                        : malformed  ? "its extendedKeyUsage does not decode"
                                     : absl::StrCat("it has ", absl::StrJoin(has, ", "));
  return absl::PermissionDeniedError(
      absl::StrCat("recipient certificate lacks the extendedKeyUsage '", name,
                   "' requires: ", absl::StrJoin(wanted, " or "), " (", carries, ")"));
}

absl::Status Policy::Client::CheckPublicKey(const crypto::PublicKey& key) const {
  if (recipients.raw_public_keys || recipients.fingerprints.count(key.Sha256Hex()))
    return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat("raw public key recipients are not allowed for '", name,
                   "' (raw_public_keys is off and the key's "
                   "SHA-256 is not listed); send the device certificate"));
}

absl::Status Policy::Client::CheckServiceKey(const std::string& key) const {
  if (recipients.service_keys.count("*") || recipients.service_keys.count(key))
    return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat("service key '", key, "' is not an allowed recipient for '", name, "'"));
}

bool Policy::RequireInToken(const std::string& key) const {
  for (const char* name : {key.c_str(), "*"}) {
    auto it = keys_.find(name);
    if (it != keys_.end() && it->second.require_in_token) return true;
  }
  return false;
}

absl::StatusOr<std::shared_ptr<const Policy>> Policy::Load(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("policy ", path, ": ", e.what()));
  }
  auto policy = std::make_shared<Policy>();
  try {
    if (!root.IsMap())
      return Bad(absl::StrCat("policy ", path), "top level must be a mapping with 'clients'");
    for (const auto& kv : root) {
      const std::string k = kv.first.as<std::string>();
      if (k == "keys") {
        if (auto st = ParseKeys(kv.second, absl::StrCat("policy ", path, ": keys"), policy->keys_);
            !st.ok()) {
          return st;
        }
        continue;
      }
      if (k != "clients")
        return Bad(absl::StrCat("policy ", path, ": ", k), "unknown key (expected clients or keys)");
      if (!kv.second.IsSequence())
        return Bad(absl::StrCat("policy ", path, ": clients"), "expected a list");
      size_t i = 0;
      for (const auto& c : kv.second) {
        Policy::Client client;
        const std::string where = absl::StrCat("policy ", path, ": clients[", i++, "]");
        if (auto st = ParseClient(c, where, client); !st.ok()) return st;
        policy->clients_.push_back(std::move(client));
      }
    }
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("policy ", path, ": ", e.what()));
  }
  // An identity in two entries would make the rights depend on the order: refuse.
  // (Identities are typed, so a bare "spiffe://x" and "uri:spiffe://x" are the same one.)
  std::map<std::string, std::string> seen;  // identity -> client name
  int anonymous = 0;
  for (const auto& c : policy->clients_) {
    anonymous += c.anonymous;
    for (const auto& id : c.identities) {
      auto [it, fresh] = seen.emplace(id, c.name);
      if (!fresh) {
        return absl::InvalidArgumentError(absl::StrCat("policy ", path, ": identity '", id,
                                                       "' is in two clients, '", it->second,
                                                       "' and '", c.name, "'"));
      }
    }
  }
  if (anonymous > 1)
    return absl::InvalidArgumentError(absl::StrCat("policy ", path, ": two clients are anonymous"));
  return std::shared_ptr<const Policy>(std::move(policy));
}

absl::StatusOr<std::string> Policy::ParseIdentity(const std::string& text) {
  auto typed = [&](const char* kind, std::string value) -> absl::StatusOr<std::string> {
    if (value.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("identity '", text, "' names nothing after '", kind, ":'"));
    }
    return absl::StrCat(kind, ":", value);
  };
  if (absl::StartsWithIgnoreCase(text, "uri:")) return typed("uri", text.substr(4));
  if (absl::StartsWithIgnoreCase(text, "cn:")) return typed("cn", text.substr(3));
  if (text.empty()) return absl::InvalidArgumentError("an identity is empty");
  // Bare: a URI scheme (RFC 3986: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":") makes it
  // a URI SAN; anything else is a CN.
  bool uri = false;
  if (absl::ascii_isalpha(static_cast<unsigned char>(text[0]))) {
    for (size_t i = 1; i < text.size(); ++i) {
      const unsigned char ch = static_cast<unsigned char>(text[i]);
      if (ch == ':') {
        uri = true;
        break;
      }
      if (!absl::ascii_isalnum(ch) && ch != '+' && ch != '-' && ch != '.') break;
    }
  }
  return typed(uri ? "uri" : "cn", text);
}

absl::StatusOr<Policy::Match> Policy::Find(const Identity& id) const {
  Match m;
  if (!id.authenticated) {
    for (const auto& c : clients_) {
      if (c.anonymous) return Match{&c, "anonymous"};
    }
    return m;
  }
  // Every entry one of the certificate's names is in (with the first such name).
  const std::vector<std::string> names = id.names();
  std::vector<Match> hits;
  for (const auto& c : clients_) {
    for (const auto& n : names) {
      if (c.identities.count(n)) {
        hits.push_back(Match{&c, n});
        break;
      }
    }
  }
  if (hits.empty()) return m;
  if (hits.size() > 1) {
    std::vector<std::string> which;
    for (const auto& h : hits)
      which.push_back(absl::StrCat("'", h.client->name, "' (", h.matched, ")"));
    return absl::PermissionDeniedError(
        absl::StrCat("the client certificate is ambiguous: its names match ", hits.size(),
                     " policy entries, ", absl::StrJoin(which, " and "),
                     "; a certificate must name exactly one entry, so it gets no rights"));
  }
  return hits.front();
}

// ---------------------------------------------------------------------------------------

namespace {

// A caller's string as an audit field: at most kAuditFieldMax bytes, so a caller cannot fill
// the disk (and so trip the fail-closed audit for everyone) with long ids or key names. A
// cut value ends in "...(N bytes)".
constexpr size_t kAuditFieldMax = 128;
std::string Bounded(const std::string& v) {
  if (v.size() <= kAuditFieldMax) return v;
  return absl::StrCat(v.substr(0, kAuditFieldMax), "...(", v.size(), " bytes)");
}

// The per-call gate: policy checks, rate limits and the audit trail of one Rewrap call or
// one RewrapStream (shared by its batches).
class CallGate final : public ItemGate {
 public:
  CallGate(Security* sec, Security::Call call) : sec_(sec), call_(std::move(call)) {}

  absl::Status Admit() override {
    if (!sec_->serving()) {
      return absl::UnavailableError(
          "the audit log cannot be written: rewrapd is not serving rewraps");
    }
    if (call_.client) return sec_->limiter().Admit(call_.who, call_.client->limits);
    return absl::OkStatus();
  }
  bool RequireInToken(const std::string& key) override {
    return call_.policy != nullptr && call_.policy->RequireInToken(key);
  }
  absl::Status CheckKey(const std::string& key) override {
    if (call_.AllowsKey(key)) return absl::OkStatus();
    return absl::PermissionDeniedError(
        absl::StrCat("'", call_.who, "' may not use key '", key, "'"));
  }
  absl::Status CheckRecipient(const v1::Recipient& r,
                              const RecipientCache::Parsed* parsed) override {
    if (call_.client == nullptr) return absl::OkStatus();
    switch (r.kind_case()) {
      case v1::Recipient::kServiceKey:
        return call_.client->CheckServiceKey(r.service_key());
      case v1::Recipient::kCertificate:
        return call_.client->CheckCertificate(*parsed->cert);
      case v1::Recipient::kPublicKey:
        return call_.client->CheckPublicKey(*parsed->key);
      default:
        return absl::PermissionDeniedError("no recipient");
    }
  }
  void ItemDone(const v1::RewrapResult& result) override {
    if (call_.client && result.has_error() &&
        result.error().code() == v1::ItemError::DECRYPT_FAILED) {
      sec_->limiter().RecordDecryptFailure(call_.who, call_.client->limits);
    }
  }
  void BatchDone(const v1::RewrapRequest& req, v1::RewrapResponse* response,
                 const std::vector<std::string>& fps) override {
    const v1::RewrapResponse& resp = *response;
    AuditLog* audit = sec_->audit();
    if (audit == nullptr) return;
    const std::string time = AuditTimeNow();
    std::string lines;
    lines.reserve(static_cast<size_t>(req.items_size()) * 256);
    for (int i = 0; i < req.items_size() && i < resp.results_size(); ++i) {
      const auto& item = req.items(i);
      const auto& res = resp.results(i);
      nlohmann::json j = {
          {"time", time},
          {"identity", call_.who},
          {"matched", call_.matched},
          {"rpc", call_.rpc},
          {"id", Bounded(item.id())},
          {"key", Bounded(item.key_name())},
          {"recipient_sha256",
           static_cast<size_t>(i) < fps.size() ? fps[static_cast<size_t>(i)] : ""},
          {"outcome", res.has_error() ? v1::ItemError::Code_Name(res.error().code()) : "OK"},
          {"path", v1::Path_Name(res.path())}};
      lines += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      lines += '\n';
    }
    if (!audit->Append(lines)) {
      // Fail closed: results whose audit records are lost are not handed out.
      for (auto& r : *response->mutable_results()) {
        r.clear_ciphertext();
        r.set_path(v1::PATH_UNSPECIFIED);
        r.mutable_error()->set_code(v1::ItemError::UNAVAILABLE);
        r.mutable_error()->set_message(
            "the audit log cannot be written: rewrapd is not serving rewraps");
      }
    }
  }

 private:
  Security* sec_;
  Security::Call call_;
};

// "identity 'cn:x' is not in the policy", with at most 4 of the certificate's names.
std::string NotInPolicy(const Identity& id) {
  std::vector<std::string> names = id.names();
  if (names.empty()) return "identity 'anonymous' is not in the policy";
  const size_t n = names.size();
  if (n > 4) names.resize(4);
  return absl::StrCat(n == 1 ? "identity '" : "identities '", absl::StrJoin(names, "', '"), "'",
                      n > 4 ? absl::StrCat(" (and ", n - 4, " more)") : "", n == 1 ? " is" : " are",
                      " not in the policy");
}

}  // namespace

absl::StatusOr<std::unique_ptr<Security>> Security::Create(const std::string& policy_path,
                                                           std::unique_ptr<AuditLog> audit) {
  std::unique_ptr<Security> s(new Security(policy_path, std::move(audit)));
  if (!policy_path.empty()) {
    auto p = Policy::Load(policy_path);
    if (!p.ok()) return p.status();
    absl::MutexLock l(&s->mu_);
    s->policy_ = *std::move(p);
  }
  return s;
}

absl::Status Security::Reload() {
  if (path_.empty()) return absl::OkStatus();
  auto p = Policy::Load(path_);
  if (!p.ok()) return p.status();
  absl::MutexLock l(&mu_);
  policy_ = *std::move(p);
  return absl::OkStatus();
}

std::shared_ptr<const Policy> Security::current() const {
  absl::MutexLock l(&mu_);
  return policy_;
}

bool Security::has_policy() const { return current() != nullptr; }

absl::Status Security::Decide(Call& call, RpcClass rpc_class) const {
  call.policy = current();
  call.client = nullptr;
  call.matched.clear();
  call.who = call.identity.primary();
  if (!call.policy) return absl::OkStatus();
  auto found = call.policy->Find(call.identity);
  if (!found.ok()) return found.status();
  if (found->client == nullptr) return absl::PermissionDeniedError(NotInPolicy(call.identity));
  call.client = found->client;
  call.matched = found->matched;
  call.who = call.client->name;
  if (!call.client->rpcs.count(rpc_class)) {
    return absl::PermissionDeniedError(absl::StrCat("'", call.who, "' may not call ", call.rpc,
                                                    " (needs ", RpcClassName(rpc_class), ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Security::Call> Security::Authorize(const grpc::ServerContextBase& ctx,
                                                   RpcClass rpc_class, const char* rpc) {
  Call call;
  call.identity = IdentityOf(ctx);
  call.rpc = rpc;
  if (absl::Status denied = Decide(call, rpc_class); !denied.ok()) {
    // Refused whether or not the record can be written.
    AuditKeyCall(call, "", "PERMISSION_DENIED").IgnoreError();
    return denied;
  }
  return call;
}

absl::StatusOr<Security::Call> Security::Reauthorize(const Call& call, RpcClass rpc_class) {
  Call again = call;
  if (absl::Status denied = Decide(again, rpc_class); !denied.ok()) {
    AuditKeyCall(again, "", "PERMISSION_DENIED").IgnoreError();
    return denied;
  }
  return again;
}

std::shared_ptr<ItemGate> Security::GateFor(Call call) {
  return std::make_shared<CallGate>(this, std::move(call));
}

namespace {
absl::Status AuditUnwritable(const Security::Call& call) {
  return absl::UnavailableError(
      absl::StrCat("the audit log cannot be written: rewrapd refuses ", call.rpc,
                   " (every RPC fails closed until it is restarted with a writable audit log)"));
}
}  // namespace

absl::Status Security::BeginKeyCall(const Call& call, const std::string& key, bool changes_keys) {
  if (audit_ == nullptr) return absl::OkStatus();
  absl::Status st;
  if (!audit_->ok()) {
    st = AuditUnwritable(call);
  } else if (changes_keys) {
    st = AuditKeyCall(call, key, "STARTED");
  }
  if (!st.ok()) {
    spdlog::error("{} of key '{}' by '{}' refused: the audit log cannot be written", call.rpc,
                  key.substr(0, 128), call.who);
  }
  return st;
}

absl::Status Security::AuditKeyCall(const Call& call, const std::string& key,
                                    const std::string& outcome) {
  if (audit_ == nullptr) return absl::OkStatus();
  nlohmann::json j = {{"time", AuditTimeNow()}, {"identity", call.who}, {"matched", call.matched},
                      {"rpc", call.rpc},        {"key", Bounded(key)},  {"outcome", outcome}};
  if (audit_->Append(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n")) {
    return absl::OkStatus();
  }
  return AuditUnwritable(call);
}

}  // namespace hsmrewrap::service
