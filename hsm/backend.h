// The interface the service's engine uses to reach keys in a token. The PKCS#11
// implementation is hsm/pkcs11_backend.h; unit tests use fakes.
//
// Thread safety: every method may be called concurrently from many threads.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "crypto/cms.h"
#include "crypto/cms_assemble.h"
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
  std::set<RsaPadding> decrypt;  // C_Decrypt with this padding works (TOKEN_DECRYPT)
  std::set<RsaPadding> unwrap;   // C_UnwrapKey with this padding works (IN_TOKEN source)
  // Paddings in `unwrap` for which the token refuses the longest secret the key can carry
  // (it caps its secret objects' length: NSS softoken 3.87 at 256 bytes, so RSA-3072 and
  // larger keys). An IN_TOKEN item of such a padding whose unwrap fails may be a valid long
  // secret: the engine then runs it on the next path (never DECRYPT_FAILED from the unwrap
  // alone).
  std::set<RsaPadding> unwrap_short_only;
  bool raw_rsa = false;          // CKM_RSA_X_509 decrypt works (HOST_UNPADDING possible)
  // PKCS#1 v1.5 (probed only when PKCS1 is): the token does implicit rejection, i.e. a
  // ciphertext with invalid padding "decrypts" (C_Decrypt/C_UnwrapKey CKR_OK) to a
  // deterministic pseudo-random message instead of failing (NSS softoken 3.87; the
  // Marvin/Bleichenbacher countermeasure). Learned by trial: a non-conformant block is
  // raw-RSA encrypted and C_Decrypt'ed with CKM_RSA_PKCS.
  bool pkcs1_implicit_rejection = false;
};

struct KeyInfo {
  std::string name;  // CKA_LABEL of the private key
  int bits = 0;
  int64_t created_unix = 0;  // seconds; 0 if unknown
  bool enabled = true;
  bool allow_pkcs1 = false;
  crypto::Bytes spki_der;  // the public key
  KeyCapabilities caps;
};

// Status conventions of the key methods (ListKeys, Resolve/GetKey, CreateKey, ImportKey,
// SetEnabled):
//  - token, slot or session trouble (device error/removed, session closed, ...):
//    absl::UnavailableError naming the C_ function and the CKR_ value; no PKCS#11 session
//    free in time: absl::ResourceExhaustedError;
//  - unknown key: absl::NotFoundError; padding/path the token cannot do: UnimplementedError;
//  - a PIN that was refused: absl::PermissionDeniedError (never retried).
//
// The rewrap operations (Decrypt, RewrapInToken) return an OpResult: the outcome is a type,
// not a status whose text is compared.
enum class Outcome {
  kOk,
  // The token answered the call that saw the ciphertext: it does not decrypt (bad padding,
  // wrong key, wrong length...). Every cause gives the same result; details go to the debug
  // log only. The only outcome a caller may treat as final for the ciphertext.
  kDecryptFailed,
  // Nothing is known to be wrong with the item: the token is lost or unavailable, no session
  // was free in time, a call timed out or was abandoned. status() is Unavailable,
  // ResourceExhausted or DeadlineExceeded; retrying (later, or on another replica) is safe.
  kRetryable,
  // The item cannot be done as asked, whatever the ciphertext: key unknown (NotFound) or
  // disabled/refused (FailedPrecondition), padding/path unsupported (Unimplemented), the
  // secret too long for the recipient (InvalidArgument), a PIN refused (PermissionDenied),
  // anything else (Internal). status() says which.
  kRefused,
};
const char* OutcomeName(Outcome o);

// The message of every decryption failure, on every path and token.
inline constexpr char kDecryptFailedText[] = "decryption failed";
// The message when the unsealed secret does not fit the recipient key with the output
// padding (same text on the host and the in-token paths; names no byte of the secret).
inline constexpr char kSecretTooLongText[] =
    "the unsealed secret is too long for the recipient key with this output format";

// How a status from a call that did NOT see the ciphertext maps to an outcome: Unavailable,
// ResourceExhausted, DeadlineExceeded, Aborted and Cancelled are retryable; everything else
// is refused. Never kDecryptFailed.
Outcome OutcomeOfStatus(const absl::Status& s);

