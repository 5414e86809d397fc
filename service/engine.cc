#include "service/engine.h"

#include <spdlog/spdlog.h>

#include <openssl/ec.h>

#include <set>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "crypto/apple_payload.h"
#include "crypto/cert_use.h"
#include "crypto/cms.h"
#include "crypto/cms_assemble.h"
#include "crypto/rsa.h"
#include "hsm/key_policy.h"
#include "proto/conversions.h"
#include "service/item_result.h"

namespace hsmrewrap::service {
namespace {

using crypto::RsaPadding;
using v1::ItemError;

absl::Span<const uint8_t> BytesOf(const std::string& s) {
  return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

const char* PaddingName(v1::Padding p) { return v1::Padding_Name(p).c_str(); }

// Paddings in the order ListKeys shows them.
constexpr RsaPadding kListedPaddings[] = {RsaPadding::kOaepSha256, RsaPadding::kOaepSha384,
                                          RsaPadding::kOaepSha512, RsaPadding::kOaepSha1,
                                          RsaPadding::kPkcs1};

// Everything about an item that can be checked without a key or the token
// (InvalidArgument with the reason). Sets *in_padding.
absl::Status CheckFields(const v1::RewrapItem& item, RsaPadding* in_padding) {
  if (item.id().empty()) {
    return absl::InvalidArgumentError("id is empty: every item needs an id unique in its batch");
  }
  if (item.key_name().empty()) {
    return absl::InvalidArgumentError("key_name is empty");
  }
  // Before the gate, the key lookup, the audit record or a metrics label sees the name.
  if (absl::Status st = hsm::CheckKeyName(item.key_name()); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("key_name: ", st.message()));
  }
  if (item.recipient().kind_case() == v1::Recipient::kServiceKey) {
    if (absl::Status st = hsm::CheckKeyName(item.recipient().service_key()); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("recipient service_key: ", st.message()));
    }
  }
  if (!v1::Padding_IsValid(item.padding())) {
    return absl::InvalidArgumentError(absl::StrCat("padding: unknown value ", item.padding()));
  }
  if (!proto_crypto::PaddingFromProto(item.padding(), in_padding)) {
    return absl::InvalidArgumentError(
        "padding is not set: name the padding the secret was sealed with");
  }
  if (!v1::OutputFormat_IsValid(item.format())) {
    return absl::InvalidArgumentError(absl::StrCat("format: unknown value ", item.format()));
  }
  if (item.ciphertext().empty()) {
    return absl::InvalidArgumentError("ciphertext is empty");
  }
  if (!v1::ContentCipher_IsValid(item.content_cipher())) {
    return absl::InvalidArgumentError(
        absl::StrCat("content_cipher: unknown value ", item.content_cipher()));
  }
  if (item.format() == v1::APPLE_ENCRYPTED_PAYLOAD) {
    if (item.recipient().kind_case() != v1::Recipient::kCertificate) {
      return absl::InvalidArgumentError(
          "format APPLE_ENCRYPTED_PAYLOAD needs a certificate recipient (the device identity "
          "certificate)");
    }
    if (item.pfx().empty()) {
      return absl::InvalidArgumentError(
          "format APPLE_ENCRYPTED_PAYLOAD needs the PKCS#12 file in pfx; it is empty");
    }
  } else if (!item.pfx().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("pfx is only used by format APPLE_ENCRYPTED_PAYLOAD; leave it empty for ",
                     v1::OutputFormat_Name(item.format())));
  }
  return absl::OkStatus();
}

}  // namespace

RewrapEngine::RewrapEngine(std::shared_ptr<hsm::TokenSet> tokens, Options options)
    : tokens_(std::move(tokens)),
      options_(options),
      pool_(std::make_unique<WorkerPool>(options.workers)) {}

RewrapEngine::RewrapEngine(std::shared_ptr<hsm::KeyBackend> backend, Options options)
    : RewrapEngine(hsm::TokenSet::Of(std::move(backend), "", options.allow_host_unpadding),
                   options) {}

RewrapEngine::~RewrapEngine() { pool_.reset(); }

std::vector<std::pair<RsaPadding, std::vector<hsm::Path>>> RewrapEngine::PathsFor(
    const hsm::KeyInfo& info, size_t token) {
  std::vector<std::pair<RsaPadding, std::vector<hsm::Path>>> out;
  const hsm::TokenSet::Member& m = tokens_->member(token);
  const bool can_wrap = !m.backend->WrapPaddings().empty();
  for (RsaPadding p : kListedPaddings) {
    if (p == RsaPadding::kPkcs1 && !info.allow_pkcs1) continue;
    out.emplace_back(p, hsm::PathsFor(info, p, can_wrap, m.allow_host_unpadding));
  }
  return out;
}

