// A fresh PKCS#11 token of one kind in a temporary directory of its own, and the facts that
// token is known to have: the suites over the tokens (tests/unit/hsm/backend_test.cc,
// key_attributes_test.cc; fixture TokenBackendTest) run once per kind and take every
// token-specific expectation from TestToken::facts().
//
//   auto token = TestToken::Create(TokenKind::kNss);
//   auto backend = hsm::Pkcs11Backend::Create((*token)->BackendOptions());
#pragma once

#include <memory>
#include <ostream>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "crypto/rsa.h"
#include "crypto/secret.h"
#include "hsm/pkcs11.h"
#include "hsm/pkcs11_backend.h"
#include "hsm/token.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tokens.h"

namespace hsmrewrap::test {

// What a token does, measured with the Debian packages (SoftHSM2 2.6, NSS softoken 3.87)
// and asserted by the suites over the tokens, so a token that changes fails there first.
struct TokenFacts {
  // The capability probe (hsm::KeyCapabilities) of a 2048-bit key made with allow_pkcs1 (a
  // key without it has the same sets less kPkcs1; a small key may lack the OAEP hashes its
  // modulus is too short for):
  std::set<crypto::RsaPadding> decrypt;  // C_Decrypt works: the TOKEN_DECRYPT path
  std::set<crypto::RsaPadding> unwrap;   // C_UnwrapKey works: the IN_TOKEN path's input
  // Pkcs11Backend::WrapPaddings(): C_WrapKey to a device key works (IN_TOKEN's output).
  std::set<crypto::RsaPadding> wrap;
  // Pkcs11Backend::CmsInToken(): the CMS forms (RSA key transport, content cipher) the token
  // builds in the token (C_GenerateKey of the content key, C_WrapKey CBC_PAD of the secret
  // under it, C_WrapKey of the content key to the device key).
  hsm::CmsFormSet cms_in_token;
  // Pkcs11Backend::CmsInTokenEc(): the same to EC device keys (ephemeral EC key pair,
  // C_DeriveKey CKM_ECDH1_DERIVE with CKD_SHA1_KDF, C_WrapKey CKM_AES_KEY_WRAP).
  hsm::EcCmsFormSet ec_cms_in_token;
  // CKM_RSA_X_509 decrypt works once host unpadding is allowed (HOST_UNPADDING).
  bool raw_rsa = false;
  // A PKCS#1 v1.5 ciphertext with bad padding "decrypts" (CKR_OK) to a deterministic
  // pseudo-random message instead of failing (the Marvin countermeasure).
  bool pkcs1_implicit_rejection = false;
  // The private key keeps CKA_ALLOWED_MECHANISMS (NSS softoken refuses the attribute, so
  // the backend leaves it out there).
  bool keeps_allowed_mechanisms = false;
  // CKO_DATA token objects can be made: key metadata (enabled, allow_pkcs1, created) lives
  // in the token, survives a new process and is shared by replicas; otherwise it is kept
  // in the process that wrote it and a new backend serves the key with defaults.
  bool stores_data_objects = false;
  // The token's serial number selects it: no other token of the module has the same one
  // (NSS softoken's two tokens both say 0000000000000000).
  bool serial_is_unique = false;
  // CKM_RSA_PKCS_KEY_PAIR_GEN makes 4096-bit keys (its C_GetMechanismInfo maximum; a TPM's
  // is 3072).
  bool generates_rsa_4096 = true;
  // The largest RSA key the token takes (its C_GetMechanismInfo maximum): rewrapd refuses a
  // larger one at ImportKey with INVALID_ARGUMENT (openCryptoki 3.8.1: 4096; TPM: 3072).
  int max_rsa_bits = 16384;
  // C_CreateObject of an RSA private key works: ImportKey (tpm2-pkcs11 1.9.0 makes RSA
  // public keys and data objects only: "Can only create RSA Public key objects or data
  // objects", CKR_ATTRIBUTE_VALUE_INVALID).
  bool imports_private_keys = false;
  // A two-prime key given as n, e, d only (no CRT parameters) can be imported (NSS derives
  // p and q; openCryptoki 3.8.1 refuses it).
  bool imports_without_crt = false;
  // A multi-prime (three-prime) key given as n, e, d only can be imported (NSS derives p
  // and q from n, e, d for two-prime keys only).
  bool imports_multi_prime_without_crt = false;
  // C_GenerateKeyPair and C_CreateObject take CKA_MODIFIABLE=FALSE: the backend's keys are
  // read-only objects, C_SetAttributeValue on them fails (otherwise the backend leaves the
  // attribute out and its keys stay modifiable).
  bool read_only_keys = false;
  // C_SetAttributeValue(CKA_SIGN=TRUE) works on a private key with CKA_MODIFIABLE=TRUE (one
  // made by another tool): what RecheckKey has to catch.
  bool sets_sign_when_modifiable = false;
  // C_SetAttributeValue(CKA_EXTRACTABLE=TRUE) works on the backend's own private key
  // (tpm2-pkcs11 1.9.0, although the key was made with CKA_MODIFIABLE=FALSE; the TPM never
  // gives the key out, but the attribute reads TRUE): RecheckKey then refuses the key.
  bool sets_extractable = false;
  // C_GetAttributeValue(CKA_PRIVATE_EXPONENT) of the private key fails with this code
  // (CKR_ATTRIBUTE_SENSITIVE; tpm2-pkcs11 does not have the attribute at all).
  unsigned long private_exponent_rv = 0x11;  // CKR_ATTRIBUTE_SENSITIVE

