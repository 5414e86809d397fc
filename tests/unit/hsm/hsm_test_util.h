// Helpers shared by the hsm token tests: OpenSSL keys, PINs, random bytes; the status
// matchers, TempDir, the token set-up and the multi-prime key come from tests/support (named
// here too).
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
#include "tests/support/openssl_keys.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"
#include "tests/support/tokens.h"

namespace hsmrewrap::hsm {
// A rewrap operation's typed decryption failure.
template <typename T>
bool IsDecryptFailed(const OpResult<T>& r) {
  return r.outcome() == Outcome::kDecryptFailed;
}
}  // namespace hsmrewrap::hsm

namespace hsmrewrap::hsm::testing {

using ::hsmrewrap::test::IsOk;
using ::hsmrewrap::test::kNssSoftokenPath;
using ::hsmrewrap::test::kSoftHsmPath;
using ::hsmrewrap::test::SetUpSoftHsmConfig;
using ::hsmrewrap::test::StatusIs;
using ::hsmrewrap::test::TempDir;

using HostKey = ::hsmrewrap::test::EvpPkeyPtr;
using ::hsmrewrap::test::GenerateMultiPrimeRsa;

HostKey GenerateHostRsa(int bits);
// Full CRT parts (or n, e, d only when crt is false).
crypto::RsaPrivateKeyParts HostKeyParts(EVP_PKEY* key, bool crt);
crypto::Bytes HostKeyDer(EVP_PKEY* key);  // PKCS#8 DER
crypto::PublicKey HostPublicKey(EVP_PKEY* key);

crypto::SecretBytes ToSecret(const std::string& s);
crypto::SecretString Pin(const char* s);
crypto::Bytes RandomBytes(size_t n);

}  // namespace hsmrewrap::hsm::testing
