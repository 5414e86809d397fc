// Token selection and token set-up helpers.
//
// Tokens are selected by label, serial or RFC 7512 URI, never by slot number: SoftHSM2
// renumbers its slots after C_InitToken and in every new process (TOKENS.md §5).
#pragma once

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

// NSS softoken: the key slot's user PIN is set by an SO login with the empty PIN and
// C_InitPIN (TOKENS.md NSS §2). Fails if the PIN was already set.
absl::Status InitNssUserPin(const Module& module, CK_SLOT_ID slot,
                            const crypto::SecretString& user_pin);

}  // namespace hsmrewrap::hsm
