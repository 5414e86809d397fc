#include "hsm/pkcs11_backend.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <functional>
#include <optional>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace hsmrewrap::hsm {
namespace {

constexpr char kApplication[] = "hsm-rewrap";
constexpr RsaPadding kOaepPaddings[] = {RsaPadding::kOaepSha1, RsaPadding::kOaepSha256,
                                        RsaPadding::kOaepSha384, RsaPadding::kOaepSha512};
constexpr RsaPadding kAllPaddings[] = {RsaPadding::kOaepSha1, RsaPadding::kOaepSha256,
                                       RsaPadding::kOaepSha384, RsaPadding::kOaepSha512,
                                       RsaPadding::kPkcs1};

const char* PaddingName(RsaPadding p) {
  switch (p) {
    case RsaPadding::kOaepSha1:
      return "OAEP-SHA1";
    case RsaPadding::kOaepSha256:
      return "OAEP-SHA256";
    case RsaPadding::kOaepSha384:
      return "OAEP-SHA384";
    case RsaPadding::kOaepSha512:
      return "OAEP-SHA512";
    case RsaPadding::kPkcs1:
      return "PKCS1";
  }
  return "?";
}

std::string PaddingSetName(const std::set<RsaPadding>& s) {
  std::vector<std::string> names;
  for (RsaPadding p : s) names.push_back(PaddingName(p));
  return absl::StrCat("{", absl::StrJoin(names, ","), "}");
}

// An attribute template that owns the storage of its non-secret values. Secret values
// are referenced, not copied: the caller's SecretBytes must outlive the template.
class Template final {
 public:
  Template& Bool(CK_ATTRIBUTE_TYPE t, bool v) {
    return Own(t, std::vector<uint8_t>{static_cast<uint8_t>(v ? CK_TRUE : CK_FALSE)});
  }
  Template& Ulong(CK_ATTRIBUTE_TYPE t, CK_ULONG v) {
    std::vector<uint8_t> b(sizeof(v));
    std::memcpy(b.data(), &v, sizeof(v));
    return Own(t, std::move(b));
  }
  Template& Data(CK_ATTRIBUTE_TYPE t, absl::Span<const uint8_t> v) {
    return Own(t, std::vector<uint8_t>(v.begin(), v.end()));
  }
  Template& Str(CK_ATTRIBUTE_TYPE t, const std::string& s) {
    return Own(t, std::vector<uint8_t>(s.begin(), s.end()));
  }
  Template& Mechanisms(const std::vector<CK_MECHANISM_TYPE>& m) {
    std::vector<uint8_t> b(m.size() * sizeof(CK_MECHANISM_TYPE));
    std::memcpy(b.data(), m.data(), b.size());
    return Own(CKA_ALLOWED_MECHANISMS, std::move(b));
  }
  Template& SecretRef(CK_ATTRIBUTE_TYPE t, const crypto::SecretBytes& v) {
    attrs_.push_back(CK_ATTRIBUTE{t, const_cast<uint8_t*>(v.data()), CK_ULONG(v.size())});
    return *this;
  }
  void Remove(CK_ATTRIBUTE_TYPE t) {
    attrs_.erase(std::remove_if(attrs_.begin(), attrs_.end(),
                                [t](const CK_ATTRIBUTE& a) { return a.type == t; }),
                 attrs_.end());
  }
  bool Has(CK_ATTRIBUTE_TYPE t) const {
    return std::any_of(attrs_.begin(), attrs_.end(),
                       [t](const CK_ATTRIBUTE& a) { return a.type == t; });
  }
  CK_ATTRIBUTE* data() { return attrs_.data(); }
  CK_ULONG size() const { return attrs_.size(); }

 private:
  Template& Own(CK_ATTRIBUTE_TYPE t, std::vector<uint8_t> b) {
    store_.push_back(std::move(b));  // deque: element addresses stay stable
    auto& s = store_.back();
    attrs_.push_back(CK_ATTRIBUTE{t, s.empty() ? nullptr : s.data(), CK_ULONG(s.size())});
    return *this;
  }
  std::vector<CK_ATTRIBUTE> attrs_;
  std::deque<std::vector<uint8_t>> store_;
};

absl::StatusOr<Bytes> GetAttr(SessionPool::Lease& l, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type) {
  const Module& m = l.module();
  CK_ATTRIBUTE a{type, nullptr, 0};
  if (auto s = m.Call("C_GetAttributeValue", m.fl()->C_GetAttributeValue, l.handle(), obj, &a,
                      CK_ULONG(1));
      !s.ok()) {
    return s;
  }
  if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION) {
    return absl::NotFoundError("attribute unavailable");
  }
  Bytes out(a.ulValueLen);
  a.pValue = out.data();
  if (auto s = m.Call("C_GetAttributeValue", m.fl()->C_GetAttributeValue, l.handle(), obj, &a,
                      CK_ULONG(1));
      !s.ok()) {
    return s;
  }
  out.resize(a.ulValueLen);
  return out;
}

absl::StatusOr<bool> GetBool(SessionPool::Lease& l, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE t) {
  auto b = GetAttr(l, obj, t);
  if (!b.ok()) return b.status();
  if (b->size() != sizeof(CK_BBOOL)) return absl::InternalError("bad CK_BBOOL attribute");
  return (*b)[0] != CK_FALSE;
}

// Marks the lease broken on failure: an unfinished search leaves operation state behind.
absl::StatusOr<std::vector<CK_OBJECT_HANDLE>> FindObjects(SessionPool::Lease& l, Template& t) {
  const Module& m = l.module();
  if (auto s =
          m.Call("C_FindObjectsInit", m.fl()->C_FindObjectsInit, l.handle(), t.data(), t.size());
      !s.ok()) {
    l.MarkBroken();
    return s;
  }
  std::vector<CK_OBJECT_HANDLE> out;
  CK_OBJECT_HANDLE batch[64];
  for (;;) {
    CK_ULONG n = 0;
    if (auto s =
            m.Call("C_FindObjects", m.fl()->C_FindObjects, l.handle(), batch, CK_ULONG(64), &n);
        !s.ok()) {
      l.MarkBroken();
      return s;
    }
    out.insert(out.end(), batch, batch + n);
    if (n < 64) break;
  }
  if (auto s = m.Call("C_FindObjectsFinal", m.fl()->C_FindObjectsFinal, l.handle()); !s.ok()) {
    l.MarkBroken();
    return s;
  }
  return out;
}

void DestroyObject(SessionPool::Lease& l, CK_OBJECT_HANDLE h) {
  if (h == CK_INVALID_HANDLE) return;
  const Module& m = l.module();
  if (auto s = m.Call("C_DestroyObject", m.fl()->C_DestroyObject, l.handle(), h); !s.ok()) {
    // Session objects go away with the session: close it rather than keep them around.
    spdlog::warn("{}", std::string(s.message()));
    l.MarkBroken();
  }
}

CK_MECHANISM_TYPE HashMech(crypto::HashAlg h) {
  switch (h) {
    case crypto::HashAlg::kSha1:
      return CKM_SHA_1;
    case crypto::HashAlg::kSha256:
      return CKM_SHA256;
    case crypto::HashAlg::kSha384:
      return CKM_SHA384;
    case crypto::HashAlg::kSha512:
      return CKM_SHA512;
  }
  return CKM_SHA_1;
}

CK_RSA_PKCS_MGF_TYPE MgfFor(crypto::HashAlg h) {
  switch (h) {
    case crypto::HashAlg::kSha1:
      return CKG_MGF1_SHA1;
    case crypto::HashAlg::kSha256:
      return CKG_MGF1_SHA256;
    case crypto::HashAlg::kSha384:
      return CKG_MGF1_SHA384;
    case crypto::HashAlg::kSha512:
      return CKG_MGF1_SHA512;
  }
  return CKG_MGF1_SHA1;
}

// The mechanism for `p`; `params` must outlive the returned mechanism. OAEP: MGF1 of the
// same hash, empty label given as CKZ_DATA_SPECIFIED with no data (SoftHSM rejects
// anything else for encrypt/wrap/unwrap, TOKENS.md §2).
CK_MECHANISM MechFor(RsaPadding p, CK_RSA_PKCS_OAEP_PARAMS* params) {
  if (p == RsaPadding::kPkcs1) return CK_MECHANISM{CKM_RSA_PKCS, nullptr, 0};
  crypto::HashAlg h = crypto::OaepHash(p);
  *params = CK_RSA_PKCS_OAEP_PARAMS{HashMech(h), MgfFor(h), CKZ_DATA_SPECIFIED, nullptr, 0};
  return CK_MECHANISM{CKM_RSA_PKCS_OAEP, params, sizeof(*params)};
}

