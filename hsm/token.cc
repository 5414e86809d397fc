#include "hsm/token.h"

#include <p11-kit/uri.h>

#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace hsmrewrap::hsm {
namespace {

struct UriDeleter {
  void operator()(P11KitUri* u) const { p11_kit_uri_free(u); }
};

absl::StatusOr<std::vector<CK_SLOT_ID>> SlotList(const Module& m, bool token_present) {
  CK_ULONG n = 0;
  const CK_BBOOL present = token_present ? CK_TRUE : CK_FALSE;
  if (auto s = m.Call("C_GetSlotList", m.fl()->C_GetSlotList, present, nullptr, &n); !s.ok()) {
    return s;
  }
  std::vector<CK_SLOT_ID> slots(n);
  if (n == 0) return slots;
  if (auto s = m.Call("C_GetSlotList", m.fl()->C_GetSlotList, present, slots.data(), &n);
      !s.ok()) {
    return s;
  }
  slots.resize(n);
  return slots;
}

// Copies `s` into a blank-padded field of n bytes (labels are 32 bytes, no NUL).
void PadInto(unsigned char* dst, size_t n, const std::string& s) {
  std::memset(dst, ' ', n);
  std::memcpy(dst, s.data(), std::min(n, s.size()));
}

CK_UTF8CHAR_PTR PinPtr(const crypto::SecretString& pin) {
  return reinterpret_cast<CK_UTF8CHAR_PTR>(const_cast<char*>(pin.data()));
}

}  // namespace

absl::StatusOr<std::vector<TokenSlot>> ListTokens(const Module& m, bool include_uninitialized) {
  auto slots = SlotList(m, true);
  if (!slots.ok()) return slots.status();
  std::vector<TokenSlot> out;
  for (CK_SLOT_ID id : *slots) {
    CK_TOKEN_INFO ti{};
    if (auto s = m.Call("C_GetTokenInfo", m.fl()->C_GetTokenInfo, id, &ti); !s.ok()) {
      spdlog::debug("slot {}: {}", id, std::string(s.message()));
      continue;
    }
    if (!include_uninitialized && !(ti.flags & CKF_TOKEN_INITIALIZED)) continue;
    TokenSlot t;
    t.slot = id;
    t.label = PaddedString(ti.label, sizeof(ti.label));
    t.serial = PaddedString(ti.serialNumber, sizeof(ti.serialNumber));
    t.model = PaddedString(ti.model, sizeof(ti.model));
    t.manufacturer = PaddedString(ti.manufacturerID, sizeof(ti.manufacturerID));
    t.flags = ti.flags;
    out.push_back(std::move(t));
  }
  return out;
}

absl::StatusOr<TokenSlot> FindToken(const Module& m, const TokenSelector& sel) {
  if (sel.label.empty() && sel.serial.empty() && sel.uri.empty()) {
    return absl::InvalidArgumentError("token selector needs a label, serial or PKCS#11 URI");
  }
  std::unique_ptr<P11KitUri, UriDeleter> uri;
  if (!sel.uri.empty()) {
    uri.reset(p11_kit_uri_new());
    int rc = p11_kit_uri_parse(sel.uri.c_str(), P11_KIT_URI_FOR_ANY, uri.get());
    if (rc != P11_KIT_URI_OK) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad PKCS#11 URI '", sel.uri, "': ", p11_kit_uri_message(rc)));
    }
  }
  auto slots = SlotList(m, true);
  if (!slots.ok()) return slots.status();
  std::vector<TokenSlot> matches;
  for (CK_SLOT_ID id : *slots) {
    CK_TOKEN_INFO ti{};
    if (!m.Call("C_GetTokenInfo", m.fl()->C_GetTokenInfo, id, &ti).ok()) continue;
    if (!(ti.flags & CKF_TOKEN_INITIALIZED)) continue;
    TokenSlot t;
    t.slot = id;
    t.label = PaddedString(ti.label, sizeof(ti.label));
    t.serial = PaddedString(ti.serialNumber, sizeof(ti.serialNumber));
    t.model = PaddedString(ti.model, sizeof(ti.model));
    t.manufacturer = PaddedString(ti.manufacturerID, sizeof(ti.manufacturerID));
    t.flags = ti.flags;
    if (!sel.label.empty() && t.label != sel.label) continue;
    if (!sel.serial.empty() && t.serial != sel.serial) continue;
    if (uri && p11_kit_uri_match_token_info(uri.get(), &ti) != 1) continue;
    matches.push_back(std::move(t));
  }
  std::string what = absl::StrCat("label='", sel.label, "' serial='", sel.serial, "' uri='",
                                  sel.uri, "'");
  if (matches.empty()) {
    return absl::NotFoundError(absl::StrCat("no initialised token matches ", what, " in ",
                                            m.path()));
  }
  if (matches.size() > 1) {
    return absl::FailedPreconditionError(
        absl::StrCat(matches.size(), " tokens match ", what, "; select by serial"));
  }
  return matches.front();
}