absl::Status RewrapEngine::Submit(std::shared_ptr<const v1::RewrapRequest> request, Done done,
                                  std::shared_ptr<ItemGate> gate, CallContext call) {
  const size_t n = static_cast<size_t>(request->items_size());
  if (n == 0) return absl::InvalidArgumentError("the batch is empty: send at least one item");
  if (n > options_.limits.max_batch_items) {
    return absl::InvalidArgumentError(absl::StrCat("the batch has ", n, " items; the limit is ",
                                                   options_.limits.max_batch_items,
                                                   " (max_batch_items): split it"));
  }
  size_t before = inflight_.fetch_add(n);
  if (before + n > options_.limits.max_inflight_items) {
    inflight_.fetch_sub(n);
    return absl::ResourceExhaustedError(
        absl::StrCat("the service has ", before, " items in flight and takes at most ",
                     options_.limits.max_inflight_items, " (max_inflight_items): retry later"));
  }

  // Ids that occur more than once: every occurrence fails, since the caller could not
  // tell their results apart by id.
  std::unordered_set<std::string> seen, dups;
  for (const auto& item : request->items()) {
    if (!item.id().empty() && !seen.insert(item.id()).second) dups.insert(item.id());
  }

  struct Batch {
    std::shared_ptr<const v1::RewrapRequest> request;
    v1::RewrapResponse response;
    std::atomic<size_t> remaining;
    Done done;
    std::shared_ptr<ItemGate> gate;
    CallContext call;
    std::vector<std::string> recipient_sha256;  // per item, for the gate's audit record
    std::vector<bool> duplicate;                // per item: its id occurs more than once
  };
  auto batch = std::make_shared<Batch>();
  batch->request = std::move(request);
  batch->remaining.store(n);
  batch->done = std::move(done);
  batch->gate = std::move(gate);
  batch->call = std::move(call);
  if (batch->gate) batch->recipient_sha256.resize(n);
  batch->duplicate.resize(n);
  for (size_t i = 0; i < n; ++i) {
    batch->response.add_results();
    batch->duplicate[i] = dups.count(batch->request->items(static_cast<int>(i)).id()) > 0;
  }

  // Every item, a malformed one too, runs on a worker and stays in flight until answered, and
  // the gate admits it (rate limits) before anything else: a caller cannot send work that
  // escapes the limits.
  for (size_t i = 0; i < n; ++i) {
    pool_->Post([this, batch, i]() {
      const v1::RewrapItem& item = batch->request->items(static_cast<int>(i));
      v1::RewrapResult* slot = batch->response.mutable_results(static_cast<int>(i));
      ItemGate* item_gate = batch->gate.get();
      const CallContext& ctx = batch->call;
      slot->set_id(item.id());
      if (stopping_.load()) {
        Fail(*slot, ItemError::UNAVAILABLE, "rewrapd is shutting down; retry elsewhere");
      } else if (std::chrono::system_clock::now() > ctx.deadline) {
        Fail(*slot, ItemError::DEADLINE_EXCEEDED,
             "the call's deadline passed before this item was started");
      } else if (ctx.cancelled && ctx.cancelled()) {
        Fail(*slot, ItemError::CANCELLED, "the call was cancelled before this item was started");
      } else if (batch->duplicate[i]) {
        absl::Status admitted = item_gate ? item_gate->Admit() : absl::OkStatus();
        if (!admitted.ok()) {
          FailGate(*slot, admitted);
        } else {  // the id is in the result already: the message does not repeat it
          Fail(*slot, ItemError::INVALID_ITEM,
               "this id occurs more than once in the batch; ids must be unique");
        }
      } else {
        *slot = ProcessItem(item, item_gate, item_gate ? &batch->recipient_sha256[i] : nullptr,
                            &ctx);
      }
      if (item_gate) item_gate->ItemDone(*slot);
      inflight_.fetch_sub(1);
      if (batch->remaining.fetch_sub(1) == 1) {
        if (batch->gate)
          batch->gate->BatchDone(*batch->request, &batch->response, batch->recipient_sha256);
        batch->done(std::move(batch->response));
      }
    });
  }
  return absl::OkStatus();
}

