#include "service/keys_service.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <memory>

#include "absl/strings/str_cat.h"
#include "crypto/secret.h"
#include "proto/conversions.h"
#include "service/grpc_status.h"

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

// ImportKey's private key, out of the request (the PFX file itself stays there).
std::shared_ptr<ImportedKey> TakeImportedKey(const v1::ImportKeyRequest& req) {
  auto key = std::make_shared<ImportedKey>();
  switch (req.source_case()) {
    case v1::ImportKeyRequest::kPkcs8:
      key->form = ImportedKey::Form::kPkcs8;
      key->key = TakeSecretBytes(req.pkcs8());
      break;
    case v1::ImportKeyRequest::kPfx:
      key->form = ImportedKey::Form::kPfx;
      key->password = TakeSecretString(req.pfx().password());
      key->pfx = BytesOf(req.pfx().pfx());
      break;
    case v1::ImportKeyRequest::kCngRsaFullPrivateBlob:
      key->form = ImportedKey::Form::kCngFullPrivateBlob;
      key->key = TakeSecretBytes(req.cng_rsa_full_private_blob());
      break;
    default:
      break;
  }
  return key;
}

// Keys the caller may see.
KeyAdmin::KeyFilter VisibleTo(const Security::Call& call) {
  return [&call](const std::string& name) { return call.AllowsKey(name); };
}

}  // namespace

void KeyToProto(const KeyDescription& key, const std::string& token_label, v1::KeyInfo* out) {
  const hsm::KeyInfo& info = key.info;
  out->set_name(info.name);
  out->set_bits(static_cast<uint32_t>(info.bits));
  if (info.created_unix > 0) out->mutable_created()->set_seconds(info.created_unix);
  out->set_enabled(info.enabled);
  out->set_allow_pkcs1(info.allow_pkcs1);
  out->set_pkcs1_implicit_rejection(key.pkcs1_implicit_rejection);
  if (!key.spki_sha256.empty()) out->set_spki_sha256(key.spki_sha256);
  for (const auto& [padding, paths] : key.paths) {
    auto* ps = out->add_paths();
    ps->set_padding(proto_crypto::PaddingToProto(padding));
    for (hsm::Path p : paths) ps->add_paths(PathToProto(p));
  }
  for (const auto& o : key.in_token_outputs) *out->add_in_token_outputs() = o;
  out->set_token_label(token_label);
  for (const auto& t : key.tokens) *out->add_tokens() = t;
  if (!key.clone_advice.empty()) out->set_clone_advice(key.clone_advice);
}

KeysServiceImpl::KeysServiceImpl(KeyAdmin* admin, std::string token_label, AuthorizedCalls* calls,
                                 size_t max_queued)
    : admin_(admin), token_label_(std::move(token_label)), calls_(calls), max_queued_(max_queued) {}

