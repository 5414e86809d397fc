#include "service/grpc_services.h"

#include <spdlog/spdlog.h>

#include <deque>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "crypto/keys.h"
#include "crypto/secret.h"
#include "hsm/key_policy.h"

namespace hsmrewrap::service {
namespace {

absl::Span<const uint8_t> BytesOf(const std::string& s) {
  return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

// A secret field of a request (key material, a password), copied into wiped memory; the
// field itself is wiped. The request is gRPC's, allocated mutable and handed to the
// handler as const: only its bytes change (not its size), and nothing reads the field
// afterwards. gRPC's receive buffer, which the request was parsed from, is out of reach.
crypto::SecretBytes TakeSecretBytes(const std::string& field) {
  crypto::SecretBytes out(field.begin(), field.end());
  crypto::Cleanse(const_cast<char*>(field.data()), field.size());
  return out;
}

crypto::SecretString TakeSecretString(const std::string& field) {
  crypto::SecretString out(field.data(), field.size());
  crypto::Cleanse(const_cast<char*>(field.data()), field.size());
  return out;
}

// What ImportKey takes out of its request (TakeSecret*), for the off-thread part.
struct ImportSecrets {
  crypto::SecretBytes key;        // pkcs8 or cng_rsa_full_private_blob
  crypto::SecretString password;  // pfx.password
};

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Per batch: its size, latency and one count per item by key, outcome and path. The key
// label is kept only for keys that exist, so callers cannot grow the label set at will.
void RecordBatch(Metrics* metrics, const char* rpc, const v1::RewrapRequest& req,
                 const v1::RewrapResponse& resp, double seconds) {
  metrics->Observe("hsmrewrap_batch_items", {{"rpc", rpc}}, req.items_size());
  metrics->Observe("hsmrewrap_rpc_latency_seconds", {{"rpc", rpc}}, seconds);
  for (int i = 0; i < resp.results_size() && i < req.items_size(); ++i) {
    const auto& r = resp.results(i);
    const bool known_key = !r.has_error() || (r.error().code() != v1::ItemError::KEY_NOT_FOUND &&
                                              r.error().code() != v1::ItemError::INVALID_ITEM);
    metrics->Add("hsmrewrap_items_total",
                 {{"key", known_key ? req.items(i).key_name() : ""},
                  {"outcome", r.has_error() ? v1::ItemError::Code_Name(r.error().code()) : "OK"},
                  {"path", v1::Path_Name(r.path())}});
  }
}

// Bidirectional stream: each request is one batch and gets exactly one response, in
// request order. Up to kMaxPending batches of one stream are in the engine at once (so one
// stream keeps several workers busy); beyond that the stream stops reading, which is
// gRPC flow control pushing back on the client. A batch refused for the service's
// in-flight limit is answered with RESOURCE_EXHAUSTED per item (retryable) and the stream
// goes on; a malformed batch (empty, too large) ends the stream with that status once
// the batches before it are answered.
class StreamReactor final : public grpc::ServerBidiReactor<v1::RewrapRequest, v1::RewrapResponse> {
 public:
  static constexpr size_t kMaxPending = 8;

  StreamReactor(RewrapEngine* engine, Metrics* metrics, std::shared_ptr<ItemGate> gate,
                std::chrono::system_clock::time_point deadline)
      : engine_(engine), metrics_(metrics), gate_(std::move(gate)), deadline_(deadline) {
    std::lock_guard<std::mutex> l(mu_);
    ReadLocked();
  }

  void OnReadDone(bool ok) override {
    std::unique_lock<std::mutex> l(mu_);
    // reading_ stays true until this read is fully handled: while mu_ is released around
    // Submit, a batch may complete and OnWriteDone run, and it must not start a second
    // read (gRPC allows one outstanding read: GRPC_CALL_ERROR_TOO_MANY_OPERATIONS).
    if (!ok) {  // the client half-closed, or the call broke
      reading_ = false;
      read_closed_ = true;
      MaybeFinishLocked();
      return;
    }
    auto slot = std::make_shared<Slot>();
    pending_.push_back(slot);
    auto req = std::make_shared<const v1::RewrapRequest>(std::move(request_));
    request_.Clear();
    l.unlock();
    const auto start = std::chrono::steady_clock::now();
    absl::Status st = engine_->Submit(
        req,
        [this, slot, req, start](v1::RewrapResponse resp) {
          RecordBatch(metrics_, "RewrapStream", *req, resp, SecondsSince(start));
          std::lock_guard<std::mutex> g(mu_);
          slot->response = std::move(resp);
          slot->ready = true;
          MaybeWriteLocked();
          MaybeFinishLocked();
        },
        gate_, deadline_);
    l.lock();
    if (!st.ok()) {
      if (st.code() == absl::StatusCode::kResourceExhausted) {
        for (const auto& item : req->items()) {
          auto* r = slot->response.add_results();
          r->set_id(item.id());
          r->mutable_error()->set_code(v1::ItemError::RESOURCE_EXHAUSTED);
          r->mutable_error()->set_message(std::string(st.message()));
        }
        slot->ready = true;
        MaybeWriteLocked();
      } else {
        pending_.pop_back();
        final_status_ = ToGrpc(st);
        reading_ = false;
        read_closed_ = true;  // read no more
        MaybeFinishLocked();
        return;
      }
    }
    reading_ = false;
    if (pending_.size() < kMaxPending) ReadLocked();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> l(mu_);
    writing_ = false;
    pending_.pop_front();
    if (!ok) {
      // The client went away: the outstanding batches still complete (their callbacks
      // reference this reactor), then the call ends.
      broken_ = true;
      read_closed_ = true;
      final_status_ = grpc::Status(grpc::StatusCode::CANCELLED, "the stream broke while writing");
    }
    MaybeWriteLocked();
    if (!read_closed_ && !reading_ && pending_.size() < kMaxPending) ReadLocked();
    MaybeFinishLocked();
  }

  void OnDone() override { delete this; }

 private:
  struct Slot {
    bool ready = false;
    v1::RewrapResponse response;
  };

  void ReadLocked() {
    reading_ = true;
    StartRead(&request_);
  }
  void MaybeWriteLocked() {
    if (writing_ || pending_.empty() || !pending_.front()->ready) return;
    if (broken_) {  // nobody to write to: drop answered batches in order
      while (!pending_.empty() && pending_.front()->ready) pending_.pop_front();
      return;
    }
    writing_ = true;
    StartWrite(&pending_.front()->response);
  }
  void MaybeFinishLocked() {
    if (finished_ || !read_closed_ || reading_ || writing_ || !pending_.empty()) return;
    finished_ = true;
    Finish(final_status_);
  }

  RewrapEngine* engine_;
  Metrics* metrics_;
  std::shared_ptr<ItemGate> gate_;                        // may be null
  const std::chrono::system_clock::time_point deadline_;  // the stream's (max if none)
  std::mutex mu_;                                         // guards everything below
  v1::RewrapRequest request_;
  std::deque<std::shared_ptr<Slot>> pending_;  // batches in request order
  bool reading_ = false, writing_ = false, read_closed_ = false, finished_ = false, broken_ = false;
  grpc::Status final_status_ = grpc::Status::OK;
};

// A stream the caller may not open: ends at once with the status.
class RefusedStream final : public grpc::ServerBidiReactor<v1::RewrapRequest, v1::RewrapResponse> {
 public:
  explicit RefusedStream(grpc::Status st) { Finish(std::move(st)); }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

void DeclareServiceMetrics(Metrics& m) {
  m.DeclareCounter("hsmrewrap_items_total", "Rewrap items by service key, outcome and path");
  m.DeclareHistogram("hsmrewrap_batch_items", "Items per Rewrap batch",
                     {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000});
  m.DeclareHistogram("hsmrewrap_rpc_latency_seconds",
                     "Latency per RPC (per batch for Rewrap/RewrapStream)", LatencyBuckets());
}

RewrapServiceImpl::RewrapServiceImpl(RewrapEngine* engine, Metrics* metrics, Security* security)
    : engine_(engine), metrics_(metrics), security_(security) {}

grpc::ServerUnaryReactor* RewrapServiceImpl::Rewrap(grpc::CallbackServerContext* ctx,
                                                    const v1::RewrapRequest* req,
                                                    v1::RewrapResponse* resp) {
  auto* reactor = ctx->DefaultReactor();
  std::shared_ptr<ItemGate> gate;
  if (security_) {
    auto call = security_->Authorize(*ctx, RpcClass::kRewrap, "Rewrap");
    if (!call.ok()) {
      reactor->Finish(ToGrpc(call.status()));
      return reactor;
    }
    gate = security_->GateFor(*std::move(call));
  }
  // The request outlives the batch: gRPC keeps it until Finish.
  std::shared_ptr<const v1::RewrapRequest> alias(std::shared_ptr<void>(), req);
  const auto start = std::chrono::steady_clock::now();
  absl::Status st = engine_->Submit(
      alias,
      [this, reactor, req, resp, start](v1::RewrapResponse r) {
        RecordBatch(metrics_, "Rewrap", *req, r, SecondsSince(start));
        *resp = std::move(r);
        reactor->Finish(grpc::Status::OK);
      },
      std::move(gate), ctx->deadline());
  if (!st.ok()) reactor->Finish(ToGrpc(st));
  return reactor;
}

grpc::ServerBidiReactor<v1::RewrapRequest, v1::RewrapResponse>* RewrapServiceImpl::RewrapStream(
    grpc::CallbackServerContext* ctx) {
  std::shared_ptr<ItemGate> gate;
  if (security_) {
    auto call = security_->Authorize(*ctx, RpcClass::kRewrap, "RewrapStream");
    if (!call.ok()) return new RefusedStream(ToGrpc(call.status()));
    gate = security_->GateFor(*std::move(call));
  }
  return new StreamReactor(engine_, metrics_, std::move(gate), ctx->deadline());
}

// ---------------------------------------------------------------------------------------

KeysServiceImpl::KeysServiceImpl(RewrapEngine* engine, std::string token_label, Metrics* metrics,
                                 SelfTester* selftest, Security* security)
    : engine_(engine),
      token_label_(std::move(token_label)),
      metrics_(metrics),
      selftest_(selftest),
      security_(security) {}

void KeysServiceImpl::ToProto(const hsm::KeyInfo& info, v1::KeyInfo* out) {
  out->set_name(info.name);
  out->set_bits(static_cast<uint32_t>(info.bits));
  if (info.created_unix > 0) out->mutable_created()->set_seconds(info.created_unix);
  out->set_enabled(info.enabled);
  out->set_allow_pkcs1(info.allow_pkcs1);
  out->set_pkcs1_implicit_rejection(info.allow_pkcs1 && info.caps.pkcs1_implicit_rejection);
  auto pub = crypto::PublicKey::FromSpki(info.spki_der);
  if (pub.ok()) out->set_spki_sha256(pub->Sha256Hex());
  for (const auto& [padding, paths] : engine_->PathsFor(info)) {
    auto* ps = out->add_paths();
    ps->set_padding(PaddingToProto(padding));
    for (hsm::Path p : paths) ps->add_paths(PathToProto(p));
  }
  out->set_token_label(token_label_);
}

grpc::ServerUnaryReactor* KeysServiceImpl::OffThread(
    grpc::CallbackServerContext* ctx, const char* rpc, RpcClass rpc_class, const std::string& key,
    std::function<grpc::Status(const Security::Call&)> fn) {
  auto* reactor = ctx->DefaultReactor();
  Security::Call call;
  call.rpc = rpc;
  if (security_) {
    auto c = security_->Authorize(*ctx, rpc_class, rpc);  // audits its own refusals
    if (c.ok() && !key.empty() && !c->AllowsKey(key)) {
      security_->AuditKeyCall(*c, key, "PERMISSION_DENIED");
      c = absl::PermissionDeniedError(absl::StrCat("'", c->who, "' may not use key '", key, "'"));
    }
    if (!c.ok()) {
      reactor->Finish(ToGrpc(c.status()));
      return reactor;
    }
    call = *std::move(c);
  }
  const auto start = std::chrono::steady_clock::now();
  admin_.Post([this, reactor, rpc, start, key, call = std::move(call), fn = std::move(fn)] {
    grpc::Status st = fn(call);
    metrics_->Observe("hsmrewrap_rpc_latency_seconds", {{"rpc", rpc}}, SecondsSince(start));
    if (security_)
      security_->AuditKeyCall(
          call, key,
          st.ok() ? "OK"
                  : absl::StatusCodeToString(static_cast<absl::StatusCode>(st.error_code())));
    reactor->Finish(st);
  });
  return reactor;
}

grpc::ServerUnaryReactor* KeysServiceImpl::CreateKey(grpc::CallbackServerContext* ctx,
                                                     const v1::CreateKeyRequest* req,
                                                     v1::KeyInfo* out) {
  return OffThread(
      ctx, "CreateKey", RpcClass::kKeysAdmin, req->name(),
      [this, req, out](const Security::Call&) -> grpc::Status {
        if (auto st = hsm::CheckNewKeyName(req->name()); !st.ok()) return ToGrpc(st);
        const uint32_t bits = req->bits() == 0 ? 2048 : req->bits();
        if (bits != 2048 && bits != 3072 && bits != 4096) {
          return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              absl::StrCat("bits must be 2048, 3072 or 4096, not ", bits));
        }
        auto info =
            engine_->backend().CreateKey(req->name(), static_cast<int>(bits), req->allow_pkcs1());
        if (!info.ok()) return ToGrpc(info.status());
        spdlog::info("created key '{}' ({} bits, allow_pkcs1={})", req->name(), bits,
                     req->allow_pkcs1());
        ToProto(*info, out);
        return grpc::Status::OK;
      });
}

grpc::ServerUnaryReactor* KeysServiceImpl::ImportKey(grpc::CallbackServerContext* ctx,
                                                     const v1::ImportKeyRequest* req,
                                                     v1::KeyInfo* out) {
  // The private key and the PFX password leave the request before anything else happens
  // (also when the call is refused): protobuf keeps them in plain std::strings, short ones
  // inside the message object, which are freed unwiped.
  auto secrets = std::make_shared<ImportSecrets>();
  switch (req->source_case()) {
    case v1::ImportKeyRequest::kPkcs8:
      secrets->key = TakeSecretBytes(req->pkcs8());
      break;
    case v1::ImportKeyRequest::kPfx:
      secrets->password = TakeSecretString(req->pfx().password());
      break;
    case v1::ImportKeyRequest::kCngRsaFullPrivateBlob:
      secrets->key = TakeSecretBytes(req->cng_rsa_full_private_blob());
      break;
    default:
      break;
  }
  return OffThread(
      ctx, "ImportKey", RpcClass::kKeysAdmin, req->name(),
      [this, req, out, secrets](const Security::Call&) -> grpc::Status {
        if (auto st = hsm::CheckNewKeyName(req->name()); !st.ok()) return ToGrpc(st);
        absl::StatusOr<crypto::RsaPrivateKeyParts> parts;
        switch (req->source_case()) {
          case v1::ImportKeyRequest::kPkcs8:
            parts = crypto::ParseRsaPrivateKey(crypto::Reveal(secrets->key));
            break;
          case v1::ImportKeyRequest::kPfx:
            parts = crypto::ParseRsaPrivateKeyFromPfx(BytesOf(req->pfx().pfx()), secrets->password);
            break;
          case v1::ImportKeyRequest::kCngRsaFullPrivateBlob:
            parts = crypto::ParseCngFullPrivateBlob(crypto::Reveal(secrets->key));
            break;
          default:
            return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                "no key given: set pkcs8, pfx or cng_rsa_full_private_blob");
        }
        if (!parts.ok()) {
          return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              absl::StrCat("the key does not parse: ", parts.status().message()));
        }
        if (parts->bits < 1024) {
          return grpc::Status(
              grpc::StatusCode::INVALID_ARGUMENT,
              absl::StrCat("the key has ", parts->bits, " bits; at least 1024 are required"));
        }
        auto info = engine_->backend().ImportKey(req->name(), *parts, req->allow_pkcs1());
        if (!info.ok()) return ToGrpc(info.status());
        spdlog::info("imported key '{}' ({} bits, allow_pkcs1={})", req->name(), parts->bits,
                     req->allow_pkcs1());
        ToProto(*info, out);
        return grpc::Status::OK;
      });
}

grpc::ServerUnaryReactor* KeysServiceImpl::ListKeys(grpc::CallbackServerContext* ctx,
                                                    const v1::ListKeysRequest*,
                                                    v1::ListKeysResponse* out) {
  return OffThread(ctx, "ListKeys", RpcClass::kKeysRead, "",
                   [this, out](const Security::Call& call) -> grpc::Status {
                     auto keys = engine_->backend().ListKeys();
                     if (!keys.ok()) return ToGrpc(keys.status());
                     for (const auto& k : *keys) {
                       if (call.AllowsKey(k.name))
                         ToProto(k, out->add_keys());  // only the caller's keys
                     }
                     return grpc::Status::OK;
                   });
}

grpc::ServerUnaryReactor* KeysServiceImpl::GetPublicKey(grpc::CallbackServerContext* ctx,
                                                        const v1::GetPublicKeyRequest* req,
                                                        v1::GetPublicKeyResponse* out) {
  return OffThread(ctx, "GetPublicKey", RpcClass::kKeysRead, req->name(),
                   [this, req, out](const Security::Call&) -> grpc::Status {
                     auto entry = engine_->backend().Resolve(req->name());
                     if (!entry.ok()) return ToGrpc(entry.status());
                     const crypto::PublicKey& pub = (*entry)->public_key;
                     switch (req->format()) {
                       case v1::PEM_SPKI:
                         out->set_public_key(pub.SpkiPem());
                         break;
                       case v1::DER_SPKI: {
                         auto der = pub.SpkiDer();
                         out->set_public_key(der.data(), der.size());
                         break;
                       }
                       case v1::CNG_RSAPUBLICBLOB: {
                         auto blob = pub.CngPublicBlob();
                         out->set_public_key(blob.data(), blob.size());
                         break;
                       }
                       default:
                         return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                             absl::StrCat("format: unknown value ", req->format()));
                     }
                     out->set_format(req->format());
                     out->set_spki_sha256(pub.Sha256Hex());
                     out->set_bits(static_cast<uint32_t>(pub.bits()));
                     return grpc::Status::OK;
                   });
}