template <typename T>
class OpResult final {
 public:
  OpResult(T value) : outcome_(Outcome::kOk), value_(std::move(value)) {}  // NOLINT: like StatusOr
  static OpResult DecryptFailed() {
    return OpResult(Outcome::kDecryptFailed, absl::InvalidArgumentError(kDecryptFailedText));
  }
  static OpResult Retryable(absl::Status why) {
    return OpResult(Outcome::kRetryable, std::move(why));
  }
  static OpResult Refused(absl::Status why) { return OpResult(Outcome::kRefused, std::move(why)); }
  // A failed non-data call (see OutcomeOfStatus). `s` must not be OK.
  static OpResult FromStatus(absl::Status s) {
    const Outcome o = OutcomeOfStatus(s);
    return OpResult(o, std::move(s));
  }
  // The same failure for another value type.
  template <typename U>
  static OpResult From(const OpResult<U>& failed) {
    return OpResult(failed.outcome(), failed.status());
  }

  Outcome outcome() const { return outcome_; }
  bool ok() const { return outcome_ == Outcome::kOk; }
  // OK when ok(); kDecryptFailedText for kDecryptFailed; the reason otherwise.
  const absl::Status& status() const { return status_; }
  T& value() { return *value_; }
  const T& value() const { return *value_; }
  T& operator*() { return *value_; }
  const T& operator*() const { return *value_; }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }

 private:
  template <typename U>
  friend class OpResult;
  OpResult(Outcome o, absl::Status s) : outcome_(o), status_(std::move(s)) {
    if (status_.ok()) status_ = absl::InternalError("failed operation without a reason");
  }
  Outcome outcome_;
  absl::Status status_;
  std::optional<T> value_;
};

// A service key resolved for use: everything an item needs from the key, read once. The
// engine resolves a key name once per item and hands the reference to Decrypt /
// RewrapInToken, which do no lookup and no checks of their own (the caller applies
// CheckKeyUse and PathsFor). Immutable; shared.
struct KeyRef {
  KeyInfo info;
  crypto::PublicKey public_key;  // parsed once, from info.spki_der
  size_t modulus_len = 0;        // a ciphertext to this key has exactly this length
  uint64_t object = 0;           // the private key's handle in its backend's token (opaque)
  uint64_t owner = 0;            // the backend instance that resolved it (0: none)
};
using KeyRefPtr = std::shared_ptr<const KeyRef>;

// The rules of using a key, the same on every path: a disabled key is refused, PKCS#1
// v1.5 only on a key that allows it. FailedPrecondition naming the key otherwise.
absl::Status CheckKeyUse(const KeyInfo& key, RsaPadding padding);
// The paths a key offers for sealed secrets of `padding`, best first: IN_TOKEN where the
// token unwraps that padding and `can_wrap_output` (it can wrap to the recipient),
// TOKEN_DECRYPT where it decrypts it, HOST_UNPADDING where raw RSA works and
// `host_unpadding` is allowed.
std::vector<Path> PathsFor(const KeyInfo& key, RsaPadding padding, bool can_wrap_output,
                           bool host_unpadding);

// In-token CMS (RSA key transport): the (key transport, content cipher) pairs a token builds
// without the secret or the content key leaving it, learned by trial at start-up.
using CmsForm = std::pair<crypto::CmsKeyTransport, crypto::CmsContentCipher>;
using CmsFormSet = std::set<CmsForm>;
const char* CmsKeyTransportName(crypto::CmsKeyTransport t);  // "OAEP-SHA256", "PKCS1"
const char* CmsContentCipherName(crypto::CmsContentCipher c);  // "AES-256-CBC", ...
std::string CmsFormSetName(const CmsFormSet& s);  // "{OAEP-SHA256/AES-256-CBC,...}"
// In-token CMS to EC recipients (ECDH key agreement in the token): (curve NID, content
// cipher) pairs, learned by trial at start-up for P-256 and P-384 with AES content.
using EcCmsForm = std::pair<int, crypto::CmsContentCipher>;
using EcCmsFormSet = std::set<EcCmsForm>;
std::string EcCmsFormSetName(const EcCmsFormSet& s);  // "{P-256/AES-256-CBC,...}"

class KeyBackend {
 public:
  virtual ~KeyBackend() = default;

  virtual absl::StatusOr<std::vector<KeyInfo>> ListKeys() = 0;
  virtual absl::StatusOr<KeyInfo> CreateKey(const std::string& name, int bits,
                                            bool allow_pkcs1) = 0;
  virtual absl::StatusOr<KeyInfo> ImportKey(const std::string& name,
                                            const crypto::RsaPrivateKeyParts& parts,
                                            bool allow_pkcs1) = 0;
  virtual absl::StatusOr<KeyInfo> SetEnabled(const std::string& name, bool enabled) = 0;

