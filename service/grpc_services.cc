#include "service/grpc_services.h"

#include <deque>
#include <mutex>
#include <regex>

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "crypto/keys.h"

namespace hsmrewrap::service {
namespace {

absl::Span<const uint8_t> BytesOf(const std::string& s) {
  return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

absl::Status CheckKeyName(const std::string& name) {
  static const std::regex kName("[A-Za-z0-9][A-Za-z0-9._-]{0,63}");
  if (!std::regex_match(name, kName)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key name '", name, "' is not valid: 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit"));
  }
  return absl::OkStatus();
}

// Bidirectional stream: each request is one batch; responses go back in order. One batch
// is processed at a time per stream; callers open several streams for concurrency.
class StreamReactor final : public grpc::ServerBidiReactor<v1::RewrapRequest, v1::RewrapResponse> {
 public:
  explicit StreamReactor(RewrapEngine* engine) : engine_(engine) { NextRead(); }

  void OnReadDone(bool ok) override {
    if (!ok) {  // client half-closed (or the call broke): nothing outstanding
      Finish(grpc::Status::OK);
      return;
    }
    auto req = std::make_shared<const v1::RewrapRequest>(std::move(request_));
    request_.Clear();
    absl::Status st = engine_->Submit(std::move(req), [this](v1::RewrapResponse resp) {
      response_ = std::move(resp);
      StartWrite(&response_);
    });
    if (!st.ok()) Finish(ToGrpc(st));
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the stream broke while writing"));
      return;
    }
    NextRead();
  }

  void OnDone() override { delete this; }

 private:
  void NextRead() { StartRead(&request_); }
  RewrapEngine* engine_;
  v1::RewrapRequest request_;
  v1::RewrapResponse response_;
};

}  // namespace

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

grpc::ServerUnaryReactor* RewrapServiceImpl::Rewrap(grpc::CallbackServerContext* ctx,
                                                    const v1::RewrapRequest* req,
                                                    v1::RewrapResponse* resp) {
  auto* reactor = ctx->DefaultReactor();
  // The request outlives the batch: gRPC keeps it until Finish.
  std::shared_ptr<const v1::RewrapRequest> alias(std::shared_ptr<void>(), req);
  absl::Status st = engine_->Submit(alias, [reactor, resp](v1::RewrapResponse r) {
    *resp = std::move(r);
    reactor->Finish(grpc::Status::OK);
  });
  if (!st.ok()) reactor->Finish(ToGrpc(st));
  return reactor;
}

grpc::ServerBidiReactor<v1::RewrapRequest, v1::RewrapResponse>* RewrapServiceImpl::RewrapStream(
    grpc::CallbackServerContext*) {
  return new StreamReactor(engine_);
}

// ---------------------------------------------------------------------------------------

KeysServiceImpl::KeysServiceImpl(RewrapEngine* engine, std::string token_label)
    : engine_(engine), token_label_(std::move(token_label)) {}

void KeysServiceImpl::ToProto(const hsm::KeyInfo& info, v1::KeyInfo* out) {
  out->set_name(info.name);
  out->set_bits(static_cast<uint32_t>(info.bits));
  if (info.created_unix > 0) out->mutable_created()->set_seconds(info.created_unix);
  out->set_enabled(info.enabled);
  out->set_allow_pkcs1(info.allow_pkcs1);
  auto pub = crypto::PublicKey::FromSpki(info.spki_der);
  if (pub.ok()) out->set_spki_sha256(pub->Sha256Hex());
  for (const auto& [padding, paths] : engine_->PathsFor(info)) {
    auto* ps = out->add_paths();
    ps->set_padding(PaddingToProto(padding));
    for (hsm::Path p : paths) ps->add_paths(PathToProto(p));
  }
  out->set_token_label(token_label_);
}

grpc::ServerUnaryReactor* KeysServiceImpl::OffThread(grpc::CallbackServerContext* ctx,
                                                     std::function<grpc::Status()> fn) {
  auto* reactor = ctx->DefaultReactor();
  admin_.Post([reactor, fn = std::move(fn)] { reactor->Finish(fn()); });
  return reactor;
}

grpc::ServerUnaryReactor* KeysServiceImpl::CreateKey(grpc::CallbackServerContext* ctx,
                                                     const v1::CreateKeyRequest* req, v1::KeyInfo* out) {
  return OffThread(ctx, [this, req, out]() -> grpc::Status {
    if (auto st = CheckKeyName(req->name()); !st.ok()) return ToGrpc(st);
    const uint32_t bits = req->bits() == 0 ? 2048 : req->bits();
    if (bits != 2048 && bits != 3072 && bits != 4096) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("bits must be 2048, 3072 or 4096, not ", bits));
    }
    auto info = engine_->backend().CreateKey(req->name(), static_cast<int>(bits), req->allow_pkcs1());
    if (!info.ok()) return ToGrpc(info.status());
    spdlog::info("created key '{}' ({} bits, allow_pkcs1={})", req->name(), bits, req->allow_pkcs1());
    ToProto(*info, out);
    auto put = engine_->keys().Put(*std::move(info));
    return put.ok() ? grpc::Status::OK : ToGrpc(put.status());
  });
}

