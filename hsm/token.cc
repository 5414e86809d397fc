#include "hsm/token.h"

#include <p11-kit/p11-kit.h>
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

std::string FixedField(const CK_UTF8CHAR* p, size_t n) {
  std::string s(reinterpret_cast<const char*>(p), n);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\0')) s.pop_back();
  return s;
}

absl::StatusOr<std::unique_ptr<P11KitUri, UriDeleter>> ParseUri(const std::string& text) {
  std::unique_ptr<P11KitUri, UriDeleter> uri(p11_kit_uri_new());
  const int rc = p11_kit_uri_parse(text.c_str(), P11_KIT_URI_FOR_ANY, uri.get());
  if (rc != P11_KIT_URI_OK) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad PKCS#11 URI '", text, "': ", p11_kit_uri_message(rc)));
  }
  return uri;
}

// The file of the p11-kit registered module `name` (its .module configuration), without
// initialising any module.
absl::StatusOr<std::string> ModuleFileByName(const std::string& name) {
  CK_FUNCTION_LIST** modules = p11_kit_modules_load(nullptr, P11_KIT_MODULE_UNMANAGED);
  if (modules == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("module-name=", name, ": p11-kit found no configured modules"));
  }
  std::string file;
  for (CK_FUNCTION_LIST** m = modules; *m != nullptr; ++m) {
    char* n = p11_kit_module_get_name(*m);
    if (n != nullptr && name == n) {
      char* f = p11_kit_module_get_filename(*m);
      if (f != nullptr) file = f;
      free(f);
    }
    free(n);
  }
  p11_kit_modules_release(modules);
  if (file.empty()) {
    return absl::NotFoundError(absl::StrCat(
        "module-name=", name, ": no such p11-kit module (see `p11-kit list-modules`)"));
  }
  return file;
}

absl::StatusOr<std::vector<CK_SLOT_ID>> SlotList(const Module& m, bool token_present) {
  CK_ULONG n = 0;
  const CK_BBOOL present = token_present ? CK_TRUE : CK_FALSE;
  if (auto s = m.Call("C_GetSlotList", m.fl()->C_GetSlotList, present, nullptr, &n); !s.ok()) {
    return s;
  }
  std::vector<CK_SLOT_ID> slots(n);
  if (n == 0) return slots;
  if (auto s = m.Call("C_GetSlotList", m.fl()->C_GetSlotList, present, slots.data(), &n); !s.ok()) {
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

absl::StatusOr<UriExtras> ParseUriExtras(const std::string& text) {
  auto uri = ParseUri(text);
  if (!uri.ok()) return uri.status();
  UriExtras out;
  P11KitUri* u = uri->get();
  if (const char* path = p11_kit_uri_get_module_path(u)) out.module_path = path;
  if (const char* name = p11_kit_uri_get_module_name(u)) {
    auto file = ModuleFileByName(name);
    if (!file.ok()) return file.status();
    if (!out.module_path.empty() && out.module_path != *file) {
      return absl::InvalidArgumentError(absl::StrCat("URI '", text, "': module-name=", name, " is ",
                                                     *file, ", not module-path=", out.module_path));
    }
    out.module_path = *file;
  }
  if (const char* src = p11_kit_uri_get_pin_source(u)) {
    out.pin_source = src;
    if (out.pin_source.rfind("file:", 0) == 0) out.pin_source = out.pin_source.substr(5);
  }
  out.has_pin_value = p11_kit_uri_get_pin_value(u) != nullptr;
  CK_TOKEN_INFO* ti = p11_kit_uri_get_token_info(u);
  out.has_token_attributes = !FixedField(ti->label, sizeof ti->label).empty() ||
                             !FixedField(ti->serialNumber, sizeof ti->serialNumber).empty() ||
                             !FixedField(ti->manufacturerID, sizeof ti->manufacturerID).empty() ||
                             !FixedField(ti->model, sizeof ti->model).empty();
  if (CK_ATTRIBUTE* label = p11_kit_uri_get_attribute(u, CKA_LABEL)) {
    out.object.assign(static_cast<const char*>(label->pValue), label->ulValueLen);
  }
  if (CK_ATTRIBUTE* cls = p11_kit_uri_get_attribute(u, CKA_CLASS)) {
    CK_OBJECT_CLASS c = 0;
    if (cls->ulValueLen == sizeof c) std::memcpy(&c, cls->pValue, sizeof c);
    out.object_class = c;
  }
  return out;
}

absl::StatusOr<std::string> KeyNameFromNameOrUri(const std::string& name_or_uri) {
  if (name_or_uri.rfind("pkcs11:", 0) != 0) return name_or_uri;
  auto extras = ParseUriExtras(name_or_uri);
  if (!extras.ok()) return extras.status();
  if (extras->object.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("key URI '", name_or_uri, "' does not name the key (object=...)"));
  }
  if (extras->has_token_attributes || !extras->module_path.empty() || extras->has_pin_value ||
      !extras->pin_source.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("key URI '", name_or_uri,
                     "': only object= and type= belong in a key URI; the token and module are "
                     "chosen by token_uri/module"));
  }
  if (extras->object_class.has_value() && *extras->object_class != CKO_PRIVATE_KEY &&
      *extras->object_class != CKO_PUBLIC_KEY) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key URI '", name_or_uri, "': type must be private (or public), the RSA key pair"));
  }
  return extras->object;
}

