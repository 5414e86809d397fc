// Helpers for crypto/ unit tests: OpenSSL key/certificate generation (done by OpenSSL, not
// by the code under test) and the shared vectors folder. Status matchers: tests/support.
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "crypto/keys.h"
#include "crypto/secret.h"
#include "gmock/gmock.h"

namespace hsmrewrap::crypto::testing {

using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, EvpPkeyDeleter>;
using X509Ptr = std::unique_ptr<X509, X509Deleter>;

// Fresh RSA key of `bits`, generated once per size per process (keygen is slow) and
// returned with a new reference each call.
EvpPkeyPtr RsaKey(int bits = 2048);
// EC key on "P-256" / "P-384" / "P-521" / "secp256k1".
EvpPkeyPtr EcKey(const char* curve);
// Self-signed v3 certificate for `key` (SHA-256), serial `serial`, CN `cn`.
X509Ptr SelfSignedCert(EVP_PKEY* key, const std::string& cn, long serial);  // NOLINT

Bytes CertDer(X509* x);
std::string CertPem(X509* x);
Bytes Pkcs8Der(EVP_PKEY* key);        // PrivateKeyInfo
std::string Pkcs8Pem(EVP_PKEY* key);  // "BEGIN PRIVATE KEY"
Bytes Pkcs1Der(EVP_PKEY* key);        // RSAPrivateKey
std::string Pkcs1Pem(EVP_PKEY* key);  // "BEGIN RSA PRIVATE KEY"
Bytes SpkiDer(EVP_PKEY* key);

// Big-endian BIGNUM parameter of `key` (OSSL_PKEY_PARAM_*), no leading zeros.
Bytes BnParam(EVP_PKEY* key, const char* name);
// Same, left-padded with zeros to `len` bytes.
Bytes BnParamPadded(EVP_PKEY* key, const char* name, size_t len);

// OpenSSL encryption with an explicit padding (RSA_PKCS1_OAEP_PADDING with md = mgf1 = `md`,
// or RSA_PKCS1_PADDING when md is null).
Bytes OpenSslRsaEncrypt(EVP_PKEY* key, const EVP_MD* md, const Bytes& msg);
// Raw RSA private operation (RSA_NO_PADDING): the encoded message EM, k bytes.
Bytes RawRsaDecrypt(EVP_PKEY* key, const Bytes& ciphertext);

// Decrypts a DER CMS ContentInfo with CMS_decrypt; nullopt on failure.
std::optional<Bytes> CmsDecrypt(const Bytes& der, EVP_PKEY* key, X509* cert);

// ../shared, if present (compile definition HSMREWRAP_SHARED_DIR), else nullopt.
std::optional<std::string> SharedDir();
Bytes ReadFileOrDie(const std::string& path);
Bytes ToBytes(std::string_view s);
SecretString Secret(std::string_view s);

}  // namespace hsmrewrap::crypto::testing