std::string RewrapEngine::KeyLabel(const std::string& key_name) const {
  absl::MutexLock l(&known_keys_mu_);
  return known_keys_.contains(key_name) ? key_name : "other";
}

void RewrapEngine::NoteKnownKey(const std::string& name) {
  absl::MutexLock l(&known_keys_mu_);
  known_keys_.insert(name);
}

bool RewrapEngine::ResolveRecipient(const v1::RewrapItem& item, ItemGate* gate,
                                    std::string* recipient_sha256, Recipient& out,
                                    v1::RewrapResult& r) {
  out.out_padding = proto_crypto::BarePadding(item.format());
  out.bare = proto_crypto::IsBareFormat(item.format());
  const auto& rcp = item.recipient();
  // A certificate or public key recipient: parsed (or found in the cache), fingerprinted for
  // the audit record, a certificate checked for encryption use, then checked by the gate.
  auto parsed = [&](bool is_certificate, const std::string& bytes, const char* unparsable) -> bool {
    auto p = recipients_.Get(is_certificate, BytesOf(bytes));
    if (!p.ok()) {
      Fail(r, ItemError::INVALID_ITEM, absl::StrCat(unparsable, p.status().message()));
      return false;
    }
    if (recipient_sha256) {
      *recipient_sha256 = is_certificate ? (*p)->cert->Sha256Hex() : (*p)->key->Sha256Hex();
    }
    // A certificate must be fit for encryption (not a CA; keyUsage, when present, allows
    // key transport / key agreement): a property of the certificate, so INVALID_ITEM, with
    // or without a policy, before the gate looks at it.
    if (is_certificate) {
      if (absl::Status st = crypto::CheckEncryptionUse(*(*p)->cert); !st.ok()) {
        Fail(r, ItemError::INVALID_ITEM, std::string(st.message()));
        return false;
      }
    }
    if (gate) {
      if (absl::Status st = gate->CheckRecipient(rcp, p->get()); !st.ok()) {
        FailGate(r, st);
        return false;
      }
    }
    out.key = (*p)->key;
    out.cert = (*p)->cert;
    return true;
  };
  switch (rcp.kind_case()) {
    case v1::Recipient::kCertificate:
      if (!parsed(true, rcp.certificate(), "recipient certificate does not parse: ")) return false;
      break;
    case v1::Recipient::kPublicKey:
      if (!parsed(false, rcp.public_key(),
                  "recipient public_key does not parse as a SubjectPublicKeyInfo: ")) {
        return false;
      }
      break;
    case v1::Recipient::kServiceKey: {
      if (item.format() == v1::CMS_ENVELOPED_PKCS1) {
        Fail(r, ItemError::INVALID_ITEM,
             "format CMS_ENVELOPED_PKCS1 does not apply to a service_key recipient; use a bare "
             "RSA_* format");
        return false;
      }
      if (!out.bare) out.out_padding = RsaPadding::kOaepSha512;  // Intune's default padding
      out.bare = true;
      auto t = tokens_->Resolve(rcp.service_key());
      if (!t.ok()) {
        if (t.status().code() == absl::StatusCode::kNotFound) {
          Fail(r, ItemError::KEY_NOT_FOUND,
               absl::StrCat("recipient service key '", rcp.service_key(), "' not found"));
        } else {
          FailFromStatus(r, t.status(), rcp.service_key());
        }
        return false;
      }
      if (!(*t)->info.enabled) {
        Fail(r, ItemError::KEY_DISABLED,
             absl::StrCat("recipient service key '", rcp.service_key(), "' is disabled"));
        return false;
      }
      out.key = (*t)->public_key;
      break;
    }
    default:
      Fail(r, ItemError::INVALID_ITEM,
           "recipient is not set: give a certificate, public_key or service_key");
      return false;
  }
  if (out.key->is_rsa()) {
    if (out.key->bits() < 2048) {
      Fail(r, ItemError::INVALID_ITEM,
           absl::StrCat("recipient RSA key has ", out.key->bits(),
                        " bits; at least 2048 are required"));
      return false;
    }
  } else if (out.bare) {
    Fail(r, ItemError::INVALID_ITEM,
         absl::StrCat("recipient is not an RSA key; format ", v1::OutputFormat_Name(item.format()),
                      " needs one (use CMS_ENVELOPED for EC devices)"));
    return false;
  } else if (!out.key->is_ec()) {
    Fail(r, ItemError::INVALID_ITEM, "recipient key is neither RSA nor EC");
    return false;
  } else if (item.format() == v1::CMS_ENVELOPED_PKCS1) {
    Fail(r, ItemError::INVALID_ITEM,
         "format CMS_ENVELOPED_PKCS1 is RSA PKCS#1 v1.5 key transport, which does not apply to "
         "an EC recipient key; use CMS_ENVELOPED (ECDH key agreement with AES key wrap)");
    return false;
  } else if (item.format() == v1::APPLE_ENCRYPTED_PAYLOAD) {
    Fail(r, ItemError::UNSUPPORTED,
         "APPLE_ENCRYPTED_PAYLOAD is not produced for EC device keys: Apple's CMS decoder takes "
         "key agreement only in its own scheme (dhSinglePass-stdDH-sha1kdf with a CBC-wrapped "
         "content key), not RFC 5753 AES key wrap; give the device an RSA identity");
    return false;
  } else if (item.content_cipher() == v1::DES_EDE3_CBC) {
    Fail(r, ItemError::INVALID_ITEM,
         "content_cipher DES_EDE3_CBC is for RSA recipients (old .NET Framework clients); EC "
         "recipients get ECDH key agreement with AES key wrap, which needs AES_256_CBC or "
         "AES_128_CBC");
    return false;
  }
  // recipient_key_id names a bare public key recipient in the RecipientInfo.
  if (!item.recipient_key_id().empty()) {
    if (rcp.kind_case() != v1::Recipient::kPublicKey || out.bare ||
        item.format() == v1::APPLE_ENCRYPTED_PAYLOAD) {
      Fail(r, ItemError::INVALID_ITEM,
           "recipient_key_id applies to a public_key recipient of a CMS format only (a "
           "certificate recipient is named by its issuer and serial number)");
      return false;
    }
    if (item.recipient_key_id().size() > 64) {
      Fail(r, ItemError::INVALID_ITEM,
           absl::StrCat("recipient_key_id is ", item.recipient_key_id().size(),
                        " bytes; at most 64"));
      return false;
    }
  }
  return true;
}