Bytes RandomBytes(size_t n) {
  Bytes b(n);
  if (RAND_bytes(b.data(), static_cast<int>(n)) != 1) {
    spdlog::critical("RAND_bytes failed");
    std::abort();
  }
  return b;
}

Bytes StripLeadingZeros(absl::Span<const uint8_t> v) {
  size_t i = 0;
  while (i + 1 < v.size() && v[i] == 0) ++i;
  return Bytes(v.begin() + i, v.end());
}

int BitLength(absl::Span<const uint8_t> be) {
  size_t i = 0;
  while (i < be.size() && be[i] == 0) ++i;
  if (i == be.size()) return 0;
  int bits = static_cast<int>((be.size() - i - 1) * 8);
  for (uint8_t top = be[i]; top != 0; top >>= 1) ++bits;
  return bits;
}

absl::Status ValidateName(const std::string& name) {
  if (name.empty() || name.size() > 128) {
    return absl::InvalidArgumentError("key name must have 1..128 bytes");
  }
  for (unsigned char c : name) {
    if (c < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError("key name must not contain control characters");
    }
  }
  return absl::OkStatus();
}

bool IsHandleRv(CK_RV rv) {
  return rv == CKR_OBJECT_HANDLE_INVALID || rv == CKR_KEY_HANDLE_INVALID ||
         rv == CKR_UNWRAPPING_KEY_HANDLE_INVALID;
}

// The outcome of a failed rewrap call (issue 14: DECRYPT_FAILED only when the token
// answered that the ciphertext does not decrypt).
//  - token, session or memory trouble: retryable, from any call;
//  - a call that never saw the ciphertext (C_DecryptInit, C_CreateObject, C_WrapKey...):
//    its status decides (CKR_GENERAL_ERROR is Unavailable, so retryable); never a decryption
//    failure;
//  - the call that saw the ciphertext (C_Decrypt, C_UnwrapKey) with any other code: a
//    decryption failure. That includes CKR_GENERAL_ERROR/CKR_FUNCTION_FAILED (SoftHSM
//    reports bad padding that way, TOKENS.md §7) and codes no token documents: which code a
//    bad ciphertext produces must not be visible to the caller (no padding oracle). Whether
//    the token is still alive after such an answer is the supervisor's re-check.
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

struct EvpPkeyCtxDeleter {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
struct BnDeleter {
  void operator()(BIGNUM* p) const { BN_free(p); }
};

Bytes BnBytes(const EVP_PKEY* pkey, const char* param) {
  BIGNUM* raw = nullptr;
  if (EVP_PKEY_get_bn_param(pkey, param, &raw) != 1) return {};
  std::unique_ptr<BIGNUM, BnDeleter> bn(raw);
  Bytes out(BN_num_bytes(bn.get()));
  BN_bn2bin(bn.get(), out.data());
  return out;
}

// Host-side RSA decryption with a throwaway key, used only to confirm C_WrapKey output.
absl::StatusOr<Bytes> HostDecrypt(EVP_PKEY* pkey, RsaPadding p, absl::Span<const uint8_t> ct) {
  std::unique_ptr<EVP_PKEY_CTX, EvpPkeyCtxDeleter> ctx(EVP_PKEY_CTX_new(pkey, nullptr));
  if (!ctx || EVP_PKEY_decrypt_init(ctx.get()) != 1) return absl::InternalError("decrypt init");
  if (p == RsaPadding::kPkcs1) {
    if (EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING) != 1) {
      return absl::InternalError("padding");
    }
  } else {
    const EVP_MD* md = crypto::HashMd(crypto::OaepHash(p));
    if (EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_OAEP_PADDING) != 1 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(ctx.get(), md) != 1 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md(ctx.get(), md) != 1) {
      return absl::InternalError("oaep params");
    }
  }
  size_t len = 0;
  if (EVP_PKEY_decrypt(ctx.get(), nullptr, &len, ct.data(), ct.size()) != 1) {
    return absl::InternalError("decrypt size");
  }
  Bytes out(len);
  if (EVP_PKEY_decrypt(ctx.get(), out.data(), &len, ct.data(), ct.size()) != 1) {
    return absl::InvalidArgumentError("host decrypt failed");
  }
  out.resize(len);
  return out;
}

// A modulus-length RSA ciphertext whose plaintext block is NOT PKCS#1 v1.5 conformant:
// 00 02 followed by k-2 non-zero random bytes (no zero separator), raw-RSA encrypted
// (m^e mod n; the leading 00 keeps m < n). A token that answers CKR_OK to C_Decrypt of it
// with CKM_RSA_PKCS does implicit rejection.
absl::StatusOr<Bytes> NonConformantPkcs1Ciphertext(const crypto::PublicKey& pub, size_t k) {
  const Bytes nb = pub.modulus();
  const Bytes eb = pub.public_exponent();
  if (k < 11 || nb.empty() || eb.empty()) return absl::InternalError("bad public key");
  Bytes block = RandomBytes(k);
  block[0] = 0x00;
  block[1] = 0x02;
  for (size_t i = 2; i < k; ++i) {
    while (block[i] == 0) block[i] = RandomBytes(1)[0];
  }
  std::unique_ptr<BIGNUM, BnDeleter> n(BN_bin2bn(nb.data(), static_cast<int>(nb.size()), nullptr));
  std::unique_ptr<BIGNUM, BnDeleter> e(BN_bin2bn(eb.data(), static_cast<int>(eb.size()), nullptr));
  std::unique_ptr<BIGNUM, BnDeleter> m(
      BN_bin2bn(block.data(), static_cast<int>(block.size()), nullptr));
  std::unique_ptr<BIGNUM, BnDeleter> c(BN_new());
  std::unique_ptr<BN_CTX, decltype(&BN_CTX_free)> ctx(BN_CTX_new(), &BN_CTX_free);
  if (!n || !e || !m || !c || !ctx || BN_cmp(m.get(), n.get()) >= 0 ||
      BN_mod_exp(c.get(), m.get(), e.get(), n.get(), ctx.get()) != 1) {
    return absl::InternalError("raw RSA encryption of the PKCS#1 probe failed");
  }
  Bytes out(k);
  if (BN_bn2binpad(c.get(), out.data(), static_cast<int>(k)) != static_cast<int>(k)) {
    return absl::InternalError("raw RSA probe ciphertext does not fit the modulus");
  }
  return out;
}

// One C_DecryptInit + C_Decrypt with a modulus-sized output buffer (enough for a single
// call, TOKENS.md §8). The lease is marked broken on any failure: after a failed
// C_Decrypt the operation state is unknown (TOKENS.md §7, §15).
// *saw_ciphertext (if given) tells whether the failing call was C_Decrypt, which saw the
// ciphertext, or C_DecryptInit, which did not.
absl::StatusOr<crypto::SecretBytes> DecryptOnce(SessionPool::Lease& l, CK_MECHANISM* mech,
                                                CK_OBJECT_HANDLE key, absl::Span<const uint8_t> ct,
                                                size_t out_len, bool* saw_ciphertext = nullptr) {
  const Module& m = l.module();
  if (saw_ciphertext) *saw_ciphertext = false;
  if (auto s = m.Call("C_DecryptInit", m.fl()->C_DecryptInit, l.handle(), mech, key); !s.ok()) {
    l.MarkBroken();
    return s;
  }
  if (saw_ciphertext) *saw_ciphertext = true;
  crypto::SecretBytes out(out_len);
  CK_ULONG len = out.size();
  if (auto s = m.Call("C_Decrypt", m.fl()->C_Decrypt, l.handle(), const_cast<uint8_t*>(ct.data()),
                      CK_ULONG(ct.size()), out.data(), &len);
      !s.ok()) {
    l.MarkBroken();
    return s;
  }
  out.resize(len);
  return out;
}

