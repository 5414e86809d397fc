// Pkcs11Backend, part 2: start-up, health and the rewrap operations. Part 1, the key cache
// and lifecycle: hsm/key_store.cc.
#include "hsm/pkcs11_backend.h"

#include <cstring>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "hsm/capability_probe.h"
#include "hsm/cms_in_token.h"
#include "hsm/key_policy.h"
#include "hsm/mechanisms.h"
#include "spdlog/spdlog.h"

namespace hsmrewrap::hsm {
namespace {

std::atomic<uint64_t> g_next_backend_id{1};

bool IsHandleRv(CK_RV rv) {
  return rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID ||
         rv == CKR_UNWRAPPING_KEY_HANDLE_INVALID;
}

// The outcome of a failed rewrap call: DECRYPT_FAILED only when the token answered that the
// ciphertext does not decrypt.
//  - token, session or memory trouble: retryable, from any call;
//  - a call that never saw the ciphertext (C_DecryptInit, C_CreateObject, C_WrapKey...):
//    its status decides (CKR_GENERAL_ERROR is Unavailable, so retryable); never a decryption
//    failure;
//  - the call that saw the ciphertext (C_Decrypt, C_UnwrapKey) with any other code: a
//    decryption failure. That includes CKR_GENERAL_ERROR/CKR_FUNCTION_FAILED (SoftHSM2
//    reports bad padding that way) and codes no token documents: which code a bad
//    ciphertext produces must not be visible to the caller (no padding oracle). Whether the
//    token is still alive after such an answer is the supervisor's re-check.
template <typename T>
OpResult<T> TokenFailure(const absl::Status& s, bool saw_ciphertext) {
  const CK_RV rv = CkrOf(s);
  if (IsTokenLossRv(rv) || rv == CKR_HOST_MEMORY || rv == CKR_DEVICE_MEMORY) {
    return OpResult<T>::Retryable(absl::UnavailableError(s.message()));
  }
  if (!saw_ciphertext) return OpResult<T>::FromStatus(s);
  spdlog::debug("decrypt failed in the token: {}", std::string(s.message()));
  return OpResult<T>::DecryptFailed();
}

}  // namespace

Pkcs11Backend::Pkcs11Backend(Options options, TokenSlot token, std::unique_ptr<SessionPool> pool)
    : id_(g_next_backend_id.fetch_add(1)),
      options_(std::move(options)),
      token_(std::move(token)),
      pool_(std::move(pool)),
      metadata_(token_.label) {}

absl::StatusOr<std::unique_ptr<Pkcs11Backend>> Pkcs11Backend::Create(Options options) {
  if (options.pool_size < 1) return absl::InvalidArgumentError("pool_size must be >= 1");
  auto module = Module::Load(options.module_path, options.init_args);
  if (!module.ok()) return module.status();
  (*module)->LimitConcurrency(options.max_concurrency);
  auto token = FindToken(**module, options.token);
  if (!token.ok()) return token.status();
  auto pool = SessionPool::Create(*module, token->slot, options.user_pin, options.pool_size);
  if (!pool.ok()) return pool.status();
  std::unique_ptr<Pkcs11Backend> b(
      new Pkcs11Backend(std::move(options), std::move(*token), std::move(*pool)));
  if (auto s = ProbeWrapPaddings([p = b.get()] { return p->Lease(); }, &b->wrap_paddings_,
                                  &b->cms_forms_, &b->ec_cms_forms_);
      !s.ok()) {
    if (s.code() == absl::StatusCode::kUnavailable) return s;
    spdlog::warn("token '{}': wrap probe failed: {}", b->token_.label, std::string(s.message()));
  }
  if (auto s = b->LoadAllKeys(); !s.ok()) return s;
  spdlog::info(
      "token '{}' (serial {}, {}): wrap paddings {}, in-token CMS {} EC {}, host unpadding {}",
      b->token_.label, b->token_.serial, b->module().description(),
      PaddingSetName(b->wrap_paddings_), CmsFormSetName(b->cms_forms_),
      EcCmsFormSetName(b->ec_cms_forms_),
      b->options_.allow_host_unpadding ? "ALLOWED" : "off");
  if (b->options_.allow_host_unpadding) {
    spdlog::warn("HOST_UNPADDING is enabled: raw RSA in the token, OAEP decoding on the host");
  }
  if (absl::StrContains(b->module().description(), "TPM2.0 Cryptoki")) {
    // tpm2-pkcs11 reads its store (TPM2_PKCS11_STORE) once per C_Initialize.
    spdlog::warn(
        "token '{}' is a TPM (tpm2-pkcs11): its module reads the key store once per start, so "
        "replicas sharing one store do not see keys or enable/disable changes made by another "
        "replica until they restart; give each replica its own token or restart them together",
        b->token_.label);
  }
  return b;
}

Pkcs11Backend::~Pkcs11Backend() = default;

absl::StatusOr<SessionPool::Lease> Pkcs11Backend::Lease() {
  auto lease = pool_->Acquire(absl::Now() + options_.session_wait);
  if (!lease.ok() && lease.status().code() == absl::StatusCode::kDeadlineExceeded) {
    // Overload: every session stayed busy for session_wait. Retryable, never the item's fault.
    return absl::ResourceExhaustedError(absl::StrCat(lease.status().message(), " of ",
                                                     absl::FormatDuration(options_.session_wait),
                                                     ": the token is busy; retry later"));
  }
  return lease;
}

bool Pkcs11Backend::Healthy() {
  CK_TOKEN_INFO ti{};
  const Module& m = module();
  if (!m.Call("C_GetTokenInfo", m.fl()->C_GetTokenInfo, token_.slot, &ti).ok()) return false;
  // And a call that reaches the device: C_GetTokenInfo alone is answered by the module
  // (tpm2-pkcs11 answers it while its TPM connection is broken), so a dead device would
  // stay SERVING and turn every item's C_UnwrapKey error into DECRYPT_FAILED.
  if (auto s = pool_->ReachDevice(); !s.ok()) {
    spdlog::debug("token '{}' does not reach its device: {}", token_.label,
                  std::string(s.message()));
    return false;
  }
  return true;
}

absl::StatusOr<KeyRefPtr> Pkcs11Backend::Own(const KeyRefPtr& key) {
  if (key == nullptr) return absl::InvalidArgumentError("no key");
  if (key->owner == id_) return key;
  // Resolved by the backend before a reconnect: its handle means nothing here.
  return Resolve(key->info.name);
}

OpResult<crypto::SecretBytes> Pkcs11Backend::TokenDecrypt(const KeyRef& key, CK_MECHANISM* mech,
                                                          absl::Span<const uint8_t> ciphertext) {
  using R = OpResult<crypto::SecretBytes>;
  auto handle = static_cast<CK_OBJECT_HANDLE>(key.object);
  for (int attempt = 0;; ++attempt) {
    auto lease = Lease();
    if (!lease.ok()) return R::FromStatus(lease.status());
    bool saw_ciphertext = false;
    auto out = lease->Decrypt(mech, handle, ciphertext, key.modulus_len, &saw_ciphertext);
    if (out.ok()) return *std::move(out);
    lease->Release();  // broken: closed now
    if (IsHandleRv(CkrOf(out.status())) && attempt == 0) {
      auto h = Reresolve(key.info.name);
      if (!h.ok()) return R::FromStatus(h.status());
      handle = *h;
      continue;
    }
    return TokenFailure<crypto::SecretBytes>(out.status(), saw_ciphertext);
  }
}

OpResult<crypto::SecretBytes> Pkcs11Backend::Decrypt(const KeyRefPtr& key_ref, RsaPadding padding,
                                                     absl::Span<const uint8_t> ciphertext,
                                                     Path path) {
  using R = OpResult<crypto::SecretBytes>;
  auto own = Own(key_ref);
  if (!own.ok()) return R::FromStatus(own.status());
  const KeyRef& key = **own;
  // Before the token: an empty input poisons a SoftHSM2 session, and every wrong length
  // must look like every other decryption failure.
  if (ciphertext.size() != key.modulus_len) return R::DecryptFailed();
  switch (path) {
    case Path::kTokenDecrypt: {
      RsaMechanism mech(padding);
      return TokenDecrypt(key, mech.get(), ciphertext);
    }
    case Path::kHostUnpadding: {
      RsaMechanism mech = RsaMechanism::Raw();
      auto em = TokenDecrypt(key, mech.get(), ciphertext);
      if (!em.ok()) return em;
      absl::StatusOr<crypto::SecretBytes> pt =
          padding == RsaPadding::kPkcs1
              ? crypto::Pkcs1Unpad(*em, key.modulus_len)
              : crypto::OaepUnpad(*em, key.modulus_len, crypto::OaepHash(padding),
                                  crypto::OaepHash(padding));
      if (!pt.ok()) return R::DecryptFailed();
      return *std::move(pt);
    }
    case Path::kInToken:
      break;
  }
  return R::Refused(absl::InvalidArgumentError("Decrypt() does not take the IN_TOKEN path"));
}

OpResult<Pkcs11Backend::Unwrapped> Pkcs11Backend::UnwrapSealed(
    const KeyRef& key, RsaPadding in_padding, absl::Span<const uint8_t> ciphertext) {
  using R = OpResult<Unwrapped>;
  RsaMechanism in_mech(in_padding);
  auto handle = static_cast<CK_OBJECT_HANDLE>(key.object);
  for (int attempt = 0;; ++attempt) {
    auto lease = Lease();
    if (!lease.ok()) return R::FromStatus(lease.status());
    Template secret_template = SessionSecretTemplate();
    auto secret = lease->Unwrap(in_mech.get(), handle, ciphertext, secret_template);
    if (secret.ok()) return Unwrapped{*std::move(lease), *secret};
    lease->Release();
    if (IsHandleRv(CkrOf(secret.status())) && attempt == 0) {
      auto h = Reresolve(key.info.name);
      if (!h.ok()) return R::FromStatus(h.status());
      handle = *h;
      continue;
    }
    return TokenFailure<Unwrapped>(secret.status(), /*saw_ciphertext=*/true);
  }
}

OpResult<Bytes> Pkcs11Backend::RewrapInToken(const KeyRefPtr& key_ref, RsaPadding in_padding,
                                             absl::Span<const uint8_t> ciphertext,
                                             const crypto::PublicKey& device_key,
                                             RsaPadding out_padding) {
  using R = OpResult<Bytes>;
  auto own = Own(key_ref);
  if (!own.ok()) return R::FromStatus(own.status());
  const KeyRef& key = **own;
  if (ciphertext.size() != key.modulus_len) return R::DecryptFailed();
  // The longest secret the output padding can carry to this device key: the host path's
  // rule (crypto::MaxPlaintextLen), so both paths give the same answer for the same item.
  const size_t device_len = static_cast<size_t>((device_key.bits() + 7) / 8);
  const size_t max_secret = crypto::MaxPlaintextLen(out_padding, device_len);
  RsaMechanism out_mech(out_padding);
  auto unwrapped = UnwrapSealed(key, in_padding, ciphertext);
  if (!unwrapped.ok()) return R::From(unwrapped);
  SessionPool::Lease& lease = unwrapped->lease;
  const CK_OBJECT_HANDLE secret = unwrapped->secret;
  // Both session objects are destroyed whatever happens below (a failed destroy closes
  // the session, which destroys them too).
  CK_OBJECT_HANDLE device = CK_INVALID_HANDLE;
  absl::Cleanup cleanup = [&] {
    lease.Destroy(secret);
    lease.Destroy(device);
  };
  // The secret's length (CKA_VALUE_LEN is readable on a sensitive key: NSS softoken).
  // Tokens that do not give it (SoftHSM2 2.6 leaves it 0 on unwrapped secrets) are judged
  // by C_WrapKey's answer below.
  if (auto v = lease.GetAttribute(secret, CKA_VALUE_LEN); v.ok() && v->size() == sizeof(CK_ULONG)) {
    CK_ULONG n = 0;
    std::memcpy(&n, v->data(), sizeof(n));
    if (n > max_secret) return R::Refused(absl::InvalidArgumentError(kSecretTooLongText));
  }
  auto dev = SessionPublicKey(lease, device_key);
  if (!dev.ok()) return TokenFailure<Bytes>(dev.status(), /*saw_ciphertext=*/false);
  device = *dev;
  auto wrapped = lease.Wrap(out_mech.get(), device, secret, device_len);
  if (!wrapped.ok()) {
    spdlog::debug("C_WrapKey to device failed: {}", std::string(wrapped.status().message()));
    const CK_RV rv = CkrOf(wrapped.status());
    // The device key's size was checked by the caller: a size error is the secret's.
    if (rv == CKR_KEY_SIZE_RANGE || rv == CKR_DATA_LEN_RANGE || rv == CKR_WRAPPED_KEY_LEN_RANGE) {
      return R::Refused(absl::InvalidArgumentError(kSecretTooLongText));
    }
    return TokenFailure<Bytes>(wrapped.status(), /*saw_ciphertext=*/false);
  }
  return *std::move(wrapped);
}

OpResult<crypto::CmsTokenParts> Pkcs11Backend::EnvelopeInToken(
    const KeyRefPtr& key_ref, RsaPadding in_padding, absl::Span<const uint8_t> ciphertext,
    const crypto::PublicKey& device_key, const crypto::CmsOptions& options) {
  using R = OpResult<crypto::CmsTokenParts>;
  if (device_key.is_ec()) {
    auto point = crypto::EcPointOf(device_key);
    if (!point.ok() || !ec_cms_forms_.count({point->curve_nid, options.cipher})) {
      return R::Refused(absl::UnimplementedError(
          absl::StrCat("this token does not build CMS to this EC curve with ",
                       CmsContentCipherName(options.cipher), " in the token")));
    }
  } else if (!device_key.is_rsa()) {
    return R::Refused(absl::InvalidArgumentError("in-token CMS needs an RSA or EC device key"));
  } else if (!cms_forms_.count({options.key_transport, options.cipher})) {
    return R::Refused(absl::UnimplementedError(
        absl::StrCat("this token does not build CMS with ", CmsKeyTransportName(options.key_transport),
                     " and ", CmsContentCipherName(options.cipher), " in the token")));
  }
  auto own = Own(key_ref);
  if (!own.ok()) return R::FromStatus(own.status());
  const KeyRef& key = **own;
  if (ciphertext.size() != key.modulus_len) return R::DecryptFailed();
  auto unwrapped = UnwrapSealed(key, in_padding, ciphertext);
  if (!unwrapped.ok()) return R::From(unwrapped);
  SessionPool::Lease& lease = unwrapped->lease;
  const CK_OBJECT_HANDLE secret = unwrapped->secret;
  absl::Cleanup cleanup = [&] { lease.Destroy(secret); };
  // From here no call sees the ciphertext: a failure is the token's, never DECRYPT_FAILED.
  // The secret is at most the service key's modulus long (it came out of one RSA block).
  auto parts = BuildCmsParts(lease, secret, device_key, options, key.modulus_len);
  if (!parts.ok()) {
    spdlog::debug("in-token CMS: {}", std::string(parts.status().message()));
    return TokenFailure<crypto::CmsTokenParts>(parts.status(), /*saw_ciphertext=*/false);
  }
  return *std::move(parts);
}

}  // namespace hsmrewrap::hsm