v1::RewrapResult RewrapEngine::ProcessItem(const v1::RewrapItem& item, ItemGate* gate,
                                           std::string* recipient_sha256,
                                           const CallContext* call,
                                           std::optional<size_t> only_token) {
  v1::RewrapResult r;
  r.set_id(item.id());
  if (gate) {  // rate limits and a failed audit log stop an item before anything else
    if (absl::Status st = gate->Admit(); !st.ok()) {
      FailGate(r, st);
      return r;
    }
  }

  // 1. Everything that can be checked without the token.
  RsaPadding in_padding;
  if (absl::Status st = CheckFields(item, &in_padding); !st.ok()) {
    Fail(r, ItemError::INVALID_ITEM, std::string(st.message()));
    return r;
  }

  // The caller's rights to the key and a service_key recipient, before anything says whether
  // they exist.
  if (gate) {
    absl::Status st = gate->CheckKey(item.key_name());
    if (st.ok() && item.recipient().kind_case() == v1::Recipient::kServiceKey) {
      if (recipient_sha256) *recipient_sha256 = "service_key:" + item.recipient().service_key();
      st = gate->CheckRecipient(item.recipient(), nullptr);
    }
    if (!st.ok()) {
      FailGate(r, st);
      return r;
    }
  }

  Recipient rcpt;
  if (!ResolveRecipient(item, gate, recipient_sha256, rcpt, r)) return r;

  // 2. The token: the least loaded one that serves the key. An item that fails there
  // retryably (the token lost, no session free, a call abandoned) or that this token cannot
  // serve (key absent or refused, padding or path not available) runs on the next token,
  // inside this call and before its deadline. Never after DECRYPT_FAILED or any other
  // outcome that is final for the item: the same ciphertext is not tried on N tokens.
  std::vector<bool> tried(tokens_->size(), only_token.has_value());
  if (only_token) tried[*only_token] = false;
  v1::RewrapResult best;
  int best_rank = -1;
  while (auto m = tokens_->Next(tried)) {
    tried[*m] = true;
    v1::RewrapResult attempt;
    attempt.set_id(item.id());
    Attempt a;
    {
      hsm::TokenSet::InFlight busy(*tokens_, *m);
      a = RunOn(*m, item, rcpt, in_padding, gate, attempt);
    }
    attempt.set_token(tokens_->member(*m).name);
    if (a.final) {
      tokens_->stats(*m).items++;
      return attempt;
    }
    if (a.rank == 3) tokens_->stats(*m).failovers++;  // it failed here retryably
    spdlog::debug("item {}: token '{}' could not serve it ({}); trying another token", item.id(),
                  tokens_->member(*m).name, attempt.error().message());
    if (a.rank > best_rank) {
      best = std::move(attempt);
      best_rank = a.rank;
    }
    if (call && (std::chrono::system_clock::now() > call->deadline ||
                 (call->cancelled && call->cancelled()))) {
      break;
    }
  }
  return best;
}