// C_UnwrapKey into a sensitive session secret (extractable so that C_WrapKey can move it
// on to the device key; CKA_SENSITIVE keeps CKA_VALUE unreadable, TOKENS.md NSS §4).
absl::StatusOr<CK_OBJECT_HANDLE> UnwrapOnce(SessionPool::Lease& l, CK_MECHANISM* mech,
                                            CK_OBJECT_HANDLE key, absl::Span<const uint8_t> ct) {
  const Module& m = l.module();
  Template t;
  t.Ulong(CKA_CLASS, CKO_SECRET_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET)
      .Bool(CKA_TOKEN, false)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true)
      .Bool(CKA_EXTRACTABLE, true);
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  if (auto s = m.Call("C_UnwrapKey", m.fl()->C_UnwrapKey, l.handle(), mech, key,
                      const_cast<uint8_t*>(ct.data()), CK_ULONG(ct.size()), t.data(), t.size(), &h);
      !s.ok()) {
    l.MarkBroken();
    return s;
  }
  return h;
}

absl::StatusOr<CK_OBJECT_HANDLE> CreateSessionPublicKey(SessionPool::Lease& l,
                                                        absl::Span<const uint8_t> n,
                                                        absl::Span<const uint8_t> e) {
  const Module& m = l.module();
  Template t;
  t.Ulong(CKA_CLASS, CKO_PUBLIC_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_RSA)
      .Bool(CKA_TOKEN, false)
      .Bool(CKA_PRIVATE, false)
      .Bool(CKA_WRAP, true)
      .Bool(CKA_ENCRYPT, true)
      .Data(CKA_MODULUS, StripLeadingZeros(n))
      .Data(CKA_PUBLIC_EXPONENT, StripLeadingZeros(e));
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  if (auto s = m.Call("C_CreateObject", m.fl()->C_CreateObject, l.handle(), t.data(), t.size(), &h);
      !s.ok()) {
    l.MarkBroken();
    return s;
  }
  return h;
}

