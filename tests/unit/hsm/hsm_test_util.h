// Helpers shared by the hsm token tests: status matchers, temp dirs, OpenSSL keys.
#pragma once

#include <openssl/evp.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "crypto/keys.h"
#include "crypto/rsa.h"
#include "crypto/secret.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "hsm/backend.h"

namespace hsmrewrap::hsm {
// A rewrap operation's typed decryption failure.
template <typename T>
bool IsDecryptFailed(const OpResult<T>& r) {
  return r.outcome() == Outcome::kDecryptFailed;
}
}  // namespace hsmrewrap::hsm

namespace hsmrewrap::hsm::testing {

inline const absl::Status& StatusOf(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}
template <typename T>
const absl::Status& StatusOf(const OpResult<T>& r) {
  return r.status();
}

MATCHER(IsOk, "is OK") {
  if (!StatusOf(arg).ok()) *result_listener << StatusOf(arg);
  return StatusOf(arg).ok();
}
MATCHER_P(StatusIs, code, "has status code " + ::testing::PrintToString(code)) {
  *result_listener << StatusOf(arg);
  return StatusOf(arg).code() == code;
}

// A directory under $TMPDIR removed on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void WriteFile(const std::string& path, const std::string& text);

// A SoftHSM2 token directory and config; sets SOFTHSM2_CONF (before any Module::Load).
std::string SetUpSoftHsmConfig(const std::string& dir);

inline constexpr char kSoftHsmPath[] = "/usr/lib/softhsm/libsofthsm2.so";
inline constexpr char kNssSoftokenPath[] = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so";

struct EvpPkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
using HostKey = std::unique_ptr<EVP_PKEY, EvpPkeyFree>;

HostKey GenerateHostRsa(int bits);
// An RSA key with `primes` prime factors (3: the Wycheproof three-prime keys).
HostKey GenerateHostRsaPrimes(int bits, int primes);
// Full CRT parts (or n, e, d only when crt is false).
crypto::RsaPrivateKeyParts HostKeyParts(EVP_PKEY* key, bool crt);
crypto::Bytes HostKeyDer(EVP_PKEY* key);  // PKCS#8 DER
crypto::PublicKey HostPublicKey(EVP_PKEY* key);

crypto::SecretBytes ToSecret(const std::string& s);
crypto::SecretString Pin(const char* s);
crypto::Bytes RandomBytes(size_t n);

}  // namespace hsmrewrap::hsm::testing
