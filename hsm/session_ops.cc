// The operations of a leased session (SessionPool::Lease), each one C_ call or a fixed
// sequence of them, all through Module::Call.
#include "hsm/session_pool.h"
#include "spdlog/spdlog.h"

namespace hsmrewrap::hsm {

using Lease = SessionPool::Lease;

absl::StatusOr<crypto::Bytes> Lease::GetAttribute(CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type) {
  const Module& m = module();
  CK_ATTRIBUTE a{type, nullptr, 0};
  if (auto s =
          m.Call("C_GetAttributeValue", m.fl()->C_GetAttributeValue, handle_, obj, &a, CK_ULONG(1));
      !s.ok()) {
    return s;
  }
  if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION) {
    return absl::NotFoundError("attribute unavailable");
  }
  crypto::Bytes out(a.ulValueLen);
  a.pValue = out.data();
  if (auto s =
          m.Call("C_GetAttributeValue", m.fl()->C_GetAttributeValue, handle_, obj, &a, CK_ULONG(1));
      !s.ok()) {
    return s;
  }
  out.resize(a.ulValueLen);
  return out;
}

absl::StatusOr<bool> Lease::GetBool(CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type) {
  auto b = GetAttribute(obj, type);
  if (!b.ok()) return b.status();
  if (b->size() != sizeof(CK_BBOOL)) return absl::InternalError("bad CK_BBOOL attribute");
  return (*b)[0] != CK_FALSE;
}

absl::Status Lease::SetAttribute(CK_OBJECT_HANDLE obj, CK_ATTRIBUTE attribute) {
  const Module& m = module();
  return m.Call("C_SetAttributeValue", m.fl()->C_SetAttributeValue, handle_, obj, &attribute,
                CK_ULONG(1));
}

absl::StatusOr<std::vector<CK_OBJECT_HANDLE>> Lease::Find(Template& t) {
  const Module& m = module();
  if (auto s = m.Call("C_FindObjectsInit", m.fl()->C_FindObjectsInit, handle_, t.data(), t.size());
      !s.ok()) {
    MarkBroken();
    return s;
  }
  std::vector<CK_OBJECT_HANDLE> out;
  CK_OBJECT_HANDLE batch[64];
  for (;;) {
    CK_ULONG n = 0;
    if (auto s = m.Call("C_FindObjects", m.fl()->C_FindObjects, handle_, batch, CK_ULONG(64), &n);
        !s.ok()) {
      MarkBroken();
      return s;
    }
    out.insert(out.end(), batch, batch + n);
    if (n < 64) break;
  }
  if (auto s = m.Call("C_FindObjectsFinal", m.fl()->C_FindObjectsFinal, handle_); !s.ok()) {
    MarkBroken();
    return s;
  }
  return out;
}

absl::StatusOr<CK_OBJECT_HANDLE> Lease::Create(Template& t) {
  const Module& m = module();
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  if (auto s = m.Call("C_CreateObject", m.fl()->C_CreateObject, handle_, t.data(), t.size(), &h);
      !s.ok()) {
    return s;
  }
  return h;
}

absl::Status Lease::TryDestroy(CK_OBJECT_HANDLE h) {
  const Module& m = module();
  return m.Call("C_DestroyObject", m.fl()->C_DestroyObject, handle_, h);
}

void Lease::Destroy(CK_OBJECT_HANDLE h) {
  if (h == CK_INVALID_HANDLE) return;
  if (auto s = TryDestroy(h); !s.ok()) {
    spdlog::warn("{}", std::string(s.message()));
    MarkBroken();
  }
}

absl::StatusOr<CK_OBJECT_HANDLE> Lease::DeriveKey(CK_MECHANISM* mech, CK_OBJECT_HANDLE base,
                                                  Template& t) {
  const Module& m = module();
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  if (auto s = m.Call("C_DeriveKey", m.fl()->C_DeriveKey, handle_, mech, base, t.data(), t.size(),
                      &h);
      !s.ok()) {
    return s;
  }
  return h;
}

absl::StatusOr<CK_OBJECT_HANDLE> Lease::GenerateKey(CK_MECHANISM* mech, Template& t) {
  const Module& m = module();
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  if (auto s = m.Call("C_GenerateKey", m.fl()->C_GenerateKey, handle_, mech, t.data(), t.size(), &h);
      !s.ok()) {
    return s;
  }
  return h;
}

absl::Status Lease::GenerateKeyPair(CK_MECHANISM* mech, Template& pub, Template& priv,
                                    CK_OBJECT_HANDLE* hpub, CK_OBJECT_HANDLE* hpriv) {
  const Module& m = module();
  return m.Call("C_GenerateKeyPair", m.fl()->C_GenerateKeyPair, handle_, mech, pub.data(),
                pub.size(), priv.data(), priv.size(), hpub, hpriv);
}

absl::StatusOr<crypto::SecretBytes> Lease::Decrypt(CK_MECHANISM* mech, CK_OBJECT_HANDLE key,
                                                   absl::Span<const uint8_t> ct, size_t out_len,
                                                   bool* saw_ciphertext) {
  const Module& m = module();
  if (saw_ciphertext) *saw_ciphertext = false;
  if (auto s = m.Call("C_DecryptInit", m.fl()->C_DecryptInit, handle_, mech, key); !s.ok()) {
    MarkBroken();
    return s;
  }
  if (saw_ciphertext) *saw_ciphertext = true;
  crypto::SecretBytes out(out_len);
  CK_ULONG len = out.size();
  if (auto s = m.Call("C_Decrypt", m.fl()->C_Decrypt, handle_, const_cast<uint8_t*>(ct.data()),
                      CK_ULONG(ct.size()), out.data(), &len);
      !s.ok()) {
    // After a failed C_Decrypt the operation state is unknown (SoftHSM2 keeps it active).
    MarkBroken();
    return s;
  }
  out.resize(len);
  return out;
}

absl::StatusOr<CK_OBJECT_HANDLE> Lease::Unwrap(CK_MECHANISM* mech, CK_OBJECT_HANDLE key,
                                               absl::Span<const uint8_t> ct, Template& t) {
  const Module& m = module();
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  if (auto s = m.Call("C_UnwrapKey", m.fl()->C_UnwrapKey, handle_, mech, key,
                      const_cast<uint8_t*>(ct.data()), CK_ULONG(ct.size()), t.data(), t.size(), &h);
      !s.ok()) {
    MarkBroken();
    return s;
  }
  return h;
}

absl::StatusOr<crypto::Bytes> Lease::Wrap(CK_MECHANISM* mech, CK_OBJECT_HANDLE wrapping_key,
                                          CK_OBJECT_HANDLE key, size_t out_len) {
  const Module& m = module();
  crypto::Bytes out(out_len);
  CK_ULONG len = out.size();
  if (auto s = m.Call("C_WrapKey", m.fl()->C_WrapKey, handle_, mech, wrapping_key, key, out.data(),
                      &len);
      !s.ok()) {
    MarkBroken();
    return s;
  }
  out.resize(len);
  return out;
}

bool Lease::Answers() {
  CK_SESSION_INFO si{};
  const Module& m = module();
  return m.Call("C_GetSessionInfo", m.fl()->C_GetSessionInfo, handle_, &si).ok();
}

}  // namespace hsmrewrap::hsm
