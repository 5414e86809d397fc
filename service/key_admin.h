// Key administration apart from gRPC, beside the rewrap engine: checks key names and sizes,
// parses imported private keys (PKCS#8, PFX, CNG full private blob), creates, imports,
// enables and disables keys in the backend and keeps the engine's key directory current.
// The Keys service (service/keys_service.h) only translates its requests and answers.
//
// Thread safety: every method may be called from any thread; the backend serialises key
// writes. The Keys service still runs writes one at a time and reads on their own threads.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "crypto/keys.h"
#include "crypto/secret.h"
#include "hsm/backend.h"
#include "service/engine.h"
#include "service/selftest.h"

namespace hsmrewrap::service {

// A service key as the Keys API describes it.
struct KeyDescription {
  hsm::KeyInfo info;
  std::string spki_sha256;  // lowercase hex; empty when the token's public key does not parse
  bool pkcs1_implicit_rejection = false;  // allow_pkcs1 and the token does implicit rejection
  // The paths the engine offers the key per padding, best first.
  std::vector<std::pair<crypto::RsaPadding, std::vector<hsm::Path>>> paths;
  // The outputs the token builds IN_TOKEN for this key (RewrapEngine::InTokenOutputs).
  std::vector<v1::InTokenOutput> in_token_outputs;
  // Per token of the set, in configuration order: whether it serves the key and how.
  std::vector<v1::KeyTokenInfo> tokens;
  // Set when the key is not on every token: how to put it there.
  std::string clone_advice;
};

// The private key of an ImportKey, already taken out of the request.
struct ImportedKey {
  enum class Form { kNone, kPkcs8, kPfx, kCngFullPrivateBlob };
  Form form = Form::kNone;
  crypto::SecretBytes key;        // kPkcs8 (DER or PEM) or kCngFullPrivateBlob
  absl::Span<const uint8_t> pfx;  // kPfx: the PKCS#12 file (not copied: keep it alive)
  crypto::SecretString password;  // kPfx
};

class KeyAdmin final {
 public:
  // Which keys a caller may see (by name); an empty function shows every key.
  using KeyFilter = std::function<bool(const std::string& name)>;

  KeyAdmin(RewrapEngine* engine, SelfTester* selftest) : engine_(engine), selftest_(selftest) {}

  // A new key in one token (`token`: a config tokens: name; empty = the first token that is
  // up): `bits` 2048 (also for 0), 3072 or 4096.
  absl::StatusOr<KeyDescription> CreateKey(const std::string& name, uint32_t bits,
                                           bool allow_pkcs1, const std::string& token = "");
  // An existing RSA key (at least 1024 bits) into the tokens named (empty: every token).
  absl::StatusOr<KeyDescription> ImportKey(const std::string& name, const ImportedKey& key,
                                           bool allow_pkcs1,
                                           const std::vector<std::string>& tokens = {});
  absl::StatusOr<KeyDescription> SetEnabled(const std::string& name, bool enabled);

  // The token's keys that `visible` lets through.
  absl::StatusOr<std::vector<KeyDescription>> ListKeys(const KeyFilter& visible = {});
  absl::StatusOr<crypto::PublicKey> GetPublicKey(const std::string& name);
  // Runs the known-answer self-test of `name` (NOT_FOUND if there is no such key), or of
  // every enabled key (and every key a self-test refused) when `name` is empty; returns the
  // results `visible` lets through.
  absl::StatusOr<std::vector<SelfTestResult>> SelfTest(const std::string& name,
                                                       const KeyFilter& visible = {});

 private:
  // A key from its holdings on the tokens (hsm::TokenSet::ListByToken).
  KeyDescription Describe(const std::vector<hsm::TokenSet::Holding>& holdings);
  // Describes the key a write just made or changed, on every token.
  absl::StatusOr<KeyDescription> Publish(const hsm::KeyInfo& written);

  RewrapEngine* engine_;
  SelfTester* selftest_;
};

}  // namespace hsmrewrap::service
