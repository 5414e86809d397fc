#include "service/engine.h"

#include <openssl/evp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "crypto/apple_payload.h"
#include "crypto/cms.h"
#include "crypto/rsa.h"

namespace hsmrewrap::service {
namespace {

using crypto::RsaPadding;
using v1::ItemError;

void Fail(v1::RewrapResult& r, ItemError::Code code, std::string message) {
  r.clear_ciphertext();
  r.set_path(v1::PATH_UNSPECIFIED);
  r.mutable_error()->set_code(code);
  r.mutable_error()->set_message(std::move(message));
}

// A gate's refusal: the status code picks the item code; the message is the gate's.
void FailGate(v1::RewrapResult& r, const absl::Status& s) {
  ItemError::Code code = ItemError::PERMISSION_DENIED;
  if (s.code() == absl::StatusCode::kResourceExhausted) code = ItemError::RESOURCE_EXHAUSTED;
  if (s.code() == absl::StatusCode::kUnavailable) code = ItemError::UNAVAILABLE;
  Fail(r, code, std::string(s.message()));
}

void FailDecrypt(v1::RewrapResult& r) {
  Fail(r, ItemError::DECRYPT_FAILED, hsm::kDecryptFailedText);
}

// A failed call that did not see the ciphertext (key lookups) or a refused/retryable token
// operation: the status code picks the item code. Never DECRYPT_FAILED: only the token's
// answer about a ciphertext is that (FailFromOp).
void FailFromStatus(v1::RewrapResult& r, const absl::Status& s, const std::string& key) {
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kPermissionDenied:  // the token refused the PIN: unavailable here
      Fail(r, ItemError::UNAVAILABLE, absl::StrCat("token unavailable: ", s.message()));
      return;
    case absl::StatusCode::kResourceExhausted:
      Fail(r, ItemError::RESOURCE_EXHAUSTED, std::string(s.message()));
      return;
    case absl::StatusCode::kDeadlineExceeded:
      Fail(r, ItemError::DEADLINE_EXCEEDED, std::string(s.message()));
      return;
    case absl::StatusCode::kNotFound:
      Fail(r, ItemError::KEY_NOT_FOUND, absl::StrCat("key '", key, "' not found"));
      return;
    case absl::StatusCode::kFailedPrecondition:  // a key rewrapd refuses to serve, says why
    case absl::StatusCode::kUnimplemented:
      Fail(r, ItemError::UNSUPPORTED, std::string(s.message()));
      return;
    case absl::StatusCode::kInvalidArgument:
      Fail(r, ItemError::INVALID_ITEM, std::string(s.message()));
      return;
    default:
      spdlog::warn("item {}: key {}: token error: {}", r.id(), key, s.ToString());
      Fail(r, ItemError::INTERNAL, "the token failed the operation");
      return;
  }
}

// The typed outcome of a rewrap operation (hsm::OpResult).
template <typename T>
void FailFromOp(v1::RewrapResult& r, const hsm::OpResult<T>& op, const std::string& key) {
  switch (op.outcome()) {
    case hsm::Outcome::kDecryptFailed:
      FailDecrypt(r);
      return;
    case hsm::Outcome::kRetryable:
      if (hsm::OutcomeOfStatus(op.status()) != hsm::Outcome::kRetryable) {  // keep it retryable
        Fail(r, ItemError::UNAVAILABLE, absl::StrCat("token unavailable: ", op.status().message()));
        return;
      }
      FailFromStatus(r, op.status(), key);
      return;
    case hsm::Outcome::kRefused:
      FailFromStatus(r, op.status(), key);
      return;
    case hsm::Outcome::kOk:
      break;
  }
  Fail(r, ItemError::INTERNAL, "internal error: a successful operation reported as failed");
}

const char* PaddingName(v1::Padding p) { return v1::Padding_Name(p).c_str(); }

bool IsBareFormat(v1::OutputFormat f) {
  return f != v1::CMS_ENVELOPED && f != v1::CMS_ENVELOPED_PKCS1 && f != v1::APPLE_ENCRYPTED_PAYLOAD;
}

crypto::CmsContentCipher ContentCipherFromProto(v1::ContentCipher c) {
  switch (c) {
    case v1::AES_128_CBC:
      return crypto::CmsContentCipher::kAes128Cbc;
    case v1::DES_EDE3_CBC:
      return crypto::CmsContentCipher::kDes3Cbc;
    case v1::AES_256_CBC:
    default:
      return crypto::CmsContentCipher::kAes256Cbc;
  }
}

// The padding of a bare RSA output format.
RsaPadding BarePadding(v1::OutputFormat f) {
  switch (f) {
    case v1::RSA_OAEP_SHA1:
      return RsaPadding::kOaepSha1;
    case v1::RSA_OAEP_SHA384:
      return RsaPadding::kOaepSha384;
    case v1::RSA_OAEP_SHA512:
      return RsaPadding::kOaepSha512;
    case v1::RSA_PKCS1:
      return RsaPadding::kPkcs1;
    case v1::RSA_OAEP_SHA256:
    default:
      return RsaPadding::kOaepSha256;
  }
}

constexpr RsaPadding kAllPaddings[] = {RsaPadding::kOaepSha256, RsaPadding::kOaepSha384,
                                       RsaPadding::kOaepSha512, RsaPadding::kOaepSha1,
                                       RsaPadding::kPkcs1};

}  // namespace

