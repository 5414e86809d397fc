// The interface the service's engine uses to reach keys in a token. The PKCS#11
// implementation is hsm/pkcs11_backend.h; unit tests use fakes.
//
// Thread safety: every method may be called concurrently from many threads.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "crypto/keys.h"
#include "crypto/rsa.h"
#include "crypto/secret.h"

namespace hsmrewrap::hsm {

using crypto::Bytes;
using crypto::RsaPadding;

enum class Path { kInToken, kTokenDecrypt, kHostUnpadding };
const char* PathName(Path p);

// What the token does for one key, learned by trial at start-up (never from mechanism
// lists alone).
struct KeyCapabilities {
  std::set<RsaPadding> decrypt;      // C_Decrypt with this padding works (TOKEN_DECRYPT)
  std::set<RsaPadding> unwrap;       // C_UnwrapKey with this padding works (IN_TOKEN source)
  bool raw_rsa = false;              // CKM_RSA_X_509 decrypt works (HOST_UNPADDING possible)
  // PKCS#1 v1.5 (probed only when PKCS1 is): the token does implicit rejection, i.e. a
  // ciphertext with invalid padding "decrypts" (C_Decrypt/C_UnwrapKey CKR_OK) to a
  // deterministic pseudo-random message instead of failing (NSS softoken 3.87; the
  // Marvin/Bleichenbacher countermeasure). Learned by trial: a non-conformant block is
  // raw-RSA encrypted and C_Decrypt'ed with CKM_RSA_PKCS.
  bool pkcs1_implicit_rejection = false;
};

struct KeyInfo {
  std::string name;                  // CKA_LABEL of the private key
  int bits = 0;
  int64_t created_unix = 0;          // seconds; 0 if unknown
  bool enabled = true;
  bool allow_pkcs1 = false;
  crypto::Bytes spki_der;            // the public key
  KeyCapabilities caps;
};

// Status conventions of every backend method:
//  - decryption failed for any reason inside the token that is about the ciphertext:
//    DecryptFailedError() (same status for every cause; details go to the debug log only);
//  - token, slot or session trouble (device error/removed, session closed, ...):
//    absl::UnavailableError naming the C_ function and the CKR_ value;
//  - unknown key: absl::NotFoundError; padding/path the token cannot do: UnimplementedError;
//  - a PIN that was refused: absl::PermissionDeniedError (never retried).
absl::Status DecryptFailedError();
bool IsDecryptFailed(const absl::Status& s);

class KeyBackend {
 public:
  virtual ~KeyBackend() = default;

  virtual absl::StatusOr<std::vector<KeyInfo>> ListKeys() = 0;
  virtual absl::StatusOr<KeyInfo> GetKey(const std::string& name) = 0;
  virtual absl::StatusOr<KeyInfo> CreateKey(const std::string& name, int bits, bool allow_pkcs1) = 0;
  virtual absl::StatusOr<KeyInfo> ImportKey(const std::string& name,
                                            const crypto::RsaPrivateKeyParts& parts,
                                            bool allow_pkcs1) = 0;
  virtual absl::StatusOr<KeyInfo> SetEnabled(const std::string& name, bool enabled) = 0;

  // TOKEN_DECRYPT (C_Decrypt with `padding`) or HOST_UNPADDING (CKM_RSA_X_509 in the token,
  // constant-time unpadding on the host). `ciphertext` has the modulus length (checked by
  // the caller).
  virtual absl::StatusOr<crypto::SecretBytes> Decrypt(const std::string& key_name,
                                                      RsaPadding padding,
                                                      absl::Span<const uint8_t> ciphertext,
                                                      Path path) = 0;

  // IN_TOKEN: C_UnwrapKey(key, in_padding) into a sensitive session secret, then
  // C_WrapKey(device RSA public key imported as a session object, out_padding). Both
  // objects are destroyed. Returns the device ciphertext.
  virtual absl::StatusOr<Bytes> RewrapInToken(const std::string& key_name, RsaPadding in_padding,
                                              absl::Span<const uint8_t> ciphertext,
                                              const crypto::PublicKey& device_key,
                                              RsaPadding out_padding) = 0;

  // Paddings the token can C_WrapKey with to an imported RSA public key (learned at start).
  virtual std::set<RsaPadding> WrapPaddings() = 0;

  // Human-readable token label and whether the token is currently usable.
  virtual std::string TokenLabel() = 0;
  virtual bool Healthy() = 0;
};

}  // namespace hsmrewrap::hsm