  bool TokenDecrypts(crypto::RsaPadding p) const { return decrypt.count(p) != 0; }
  bool Unwraps(crypto::RsaPadding p) const { return unwrap.count(p) != 0; }
  bool Wraps(crypto::RsaPadding p) const { return wrap.count(p) != 0; }
};

const TokenFacts& FactsOf(TokenKind kind);

// gtest prints a TokenKind parameter by its name.
inline void PrintTo(TokenKind kind, std::ostream* os) { *os << TokenName(kind); }

class TestToken {
 public:
  // A new token of `kind` in a new temporary directory, its module loaded (and kept loaded
  // until ReleaseModule or destruction), the user PIN set:
  //  - SoftHSM2: DIR/softhsm2.conf (SOFTHSM2_CONF, SetUpSoftHsmConfig), then C_InitToken with
  //    an SO PIN and C_InitPIN on the first free slot (hsm::InitSoftToken), label "hsm-test";
  //  - NSS softoken: the module on DIR's SQL database (NssInitArgs; the module creates it),
  //    the key token "NSS Certificate DB", its user PIN set by an SO login with the empty PIN
  //    (hsm::InitNssUserPin); NSS_MAX_MP_PBE_ITERATION_COUNT=1 unless set (speed only).
  // Check ModuleMissingReason(kind) first to skip where the module is not installed.
  static absl::StatusOr<std::unique_ptr<TestToken>> Create(TokenKind kind);
  ~TestToken();
  TestToken(const TestToken&) = delete;
  TestToken& operator=(const TestToken&) = delete;

  TokenKind kind() const { return kind_; }
  const char* name() const { return TokenName(kind_); }
  const TokenFacts& facts() const { return FactsOf(kind_); }
  const std::string& dir() const { return dir_.path(); }

  const char* module_path() const { return ModulePath(kind_); }
  const std::string& init_args() const { return init_args_; }  // "" for SoftHSM2
  const std::string& label() const { return label_; }
  // RFC 7512 token URI: "pkcs11:token=" and the label, percent-encoded where needed.
  std::string uri() const;
  hsm::TokenSelector selector() const { return hsm::TokenSelector{label_, "", ""}; }
  crypto::SecretString user_pin() const;
  // Options of a backend on this token: module, init args, label and user PIN set; the
  // other fields keep their defaults.
  hsm::Pkcs11Backend::Options BackendOptions() const;

  // The module as loaded by Create (every backend on this token in this process shares
  // it); null after ReleaseModule.
  const std::shared_ptr<hsm::Module>& module() const { return module_; }
  // Drops this reference: with the backends gone too, the module is finalised, as at the
  // end of a process; the token stays on disk for the next Load.
  void ReleaseModule() { module_.reset(); }

 private:
  explicit TestToken(TokenKind kind) : kind_(kind), dir_(std::string("token-") + TokenName(kind)) {}

  TokenKind kind_;
  TempDir dir_;  // declared first: removed after the module is finalised
  std::string init_args_;
  std::string label_;
  std::shared_ptr<hsm::Module> module_;
};

// Registers with the rewrapd harness (SetHarnessTokenMaker) a maker of fresh openCryptoki and
// TPM tokens (TestToken::Create) for the rewrapd it starts; the PIN goes to a file in its dir.
void RegisterHarnessTokenMaker();

}  // namespace hsmrewrap::test