grpc::ServerUnaryReactor* KeysServiceImpl::OffThread(
    grpc::CallbackServerContext* ctx, const char* rpc, const std::string& key, Kind kind,
    std::function<absl::Status(const Security::Call&)> fn) {
  auto* reactor = ctx->DefaultReactor();
  Security* security = calls_->security();
  auto call = calls_->Take(ctx, rpc);  // a refusal is audited already
  if (call.ok() && security && !key.empty() && !call->AllowsKey(key)) {
    // Refused whether or not the record can be written.
    security->AuditKeyCall(*call, key, "PERMISSION_DENIED").IgnoreError();
    call =
        absl::PermissionDeniedError(absl::StrCat("'", call->who, "' may not use key '", key, "'"));
  }
  if (!call.ok()) {
    reactor->Finish(ToGrpc(call.status()));
    return reactor;
  }
  const bool changes_keys = kind == Kind::kWrite;
  WorkerPool* pool = changes_keys ? &writes_ : &reads_;
  // The call's deadline, read now: the context is only touched again by Finish.
  const auto deadline = ctx->deadline();
  const bool queued = pool->TryPost(
      [reactor, key, rpc, deadline, changes_keys, security, call = *call, fn = std::move(fn)] {
        absl::Status st;
        if (std::chrono::system_clock::now() >= deadline) {
          // Nobody waits for the answer any more: the work (a key generation, a PBKDF)
          // would only hold up the calls queued behind this one.
          spdlog::warn("{} from '{}': its deadline passed while it was queued; not run", rpc,
                       call.who);
          st = absl::DeadlineExceededError(
              absl::StrCat(rpc, ": the call's deadline passed while it was queued"));
          if (security)
            security->AuditKeyCall(call, key, absl::StatusCodeToString(st.code())).IgnoreError();
          reactor->Finish(ToGrpc(st));
          return;
        }
        // Fail closed with the audit log (Security::BeginKeyCall): nothing is done unless the
        // log is writable and, for a change, the attempt is on record.
        st = security ? security->BeginKeyCall(call, key, changes_keys) : absl::OkStatus();
        if (st.ok()) {
          st = fn(call);
          absl::Status audited =
              security ? security->AuditKeyCall(call, key, absl::StatusCodeToString(st.code()))
                       : absl::OkStatus();
          if (!audited.ok()) {
            // The answer is withheld (gRPC sends no message with an error status). A change
            // that was made stays made: say so; the record of the attempt is in the log.
            st = !st.ok() || !changes_keys
                     ? audited
                     : absl::UnavailableError(absl::StrCat(
                           call.rpc, " of key '", key,
                           "' was done, but the record of its outcome could not be written (the "
                           "record of the attempt was); ",
                           audited.message()));
          }
        }
        reactor->Finish(ToGrpc(st));
      },
      max_queued_);
  if (!queued) {
    spdlog::warn("{} from '{}' refused: the key administration queue is full ({} waiting)", rpc,
                 call->who, max_queued_);
    const absl::Status st = absl::ResourceExhaustedError(absl::StrCat(
        "key administration queue is full (", max_queued_, " calls waiting): retry later"));
    if (security)
      security->AuditKeyCall(*call, key, absl::StatusCodeToString(st.code())).IgnoreError();
    reactor->Finish(ToGrpc(st));
  }
  return reactor;
}

grpc::ServerUnaryReactor* KeysServiceImpl::CreateKey(grpc::CallbackServerContext* ctx,
                                                     const v1::CreateKeyRequest* req,
                                                     v1::KeyInfo* out) {
  return OffThread(ctx, "CreateKey", req->name(), Kind::kWrite,
                   [this, req, out](const Security::Call&) -> absl::Status {
                     auto key = admin_->CreateKey(req->name(), req->bits(), req->allow_pkcs1(),
                                                  req->token());
                     if (!key.ok()) return key.status();
                     KeyToProto(*key, token_label_, out);
                     return absl::OkStatus();
                   });
}

grpc::ServerUnaryReactor* KeysServiceImpl::ImportKey(grpc::CallbackServerContext* ctx,
                                                     const v1::ImportKeyRequest* req,
                                                     v1::KeyInfo* out) {
  // The private key and the PFX password leave the request before anything else happens
  // (also when the call is refused): protobuf keeps them in plain std::strings, short ones
  // inside the message object, which are freed unwiped.
  std::shared_ptr<ImportedKey> key = TakeImportedKey(*req);
  return OffThread(ctx, "ImportKey", req->name(), Kind::kWrite,
                   [this, req, out, key](const Security::Call&) -> absl::Status {
                     const std::vector<std::string> tokens(req->tokens().begin(),
                                                           req->tokens().end());
                     auto info = admin_->ImportKey(req->name(), *key, req->allow_pkcs1(), tokens);
                     if (!info.ok()) return info.status();
                     KeyToProto(*info, token_label_, out);
                     return absl::OkStatus();
                   });
}