RewrapEngine::Attempt RewrapEngine::RunOn(size_t m, const v1::RewrapItem& item,
                                          const Recipient& rcpt, RsaPadding in_padding,
                                          ItemGate* gate, v1::RewrapResult& r) {
  const hsm::TokenSet::Member& member = tokens_->member(m);
  hsm::KeyBackend& backend = *member.backend;
  // Not served here, but maybe by another token: the rank says what the caller is told
  // when none serves it.
  auto elsewhere = [](int rank) { return Attempt{false, rank}; };
  constexpr int kNotHere = 1, kRefusedHere = 2, kUnavailableHere = 3;
  // Outcomes of a token operation: retryable ones, and refusals other than the secret being
  // too long for the recipient, may go better on another token.
  auto after_op = [&](hsm::Outcome outcome, const absl::Status& s) -> Attempt {
    FailFromOp(r, outcome, s, item.key_name());
    if (outcome == hsm::Outcome::kRetryable) return elsewhere(kUnavailableHere);
    if (outcome == hsm::Outcome::kRefused && s.code() != absl::StatusCode::kInvalidArgument &&
        s.code() != absl::StatusCode::kInternal)
      return elsewhere(kRefusedHere);
    return Attempt{};
  };

  // The service key on this token: resolved once, for every step below.
  auto key_or = tokens_->ResolveOn(m, item.key_name());
  if (!key_or.ok()) {
    const absl::Status& st = key_or.status();
    if (st.code() == absl::StatusCode::kNotFound) {
      Fail(r, ItemError::KEY_NOT_FOUND, absl::StrCat("key '", item.key_name(), "' not found"));
      return elsewhere(kNotHere);
    }
    if (st.code() == absl::StatusCode::kFailedPrecondition) {
      // A key rewrapd refuses to serve (unsafe attributes, duplicate label, a different
      // public key from the other tokens'): says why.
      Fail(r, ItemError::UNSUPPORTED, std::string(st.message()));
      return elsewhere(kRefusedHere);
    }
    FailFromStatus(r, st, item.key_name());
    if (hsm::OutcomeOfStatus(st) == hsm::Outcome::kRetryable ||
        st.code() == absl::StatusCode::kPermissionDenied) {
      // A token that is down and did not hold the key when it last listed its keys does not
      // make an unknown key look unavailable.
      return elsewhere(tokens_->KnownAbsent(m, item.key_name()) ? 0 : kUnavailableHere);
    }
    return elsewhere(kRefusedHere);
  }
  const hsm::KeyRefPtr& key = *key_or;
  NoteKnownKey(item.key_name());
  const absl::Status use = hsm::CheckKeyUse(key->info, in_padding);
  if (!key->info.enabled) {
    Fail(r, ItemError::KEY_DISABLED, std::string(use.message()));
    return Attempt{};
  }
  if (item.ciphertext().size() != key->modulus_len) {
    Fail(r, ItemError::INVALID_ITEM,
         absl::StrCat("ciphertext is ", item.ciphertext().size(), " bytes; key '", item.key_name(),
                      "' needs exactly ", key->modulus_len, " (its modulus length)"));
    return Attempt{};
  }
  if (!use.ok()) {
    Fail(r, ItemError::UNSUPPORTED, std::string(use.message()));
    return Attempt{};
  }

  // 3. The best path this token offers for the item.
  crypto::CmsOptions cms;
  std::string missing;
  const bool can_build = CanBuildInToken(m, item, rcpt, &cms, &missing);
  const std::vector<hsm::Path> paths =
      hsm::PathsFor(key->info, in_padding, can_build, member.allow_host_unpadding);
  if (paths.empty()) {
    Fail(r, ItemError::UNSUPPORTED,
         absl::StrCat("key '", item.key_name(), "' on this token cannot decrypt ",
                      PaddingName(item.padding()),
                      member.allow_host_unpadding
                          ? " (the token refuses it and raw RSA)"
                          : " natively, and host unpadding is not allowed (allow_host_unpadding)"));
    return elsewhere(kRefusedHere);
  }
  // require_in_token, globally or for this key (asked only where it matters).
  auto required = [&] {
    return options_.require_in_token || (gate && gate->RequireInToken(item.key_name()));
  };
  if (paths.front() != hsm::Path::kInToken && required()) {
    if (!key->info.caps.unwrap.count(in_padding)) {  // the input side is missing too (or only)
      const std::string input =
          absl::StrCat("token '", backend.TokenLabel(), "' cannot C_UnwrapKey ",
                       PaddingName(item.padding()), " sealed secrets with key '", item.key_name(),
                       "'");
      missing = can_build ? input : absl::StrCat(input, "; and ", missing);
    }
    Fail(r, ItemError::UNSUPPORTED,
         absl::StrCat("key '", item.key_name(), "' requires the IN_TOKEN path (require_in_token) ",
                      "and this item cannot take it: ", missing));
    return elsewhere(kRefusedHere);
  }
  const auto ct = BytesOf(item.ciphertext());
  size_t next = 0;
  if (paths.front() == hsm::Path::kInToken) {
    switch (RewrapInToken(backend, item, rcpt, key, in_padding, cms, r)) {
      case InTokenEnd::kDone:
        return Attempt{};
      case InTokenEnd::kRetry:
        return elsewhere(kUnavailableHere);
      case InTokenEnd::kFallBack:
        break;
    }
    // The unwrap failed where the token caps its secrets' length: the item may be a valid
    // secret too long to unwrap. It runs on the next path, where the decryption decides;
    // with require_in_token (or no other path) it fails UNSUPPORTED, never DECRYPT_FAILED.
    next = 1;
    if (paths.size() < 2 || required()) {
      Fail(r, ItemError::UNSUPPORTED,
           absl::StrCat("token '", backend.TokenLabel(), "' does not unwrap the longest ",
                        PaddingName(item.padding()), " secrets key '", item.key_name(),
                        "' can carry: this one is longer than it takes or does not decrypt, "
                        "and ", paths.size() < 2 ? "no other path is available"
                                                 : "require_in_token forbids the fallback"));
      return elsewhere(kRefusedHere);
    }
  }
  const hsm::Path path = paths[next];
  auto plain = backend.Decrypt(key, in_padding, ct, path);
  if (!plain.ok()) return after_op(plain.outcome(), plain.status());

  // 4. Re-encrypt on the host; `plain` is wiped when it goes out of scope.
  EncryptOnHost(item, rcpt, *plain, path, r);
  return Attempt{};
}