bool PaddingFromProto(v1::Padding p, RsaPadding* out) {
  switch (p) {
    case v1::OAEP_SHA256:
      *out = RsaPadding::kOaepSha256;
      return true;
    case v1::OAEP_SHA384:
      *out = RsaPadding::kOaepSha384;
      return true;
    case v1::OAEP_SHA512:
      *out = RsaPadding::kOaepSha512;
      return true;
    case v1::OAEP_SHA1:
      *out = RsaPadding::kOaepSha1;
      return true;
    case v1::PKCS1:
      *out = RsaPadding::kPkcs1;
      return true;
    default:
      return false;
  }
}

v1::Padding PaddingToProto(RsaPadding p) {
  switch (p) {
    case RsaPadding::kOaepSha256:
      return v1::OAEP_SHA256;
    case RsaPadding::kOaepSha384:
      return v1::OAEP_SHA384;
    case RsaPadding::kOaepSha512:
      return v1::OAEP_SHA512;
    case RsaPadding::kOaepSha1:
      return v1::OAEP_SHA1;
    case RsaPadding::kPkcs1:
      return v1::PKCS1;
  }
  return v1::PADDING_UNSPECIFIED;
}

v1::Path PathToProto(hsm::Path p) {
  switch (p) {
    case hsm::Path::kInToken:
      return v1::IN_TOKEN;
    case hsm::Path::kTokenDecrypt:
      return v1::TOKEN_DECRYPT;
    case hsm::Path::kHostUnpadding:
      return v1::HOST_UNPADDING;
  }
  return v1::PATH_UNSPECIFIED;
}

// ---------------------------------------------------------------------------------------
// KeyDirectory

absl::StatusOr<std::shared_ptr<const KeyEntry>> KeyDirectory::Get(const std::string& name) {
  std::shared_ptr<const KeyEntry> cached;
  {
    std::shared_lock<std::shared_mutex> l(mu_);
    auto it = keys_.find(name);
    if (it != keys_.end()) cached = it->second;
  }
  const auto now = std::chrono::steady_clock::now();
  if (cached && now - cached->fetched < kRefresh) return cached;
  auto info = backend_->GetKey(name);
  if (!info.ok()) {
    if (info.status().code() == absl::StatusCode::kNotFound) Forget(name);
    return info.status();
  }
  if (cached && info->spki_der == cached->info.spki_der) {  // same key: no re-parse
    auto entry = std::make_shared<KeyEntry>(*cached);
    entry->info = *std::move(info);
    entry->fetched = now;
    std::unique_lock<std::shared_mutex> l(mu_);
    keys_[name] = entry;
    return std::shared_ptr<const KeyEntry>(entry);
  }
  return Put(*std::move(info));
}

absl::StatusOr<std::shared_ptr<const KeyEntry>> KeyDirectory::Put(hsm::KeyInfo info) {
  auto pub = crypto::PublicKey::FromSpki(info.spki_der);
  if (!pub.ok()) {
    return absl::InternalError(
        absl::StrCat("key '", info.name, "': public key does not parse: ", pub.status().message()));
  }
  auto entry = std::make_shared<KeyEntry>(
      KeyEntry{std::move(info), *std::move(pub), 0, std::chrono::steady_clock::now()});
  entry->modulus_len = static_cast<size_t>((entry->public_key.bits() + 7) / 8);
  std::unique_lock<std::shared_mutex> l(mu_);
  keys_[entry->info.name] = entry;
  return std::shared_ptr<const KeyEntry>(entry);
}

