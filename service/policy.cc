#include "service/policy.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
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
    } else {
      return Bad(at,
                 "unknown key (expected ca_files, fingerprints, raw_public_keys, service_keys)");
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
  for (const auto& kv : n) {
    const std::string k = kv.first.as<std::string>();
    const std::string at = absl::StrCat(where, ".", k);
    if (k == "name") {
      c.name = kv.second.as<std::string>();
    } else if (k == "identities") {
      auto ids = StringList(kv.second, at);
      if (!ids.ok()) return ids.status();
      c.identities.insert(ids->begin(), ids->end());
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
    return absl::OkStatus();
  }
  std::string why = "no device CA is configured for this client";
  for (const auto& store : recipients.ca_stores) {
    if (Chains(store.get(), cert.get(), &why)) return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat("recipient certificate is not allowed for '",
                                                  name,
                                                  "': it does not verify against the "
                                                  "policy's device CAs (",
                                                  why, ") and its SHA-256 is not listed"));
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
      if (k != "clients")
        return Bad(absl::StrCat("policy ", path, ": ", k), "unknown key (expected clients)");
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
  std::set<std::string> seen;
  int anonymous = 0;
  for (const auto& c : policy->clients_) {
    anonymous += c.anonymous;
    for (const auto& id : c.identities) {
      if (!seen.insert(id).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("policy ", path, ": identity '", id, "' is in two clients"));
      }
    }
  }
  if (anonymous > 1)
    return absl::InvalidArgumentError(absl::StrCat("policy ", path, ": two clients are anonymous"));
  return std::shared_ptr<const Policy>(std::move(policy));
}

const Policy::Client* Policy::Find(const Identity& id) const {
  for (const auto& c : clients_) {
    if (!id.authenticated) {
      if (c.anonymous) return &c;
      continue;
    }
    for (const auto& n : id.names) {
      if (c.identities.count(n)) return &c;
    }
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------

namespace {

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
          {"rpc", call_.rpc},
          {"id", item.id()},
          {"key", item.key_name()},
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

absl::StatusOr<Security::Call> Security::Authorize(const grpc::ServerContextBase& ctx,
                                                   RpcClass rpc_class, const char* rpc) {
  Call call;
  call.identity = IdentityOf(ctx);
  call.rpc = rpc;
  call.policy = current();
  call.who = call.identity.primary();
  if (call.policy) {
    call.client = call.policy->Find(call.identity);
    absl::Status denied;
    if (call.client == nullptr) {
      denied = absl::PermissionDeniedError(
          absl::StrCat("identity '", call.who, "' is not in the policy"));
    } else {
      call.who = call.client->name;
      if (!call.client->rpcs.count(rpc_class)) {
        denied = absl::PermissionDeniedError(absl::StrCat(
            "'", call.who, "' may not call ", rpc, " (needs ", RpcClassName(rpc_class), ")"));
      }
    }
    if (!denied.ok()) {
      // Refused whether or not the record can be written.
      AuditKeyCall(call, "", "PERMISSION_DENIED").IgnoreError();
      return denied;
    }
  }
  return call;
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
  nlohmann::json j = {{"time", AuditTimeNow()},
                      {"identity", call.who},
                      {"rpc", call.rpc},
                      {"key", key},
                      {"outcome", outcome}};
  if (audit_->Append(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n")) {
    return absl::OkStatus();
  }
  return AuditUnwritable(call);
}

}  // namespace hsmrewrap::service