grpc::ServerUnaryReactor* KeysServiceImpl::ImportKey(grpc::CallbackServerContext* ctx,
                                                     const v1::ImportKeyRequest* req, v1::KeyInfo* out) {
  return OffThread(ctx, [this, req, out]() -> grpc::Status {
    if (auto st = CheckKeyName(req->name()); !st.ok()) return ToGrpc(st);
    absl::StatusOr<crypto::RsaPrivateKeyParts> parts;
    switch (req->source_case()) {
      case v1::ImportKeyRequest::kPkcs8:
        parts = crypto::ParseRsaPrivateKey(BytesOf(req->pkcs8()));
        break;
      case v1::ImportKeyRequest::kPfx: {
        crypto::SecretString pw(req->pfx().password().begin(), req->pfx().password().end());
        parts = crypto::ParseRsaPrivateKeyFromPfx(BytesOf(req->pfx().pfx()), pw);
        break;
      }
      case v1::ImportKeyRequest::kCngRsaFullPrivateBlob:
        parts = crypto::ParseCngFullPrivateBlob(BytesOf(req->cng_rsa_full_private_blob()));
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
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("the key has ", parts->bits, " bits; at least 1024 are required"));
    }
    auto info = engine_->backend().ImportKey(req->name(), *parts, req->allow_pkcs1());
    if (!info.ok()) return ToGrpc(info.status());
    spdlog::info("imported key '{}' ({} bits, allow_pkcs1={})", req->name(), parts->bits, req->allow_pkcs1());
    ToProto(*info, out);
    auto put = engine_->keys().Put(*std::move(info));
    return put.ok() ? grpc::Status::OK : ToGrpc(put.status());
  });
}

grpc::ServerUnaryReactor* KeysServiceImpl::ListKeys(grpc::CallbackServerContext* ctx,
                                                    const v1::ListKeysRequest*, v1::ListKeysResponse* out) {
  return OffThread(ctx, [this, out]() -> grpc::Status {
    auto keys = engine_->backend().ListKeys();
    if (!keys.ok()) return ToGrpc(keys.status());
    for (const auto& k : *keys) ToProto(k, out->add_keys());
    return grpc::Status::OK;
  });
}

grpc::ServerUnaryReactor* KeysServiceImpl::GetPublicKey(grpc::CallbackServerContext* ctx,
                                                        const v1::GetPublicKeyRequest* req,
                                                        v1::GetPublicKeyResponse* out) {
  return OffThread(ctx, [this, req, out]() -> grpc::Status {
    auto entry = engine_->keys().Get(req->name());
    if (!entry.ok()) return ToGrpc(entry.status());
    const crypto::PublicKey& pub = (*entry)->public_key;
    switch (req->format()) {
      case v1::PEM_SPKI: out->set_public_key(pub.SpkiPem()); break;
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
  auto put = engine_->keys().Put(*std::move(info));
  return put.ok() ? grpc::Status::OK : ToGrpc(put.status());
}

grpc::ServerUnaryReactor* KeysServiceImpl::DisableKey(grpc::CallbackServerContext* ctx,
                                                      const v1::DisableKeyRequest* req, v1::KeyInfo* out) {
  return OffThread(ctx, [this, req, out] { return SetEnabled(req->name(), false, out); });
}

grpc::ServerUnaryReactor* KeysServiceImpl::EnableKey(grpc::CallbackServerContext* ctx,
                                                     const v1::EnableKeyRequest* req, v1::KeyInfo* out) {
  return OffThread(ctx, [this, req, out] { return SetEnabled(req->name(), true, out); });
}

}  // namespace hsmrewrap::service