void KeyDirectory::Forget(const std::string& name) {
  std::unique_lock<std::shared_mutex> l(mu_);
  keys_.erase(name);
}

// ---------------------------------------------------------------------------------------
// RecipientCache

absl::StatusOr<std::shared_ptr<const RecipientCache::Parsed>> RecipientCache::Get(
    bool is_certificate, absl::Span<const uint8_t> bytes) {
  // The key: kind byte + SHA-256 of the bytes (the digest is fetched once: an EVP fetch per
  // call would take OpenSSL's global locks, which is what this cache avoids).
  static EVP_MD* const sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  std::string key(1 + 32, is_certificate ? 'c' : 'k');
  unsigned int len = 0;
  if (sha256 == nullptr ||
      EVP_Digest(bytes.data(), bytes.size(), reinterpret_cast<unsigned char*>(&key[1]), &len,
                 sha256, nullptr) != 1) {
    key.clear();  // no digest: parse without caching
  }
  if (!key.empty()) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = entries_.find(key);
    if (it != entries_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.second);
      return it->second.first;
    }
  }
  auto parsed = std::make_shared<Parsed>();
  if (is_certificate) {
    auto c = crypto::Certificate::Parse(bytes);
    if (!c.ok()) return c.status();
    parsed->key = c->public_key();
    parsed->cert = *std::move(c);
  } else {
    auto k = crypto::PublicKey::FromSpki(bytes);
    if (!k.ok()) return k.status();
    parsed->key = *std::move(k);
  }
  if (key.empty() || capacity_ == 0) return std::shared_ptr<const Parsed>(parsed);
  std::lock_guard<std::mutex> l(mu_);
  auto it = entries_.find(key);
  if (it != entries_.end()) return it->second.first;  // another thread parsed it meanwhile
  lru_.push_front(key);
  entries_.emplace(key, std::make_pair(parsed, lru_.begin()));
  while (entries_.size() > capacity_) {
    entries_.erase(lru_.back());
    lru_.pop_back();
  }
  return std::shared_ptr<const Parsed>(parsed);
}

size_t RecipientCache::size() {
  std::lock_guard<std::mutex> l(mu_);
  return entries_.size();
}

// ---------------------------------------------------------------------------------------
// RewrapEngine

RewrapEngine::RewrapEngine(std::shared_ptr<hsm::KeyBackend> backend, Options options)
    : backend_(backend),
      options_(options),
      keys_(backend),
      pool_(std::make_unique<WorkerPool>(options.workers)) {}

RewrapEngine::~RewrapEngine() { pool_.reset(); }

std::vector<std::pair<RsaPadding, std::vector<hsm::Path>>> RewrapEngine::PathsFor(
    const hsm::KeyInfo& info) {
  std::vector<std::pair<RsaPadding, std::vector<hsm::Path>>> out;
  const bool can_wrap = !backend_->WrapPaddings().empty();
  for (RsaPadding p : kAllPaddings) {
    if (p == RsaPadding::kPkcs1 && !info.allow_pkcs1) continue;
    std::vector<hsm::Path> paths;
    if (can_wrap && info.caps.unwrap.count(p)) paths.push_back(hsm::Path::kInToken);
    if (info.caps.decrypt.count(p)) paths.push_back(hsm::Path::kTokenDecrypt);
    if (options_.allow_host_unpadding && info.caps.raw_rsa)
      paths.push_back(hsm::Path::kHostUnpadding);
    out.emplace_back(p, std::move(paths));
  }
  return out;
}