absl::StatusOr<TokenSlot> InitSoftToken(const Module& m, const std::string& label,
                                        const crypto::SecretString& so_pin,
                                        const crypto::SecretString& user_pin) {
  if (label.empty() || label.size() > 32) {
    return absl::InvalidArgumentError("token label must have 1..32 bytes");
  }
  auto slots = SlotList(m, true);
  if (!slots.ok()) return slots.status();
  for (CK_SLOT_ID id : *slots) {
    CK_TOKEN_INFO ti{};
    if (!m.Call("C_GetTokenInfo", m.fl()->C_GetTokenInfo, id, &ti).ok()) continue;
    if (ti.flags & CKF_TOKEN_INITIALIZED) continue;
    unsigned char padded[32];
    PadInto(padded, sizeof(padded), label);
    if (auto s = m.Call("C_InitToken", m.fl()->C_InitToken, id, PinPtr(so_pin),
                        CK_ULONG(so_pin.size()), padded);
        !s.ok()) {
      return s;
    }
    CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
    if (auto s = m.Call("C_OpenSession", m.fl()->C_OpenSession, id,
                        CK_FLAGS(CKF_SERIAL_SESSION | CKF_RW_SESSION), nullptr, nullptr, &h);
        !s.ok()) {
      return s;
    }
    absl::Status st = m.Call("C_Login", m.fl()->C_Login, h, CK_USER_TYPE(CKU_SO),
                             PinPtr(so_pin), CK_ULONG(so_pin.size()));
    if (st.ok()) {
      st = m.Call("C_InitPIN", m.fl()->C_InitPIN, h, PinPtr(user_pin),
                  CK_ULONG(user_pin.size()));
      (void)m.Call("C_Logout", m.fl()->C_Logout, h);
    }
    (void)m.Call("C_CloseSession", m.fl()->C_CloseSession, h);
    if (!st.ok()) return st;
    TokenSlot t;
    t.slot = id;
    t.label = label;
    CK_TOKEN_INFO after{};
    if (m.Call("C_GetTokenInfo", m.fl()->C_GetTokenInfo, id, &after).ok()) {
      t.serial = PaddedString(after.serialNumber, sizeof(after.serialNumber));
      t.model = PaddedString(after.model, sizeof(after.model));
      t.manufacturer = PaddedString(after.manufacturerID, sizeof(after.manufacturerID));
      t.flags = after.flags;
    }
    spdlog::info("initialised token '{}' serial {} in {}", label, t.serial, m.path());
    return t;
  }
  return absl::NotFoundError(absl::StrCat("no slot with an uninitialised token in ", m.path()));
}

absl::Status InitNssUserPin(const Module& m, CK_SLOT_ID slot,
                            const crypto::SecretString& user_pin) {
  CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
  if (auto s = m.Call("C_OpenSession", m.fl()->C_OpenSession, slot,
                      CK_FLAGS(CKF_SERIAL_SESSION | CKF_RW_SESSION), nullptr, nullptr, &h);
      !s.ok()) {
    return s;
  }
  static CK_UTF8CHAR empty[1] = {0};
  absl::Status st =
      m.Call("C_Login", m.fl()->C_Login, h, CK_USER_TYPE(CKU_SO), empty, CK_ULONG(0));
  if (st.ok()) {
    st = m.Call("C_InitPIN", m.fl()->C_InitPIN, h, PinPtr(user_pin), CK_ULONG(user_pin.size()));
    (void)m.Call("C_Logout", m.fl()->C_Logout, h);
  }
  (void)m.Call("C_CloseSession", m.fl()->C_CloseSession, h);
  return st;
}

}  // namespace hsmrewrap::hsm
