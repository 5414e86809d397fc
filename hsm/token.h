// Token selection and token set-up helpers.
//
// Tokens are selected by label, serial or RFC 7512 URI, never by slot number: SoftHSM2
// renumbers its slots after C_InitToken and in every new process.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "crypto/secret.h"
#include "hsm/pkcs11.h"

namespace hsmrewrap::hsm {

// Every non-empty field must match. At least one must be set.
struct TokenSelector {
  std::string label;
  std::string serial;
  std::string uri;  // "pkcs11:token=...;serial=..." (object attributes are ignored here)
};

struct TokenSlot {
  CK_SLOT_ID slot = 0;
  std::string label;
  std::string serial;
  std::string model;
  std::string manufacturer;
  CK_FLAGS flags = 0;
};

// What an RFC 7512 URI says beyond token attributes (parsed by p11-kit): the module
// (query attributes module-path / module-name), where the PIN is (pin-source), whether it
// carries a PIN itself (pin-value), and the object label (object=) for key URIs.
struct UriExtras {
  std::string module_path;  // module-path, or the file of the p11-kit module named by module-name
  std::string pin_source;   // pin-source with a "file:" prefix removed
  bool has_pin_value = false;
  std::string object;                           // object= (CKA_LABEL)
  std::optional<CK_OBJECT_CLASS> object_class;  // type= (CKA_CLASS)
  bool has_token_attributes = false;            // token=, serial=, manufacturer= or model= present
};
// Parses `uri` ("pkcs11:..."). A module-name is resolved through p11-kit's module
// configuration (/usr/share/p11-kit/modules/*.module); an unknown name is NotFound.
absl::StatusOr<UriExtras> ParseUriExtras(const std::string& uri);

// A key given as a name or as an RFC 7512 URI ("pkcs11:object=NAME;type=private"): the
// name. A URI must name the object and may only say type=private (or public: the same key
// pair); token and module attributes belong to the token URI and are refused here.
absl::StatusOr<std::string> KeyNameFromNameOrUri(const std::string& name_or_uri);

// Slots with a token present; uninitialised tokens only when asked for (NSS softoken's key
// token reports CKF_TOKEN_INITIALIZED only once its user PIN is set).
absl::StatusOr<std::vector<TokenSlot>> ListTokens(const Module& module,
                                                  bool include_uninitialized = false);
// The one initialised token that matches; NotFound if none, FailedPrecondition if several.
absl::StatusOr<TokenSlot> FindToken(const Module& module, const TokenSelector& selector);

// For the embedded default (SoftHSM2): C_InitToken on the first slot whose token is not
// initialised, then C_OpenSession + C_Login(SO) + C_InitPIN(user_pin). Returns the slot
// the token is in *now* (it moves in the next process; re-find it by label).
absl::StatusOr<TokenSlot> InitSoftToken(const Module& module, const std::string& label,
                                        const crypto::SecretString& so_pin,
                                        const crypto::SecretString& user_pin);
// The same on the token in `slot`, initialised or not (C_InitToken wipes it; openCryptoki
// 3.8.1 refuses it while any session of the token is open, and resets the SO PIN to its
// default 87654321 every time).
absl::StatusOr<TokenSlot> InitTokenInSlot(const Module& module, CK_SLOT_ID slot,
                                          const std::string& label,
                                          const crypto::SecretString& so_pin,
                                          const crypto::SecretString& user_pin);

// NSS softoken: the key slot's user PIN is set by an SO login with the empty PIN and
// C_InitPIN (the key slot starts with no user PIN). Fails if the PIN was already set.
absl::Status InitNssUserPin(const Module& module, CK_SLOT_ID slot,
                            const crypto::SecretString& user_pin);

}  // namespace hsmrewrap::hsm