grpc::Status KeysServiceImpl::SetEnabled(const std::string& name, bool enabled, v1::KeyInfo* out) {
  auto info = engine_->backend().SetEnabled(name, enabled);
  if (!info.ok()) return ToGrpc(info.status());
  spdlog::info("key '{}' {}", name, enabled ? "enabled" : "disabled");
  ToProto(*info, out);
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* KeysServiceImpl::DisableKey(grpc::CallbackServerContext* ctx,
                                                      const v1::DisableKeyRequest* req,
                                                      v1::KeyInfo* out) {
  return OffThread(
      ctx, "DisableKey", RpcClass::kKeysAdmin, req->name(),
      [this, req, out](const Security::Call&) { return SetEnabled(req->name(), false, out); });
}

grpc::ServerUnaryReactor* KeysServiceImpl::EnableKey(grpc::CallbackServerContext* ctx,
                                                     const v1::EnableKeyRequest* req,
                                                     v1::KeyInfo* out) {
  return OffThread(
      ctx, "EnableKey", RpcClass::kKeysAdmin, req->name(),
      [this, req, out](const Security::Call&) { return SetEnabled(req->name(), true, out); });
}

grpc::ServerUnaryReactor* KeysServiceImpl::SelfTest(grpc::CallbackServerContext* ctx,
                                                    const v1::SelfTestRequest* req,
                                                    v1::SelfTestResponse* out) {
  return OffThread(ctx, "SelfTest", RpcClass::kKeysRead, req->name(),
                   [this, req, out](const Security::Call& call) -> grpc::Status {
                     if (!req->name().empty()) {
                       auto entry = engine_->backend().Resolve(req->name());
                       if (!entry.ok()) return ToGrpc(entry.status());
                     }
                     for (const auto& r : selftest_->RunNow(req->name())) {
                       if (!call.AllowsKey(r.key)) continue;
                       auto* o = out->add_results();
                       o->set_name(r.key);
                       o->set_ok(r.ok);
                       o->set_message(r.message);
                       o->set_path(r.path);
                       o->mutable_time()->set_seconds(r.time_unix);
                       o->set_seconds(r.seconds);
                     }
                     return grpc::Status::OK;
                   });
}

}  // namespace hsmrewrap::service