bool RewrapEngine::CanBuildInToken(size_t m, const v1::RewrapItem& item, const Recipient& rcpt,
                                   crypto::CmsOptions* cms, std::string* missing) {
  hsm::KeyBackend& backend = *tokens_->member(m).backend;
  auto token = [&backend] { return absl::StrCat("token '", backend.TokenLabel(), "'"); };
  if (item.format() == v1::APPLE_ENCRYPTED_PAYLOAD) {
    *missing = "APPLE_ENCRYPTED_PAYLOAD is never built in the token (the password sits inside a "
               "plist that the host writes)";
    return false;
  }
  if (rcpt.bare) {
    if (backend.WrapPaddings().count(rcpt.out_padding)) return true;
    *missing = absl::StrCat(token(), " cannot C_WrapKey to a device key with the padding of ",
                            v1::OutputFormat_Name(item.format()), " (learned at start-up)");
    return false;
  }
  cms->key_transport = proto_crypto::KeyTransportFor(item.format());
  cms->cipher = proto_crypto::ContentCipherFromProto(item.content_cipher());
  if (!options_.in_token_cms) {
    *missing = "in-token CMS is turned off (in_token_cms: false)";
    return false;
  }
  if (rcpt.key->is_ec()) {
    auto point = crypto::EcPointOf(*rcpt.key);
    const int curve = point.ok() ? point->curve_nid : 0;
    if (backend.CmsInTokenEc().count({curve, cms->cipher})) return true;
    const char* name = curve ? EC_curve_nid2nist(curve) : nullptr;
    *missing = absl::StrCat(
        token(), " cannot build CMS to an EC ", name ? name : "", " device key with ",
        hsm::CmsContentCipherName(cms->cipher),
        " in the token: that needs C_GenerateKeyPair (CKM_EC_KEY_PAIR_GEN) on the curve, "
        "C_DeriveKey (CKM_ECDH1_DERIVE with CKD_SHA1_KDF), C_WrapKey with CKM_AES_KEY_WRAP and "
        "with CKM_AES_CBC_PAD (AES content only), and they did not all work when probed at "
        "start-up");
    return false;
  }
  if (backend.CmsInToken().count({cms->key_transport, cms->cipher})) return true;
  const bool des3 = cms->cipher == crypto::CmsContentCipher::kDes3Cbc;
  *missing = absl::StrCat(
      token(), " cannot build ", v1::OutputFormat_Name(item.format()), " with ",
      hsm::CmsContentCipherName(cms->cipher), " in the token: that needs C_GenerateKey (",
      des3 ? "CKM_DES3_KEY_GEN" : "CKM_AES_KEY_GEN", "), C_WrapKey with ",
      des3 ? "CKM_DES3_CBC_PAD" : "CKM_AES_CBC_PAD", " and C_WrapKey with ",
      hsm::CmsKeyTransportName(cms->key_transport),
      " to an RSA key, and they did not all work when probed at start-up");
  return false;
}

