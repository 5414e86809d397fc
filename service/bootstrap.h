// Start-up: the embedded SoftHSM2 default (token, PINs and first key created in the state
// folder on first run) and the PIN sources for any other token.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "crypto/secret.h"
#include "hsm/backend.h"
#include "hsm/token_set.h"
#include "hsm/token_supervisor.h"
#include "service/config.h"

namespace hsmrewrap::service {

inline constexpr char kSoftHsmModule[] = "/usr/lib/softhsm/libsofthsm2.so";
inline constexpr char kEmbeddedTokenLabel[] = "hsm-rewrap";

// What start-up made; `created_token`/`created_key` say whether this run created them.
struct Started {
  // The tokens (one per config tokens: entry, each behind its supervisor), in order.
  std::shared_ptr<hsm::TokenSet> tokens;
  std::shared_ptr<hsm::KeyBackend> backend;  // the set, as key administration sees it
  std::string token_label;                   // the set's TokenLabel()
  bool created_token = false;
  bool created_key = false;
};

// Opens the configured tokens (creating the embedded one on first run), each with its
// pool_size sessions. With several tokens, one that is unavailable at start-up does not stop
// rewrapd: it starts lost and joins when it answers (at least one must open). A refused PIN
// or a configuration error of any token stops start-up.
absl::StatusOr<Started> OpenToken(const Config& config);

// The user PIN: --pin-file, else $HSMREWRAP_PIN, else the systemd credential "pin"
// ($CREDENTIALS_DIRECTORY/pin). Never from the command line.
absl::StatusOr<crypto::SecretString> ReadPin(const Config& config);

}  // namespace hsmrewrap::service