namespace {
TokenSlot SlotOf(CK_SLOT_ID id, const CK_TOKEN_INFO& ti) {
  TokenSlot t;
  t.slot = id;
  t.label = PaddedString(ti.label, sizeof(ti.label));
  t.serial = PaddedString(ti.serialNumber, sizeof(ti.serialNumber));
  t.model = PaddedString(ti.model, sizeof(ti.model));
  t.manufacturer = PaddedString(ti.manufacturerID, sizeof(ti.manufacturerID));
  t.flags = ti.flags;
  return t;
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
    TokenSlot t = SlotOf(id, ti);
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
    auto parsed = ParseUri(sel.uri);
    if (!parsed.ok()) return parsed.status();
    uri = *std::move(parsed);
  }
  auto slots = SlotList(m, true);
  if (!slots.ok()) return slots.status();
  std::vector<TokenSlot> matches;
  for (CK_SLOT_ID id : *slots) {
    CK_TOKEN_INFO ti{};
    if (!m.Call("C_GetTokenInfo", m.fl()->C_GetTokenInfo, id, &ti).ok()) continue;
    if (!(ti.flags & CKF_TOKEN_INITIALIZED)) continue;
    TokenSlot t = SlotOf(id, ti);
    if (!sel.label.empty() && t.label != sel.label) continue;
    if (!sel.serial.empty() && t.serial != sel.serial) continue;
    if (uri && p11_kit_uri_match_token_info(uri.get(), &ti) != 1) continue;
    matches.push_back(std::move(t));
  }
  std::string what =
      absl::StrCat("label='", sel.label, "' serial='", sel.serial, "' uri='", sel.uri, "'");
  if (matches.empty()) {
    return absl::NotFoundError(
        absl::StrCat("no initialised token matches ", what, " in ", m.path()));
  }
  if (matches.size() > 1) {
    return absl::FailedPreconditionError(
        absl::StrCat(matches.size(), " tokens match ", what, "; select by serial"));
  }
  return matches.front();
}

absl::StatusOr<TokenSlot> InitTokenInSlot(const Module& m, CK_SLOT_ID id, const std::string& label,
                                          const crypto::SecretString& so_pin,
                                          const crypto::SecretString& user_pin) {
  if (label.empty() || label.size() > 32) {
    return absl::InvalidArgumentError("token label must have 1..32 bytes");
  }
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
  absl::Status st = m.Call("C_Login", m.fl()->C_Login, h, CK_USER_TYPE(CKU_SO), PinPtr(so_pin),
                           CK_ULONG(so_pin.size()));
  if (st.ok()) {
    st = m.Call("C_InitPIN", m.fl()->C_InitPIN, h, PinPtr(user_pin), CK_ULONG(user_pin.size()));
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
    return InitTokenInSlot(m, id, label, so_pin, user_pin);
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
  absl::Status st = m.Call("C_Login", m.fl()->C_Login, h, CK_USER_TYPE(CKU_SO), empty, CK_ULONG(0));
  if (st.ok()) {
    st = m.Call("C_InitPIN", m.fl()->C_InitPIN, h, PinPtr(user_pin), CK_ULONG(user_pin.size()));
    (void)m.Call("C_Logout", m.fl()->C_Logout, h);
  }
  (void)m.Call("C_CloseSession", m.fl()->C_CloseSession, h);
  return st;
}

}  // namespace hsmrewrap::hsm