RewrapEngine::InTokenEnd RewrapEngine::RewrapInToken(hsm::KeyBackend& backend,
                                                     const v1::RewrapItem& item,
                                                     const Recipient& rcpt,
                                                     const hsm::KeyRefPtr& key,
                                                     RsaPadding in_padding,
                                                     const crypto::CmsOptions& cms,
                                                     v1::RewrapResult& r) {
  const auto ct = BytesOf(item.ciphertext());
  // A failed unwrap is final unless the token caps the unwrapped secret's length below
  // what this key and padding carry (KeyCapabilities::unwrap_short_only).
  const bool maybe_too_long = key->info.caps.unwrap_short_only.count(in_padding) > 0;
  absl::StatusOr<crypto::Bytes> out;
  if (rcpt.bare) {
    auto wrapped = backend.RewrapInToken(key, in_padding, ct, *rcpt.key, rcpt.out_padding);
    if (!wrapped.ok()) {
      if (maybe_too_long && wrapped.outcome() == hsm::Outcome::kDecryptFailed)
        return InTokenEnd::kFallBack;
      FailFromOp(r, wrapped, item.key_name());
      return wrapped.outcome() == hsm::Outcome::kRetryable ? InTokenEnd::kRetry : InTokenEnd::kDone;
    }
    out = *std::move(wrapped);
  } else {
    auto parts = backend.EnvelopeInToken(key, in_padding, ct, *rcpt.key, cms);
    if (!parts.ok()) {
      if (maybe_too_long && parts.outcome() == hsm::Outcome::kDecryptFailed)
        return InTokenEnd::kFallBack;
      FailFromOp(r, parts, item.key_name());
      return parts.outcome() == hsm::Outcome::kRetryable ? InTokenEnd::kRetry : InTokenEnd::kDone;
    }
    const auto key_id = BytesOf(item.recipient_key_id());
    if (rcpt.key->is_ec()) {
      out = rcpt.cert
                ? crypto::CmsAssembleKeyAgreeToCertificate(*rcpt.cert, cms.cipher, *parts)
                : crypto::CmsAssembleKeyAgreeToPublicKey(*rcpt.key, cms.cipher, *parts, key_id);
    } else {
      out = rcpt.cert ? crypto::CmsAssembleToCertificate(*rcpt.cert, cms, *parts)
                      : crypto::CmsAssembleToPublicKey(*rcpt.key, cms, *parts, key_id);
    }
    if (!out.ok()) {
      spdlog::warn("item {}: assembling the in-token CMS failed: {}", item.id(),
                   out.status().ToString());
      Fail(r, ItemError::INTERNAL, "encrypting to the recipient failed");
      return InTokenEnd::kDone;
    }
  }
  r.set_ciphertext(out->data(), out->size());
  r.set_path(v1::IN_TOKEN);
  return InTokenEnd::kDone;
}

