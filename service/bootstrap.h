// Start-up: the embedded SoftHSM2 default (token, PINs and first key created in the state
// folder on first run) and the PIN sources for any other token.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "crypto/secret.h"
#include "hsm/backend.h"
#include "hsm/token_supervisor.h"
#include "service/config.h"

namespace hsmrewrap::service {

inline constexpr char kSoftHsmModule[] = "/usr/lib/softhsm/libsofthsm2.so";
inline constexpr char kEmbeddedTokenLabel[] = "hsm-rewrap";

// What start-up made; `created_token`/`created_key` say whether this run created them.
struct Started {
  std::shared_ptr<hsm::TokenSupervisor> supervisor;
  std::shared_ptr<hsm::KeyBackend> backend;  // the supervisor, as the engine sees it
  std::string token_label;
  bool created_token = false;
  bool created_key = false;
};

// Opens the configured token (creating the embedded one on first run) and returns a
// backend with `config.pool_size` sessions.
absl::StatusOr<Started> OpenToken(const Config& config);

// The user PIN: --pin-file, else $HSMREWRAP_PIN, else the systemd credential "pin"
// ($CREDENTIALS_DIRECTORY/pin). Never from the command line.
absl::StatusOr<crypto::SecretString> ReadPin(const Config& config);

}  // namespace hsmrewrap::service