absl::StatusOr<Bytes> WrapOnce(SessionPool::Lease& l, CK_MECHANISM* mech,
                               CK_OBJECT_HANDLE wrapping_key, CK_OBJECT_HANDLE secret,
                               size_t out_len) {
  const Module& m = l.module();
  Bytes out(out_len);
  CK_ULONG len = out.size();
  if (auto s = m.Call("C_WrapKey", m.fl()->C_WrapKey, l.handle(), mech, wrapping_key, secret,
                      out.data(), &len);
      !s.ok()) {
    l.MarkBroken();
    return s;
  }
  out.resize(len);
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Pkcs11Backend>> Pkcs11Backend::Create(Options options) {
  if (options.pool_size < 1) return absl::InvalidArgumentError("pool_size must be >= 1");
  auto module = Module::Load(options.module_path, options.init_args);
  if (!module.ok()) return module.status();
  auto token = FindToken(**module, options.token);
  if (!token.ok()) return token.status();
  auto pool = SessionPool::Create(*module, token->slot, options.user_pin, options.pool_size);
  if (!pool.ok()) return pool.status();
  std::unique_ptr<Pkcs11Backend> b(
      new Pkcs11Backend(std::move(options), std::move(*token), std::move(*pool)));
  if (auto s = b->ProbeWrapPaddings(); !s.ok()) {
    if (s.code() == absl::StatusCode::kUnavailable) return s;
    spdlog::warn("token '{}': wrap probe failed: {}", b->token_.label, std::string(s.message()));
  }
  if (auto s = b->LoadAllKeys(); !s.ok()) return s;
  spdlog::info("token '{}' (serial {}, {}): wrap paddings {}, host unpadding {}", b->token_.label,
               b->token_.serial, b->module().description(), PaddingSetName(b->wrap_paddings_),
               b->options_.allow_host_unpadding ? "ALLOWED" : "off");
  if (b->options_.allow_host_unpadding) {
    spdlog::warn("HOST_UNPADDING is enabled: raw RSA in the token, OAEP decoding on the host");
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
  return m.Call("C_GetTokenInfo", m.fl()->C_GetTokenInfo, token_.slot, &ti).ok();
}

absl::Status Pkcs11Backend::ProbeWrapPaddings() {
  // A throwaway RSA key on the host: its public half goes into the token as a session
  // object, a known session secret is wrapped to it, and OpenSSL confirms the result.
  std::unique_ptr<EVP_PKEY, crypto::EvpPkeyDeleter> host(EVP_RSA_gen(2048));
  if (!host) return absl::InternalError("EVP_RSA_gen failed");
  Bytes n = BnBytes(host.get(), OSSL_PKEY_PARAM_RSA_N);
  Bytes e = BnBytes(host.get(), OSSL_PKEY_PARAM_RSA_E);
  crypto::SecretBytes value;
  {
    Bytes r = RandomBytes(16);
    value.assign(r.begin(), r.end());
  }
  for (RsaPadding p : kAllPaddings) {
    auto lease = Lease();
    if (!lease.ok()) return lease.status();
    const Module& m = module();
    auto pub = CreateSessionPublicKey(*lease, n, e);
    if (!pub.ok()) return pub.status();
    Template t;
    t.Ulong(CKA_CLASS, CKO_SECRET_KEY)
        .Ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET)
        .Bool(CKA_TOKEN, false)
        .Bool(CKA_SENSITIVE, false)
        .Bool(CKA_EXTRACTABLE, true)
        .SecretRef(CKA_VALUE, value);
    CK_OBJECT_HANDLE secret = CK_INVALID_HANDLE;
    if (auto s = m.Call("C_CreateObject", m.fl()->C_CreateObject, lease->handle(), t.data(),
                        t.size(), &secret);
        !s.ok()) {
      lease->MarkBroken();
      return s;
    }
    CK_RSA_PKCS_OAEP_PARAMS params{};
    CK_MECHANISM mech = MechFor(p, &params);
    auto wrapped = WrapOnce(*lease, &mech, *pub, secret, n.size());
    DestroyObject(*lease, secret);
    DestroyObject(*lease, *pub);
    if (!wrapped.ok()) {
      spdlog::debug("wrap probe {}: {}", PaddingName(p), std::string(wrapped.status().message()));
      if (IsTokenLossRv(CkrOf(wrapped.status()))) return wrapped.status();
      continue;
    }
    auto back = HostDecrypt(host.get(), p, *wrapped);
    if (back.ok() && back->size() == value.size() &&
        std::equal(back->begin(), back->end(), value.begin())) {
      wrap_paddings_.insert(p);
    } else {
      spdlog::warn("wrap probe {}: token output did not decrypt to the secret", PaddingName(p));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<KeyCapabilities> Pkcs11Backend::Probe(CK_OBJECT_HANDLE priv,
                                                     const crypto::PublicKey& pub,
                                                     bool allow_pkcs1) {
  KeyCapabilities caps;
  const size_t k = static_cast<size_t>((pub.bits() + 7) / 8);
  std::vector<RsaPadding> paddings(std::begin(kOaepPaddings), std::end(kOaepPaddings));
  if (allow_pkcs1) paddings.push_back(RsaPadding::kPkcs1);
  const Bytes probe = RandomBytes(16);
  auto same = [&probe](const crypto::SecretBytes& got) {
    return got.size() == probe.size() && std::equal(got.begin(), got.end(), probe.begin());
  };
  for (RsaPadding p : paddings) {
    if (crypto::MaxPlaintextLen(p, k) < probe.size()) continue;  // e.g. OAEP-SHA512 on 1024
    auto ct = crypto::RsaEncrypt(pub, p, probe);
    if (!ct.ok()) return ct.status();
    CK_RSA_PKCS_OAEP_PARAMS params{};
    CK_MECHANISM mech = MechFor(p, &params);
    {
      auto lease = Lease();
      if (!lease.ok()) return lease.status();
      auto pt = DecryptOnce(*lease, &mech, priv, *ct, k);
      if (pt.ok() && same(*pt)) {
        caps.decrypt.insert(p);
      } else if (!pt.ok()) {
        spdlog::debug("decrypt probe {}: {}", PaddingName(p), std::string(pt.status().message()));
        if (IsTokenLossRv(CkrOf(pt.status()))) return pt.status();
      }
    }
    {
      auto lease = Lease();
      if (!lease.ok()) return lease.status();
      auto h = UnwrapOnce(*lease, &mech, priv, *ct);
      if (h.ok()) {
        caps.unwrap.insert(p);
        DestroyObject(*lease, *h);
      } else {
        spdlog::debug("unwrap probe {}: {}", PaddingName(p), std::string(h.status().message()));
        if (IsTokenLossRv(CkrOf(h.status()))) return h.status();
      }
    }
  }
  // Implicit rejection (Marvin countermeasure, NSS softoken): does an invalid PKCS#1 v1.5
  // block come back as CKR_OK instead of an error? Not an error to us: it is reported in
  // KeyInfo, and tests then accept a pseudo-random secret for a bad PKCS#1 ciphertext.
  if (allow_pkcs1 &&
      (caps.decrypt.count(RsaPadding::kPkcs1) || caps.unwrap.count(RsaPadding::kPkcs1))) {
    auto bad = NonConformantPkcs1Ciphertext(pub, k);
    if (!bad.ok()) return bad.status();
    CK_MECHANISM mech{CKM_RSA_PKCS, nullptr, 0};
    auto lease = Lease();
    if (!lease.ok()) return lease.status();
    if (caps.decrypt.count(RsaPadding::kPkcs1)) {
      auto pt = DecryptOnce(*lease, &mech, priv, *bad, k);
      if (pt.ok()) {
        caps.pkcs1_implicit_rejection = true;
      } else {
        spdlog::debug("PKCS#1 implicit-rejection probe (C_Decrypt): {}",
                      std::string(pt.status().message()));
        if (IsTokenLossRv(CkrOf(pt.status()))) return pt.status();
      }
    } else {
      auto h = UnwrapOnce(*lease, &mech, priv, *bad);
      if (h.ok()) {
        caps.pkcs1_implicit_rejection = true;
        DestroyObject(*lease, *h);
      } else {
        spdlog::debug("PKCS#1 implicit-rejection probe (C_UnwrapKey): {}",
                      std::string(h.status().message()));
        if (IsTokenLossRv(CkrOf(h.status()))) return h.status();
      }
    }
  }
  if (options_.allow_host_unpadding) {
    auto ct = crypto::RsaEncrypt(pub, RsaPadding::kPkcs1, probe);
    if (!ct.ok()) return ct.status();
    CK_MECHANISM mech{CKM_RSA_X_509, nullptr, 0};
    auto lease = Lease();
    if (!lease.ok()) return lease.status();
    auto em = DecryptOnce(*lease, &mech, priv, *ct, k);
    if (em.ok()) {
      auto pt = crypto::Pkcs1Unpad(*em, k);
      caps.raw_rsa = pt.ok() && same(*pt);
    } else {
      spdlog::debug("raw RSA probe: {}", std::string(em.status().message()));
    }
  }
  return caps;
}

absl::StatusOr<Pkcs11Backend::Metadata> Pkcs11Backend::ReadMetadata(
    SessionPool::Lease& l, const std::string& name, std::vector<CK_OBJECT_HANDLE>* objects) {
  Template t;
  t.Ulong(CKA_CLASS, CKO_DATA).Str(CKA_APPLICATION, kApplication).Str(CKA_LABEL, name);
  auto found = FindObjects(l, t);
  if (!found.ok()) return found.status();
  if (objects) objects->clear();
  if (found->empty()) {
    if (!metadata_in_token_.load()) {
      absl::MutexLock md_lock(&local_md_mu_);
      if (auto it = local_md_.find(name); it != local_md_.end()) return it->second;
    }
    return Metadata{};
  }
  // More than one object: a write that created the new version but could not destroy the
  // old one (WriteMetadata creates first). The highest `seq` is the current state.
  std::optional<Metadata> best;
  CK_OBJECT_HANDLE best_handle = CK_INVALID_HANDLE;
  for (CK_OBJECT_HANDLE h : *found) {
    auto value = GetAttr(l, h, CKA_VALUE);
    if (!value.ok()) return value.status();
    auto j = nlohmann::json::parse(value->begin(), value->end(), nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      spdlog::warn("key '{}': a metadata object is not JSON; ignoring it", name);
      continue;
    }
    Metadata md;
    md.present = true;
    md.created_unix = j.value("created", int64_t{0});
    md.enabled = j.value("enabled", true);
    md.allow_pkcs1 = j.value("allow_pkcs1", false);
    md.seq = j.value("seq", uint64_t{0});
    if (!best || md.seq > best->seq) {
      best = md;
      best_handle = h;
    }
  }
  if (objects) {
    objects->push_back(best_handle);
    for (CK_OBJECT_HANDLE h : *found) {
      if (h != best_handle) objects->push_back(h);
    }
    if (best_handle == CK_INVALID_HANDLE) objects->erase(objects->begin());
  }
  if (!best) return Metadata{};
  return *best;
}

absl::Status Pkcs11Backend::WriteMetadata(const std::string& name, const Metadata& md) {
  auto lease = Lease();
  if (!lease.ok()) return lease.status();
  const Module& m = module();
  std::vector<CK_OBJECT_HANDLE> existing;  // the current object first
  auto old = ReadMetadata(*lease, name, &existing);
  if (!old.ok()) return old.status();
  nlohmann::json j = {{"v", 1},
                      {"seq", old->seq + 1},
                      {"created", md.created_unix},
                      {"enabled", md.enabled},
                      {"allow_pkcs1", md.allow_pkcs1}};
  const std::string text = j.dump();
  if (existing.size() == 1) {
    CK_ATTRIBUTE a{CKA_VALUE, const_cast<char*>(text.data()), CK_ULONG(text.size())};
    auto s = m.Call("C_SetAttributeValue", m.fl()->C_SetAttributeValue, lease->handle(),
                    existing.front(), &a, CK_ULONG(1));
    if (s.ok()) return s;
    spdlog::debug("metadata update in place failed ({}); replacing the object",
                  std::string(s.message()));
  }
  // Replace: create the new version first, then destroy the old ones. A failed create
  // leaves the old state in the token (the caller gets the error, nothing is lost); a failed
  // destroy leaves an older version beside the new one, which ReadMetadata passes over by seq.
  Template t;
  t.Ulong(CKA_CLASS, CKO_DATA)
      .Bool(CKA_TOKEN, true)
      .Bool(CKA_PRIVATE, true)  // only a logged-in user can read or change it
      .Bool(CKA_MODIFIABLE, true)
      .Str(CKA_APPLICATION, kApplication)
      .Str(CKA_LABEL, name)
      .Str(CKA_VALUE, text);
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  absl::Status s =
      m.Call("C_CreateObject", m.fl()->C_CreateObject, lease->handle(), t.data(), t.size(), &h);
  if (s.ok()) {
    for (CK_OBJECT_HANDLE o : existing) {
      if (auto d = m.Call("C_DestroyObject", m.fl()->C_DestroyObject, lease->handle(), o);
          !d.ok()) {
        spdlog::warn(
            "key '{}': the previous metadata object stays beside the new one ({}); the newer one "
            "is used",
            name, std::string(d.message()));
      }
    }
    return s;
  }
  const CK_RV rv = CkrOf(s);
  if (!existing.empty() || (rv != CKR_ATTRIBUTE_VALUE_INVALID && rv != CKR_ATTRIBUTE_TYPE_INVALID &&
                            rv != CKR_TEMPLATE_INCONSISTENT)) {
    return absl::Status(s.code(), absl::StrCat("key '", name, "': metadata not written (",
                                               s.message(), "); the key keeps its previous state"));
  }
  if (metadata_in_token_.exchange(false)) {
    spdlog::error(
        "token '{}' cannot store data objects ({}): key metadata (enabled, allow_pkcs1, "
        "created) is kept in this process only and is NOT shared with other replicas",
        token_.label, std::string(s.message()));
  }
  Metadata stored = md;
  stored.present = true;
  stored.seq = old->seq + 1;
  absl::MutexLock l(&local_md_mu_);
  local_md_[name] = stored;
  return absl::OkStatus();
}

namespace {

// What is wrong with a service private key's attributes, one phrase per attribute (empty:
// nothing). A token that does not know an attribute (CKR_ATTRIBUTE_TYPE_INVALID, or the
// value unavailable) is not held against the key, except for CKA_SENSITIVE and
// CKA_EXTRACTABLE, which every token has.
absl::StatusOr<std::vector<std::string>> WrongKeyAttributes(SessionPool::Lease& l,
                                                            CK_OBJECT_HANDLE priv,
                                                            bool allow_pkcs1) {
  std::vector<std::string> wrong;
  auto optional_bool = [&](CK_ATTRIBUTE_TYPE t) -> absl::StatusOr<std::optional<bool>> {
    auto b = GetBool(l, priv, t);
    if (b.ok()) return std::optional<bool>(*b);
    if (b.status().code() == absl::StatusCode::kNotFound ||
        CkrOf(b.status()) == CKR_ATTRIBUTE_TYPE_INVALID ||
        CkrOf(b.status()) == CKR_ATTRIBUTE_SENSITIVE) {
      return std::optional<bool>();
    }
    return b.status();
  };
  struct Rule {
    CK_ATTRIBUTE_TYPE type;
    const char* name;
    bool want;
    bool required;  // must be readable
  };
  const Rule rules[] = {{CKA_SENSITIVE, "CKA_SENSITIVE", true, true},
                        {CKA_EXTRACTABLE, "CKA_EXTRACTABLE", false, true},
                        {CKA_SIGN, "CKA_SIGN", false, false},
                        {CKA_SIGN_RECOVER, "CKA_SIGN_RECOVER", false, false},
                        {CKA_DERIVE, "CKA_DERIVE", false, false},
                        {CKA_WRAP, "CKA_WRAP", false, false}};
  for (const Rule& r : rules) {
    auto v = optional_bool(r.type);
    if (!v.ok()) return v.status();
    if (!v->has_value()) {
      if (r.required) wrong.push_back(absl::StrCat(r.name, " is unreadable"));
      continue;
    }
    if (**v != r.want)
      wrong.push_back(absl::StrCat(r.name, " is ", **v ? "TRUE" : "FALSE", ", must be ",
                                   r.want ? "TRUE" : "FALSE"));
  }
  // Generated in the token (CKA_LOCAL): it must never have been anything but sensitive and
  // non-extractable.
  auto local = optional_bool(CKA_LOCAL);
  if (!local.ok()) return local.status();
  if (local->value_or(false)) {
    for (const Rule& r : {Rule{CKA_ALWAYS_SENSITIVE, "CKA_ALWAYS_SENSITIVE", true, false},
                          Rule{CKA_NEVER_EXTRACTABLE, "CKA_NEVER_EXTRACTABLE", true, false}}) {
      auto v = optional_bool(r.type);
      if (!v.ok()) return v.status();
      if (v->has_value() && **v != r.want) {
        wrong.push_back(
            absl::StrCat(r.name, " is FALSE, must be TRUE for a key generated in the token"));
      }
    }
  }
  // CKA_ALLOWED_MECHANISMS where the token keeps it: set, and only the rewrap mechanisms
  // (CKM_RSA_PKCS only on a key created or imported with allow_pkcs1).
  auto mechs = GetAttr(l, priv, CKA_ALLOWED_MECHANISMS);
  if (mechs.ok()) {
    std::vector<CK_MECHANISM_TYPE> list(mechs->size() / sizeof(CK_MECHANISM_TYPE));
    // (memcpy from an empty attribute's null data pointer is undefined even for 0 bytes)
    if (!list.empty())
      std::memcpy(list.data(), mechs->data(), list.size() * sizeof(CK_MECHANISM_TYPE));
    if (list.empty())
      wrong.push_back("CKA_ALLOWED_MECHANISMS is empty (any mechanism), must list the rewrap ones");
    for (CK_MECHANISM_TYPE m : list) {
      const bool ok =
          m == CKM_RSA_PKCS_OAEP || m == CKM_RSA_X_509 || (m == CKM_RSA_PKCS && allow_pkcs1);
      if (!ok)
        wrong.push_back(absl::StrFormat(
            "CKA_ALLOWED_MECHANISMS allows mechanism 0x%x%s", m,
            m == CKM_RSA_PKCS ? " (CKM_RSA_PKCS on a key without allow_pkcs1)" : ""));
    }
  } else if (mechs.status().code() != absl::StatusCode::kNotFound &&
             CkrOf(mechs.status()) != CKR_ATTRIBUTE_TYPE_INVALID) {
    // p11-kit's RPC (client module -> p11-kit server, 0.24.1) cannot carry this attribute's
    // mechanism array and answers CKR_DEVICE_ERROR while the token is fine: if the session
    // still answers, the value is unavailable through this module, not a lost token.
    CK_SESSION_INFO si{};
    const Module& m = l.module();
    if (CkrOf(mechs.status()) != CKR_DEVICE_ERROR ||
        !m.Call("C_GetSessionInfo", m.fl()->C_GetSessionInfo, l.handle(), &si).ok()) {
      return mechs.status();
    }
    spdlog::debug("CKA_ALLOWED_MECHANISMS cannot be read through this module ({}); not checked",
                  std::string(mechs.status().message()));
  }
  return wrong;
}

}  // namespace

absl::StatusOr<KeyInfo> Pkcs11Backend::LoadKey(const std::string& name) {
  auto lease = Lease();
  if (!lease.ok()) return lease.status();
  Template t;
  t.Ulong(CKA_CLASS, CKO_PRIVATE_KEY).Ulong(CKA_KEY_TYPE, CKK_RSA).Str(CKA_LABEL, name);
  auto found = FindObjects(*lease, t);
  if (!found.ok()) return found.status();
  if (found->empty()) return absl::NotFoundError(absl::StrCat("no key named '", name, "'"));
  if (found->size() > 1) {
    return absl::FailedPreconditionError(
        absl::StrCat(found->size(), " RSA private keys are labelled '", name, "'; refusing"));
  }
  const CK_OBJECT_HANDLE priv = found->front();

  auto n = GetAttr(*lease, priv, CKA_MODULUS);
  auto e = GetAttr(*lease, priv, CKA_PUBLIC_EXPONENT);
  if (!n.ok() || !e.ok() || n->empty() || e->empty()) {
    // Some tokens hide the modulus on private keys; use the public key object.
    Template pt;
    pt.Ulong(CKA_CLASS, CKO_PUBLIC_KEY).Ulong(CKA_KEY_TYPE, CKK_RSA).Str(CKA_LABEL, name);
    auto pubs = FindObjects(*lease, pt);
    if (!pubs.ok()) return pubs.status();
    if (pubs->empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("key '", name, "': modulus unreadable and no public key object"));
    }
    n = GetAttr(*lease, pubs->front(), CKA_MODULUS);
    e = GetAttr(*lease, pubs->front(), CKA_PUBLIC_EXPONENT);
    if (!n.ok()) return n.status();
    if (!e.ok()) return e.status();
  }
  auto pub = crypto::PublicKey::FromRsaComponents(*n, *e);
  if (!pub.ok()) return pub.status();

  auto md = ReadMetadata(*lease, name, nullptr);
  if (!md.ok()) return md.status();
  // ARCHITECTURE.md §1 and issue 7: the key's attributes must not allow more than rewraps.
  auto wrong = WrongKeyAttributes(*lease, priv, md->allow_pkcs1);
  if (!wrong.ok()) return wrong.status();
  if (!wrong->empty()) {
    const std::string why =
        absl::StrCat("key '", name, "' has unsafe attributes: ", absl::StrJoin(*wrong, "; "));
    if (options_.refuse_weak_keys) {
      spdlog::error("{}; refusing to serve it", why);
      return absl::FailedPreconditionError(absl::StrCat(why, "; refusing to serve it"));
    }
    spdlog::warn("{}; serving it because refuse_weak_keys is off", why);
  }
  lease->Release();

  auto caps = Probe(priv, *pub, md->allow_pkcs1);
  if (!caps.ok()) return caps.status();

  Entry entry;
  entry.info.name = name;
  entry.info.bits = pub->bits();
  entry.info.created_unix = md->created_unix;
  entry.info.enabled = md->enabled;
  entry.info.allow_pkcs1 = md->allow_pkcs1;
  entry.info.spki_der = pub->SpkiDer();
  entry.info.caps = std::move(*caps);
  entry.priv = priv;
  entry.modulus_len = static_cast<size_t>((pub->bits() + 7) / 8);
  entry.metadata_read = absl::Now();
  spdlog::info("key '{}' RSA-{}{}: decrypt {} unwrap {} raw_rsa {}{}{}", name, entry.info.bits,
               md->present ? "" : " (no metadata: defaults)",
               PaddingSetName(entry.info.caps.decrypt), PaddingSetName(entry.info.caps.unwrap),
               entry.info.caps.raw_rsa,
               entry.info.caps.pkcs1_implicit_rejection
                   ? " pkcs1_implicit_rejection (bad PKCS#1 padding gives a pseudo-random "
                     "secret, not DECRYPT_FAILED)"
                   : "",
               entry.info.enabled ? "" : " DISABLED");
  KeyInfo info = entry.info;
  absl::MutexLock l(&mu_);
  keys_[name] = std::move(entry);
  return info;
}

absl::Status Pkcs11Backend::LoadAllKeys() {
  std::vector<std::string> names;
  {
    auto lease = Lease();
    if (!lease.ok()) return lease.status();
    Template t;
    t.Ulong(CKA_CLASS, CKO_PRIVATE_KEY).Ulong(CKA_KEY_TYPE, CKK_RSA);
    auto found = FindObjects(*lease, t);
    if (!found.ok()) return found.status();
    for (CK_OBJECT_HANDLE h : *found) {
      auto label = GetAttr(*lease, h, CKA_LABEL);
      if (!label.ok() || label->empty()) continue;
      names.emplace_back(label->begin(), label->end());
    }
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  for (const auto& name : names) {
    {
      absl::MutexLock l(&mu_);
      if (keys_.count(name)) continue;  // loaded and probed before; metadata has a TTL
    }
    auto info = LoadKey(name);
    if (!info.ok()) {
      if (info.status().code() == absl::StatusCode::kUnavailable) return info.status();
      spdlog::warn("key '{}' not served: {}", name, std::string(info.status().message()));
    }
  }
  // Forget keys that vanished from the token.
  absl::MutexLock l(&mu_);
  for (auto it = keys_.begin(); it != keys_.end();) {
    it =
        std::binary_search(names.begin(), names.end(), it->first) ? std::next(it) : keys_.erase(it);
  }
  return absl::OkStatus();
}

absl::StatusOr<Pkcs11Backend::Entry> Pkcs11Backend::Lookup(const std::string& name) {
  {
    absl::MutexLock l(&mu_);
    auto it = keys_.find(name);
    if (it != keys_.end()) {
      if (absl::Now() - it->second.metadata_read < options_.metadata_ttl) return it->second;
    }
  }
  bool cached;
  {
    absl::MutexLock l(&mu_);
    cached = keys_.count(name) > 0;
  }
  if (!cached) {
    if (auto s = ValidateName(name); !s.ok()) return s;
    auto info = LoadKey(name);
    if (!info.ok()) return info.status();
  } else {
    // Another replica may have changed the shared metadata: re-read it.
    auto lease = Lease();
    if (!lease.ok()) return lease.status();
    auto md = ReadMetadata(*lease, name, nullptr);
    if (!md.ok()) return md.status();
    absl::MutexLock l(&mu_);
    auto it = keys_.find(name);
    if (it != keys_.end() && md->present) {
      it->second.info.enabled = md->enabled;
      it->second.info.created_unix = md->created_unix;
    }
    if (it != keys_.end()) it->second.metadata_read = absl::Now();
  }
  absl::MutexLock l(&mu_);
  auto it = keys_.find(name);
  if (it == keys_.end()) return absl::NotFoundError(absl::StrCat("no key named '", name, "'"));
  return it->second;
}

absl::StatusOr<CK_OBJECT_HANDLE> Pkcs11Backend::Reresolve(const std::string& name) {
  auto lease = Lease();
  if (!lease.ok()) return lease.status();
  Template t;
  t.Ulong(CKA_CLASS, CKO_PRIVATE_KEY).Ulong(CKA_KEY_TYPE, CKK_RSA).Str(CKA_LABEL, name);
  auto found = FindObjects(*lease, t);
  if (!found.ok()) return found.status();
  if (found->size() != 1) {
    return absl::NotFoundError(absl::StrCat("key '", name, "' is no longer in the token"));
  }
  spdlog::info("key '{}': object handle re-resolved", name);
  absl::MutexLock l(&mu_);
  auto it = keys_.find(name);
  if (it != keys_.end()) it->second.priv = found->front();
  return found->front();
}

absl::StatusOr<CK_OBJECT_HANDLE> Pkcs11Backend::PrivateKeyHandle(const std::string& name) {
  auto e = Lookup(name);
  if (!e.ok()) return e.status();
  return e->priv;
}

absl::StatusOr<std::vector<KeyInfo>> Pkcs11Backend::ListKeys() {
  if (auto s = LoadAllKeys(); !s.ok()) return s;
  std::vector<std::string> names;
  {
    absl::MutexLock l(&mu_);
    for (const auto& [name, entry] : keys_) names.push_back(name);
  }
  std::vector<KeyInfo> out;
  for (const auto& name : names) {
    auto e = Lookup(name);
    if (e.ok()) out.push_back(e->info);
  }
  return out;
}

absl::StatusOr<KeyInfo> Pkcs11Backend::GetKey(const std::string& name) {
  auto e = Lookup(name);
  if (!e.ok()) return e.status();
  return e->info;
}

absl::Status Pkcs11Backend::CheckNewName(SessionPool::Lease& lease, const std::string& name) {
  for (CK_OBJECT_CLASS cls : {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY}) {
    Template t;
    t.Ulong(CKA_CLASS, cls).Str(CKA_LABEL, name);
    auto found = FindObjects(lease, t);
    if (!found.ok()) return found.status();
    if (!found->empty()) {
      return absl::AlreadyExistsError(absl::StrCat("a key named '", name, "' already exists"));
    }
  }
  std::vector<CK_OBJECT_HANDLE> md;
  if (auto r = ReadMetadata(lease, name, &md); !r.ok()) return r.status();
  for (CK_OBJECT_HANDLE h : md) {
    // Metadata of a deleted key: drop it so the new key starts clean.
    const Module& m = module();
    (void)m.Call("C_DestroyObject", m.fl()->C_DestroyObject, lease.handle(), h);
  }
  return absl::OkStatus();
}

absl::StatusOr<KeyInfo> Pkcs11Backend::FinishNewKey(const std::string& name, bool allow_pkcs1,
                                                    CK_OBJECT_HANDLE hpriv, CK_OBJECT_HANDLE hpub) {
  Metadata md;
  md.created_unix = absl::ToUnixSeconds(absl::Now());
  md.allow_pkcs1 = allow_pkcs1;
  if (auto w = WriteMetadata(name, md); !w.ok()) {
    // Without its metadata the key would be served with defaults: remove it again.
    auto lease = Lease();
    if (lease.ok()) {
      DestroyObject(*lease, hpriv);
      DestroyObject(*lease, hpub);
    }
    return w;
  }
  auto info = LoadKey(name);
  if (!info.ok()) return info.status();
  if (info->caps.decrypt.empty() && info->caps.unwrap.empty() && !info->caps.raw_rsa) {
    spdlog::warn("key '{}': the token can do nothing with it", name);
  }
  return info;
}

namespace {

std::vector<CK_MECHANISM_TYPE> AllowedMechanisms(bool host_unpadding, bool pkcs1) {
  std::vector<CK_MECHANISM_TYPE> m{CKM_RSA_PKCS_OAEP};
  if (host_unpadding) m.push_back(CKM_RSA_X_509);
  if (pkcs1) m.push_back(CKM_RSA_PKCS);
  return m;
}

// Attributes of every service private key (ARCHITECTURE.md §6). Some tokens reject a
// few of them as CKR_ATTRIBUTE_TYPE_INVALID; those are in kOptionalPrivateAttrs.
void ServicePrivateKeyAttrs(Template& t, const std::string& name, const Bytes& id,
                            bool host_unpadding, bool pkcs1) {
  t.Ulong(CKA_CLASS, CKO_PRIVATE_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_RSA)
      .Bool(CKA_TOKEN, true)
      .Bool(CKA_PRIVATE, true)
      .Bool(CKA_SENSITIVE, true)
      .Bool(CKA_EXTRACTABLE, false)
      .Bool(CKA_DECRYPT, true)
      .Bool(CKA_UNWRAP, true)
      .Bool(CKA_SIGN, false)
      .Bool(CKA_SIGN_RECOVER, false)
      .Bool(CKA_DERIVE, false)
      .Str(CKA_LABEL, name)
      .Data(CKA_ID, id)
      .Mechanisms(AllowedMechanisms(host_unpadding, pkcs1));
}

// Dropped one at a time, in this order, when the token says CKR_ATTRIBUTE_TYPE_INVALID.
// (CKA_WRAP is not a private-key attribute; SoftHSM 2.6.1 rejects it, so it is never sent.)
// A failed C_GenerateKeyPair can leave a half-made session object behind in SoftHSM
// 2.6.1, so the session of a failed attempt is discarded.
constexpr CK_ATTRIBUTE_TYPE kOptionalPrivateAttrs[] = {CKA_ALLOWED_MECHANISMS, CKA_DERIVE,
                                                       CKA_SIGN_RECOVER};

// How tokens reject an attribute they do not support. NSS softoken 3.87 answers a template
// with CKA_ALLOWED_MECHANISMS with CKR_GENERAL_ERROR (measured), so that counts too; a
// real device error fails again on the retry and is returned then.
bool IsAttributeRejection(CK_RV rv) {
  return rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_VALUE_INVALID ||
         rv == CKR_TEMPLATE_INCONSISTENT || rv == CKR_GENERAL_ERROR;
}

// Calls `create` (C_GenerateKeyPair or C_CreateObject with `priv`). While the token rejects
// the template, drops the next optional attribute and tries again on the fresh session
// `renew` leases (the failed attempt may have left debris in the old one).
absl::Status CreateWithOptionalAttrs(const std::string& token_label, Template& priv,
                                     const std::function<absl::Status()>& create,
                                     const std::function<absl::Status()>& renew) {
  for (size_t drop = 0;; ++drop) {
    absl::Status s = create();
    if (s.ok() || !IsAttributeRejection(CkrOf(s)) || drop >= std::size(kOptionalPrivateAttrs)) {
      return s;
    }
    spdlog::warn("token '{}' rejects the key template ({}); retrying without attribute 0x{:x}{}",
                 token_label, std::string(s.message()), kOptionalPrivateAttrs[drop],
                 kOptionalPrivateAttrs[drop] == CKA_ALLOWED_MECHANISMS
                     ? " (CKA_ALLOWED_MECHANISMS: the token will not restrict the key's "
                       "mechanisms; hsm-rewrap still enforces allow_pkcs1 itself)"
                     : "");
    priv.Remove(kOptionalPrivateAttrs[drop]);
    if (absl::Status r = renew(); !r.ok()) return r;
  }
}

}  // namespace

absl::StatusOr<KeyInfo> Pkcs11Backend::CreateKey(const std::string& name, int bits,
                                                 bool allow_pkcs1) {
  if (auto s = ValidateName(name); !s.ok()) return s;
  if (bits != 2048 && bits != 3072 && bits != 4096) {
    return absl::InvalidArgumentError("RSA key size must be 2048, 3072 or 4096");
  }
  absl::MutexLock admin(&admin_mu_);
  const Module& m = module();
  auto lease = Lease();
  if (!lease.ok()) return lease.status();
  if (auto s = CheckNewName(*lease, name); !s.ok()) return s;

  const Bytes id = RandomBytes(20);
  Template pub;
  pub.Ulong(CKA_CLASS, CKO_PUBLIC_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_RSA)
      .Bool(CKA_TOKEN, true)
      .Bool(CKA_PRIVATE, false)
      .Bool(CKA_ENCRYPT, true)
      .Bool(CKA_VERIFY, false)
      .Bool(CKA_WRAP, false)
      .Str(CKA_LABEL, name)
      .Data(CKA_ID, id)
      .Ulong(CKA_MODULUS_BITS, CK_ULONG(bits))
      .Data(CKA_PUBLIC_EXPONENT, Bytes{0x01, 0x00, 0x01});
  Template priv;
  ServicePrivateKeyAttrs(priv, name, id, options_.allow_host_unpadding, allow_pkcs1);
  CK_MECHANISM mech{CKM_RSA_PKCS_KEY_PAIR_GEN, nullptr, 0};
  CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
  auto renew = [&]() -> absl::Status {
    lease->MarkBroken();
    lease->Release();
    lease = Lease();
    return lease.status();
  };
  absl::Status s = CreateWithOptionalAttrs(
      token_.label, priv,
      [&] {
        return m.Call("C_GenerateKeyPair", m.fl()->C_GenerateKeyPair, lease->handle(), &mech,
                      pub.data(), pub.size(), priv.data(), priv.size(), &hpub, &hpriv);
      },
      renew);
  if (!s.ok()) {
    if (!lease.ok()) return s;
    lease->MarkBroken();
    return s;
  }
  lease->Release();
  return FinishNewKey(name, allow_pkcs1, hpriv, hpub);
}

absl::StatusOr<KeyInfo> Pkcs11Backend::ImportKey(const std::string& name,
                                                 const crypto::RsaPrivateKeyParts& parts,
                                                 bool allow_pkcs1) {
  if (auto s = ValidateName(name); !s.ok()) return s;
  const Bytes n = StripLeadingZeros(parts.n);
  const Bytes e = StripLeadingZeros(parts.e);
  const int bits = BitLength(n);
  if (bits < 1024 || bits > 16384) {
    return absl::InvalidArgumentError("RSA key size must be 1024..16384 bits");
  }
  if (e.empty() || parts.d.empty()) {
    return absl::InvalidArgumentError("RSA private key needs n, e and d");
  }
  const bool crt = !parts.p.empty() && !parts.q.empty() && !parts.dp.empty() && !parts.dq.empty() &&
                   !parts.qinv.empty();
  absl::MutexLock admin(&admin_mu_);
  const Module& m = module();
  auto lease = Lease();
  if (!lease.ok()) return lease.status();
  if (auto s = CheckNewName(*lease, name); !s.ok()) return s;

  const Bytes id = RandomBytes(20);
  Template priv;
  ServicePrivateKeyAttrs(priv, name, id, options_.allow_host_unpadding, allow_pkcs1);
  priv.Data(CKA_MODULUS, n).Data(CKA_PUBLIC_EXPONENT, e).SecretRef(CKA_PRIVATE_EXPONENT, parts.d);
  if (crt) {
    // Three-prime keys (Wycheproof) have no two-prime CRT form: then n, e, d only.
    priv.SecretRef(CKA_PRIME_1, parts.p)
        .SecretRef(CKA_PRIME_2, parts.q)
        .SecretRef(CKA_EXPONENT_1, parts.dp)
        .SecretRef(CKA_EXPONENT_2, parts.dq)
        .SecretRef(CKA_COEFFICIENT, parts.qinv);
  }
  CK_OBJECT_HANDLE hpriv = CK_INVALID_HANDLE;
  auto renew = [&]() -> absl::Status {
    lease->MarkBroken();
    lease->Release();
    lease = Lease();
    return lease.status();
  };
  absl::Status s = CreateWithOptionalAttrs(
      token_.label, priv,
      [&] {
        return m.Call("C_CreateObject", m.fl()->C_CreateObject, lease->handle(), priv.data(),
                      priv.size(), &hpriv);
      },
      renew);
  if (!s.ok()) {
    if (!lease.ok()) return s;
    lease->MarkBroken();
    const CK_RV rv = CkrOf(s);
    if (!crt && (rv == CKR_TEMPLATE_INCOMPLETE || rv == CKR_ATTRIBUTE_VALUE_INVALID)) {
      // NSS softoken 3.87 derives p and q from n, e, d only for two-prime keys; a
      // three-prime key (no two-prime CRT form) is CKR_TEMPLATE_INCOMPLETE.
      spdlog::info("token '{}' cannot import key '{}' without CRT parameters: {}", token_.label,
                   name, std::string(s.message()));
      return absl::FailedPreconditionError(
          "this token needs the CRT parameters (p, q, dP, dQ, qInv) of a two-prime RSA key; "
          "a multi-prime key cannot be imported into it");
    }
    return s;
  }

  Template pub;
  pub.Ulong(CKA_CLASS, CKO_PUBLIC_KEY)
      .Ulong(CKA_KEY_TYPE, CKK_RSA)
      .Bool(CKA_TOKEN, true)
      .Bool(CKA_PRIVATE, false)
      .Bool(CKA_ENCRYPT, true)
      .Bool(CKA_VERIFY, false)
      .Bool(CKA_WRAP, false)
      .Str(CKA_LABEL, name)
      .Data(CKA_ID, id)
      .Data(CKA_MODULUS, n)
      .Data(CKA_PUBLIC_EXPONENT, e);
  CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE;
  if (auto ps = m.Call("C_CreateObject", m.fl()->C_CreateObject, lease->handle(), pub.data(),
                       pub.size(), &hpub);
      !ps.ok()) {
    DestroyObject(*lease, hpriv);
    return ps;
  }
  lease->Release();
  return FinishNewKey(name, allow_pkcs1, hpriv, hpub);
}

absl::StatusOr<KeyInfo> Pkcs11Backend::SetEnabled(const std::string& name, bool enabled) {
  absl::MutexLock admin(&admin_mu_);
  auto entry = Lookup(name);
  if (!entry.ok()) return entry.status();
  Metadata md;
  {
    auto lease = Lease();
    if (!lease.ok()) return lease.status();
    auto cur = ReadMetadata(*lease, name, nullptr);
    if (!cur.ok()) return cur.status();
    md = *cur;
  }
  md.enabled = enabled;
  if (!md.present) md.allow_pkcs1 = entry->info.allow_pkcs1;
  if (auto s = WriteMetadata(name, md); !s.ok()) return s;
  absl::MutexLock l(&mu_);
  auto it = keys_.find(name);
  if (it == keys_.end()) return absl::NotFoundError(absl::StrCat("no key named '", name, "'"));
  it->second.info.enabled = enabled;
  it->second.metadata_read = absl::Now();
  spdlog::info("key '{}' {}", name, enabled ? "enabled" : "disabled");
  return it->second.info;
}

OpResult<crypto::SecretBytes> Pkcs11Backend::TokenDecrypt(const std::string& name,
                                                          CK_MECHANISM* mech,
                                                          absl::Span<const uint8_t> ciphertext) {
  using R = OpResult<crypto::SecretBytes>;
  for (int attempt = 0;; ++attempt) {
    auto entry = Lookup(name);
    if (!entry.ok()) return R::FromStatus(entry.status());
    auto lease = Lease();
    if (!lease.ok()) return R::FromStatus(lease.status());
    bool saw_ciphertext = false;
    auto out =
        DecryptOnce(*lease, mech, entry->priv, ciphertext, entry->modulus_len, &saw_ciphertext);
    if (out.ok()) return *std::move(out);
    lease->Release();  // broken: closed now
    if (IsHandleRv(CkrOf(out.status())) && attempt == 0) {
      if (auto h = Reresolve(name); !h.ok()) return R::FromStatus(h.status());
      continue;
    }
    return TokenFailure<crypto::SecretBytes>(out.status(), saw_ciphertext);
  }
}

OpResult<crypto::SecretBytes> Pkcs11Backend::Decrypt(const std::string& key_name,
                                                     RsaPadding padding,
                                                     absl::Span<const uint8_t> ciphertext,
                                                     Path path) {
  using R = OpResult<crypto::SecretBytes>;
  auto entry = Lookup(key_name);
  if (!entry.ok()) return R::FromStatus(entry.status());
  const KeyInfo& info = entry->info;
  if (!info.enabled) {
    return R::Refused(
        absl::FailedPreconditionError(absl::StrCat("key '", key_name, "' is disabled")));
  }
  if (padding == RsaPadding::kPkcs1 && !info.allow_pkcs1) {
    return R::Refused(absl::FailedPreconditionError(
        absl::StrCat("key '", key_name, "' does not allow PKCS#1 v1.5")));
  }
  // Checked before the token: an empty input poisons a SoftHSM session (TOKENS.md §15),
  // and every wrong length must look like every other decryption failure.
  if (ciphertext.size() != entry->modulus_len) return R::DecryptFailed();

  switch (path) {
    case Path::kTokenDecrypt: {
      if (!info.caps.decrypt.count(padding)) {
        return R::Refused(absl::UnimplementedError(absl::StrCat(
            "token cannot C_Decrypt ", PaddingName(padding), " with key '", key_name, "'")));
      }
      CK_RSA_PKCS_OAEP_PARAMS params{};
      CK_MECHANISM mech = MechFor(padding, &params);
      return TokenDecrypt(key_name, &mech, ciphertext);
    }
    case Path::kHostUnpadding: {
      if (!options_.allow_host_unpadding || !info.caps.raw_rsa) {
        return R::Refused(absl::UnimplementedError(
            absl::StrCat("HOST_UNPADDING is not available for key '", key_name, "'")));
      }
      CK_MECHANISM mech{CKM_RSA_X_509, nullptr, 0};
      auto em = TokenDecrypt(key_name, &mech, ciphertext);
      if (!em.ok()) return em;
      absl::StatusOr<crypto::SecretBytes> pt =
          padding == RsaPadding::kPkcs1
              ? crypto::Pkcs1Unpad(*em, entry->modulus_len)
              : crypto::OaepUnpad(*em, entry->modulus_len, crypto::OaepHash(padding),
                                  crypto::OaepHash(padding));
      if (!pt.ok()) return R::DecryptFailed();
      return *std::move(pt);
    }
    case Path::kInToken:
      break;
  }
  return R::Refused(absl::InvalidArgumentError("Decrypt() does not take the IN_TOKEN path"));
}

OpResult<Bytes> Pkcs11Backend::RewrapInToken(const std::string& key_name, RsaPadding in_padding,
                                             absl::Span<const uint8_t> ciphertext,
                                             const crypto::PublicKey& device_key,
                                             RsaPadding out_padding) {
  using R = OpResult<Bytes>;
  auto entry = Lookup(key_name);
  if (!entry.ok()) return R::FromStatus(entry.status());
  const KeyInfo& info = entry->info;
  if (!info.enabled) {
    return R::Refused(
        absl::FailedPreconditionError(absl::StrCat("key '", key_name, "' is disabled")));
  }
  if (in_padding == RsaPadding::kPkcs1 && !info.allow_pkcs1) {
    return R::Refused(absl::FailedPreconditionError(
        absl::StrCat("key '", key_name, "' does not allow PKCS#1 v1.5")));
  }
  if (!info.caps.unwrap.count(in_padding)) {
    return R::Refused(absl::UnimplementedError(absl::StrCat(
        "token cannot C_UnwrapKey ", PaddingName(in_padding), " with key '", key_name, "'")));
  }
  if (!wrap_paddings_.count(out_padding)) {
    return R::Refused(absl::UnimplementedError(
        absl::StrCat("token cannot C_WrapKey with ", PaddingName(out_padding))));
  }
  if (!device_key.is_rsa()) {
    return R::Refused(absl::InvalidArgumentError("IN_TOKEN rewrap needs an RSA device key"));
  }
  if (ciphertext.size() != entry->modulus_len) return R::DecryptFailed();

  const Bytes dn = device_key.modulus();
  const Bytes de = device_key.public_exponent();
  // The longest secret the output padding can carry to this device key: the host path's
  // rule (crypto::MaxPlaintextLen), so both paths give the same answer for the same item.
  const size_t max_secret =
      crypto::MaxPlaintextLen(out_padding, static_cast<size_t>((device_key.bits() + 7) / 8));
  CK_RSA_PKCS_OAEP_PARAMS in_params{}, out_params{};
  CK_MECHANISM in_mech = MechFor(in_padding, &in_params);
  CK_MECHANISM out_mech = MechFor(out_padding, &out_params);
  for (int attempt = 0;; ++attempt) {
    auto e = Lookup(key_name);
    if (!e.ok()) return R::FromStatus(e.status());
    auto lease = Lease();
    if (!lease.ok()) return R::FromStatus(lease.status());
    auto secret = UnwrapOnce(*lease, &in_mech, e->priv, ciphertext);
    if (!secret.ok()) {
      lease->Release();
      if (IsHandleRv(CkrOf(secret.status())) && attempt == 0) {
        if (auto h = Reresolve(key_name); !h.ok()) return R::FromStatus(h.status());
        continue;
      }
      return TokenFailure<Bytes>(secret.status(), /*saw_ciphertext=*/true);
    }
    // Both session objects are destroyed whatever happens below (a failed destroy closes
    // the session, which destroys them too).
    CK_OBJECT_HANDLE device = CK_INVALID_HANDLE;
    absl::Cleanup cleanup = [&] {
      DestroyObject(*lease, *secret);
      DestroyObject(*lease, device);
    };
    // The secret's length (CKA_VALUE_LEN is readable on a sensitive key: NSS softoken).
    // Tokens that do not give it (SoftHSM2 2.6 leaves it 0 on unwrapped secrets) are judged
    // by C_WrapKey's answer below.
    if (auto v = GetAttr(*lease, *secret, CKA_VALUE_LEN); v.ok() && v->size() == sizeof(CK_ULONG)) {
      CK_ULONG n = 0;
      std::memcpy(&n, v->data(), sizeof(n));
      if (n > max_secret) return R::Refused(absl::InvalidArgumentError(kSecretTooLongText));
    }
    auto dev = CreateSessionPublicKey(*lease, dn, de);
    if (!dev.ok()) return TokenFailure<Bytes>(dev.status(), /*saw_ciphertext=*/false);
    device = *dev;
    auto wrapped = WrapOnce(*lease, &out_mech, device, *secret, dn.size());
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
}

}  // namespace hsmrewrap::hsm