  // The key of this name, from the backend's cache while it is fresh (shared metadata is
  // re-read after a short interval, so changes by other replicas are seen), else from the
  // token. NotFound for an unknown key; FailedPrecondition for a key rewrapd refuses to
  // serve (it says why).
  virtual absl::StatusOr<KeyRefPtr> Resolve(const std::string& name) = 0;
  absl::StatusOr<KeyInfo> GetKey(const std::string& name);  // Resolve(name)->info

  // Reads the key's attributes from the token again (never from the cache) and checks them
  // as a key found in the token is checked at load (hsm/key_policy.h). OK while they are
  // right. When they changed while the key was served (someone with the PIN set CKA_SIGN or
  // CKA_DERIVE on a modifiable key), the key leaves the cache and is refused from then on:
  // this and every later Resolve answer FailedPrecondition naming the attributes, without
  // the token, until the backend is made again (restart, token re-initialisation), which
  // checks the key as at start-up. NotFound for an unknown key. The self-test calls it for
  // every key it tests. The default (backends without attributes) is Resolve(name)'s status.
  virtual absl::Status RecheckKey(const std::string& name);

  // TOKEN_DECRYPT (C_Decrypt with `padding`) or HOST_UNPADDING (CKM_RSA_X_509 in the token,
  // constant-time unpadding on the host) with a resolved key. A ciphertext whose length is
  // not the modulus length is a decryption failure (checked before the token: an empty
  // input poisons a SoftHSM2 session).
  virtual OpResult<crypto::SecretBytes> Decrypt(const KeyRefPtr& key, RsaPadding padding,
                                                absl::Span<const uint8_t> ciphertext,
                                                Path path) = 0;

  // IN_TOKEN: C_UnwrapKey(key, in_padding) into a sensitive session secret, then
  // C_WrapKey(device RSA public key imported as a session object, out_padding). Both
  // objects are destroyed. Returns the device ciphertext. A secret too long for the device
  // key with out_padding is kRefused/InvalidArgument(kSecretTooLongText), as on the host path.
  virtual OpResult<Bytes> RewrapInToken(const KeyRefPtr& key, RsaPadding in_padding,
                                        absl::Span<const uint8_t> ciphertext,
                                        const crypto::PublicKey& device_key,
                                        RsaPadding out_padding) = 0;

  // In-token CMS: C_UnwrapKey(key, in_padding) into a sensitive session secret, then the
  // parts of hsm/cms_in_token.h (content key generated in the token, the secret wrapped
  // under it with CBC_PAD; the content key wrapped to an RSA device key, or by ECDH key
  // agreement for an EC one). Every object is destroyed. The host assembles the DER
  // (crypto/cms_assemble.h). Only for forms in CmsInToken() / CmsInTokenEc(); the default
  // refuses (Unimplemented).
  virtual OpResult<crypto::CmsTokenParts> EnvelopeInToken(const KeyRefPtr& key,
                                                             RsaPadding in_padding,
                                                             absl::Span<const uint8_t> ciphertext,
                                                             const crypto::PublicKey& device_key,
                                                             const crypto::CmsOptions& options);
  // The forms EnvelopeInToken builds on this token (default: none): to RSA device keys, and
  // to EC device keys.
  virtual CmsFormSet CmsInToken() { return {}; }
  virtual EcCmsFormSet CmsInTokenEc() { return {}; }

  // The same by key name, for tools and tests: Resolve, then CheckKeyUse and the path's
  // availability (Unimplemented when the key or token cannot take it), then the operation.
  OpResult<crypto::SecretBytes> Decrypt(const std::string& key_name, RsaPadding padding,
                                        absl::Span<const uint8_t> ciphertext, Path path);
  OpResult<Bytes> RewrapInToken(const std::string& key_name, RsaPadding in_padding,
                                absl::Span<const uint8_t> ciphertext,
                                const crypto::PublicKey& device_key, RsaPadding out_padding);

  // Paddings the token can C_WrapKey with to an imported RSA public key (learned at start).
  virtual std::set<RsaPadding> WrapPaddings() = 0;

  // Human-readable token label and whether the token is currently usable.
  virtual std::string TokenLabel() = 0;
  virtual bool Healthy() = 0;
};

}  // namespace hsmrewrap::hsm