absl::Status RewrapEngine::Submit(std::shared_ptr<const v1::RewrapRequest> request, Done done,
                                  std::shared_ptr<ItemGate> gate,
                                  std::chrono::system_clock::time_point deadline) {
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
    std::vector<std::string> recipient_sha256;  // per item, for the gate's audit record
  };
  auto batch = std::make_shared<Batch>();
  batch->request = std::move(request);
  batch->remaining.store(n);
  batch->done = std::move(done);
  batch->gate = std::move(gate);
  if (batch->gate) batch->recipient_sha256.resize(n);
  for (size_t i = 0; i < n; ++i) batch->response.add_results();

  auto finish_one = [this, batch]() {
    inflight_.fetch_sub(1);
    if (batch->remaining.fetch_sub(1) == 1) {
      if (batch->gate)
        batch->gate->BatchDone(*batch->request, &batch->response, batch->recipient_sha256);
      batch->done(std::move(batch->response));
    }
  };

  for (size_t i = 0; i < n; ++i) {
    const v1::RewrapItem& item = batch->request->items(static_cast<int>(i));
    v1::RewrapResult* slot = batch->response.mutable_results(static_cast<int>(i));
    if (dups.count(item.id())) {
      slot->set_id(item.id());
      Fail(*slot, ItemError::INVALID_ITEM,
           absl::StrCat("id '", item.id(),
                        "' occurs more than once in the batch; ids must be unique"));
      if (batch->gate) batch->gate->ItemDone(*slot);
      finish_one();
      continue;
    }
    std::string* fp = batch->gate ? &batch->recipient_sha256[i] : nullptr;
    pool_->Post([this, &item, slot, finish_one, gate = batch->gate.get(), fp, deadline]() {
      if (stopping_.load()) {
        slot->set_id(item.id());
        Fail(*slot, ItemError::UNAVAILABLE, "rewrapd is shutting down; retry elsewhere");
      } else if (std::chrono::system_clock::now() > deadline) {
        slot->set_id(item.id());
        Fail(*slot, ItemError::DEADLINE_EXCEEDED,
             "the call's deadline passed before this item was started");
      } else {
        *slot = ProcessItem(item, gate, fp);
      }
      if (gate) gate->ItemDone(*slot);
      finish_one();
    });
  }
  return absl::OkStatus();
}

