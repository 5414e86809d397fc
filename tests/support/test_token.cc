#include "tests/support/test_token.h"

#include <openssl/obj_mac.h>
#include <stdlib.h>

#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <cstdio>
#include <iostream>
#include <optional>

#include "absl/status/status.h"
#include "tests/leakcheck/record.h"
#include "tests/support/files.h"
#include "tests/support/rewrapd_harness.h"

namespace hsmrewrap::test {
namespace {

using crypto::RsaPadding;

constexpr char kSoftHsmLabel[] = "hsm-test";
constexpr char kSoftHsmSoPin[] = "5678";
constexpr char kSoftHsmUserPin[] = "1234";
constexpr char kNssUserPin[] = "nss-test-pin";
// openCryptoki's swtok: PINs of 4..8 bytes; C_InitToken resets the SO PIN to its default.
constexpr char kOpenCryptokiSoPin[] = "87654321";
constexpr char kOpenCryptokiUserPin[] = "ock-1234";
constexpr char kTpmSoPin[] = "tpm-so-5678";
constexpr char kTpmUserPin[] = "tpm-1234";

// Each kind's facts; what is not set here is false (TokenFacts' defaults).
TokenFacts SoftHsmFacts() {
  TokenFacts f;
  // OAEP with SHA-1 only (no OAEP-SHA2 in C_Decrypt, C_UnwrapKey or C_WrapKey): IN_TOKEN for
  // OAEP-SHA1 and PKCS#1 v1.5; OAEP-SHA2 only through HOST_UNPADDING.
  f.decrypt = f.unwrap = f.wrap = {RsaPadding::kOaepSha1, RsaPadding::kPkcs1};
  f.raw_rsa = f.keeps_allowed_mechanisms = f.stores_data_objects = f.serial_is_unique =
      f.imports_private_keys = f.imports_without_crt = f.imports_multi_prime_without_crt = true;
  // Read-only keys: C_SetAttributeValue on them fails with CKR_ACTION_PROHIBITED.
  f.read_only_keys = f.sets_sign_when_modifiable = true;
  // Not pkcs1_implicit_rejection: bad PKCS#1 padding is an error (CKR_GENERAL_ERROR).
  // No in-token CMS: its symmetric wrapping is AES key wrap (RFC 3394/5649) only, so
  // C_WrapKey with CKM_AES_CBC_PAD / CKM_DES3_CBC_PAD fails (CKR_MECHANISM_INVALID); and its
  // CKM_ECDH1_DERIVE takes CKD_NULL only (CKD_SHA1_KDF: CKR_MECHANISM_PARAM_INVALID).
  return f;
}

TokenFacts NssFacts() {
  TokenFacts f;
  // OAEP with SHA-1 and SHA-2, and PKCS#1 v1.5, natively in C_Decrypt, C_UnwrapKey and
  // C_WrapKey: TOKEN_DECRYPT and IN_TOKEN for every padding.
  f.decrypt = f.unwrap =
      f.wrap = {RsaPadding::kOaepSha1, RsaPadding::kOaepSha256, RsaPadding::kOaepSha384,
                RsaPadding::kOaepSha512, RsaPadding::kPkcs1};
  f.raw_rsa = f.pkcs1_implicit_rejection = f.imports_private_keys = f.imports_without_crt = true;
  // Every in-token CMS form: AES-256, AES-128 and 3DES content keys (C_GenerateKey, CBC_PAD
  // wrap of a sensitive secret), wrapped to the device with OAEP-SHA256 or PKCS#1 v1.5.
  for (auto t : {crypto::CmsKeyTransport::kRsaOaepSha256, crypto::CmsKeyTransport::kRsaPkcs1}) {
    for (auto c : {crypto::CmsContentCipher::kAes256Cbc, crypto::CmsContentCipher::kAes128Cbc,
                   crypto::CmsContentCipher::kDes3Cbc}) {
      f.cms_in_token.insert({t, c});
    }
  }
  // And to EC device keys: P-256 and P-384, AES content (ECDH with CKD_SHA1_KDF, AES key wrap).
  for (int curve : {NID_X9_62_prime256v1, NID_secp384r1}) {
    for (auto c : {crypto::CmsContentCipher::kAes256Cbc, crypto::CmsContentCipher::kAes128Cbc}) {
      f.ec_cms_in_token.insert({curve, c});
    }
  }
  // Read-only keys: C_SetAttributeValue on them fails with CKR_ATTRIBUTE_READ_ONLY.
  f.read_only_keys = f.sets_sign_when_modifiable = true;
  // Not keeps_allowed_mechanisms (C_GenerateKeyPair/C_CreateObject with it fail with
  // CKR_GENERAL_ERROR), stores_data_objects (C_CreateObject of CKO_DATA fails with
  // CKR_ATTRIBUTE_VALUE_INVALID), serial_is_unique, imports_multi_prime_without_crt
  // (CKR_TEMPLATE_INCOMPLETE).
  return f;
}

// Measured with openCryptoki 3.8.1 (Debian opencryptoki 3.8.1+dfsg-3.2), its software token
// swtok, under tests/support/hw_tokens.sh (hsm_opencryptoki_test).
TokenFacts OpenCryptokiFacts() {
  TokenFacts f;
  // C_Decrypt: OAEP with SHA-1 and SHA-2, and PKCS#1 v1.5. C_UnwrapKey: none, since the
  // session secret's template (CKA_SENSITIVE and CKA_EXTRACTABLE TRUE) is refused with
  // CKR_ATTRIBUTE_READ_ONLY, so no IN_TOKEN. C_WrapKey of a (non-sensitive) secret to a
  // device key: every padding, and so the probe's six RSA CMS forms; no EC forms.
  f.decrypt = f.wrap = {RsaPadding::kOaepSha1, RsaPadding::kOaepSha256, RsaPadding::kOaepSha384,
                        RsaPadding::kOaepSha512, RsaPadding::kPkcs1};
  // But C_Decrypt with CKM_RSA_PKCS gives one byte 00 for a block of an empty message (its
  // decoder takes the separator for the message: Wycheproof rsa_pkcs1_*_test tcId 1 came back
  // rewrapped as "\x00"), so the probe does not count it: PKCS1 is HOST_UNPADDING where
  // allowed, else not served.
  f.decrypt.erase(RsaPadding::kPkcs1);
  f.max_rsa_bits = 4096;
  for (auto t : {crypto::CmsKeyTransport::kRsaOaepSha256, crypto::CmsKeyTransport::kRsaPkcs1}) {
    for (auto c : {crypto::CmsContentCipher::kAes256Cbc, crypto::CmsContentCipher::kAes128Cbc,
                   crypto::CmsContentCipher::kDes3Cbc}) {
      f.cms_in_token.insert({t, c});
    }
  }
  f.raw_rsa = f.stores_data_objects = f.imports_private_keys = true;
  // A key made by another tool (CKA_MODIFIABLE=TRUE) takes CKA_SIGN=TRUE.
  f.sets_sign_when_modifiable = f.read_only_keys = true;
  // One swtok per pkcsslotd: its serial (123) is unique within the module.
  f.serial_is_unique = true;
  // Not keeps_allowed_mechanisms (Cryptoki 2.20: CKA_ALLOWED_MECHANISMS is
  // CKR_ATTRIBUTE_TYPE_INVALID, dropped and logged), pkcs1_implicit_rejection (a block without
  // a zero separator decrypts to CKR_OK, the other malformed kinds fail), imports_without_crt
  // (CKR_TEMPLATE_INCOMPLETE without p, q, dP, dQ, qInv).
  return f;
}

// Measured with tpm2-pkcs11 1.9.0 (Debian libtpm2-pkcs11-1 1.9.0-0.1) on swtpm 0.7.1 through
// tpm2-abrmd 3.0.0, under tests/support/hw_tokens.sh (hsm_tpm_test).
TokenFacts TpmFacts() {
  TokenFacts f;
  // C_Decrypt: OAEP with SHA-1 and SHA-2 (the TPM's RSA_Decrypt with the OAEP hash), and
  // PKCS#1 v1.5; raw RSA. No C_UnwrapKey or C_WrapKey with RSA (and C_CreateObject makes
  // public keys and data objects only), so no IN_TOKEN and no in-token CMS.
  f.decrypt = {RsaPadding::kOaepSha1, RsaPadding::kOaepSha256, RsaPadding::kOaepSha384,
               RsaPadding::kOaepSha512, RsaPadding::kPkcs1};
  f.raw_rsa = f.stores_data_objects = f.keeps_allowed_mechanisms = true;
  // Not read_only_keys: it takes CKA_MODIFIABLE=FALSE and reads it back FALSE, but does not
  // enforce it (C_SetAttributeValue of CKA_SIGN or CKA_EXTRACTABLE to TRUE succeeds on the
  // backend's own keys): RecheckKey (every self-test) refuses such a key.
  f.sets_extractable = f.sets_sign_when_modifiable = true;
  f.private_exponent_rv = 0x12;  // CKR_ATTRIBUTE_TYPE_INVALID
  f.generates_rsa_4096 = false;  // CKM_RSA_PKCS_KEY_PAIR_GEN: 1024..3072 bits
  f.max_rsa_bits = 3072;
  // Not serial_is_unique (every token of the store says 0000000000000000),
  // imports_private_keys.
  return f;
}

}  // namespace

const TokenFacts& FactsOf(TokenKind kind) {
  static const TokenFacts kSoftHsm = SoftHsmFacts();
  static const TokenFacts kNss = NssFacts();
  static const TokenFacts kOpenCryptoki = OpenCryptokiFacts();
  static const TokenFacts kTpm = TpmFacts();
  switch (kind) {
    case TokenKind::kSoftHsm:
      return kSoftHsm;
    case TokenKind::kNss:
      return kNss;
    case TokenKind::kOpenCryptoki:
      return kOpenCryptoki;
    case TokenKind::kTpm:
      return kTpm;
  }
  return kSoftHsm;
}

absl::StatusOr<std::unique_ptr<TestToken>> TestToken::Create(TokenKind kind) {
  std::unique_ptr<TestToken> t(new TestToken(kind));
  if (kind == TokenKind::kSoftHsm) {
    SetUpSoftHsmConfig(t->dir());
    auto m = hsm::Module::Load(kSoftHsmPath, "");
    if (!m.ok()) return m.status();
    t->module_ = *m;
    t->label_ = kSoftHsmLabel;
    auto slot = hsm::InitSoftToken(*t->module_, t->label_, crypto::SecretString(kSoftHsmSoPin),
                                   t->user_pin());
    if (!slot.ok()) return slot.status();
    return t;
  }
  if (kind == TokenKind::kOpenCryptoki) {
    // pkcsslotd is up (tests/support/hw_tokens.sh): the swtok slot it names, wiped and
    // initialised afresh (C_InitToken needs no session of the token open: none is).
    const char* slot_env = getenv("HSMREWRAP_OPENCRYPTOKI_SLOT");
    if (slot_env == nullptr) return absl::FailedPreconditionError(ModuleMissingReason(kind));
    auto m = hsm::Module::Load(kOpenCryptokiPath, "");
    if (!m.ok()) return m.status();
    t->module_ = *m;
    // openCryptoki 3.8.1 cannot be initialised twice in a process (hsm::Module pins it), so
    // ReleaseModule only drops this token's reference: a "new process" keeps the library's
    // state.
    t->label_ = kSoftHsmLabel;
    auto slot = hsm::InitTokenInSlot(*t->module_, static_cast<CK_SLOT_ID>(std::atol(slot_env)),
                                     t->label_, crypto::SecretString(kOpenCryptokiSoPin),
                                     t->user_pin());
    if (!slot.ok()) return slot.status();
    return t;
  }
  if (kind == TokenKind::kTpm) {
    // A new token in the store's empty slot (tpm2-pkcs11 always shows one), labelled
    // uniquely: the tokens of earlier tests stay in the store (and in the TPM's hierarchy).
    if (getenv("TPM2_PKCS11_STORE") == nullptr) {
      return absl::FailedPreconditionError(ModuleMissingReason(kind));
    }
    static std::atomic<int> next{0};
    auto m = hsm::Module::Load(kTpm2Pkcs11Path, "");
    if (!m.ok()) return m.status();
    t->module_ = *m;
    t->label_ = "hsm-test-" + std::to_string(getpid()) + "-" + std::to_string(next++);
    auto slot = hsm::InitSoftToken(*t->module_, t->label_, crypto::SecretString(kTpmSoPin),
                                   t->user_pin());
    if (!slot.ok()) return slot.status();
    return t;
  }
  // The key database encrypts every private attribute under the PIN with PBKDF2, 10000
  // rounds by default, paid again on each use of a token key (C_DecryptInit...): about 50 ms
  // an operation here. One round keeps the suite fast and changes nothing it tests. (Only
  // this process's tokens; a value already set is kept.)
  setenv("NSS_MAX_MP_PBE_ITERATION_COUNT", "1", /*overwrite=*/0);
  t->init_args_ = NssInitArgs(t->dir());
  auto m = hsm::Module::Load(kNssSoftokenPath, t->init_args_);
  if (!m.ok()) return m.status();
  t->module_ = *m;
  auto tokens = hsm::ListTokens(*t->module_, /*include_uninitialized=*/true);
  if (!tokens.ok()) return tokens.status();
  std::optional<CK_SLOT_ID> slot;
  for (const auto& s : *tokens) {
    std::cout << "NSS slot " << s.slot << " token '" << s.label << "' flags 0x" << std::hex
              << s.flags << std::dec << "\n";
    if (s.label == kNssKeyTokenLabel) slot = s.slot;
  }
  if (!slot) return absl::NotFoundError("no NSS key token");
  t->label_ = kNssKeyTokenLabel;
  if (auto s = hsm::InitNssUserPin(*t->module_, *slot, t->user_pin()); !s.ok()) return s;
  return t;
}

TestToken::~TestToken() { module_.reset(); }

std::string TestToken::uri() const {
  std::string out = "pkcs11:token=";
  for (unsigned char c : label_) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      char hex[4];
      std::snprintf(hex, sizeof(hex), "%%%02X", c);
      out += hex;
    }
  }
  return out;
}