grpc::ServerUnaryReactor* KeysServiceImpl::ListKeys(grpc::CallbackServerContext* ctx,
                                                    const v1::ListKeysRequest*,
                                                    v1::ListKeysResponse* out) {
  return OffThread(ctx, "ListKeys", "", Kind::kRead,
                   [this, out](const Security::Call& call) -> absl::Status {
                     auto keys = admin_->ListKeys(VisibleTo(call));  // only the caller's keys
                     if (!keys.ok()) return keys.status();
                     for (const auto& k : *keys) KeyToProto(k, token_label_, out->add_keys());
                     return absl::OkStatus();
                   });
}

grpc::ServerUnaryReactor* KeysServiceImpl::GetPublicKey(grpc::CallbackServerContext* ctx,
                                                        const v1::GetPublicKeyRequest* req,
                                                        v1::GetPublicKeyResponse* out) {
  return OffThread(ctx, "GetPublicKey", req->name(), Kind::kRead,
                   [this, req, out](const Security::Call&) -> absl::Status {
                     auto pub = admin_->GetPublicKey(req->name());
                     if (!pub.ok()) return pub.status();
                     switch (req->format()) {
                       case v1::PEM_SPKI:
                         out->set_public_key(pub->SpkiPem());
                         break;
                       case v1::DER_SPKI: {
                         auto der = pub->SpkiDer();
                         out->set_public_key(der.data(), der.size());
                         break;
                       }
                       case v1::CNG_RSAPUBLICBLOB: {
                         auto blob = pub->CngPublicBlob();
                         out->set_public_key(blob.data(), blob.size());
                         break;
                       }
                       default:
                         return absl::InvalidArgumentError(
                             absl::StrCat("format: unknown value ", req->format()));
                     }
                     out->set_format(req->format());
                     out->set_spki_sha256(pub->Sha256Hex());
                     out->set_bits(static_cast<uint32_t>(pub->bits()));
                     return absl::OkStatus();
                   });
}

absl::Status KeysServiceImpl::SetEnabled(const std::string& name, bool enabled, v1::KeyInfo* out) {
  auto key = admin_->SetEnabled(name, enabled);
  if (!key.ok()) return key.status();
  KeyToProto(*key, token_label_, out);
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* KeysServiceImpl::DisableKey(grpc::CallbackServerContext* ctx,
                                                      const v1::DisableKeyRequest* req,
                                                      v1::KeyInfo* out) {
  return OffThread(
      ctx, "DisableKey", req->name(), Kind::kWrite,
      [this, req, out](const Security::Call&) { return SetEnabled(req->name(), false, out); });
}

grpc::ServerUnaryReactor* KeysServiceImpl::EnableKey(grpc::CallbackServerContext* ctx,
                                                     const v1::EnableKeyRequest* req,
                                                     v1::KeyInfo* out) {
  return OffThread(
      ctx, "EnableKey", req->name(), Kind::kWrite,
      [this, req, out](const Security::Call&) { return SetEnabled(req->name(), true, out); });
}

grpc::ServerUnaryReactor* KeysServiceImpl::SelfTest(grpc::CallbackServerContext* ctx,
                                                    const v1::SelfTestRequest* req,
                                                    v1::SelfTestResponse* out) {
  return OffThread(ctx, "SelfTest", req->name(), Kind::kRead,
                   [this, req, out](const Security::Call& call) -> absl::Status {
                     auto results = admin_->SelfTest(req->name(), VisibleTo(call));
                     if (!results.ok()) return results.status();
                     for (const auto& r : *results) {
                       auto* o = out->add_results();
                       o->set_name(r.key);
                       o->set_ok(r.ok);
                       o->set_message(r.message);
                       o->set_path(r.path);
                       o->mutable_time()->set_seconds(r.time_unix);
                       o->set_seconds(r.seconds);
                       o->set_token(r.token);
                     }
                     return absl::OkStatus();
                   });
}

}  // namespace hsmrewrap::service