v1::RewrapResult RewrapEngine::ProcessItem(const v1::RewrapItem& item, ItemGate* gate,
                                           std::string* recipient_sha256) {
  v1::RewrapResult r;
  r.set_id(item.id());
  if (gate) {  // rate limits and a failed audit log stop an item before anything else
    if (absl::Status st = gate->Admit(); !st.ok()) {
      FailGate(r, st);
      return r;
    }
  }

  // 1. Everything that can be checked without the token.
  if (item.id().empty()) {
    Fail(r, ItemError::INVALID_ITEM, "id is empty: every item needs an id unique in its batch");
    return r;
  }
  if (item.key_name().empty()) {
    Fail(r, ItemError::INVALID_ITEM, "key_name is empty");
    return r;
  }
  RsaPadding in_padding;
  if (!v1::Padding_IsValid(item.padding())) {
    Fail(r, ItemError::INVALID_ITEM, absl::StrCat("padding: unknown value ", item.padding()));
    return r;
  }
  if (!PaddingFromProto(item.padding(), &in_padding)) {
    Fail(r, ItemError::INVALID_ITEM,
         "padding is not set: name the padding the secret was sealed with");
    return r;
  }
  if (!v1::OutputFormat_IsValid(item.format())) {
    Fail(r, ItemError::INVALID_ITEM, absl::StrCat("format: unknown value ", item.format()));
    return r;
  }
  if (item.ciphertext().empty()) {
    Fail(r, ItemError::INVALID_ITEM, "ciphertext is empty");
    return r;
  }
  if (!v1::ContentCipher_IsValid(item.content_cipher())) {
    Fail(r, ItemError::INVALID_ITEM,
         absl::StrCat("content_cipher: unknown value ", item.content_cipher()));
    return r;
  }
  const bool apple = item.format() == v1::APPLE_ENCRYPTED_PAYLOAD;
  if (apple) {
    if (item.recipient().kind_case() != v1::Recipient::kCertificate) {
      Fail(r, ItemError::INVALID_ITEM,
           "format APPLE_ENCRYPTED_PAYLOAD needs a certificate recipient (the device identity "
           "certificate)");
      return r;
    }
    if (item.pfx().empty()) {
      Fail(r, ItemError::INVALID_ITEM,
           "format APPLE_ENCRYPTED_PAYLOAD needs the PKCS#12 file in pfx; it is empty");
      return r;
    }
  } else if (!item.pfx().empty()) {
    Fail(r, ItemError::INVALID_ITEM,
         absl::StrCat("pfx is only used by format APPLE_ENCRYPTED_PAYLOAD; leave it empty for ",
                      v1::OutputFormat_Name(item.format())));
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

  // The recipient.
  std::optional<crypto::Certificate> cert;
  std::optional<crypto::PublicKey> device_key;
  std::shared_ptr<const KeyEntry> target_key;
  RsaPadding out_padding = BarePadding(item.format());
  bool bare = IsBareFormat(item.format());
  const auto& rcp = item.recipient();
  const auto bytes_of = [](const std::string& s) {
    return absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  switch (rcp.kind_case()) {
    case v1::Recipient::kCertificate: {
      auto c = recipients_.Get(true, bytes_of(rcp.certificate()));
      if (!c.ok()) {
        Fail(r, ItemError::INVALID_ITEM,
             absl::StrCat("recipient certificate does not parse: ", c.status().message()));
        return r;
      }
      if (recipient_sha256) *recipient_sha256 = (*c)->cert->Sha256Hex();
      if (gate) {
        if (absl::Status st = gate->CheckRecipient(rcp, c->get()); !st.ok()) {
          FailGate(r, st);
          return r;
        }
      }
      device_key = (*c)->key;
      cert = (*c)->cert;
      break;
    }
    case v1::Recipient::kPublicKey: {
      auto k = recipients_.Get(false, bytes_of(rcp.public_key()));
      if (!k.ok()) {
        Fail(r, ItemError::INVALID_ITEM,
             absl::StrCat("recipient public_key does not parse as a SubjectPublicKeyInfo: ",
                          k.status().message()));
        return r;
      }
      if (recipient_sha256) *recipient_sha256 = (*k)->key->Sha256Hex();
      if (gate) {
        if (absl::Status st = gate->CheckRecipient(rcp, k->get()); !st.ok()) {
          FailGate(r, st);
          return r;
        }
      }
      device_key = (*k)->key;
      break;
    }
    case v1::Recipient::kServiceKey: {
      if (item.format() == v1::CMS_ENVELOPED_PKCS1) {
        Fail(r, ItemError::INVALID_ITEM,
             "format CMS_ENVELOPED_PKCS1 does not apply to a service_key recipient; use a bare "
             "RSA_* format");
        return r;
      }
      if (!bare) out_padding = RsaPadding::kOaepSha512;  // Intune's default padding
      bare = true;
      auto t = keys_.Get(rcp.service_key());
      if (!t.ok()) {
        if (t.status().code() == absl::StatusCode::kNotFound) {
          Fail(r, ItemError::KEY_NOT_FOUND,
               absl::StrCat("recipient service key '", rcp.service_key(), "' not found"));
        } else {
          FailFromStatus(r, t.status(), rcp.service_key());
        }
        return r;
      }
      if (!(*t)->info.enabled) {
        Fail(r, ItemError::KEY_DISABLED,
             absl::StrCat("recipient service key '", rcp.service_key(), "' is disabled"));
        return r;
      }
      target_key = *t;
      device_key = target_key->public_key;
      break;
    }
    default:
      Fail(r, ItemError::INVALID_ITEM,
           "recipient is not set: give a certificate, public_key or service_key");
      return r;
  }
  if (device_key->is_rsa()) {
    if (device_key->bits() < 2048) {
      Fail(r, ItemError::INVALID_ITEM,
           absl::StrCat("recipient RSA key has ", device_key->bits(),
                        " bits; at least 2048 are required"));
      return r;
    }
  } else if (bare) {
    Fail(r, ItemError::INVALID_ITEM,
         absl::StrCat("recipient is not an RSA key; format ", v1::OutputFormat_Name(item.format()),
                      " needs one (use CMS_ENVELOPED for EC devices)"));
    return r;
  } else if (!device_key->is_ec()) {
    Fail(r, ItemError::INVALID_ITEM, "recipient key is neither RSA nor EC");
    return r;
  }

  // 2. The service key.
  auto key_or = keys_.Get(item.key_name());
  if (!key_or.ok()) {
    if (key_or.status().code() == absl::StatusCode::kNotFound) {
      Fail(r, ItemError::KEY_NOT_FOUND, absl::StrCat("key '", item.key_name(), "' not found"));
    } else if (key_or.status().code() == absl::StatusCode::kFailedPrecondition) {
      // A key rewrapd refuses to serve (unsafe attributes, duplicate label): says why.
      Fail(r, ItemError::UNSUPPORTED, std::string(key_or.status().message()));
    } else {
      FailFromStatus(r, key_or.status(), item.key_name());
    }
    return r;
  }
  const KeyEntry& key = **key_or;
  if (!key.info.enabled) {
    Fail(r, ItemError::KEY_DISABLED, absl::StrCat("key '", item.key_name(), "' is disabled"));
    return r;
  }
  if (item.ciphertext().size() != key.modulus_len) {
    Fail(r, ItemError::INVALID_ITEM,
         absl::StrCat("ciphertext is ", item.ciphertext().size(), " bytes; key '", item.key_name(),
                      "' needs exactly ", key.modulus_len, " (its modulus length)"));
    return r;
  }
  if (in_padding == RsaPadding::kPkcs1 && !key.info.allow_pkcs1) {
    Fail(r, ItemError::UNSUPPORTED,
         absl::StrCat("key '", item.key_name(),
                      "' does not accept PKCS1 sealed secrets; only keys created or imported with "
                      "allow_pkcs1 do"));
    return r;
  }

  // 3. The best path this token offers for the item.
  const auto& caps = key.info.caps;
  const auto ct = bytes_of(item.ciphertext());
  // (APPLE_ENCRYPTED_PAYLOAD is not bare: the plist needs the password on the host.)
  if (bare && caps.unwrap.count(in_padding) && backend_->WrapPaddings().count(out_padding)) {
    auto out = backend_->RewrapInToken(item.key_name(), in_padding, ct, *device_key, out_padding);
    if (!out.ok()) {
      FailFromOp(r, out, item.key_name());
      return r;
    }
    r.set_ciphertext(out->data(), out->size());
    r.set_path(v1::IN_TOKEN);
    return r;
  }
  hsm::Path path;
  if (caps.decrypt.count(in_padding)) {
    path = hsm::Path::kTokenDecrypt;
  } else if (options_.allow_host_unpadding && caps.raw_rsa) {
    path = hsm::Path::kHostUnpadding;
  } else {
    Fail(r, ItemError::UNSUPPORTED,
         absl::StrCat("key '", item.key_name(), "' on this token cannot decrypt ",
                      PaddingName(item.padding()),
                      options_.allow_host_unpadding
                          ? " (the token refuses it and raw RSA)"
                          : " natively, and host unpadding is not allowed (allow_host_unpadding)"));
    return r;
  }
  auto plain = backend_->Decrypt(item.key_name(), in_padding, ct, path);
  if (!plain.ok()) {
    FailFromOp(r, plain, item.key_name());
    return r;
  }

  // 4. Re-encrypt on the host; `plain` is wiped when it goes out of scope.
  absl::StatusOr<crypto::Bytes> out;
  if (bare) {
    const size_t max =
        crypto::MaxPlaintextLen(out_padding, static_cast<size_t>((device_key->bits() + 7) / 8));
    if (plain->size() > max) {
      Fail(r, ItemError::INVALID_ITEM, hsm::kSecretTooLongText);
      return r;
    }
    out = crypto::RsaEncrypt(*device_key, out_padding, crypto::Reveal(*plain));
  } else {
    crypto::CmsOptions opts;
    // Apple payloads use PKCS#1 v1.5 key transport (rsaEncryption), as MDM servers' PKCS#7
    // envelopes for iOS/macOS do; CMS_ENVELOPED uses OAEP-SHA256.
    opts.key_transport = (item.format() == v1::CMS_ENVELOPED_PKCS1 || apple)
                             ? crypto::CmsKeyTransport::kRsaPkcs1
                             : crypto::CmsKeyTransport::kRsaOaepSha256;
    opts.cipher = ContentCipherFromProto(item.content_cipher());
    if (apple) {
      auto payload = crypto::AppleEncryptedPkcs12Payload(*cert, bytes_of(item.pfx()),
                                                         crypto::Reveal(*plain), opts);
      if (!payload.ok() && payload.status().code() == absl::StatusCode::kInvalidArgument) {
        // Only what BuildPkcs12PayloadPlist refuses (a control character in the password);
        // the message names no byte of it.
        Fail(r, ItemError::INVALID_ITEM, std::string(payload.status().message()));
        return r;
      }
      out = std::move(payload);
    } else {
      out = cert ? crypto::CmsEnvelopeToCertificate(*cert, crypto::Reveal(*plain), opts)
                 : crypto::CmsEnvelopeToPublicKey(*device_key, crypto::Reveal(*plain), opts);
    }
  }
  if (!out.ok()) {
    spdlog::warn("item {}: encrypting to the recipient failed: {}", item.id(),
                 out.status().ToString());
    Fail(r, ItemError::INTERNAL, "encrypting to the recipient failed");
    return r;
  }
  r.set_ciphertext(out->data(), out->size());
  r.set_path(PathToProto(path));
  return r;
}

}  // namespace hsmrewrap::service