crypto::SecretString TestToken::user_pin() const {
  switch (kind_) {
    case TokenKind::kSoftHsm:
      break;
    case TokenKind::kNss:
      return crypto::SecretString(kNssUserPin);
    case TokenKind::kOpenCryptoki:
      return crypto::SecretString(kOpenCryptokiUserPin);
    case TokenKind::kTpm:
      return crypto::SecretString(kTpmUserPin);
  }
  return crypto::SecretString(kSoftHsmUserPin);
}

hsm::Pkcs11Backend::Options TestToken::BackendOptions() const {
  hsm::Pkcs11Backend::Options o;
  o.module_path = module_path();
  o.init_args = init_args_;
  o.token = selector();
  o.user_pin = user_pin();
  return o;
}

void RegisterHarnessTokenMaker() {
  SetHarnessTokenMaker([](TokenKind kind, const std::string& dir, std::shared_ptr<void>* keep,
                          std::string* error) -> std::vector<std::string> {
    auto t = TestToken::Create(kind);
    if (!t.ok()) {
      *error = std::string("cannot make the ") + TokenName(kind) + " token: " + t.status().ToString();
      return {};
    }
    const std::string pin_file = dir + "/token.pin";
    const crypto::SecretString pin = (*t)->user_pin();
    leakcheck::RecordSecret(std::string(pin.data(), pin.size()));
    if (!WriteFile(pin_file, std::string(pin.data(), pin.size()), 0600)) {
      *error = "cannot write " + pin_file;
      return {};
    }
    std::vector<std::string> args = {"--module", ModulePath(kind), "--token", (*t)->label(),
                                     "--pin-file", pin_file};
    // openCryptoki 3.8.1's PKCS#1 decryption is not used (TokenFacts): PKCS1 items take
    // HOST_UNPADDING (raw RSA in the token), as an operator of that token would have to allow.
    if (kind == TokenKind::kOpenCryptoki) args.push_back("--allow-host-unpadding");
    *keep = std::shared_ptr<TestToken>(std::move(*t));
    return args;
  });
}

}  // namespace hsmrewrap::test