std::vector<v1::InTokenOutput> RewrapEngine::InTokenOutputs(const hsm::KeyInfo& info,
                                                            size_t token) {
  hsm::KeyBackend& backend = *tokens_->member(token).backend;
  std::vector<v1::InTokenOutput> out;
  bool unwraps = false;
  for (RsaPadding p : info.caps.unwrap) unwraps |= p != RsaPadding::kPkcs1 || info.allow_pkcs1;
  if (!unwraps) return out;
  const hsm::CmsFormSet forms = options_.in_token_cms ? backend.CmsInToken() : hsm::CmsFormSet{};
  for (v1::OutputFormat f : {v1::CMS_ENVELOPED, v1::CMS_ENVELOPED_PKCS1}) {
    v1::InTokenOutput o;
    o.set_format(f);
    for (v1::ContentCipher c : {v1::AES_256_CBC, v1::AES_128_CBC, v1::DES_EDE3_CBC}) {
      if (forms.count({proto_crypto::KeyTransportFor(f), proto_crypto::ContentCipherFromProto(c)})) {
        o.add_content_ciphers(c);
      }
    }
    if (f == v1::CMS_ENVELOPED) {
      const hsm::EcCmsFormSet ec =
          options_.in_token_cms ? backend.CmsInTokenEc() : hsm::EcCmsFormSet{};
      std::set<std::string> curves;
      for (const auto& form : ec) curves.insert(EC_curve_nid2nist(form.first));
      for (const auto& c : curves) o.add_ec_curves(c);
    }
    if (o.content_ciphers_size() > 0 || o.ec_curves_size() > 0) out.push_back(std::move(o));
  }
  const std::set<RsaPadding> wraps = backend.WrapPaddings();
  for (v1::OutputFormat f : {v1::RSA_OAEP_SHA256, v1::RSA_OAEP_SHA1, v1::RSA_OAEP_SHA384,
                             v1::RSA_OAEP_SHA512, v1::RSA_PKCS1}) {
    if (!wraps.count(proto_crypto::BarePadding(f))) continue;
    v1::InTokenOutput o;
    o.set_format(f);
    out.push_back(std::move(o));
  }
  return out;
}

void RewrapEngine::EncryptOnHost(const v1::RewrapItem& item, const Recipient& rcpt,
                                 const crypto::SecretBytes& plain, hsm::Path path,
                                 v1::RewrapResult& r) {
  const bool apple = item.format() == v1::APPLE_ENCRYPTED_PAYLOAD;
  absl::StatusOr<crypto::Bytes> out;
  if (rcpt.bare) {
    const size_t max =
        crypto::MaxPlaintextLen(rcpt.out_padding, static_cast<size_t>((rcpt.key->bits() + 7) / 8));
    if (plain.size() > max) {
      Fail(r, ItemError::INVALID_ITEM, hsm::kSecretTooLongText);
      return;
    }
    out = crypto::RsaEncrypt(*rcpt.key, rcpt.out_padding, crypto::Reveal(plain));
  } else {
    crypto::CmsOptions opts;
    // Apple payloads use PKCS#1 v1.5 key transport (rsaEncryption), as MDM servers' PKCS#7
    // envelopes for iOS/macOS do; CMS_ENVELOPED uses OAEP-SHA256.
    opts.key_transport = proto_crypto::KeyTransportFor(item.format());
    opts.cipher = proto_crypto::ContentCipherFromProto(item.content_cipher());
    if (apple) {
      auto payload = crypto::AppleEncryptedPkcs12Payload(*rcpt.cert, BytesOf(item.pfx()),
                                                         crypto::Reveal(plain), opts);
      if (!payload.ok() && payload.status().code() == absl::StatusCode::kInvalidArgument) {
        // Only what BuildPkcs12PayloadPlist refuses (a control character in the password);
        // the message names no byte of it.
        Fail(r, ItemError::INVALID_ITEM, std::string(payload.status().message()));
        return;
      }
      out = std::move(payload);
    } else {
      out = rcpt.cert ? crypto::CmsEnvelopeToCertificate(*rcpt.cert, crypto::Reveal(plain), opts)
                      : crypto::CmsEnvelopeToPublicKey(*rcpt.key, crypto::Reveal(plain), opts,
                                                       BytesOf(item.recipient_key_id()));
    }
  }
  if (!out.ok()) {
    spdlog::warn("item {}: encrypting to the recipient failed: {}", item.id(),
                 out.status().ToString());
    Fail(r, ItemError::INTERNAL, "encrypting to the recipient failed");
    return;
  }
  r.set_ciphertext(out->data(), out->size());
  r.set_path(PathToProto(path));
}

}  // namespace hsmrewrap::service
