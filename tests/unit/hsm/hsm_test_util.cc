#include "tests/unit/hsm/hsm_test_util.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <cstdlib>
#include <utility>

namespace hsmrewrap::hsm::testing {

HostKey GenerateHostRsa(int bits) { return HostKey(EVP_RSA_gen(static_cast<unsigned>(bits))); }

namespace {
template <typename Out>
Out Param(EVP_PKEY* key, const char* name) {
  BIGNUM* bn = nullptr;
  Out out;
  if (EVP_PKEY_get_bn_param(key, name, &bn) != 1) return out;
  out.resize(BN_num_bytes(bn));
  BN_bn2bin(bn, out.data());
  BN_clear_free(bn);
  return out;
}
}  // namespace

crypto::RsaPrivateKeyParts HostKeyParts(EVP_PKEY* key, bool crt) {
  crypto::RsaPrivateKeyParts parts;
  parts.n = Param<crypto::Bytes>(key, OSSL_PKEY_PARAM_RSA_N);
  parts.e = Param<crypto::Bytes>(key, OSSL_PKEY_PARAM_RSA_E);
  parts.d = Param<crypto::SecretBytes>(key, OSSL_PKEY_PARAM_RSA_D);
  if (crt) {
    parts.p = Param<crypto::SecretBytes>(key, OSSL_PKEY_PARAM_RSA_FACTOR1);
    parts.q = Param<crypto::SecretBytes>(key, OSSL_PKEY_PARAM_RSA_FACTOR2);
    parts.dp = Param<crypto::SecretBytes>(key, OSSL_PKEY_PARAM_RSA_EXPONENT1);
    parts.dq = Param<crypto::SecretBytes>(key, OSSL_PKEY_PARAM_RSA_EXPONENT2);
    parts.qinv = Param<crypto::SecretBytes>(key, OSSL_PKEY_PARAM_RSA_COEFFICIENT1);
  }
  parts.bits = EVP_PKEY_get_bits(key);
  return parts;
}

crypto::Bytes HostKeyDer(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  int len = i2d_PrivateKey(key, &der);
  crypto::Bytes out(der, der + (len > 0 ? len : 0));
  OPENSSL_free(der);
  return out;
}

crypto::PublicKey HostPublicKey(EVP_PKEY* key) {
  auto pk = crypto::PublicKey::FromRsaComponents(Param<crypto::Bytes>(key, OSSL_PKEY_PARAM_RSA_N),
                                                 Param<crypto::Bytes>(key, OSSL_PKEY_PARAM_RSA_E));
  if (!pk.ok()) std::abort();
  return *pk;
}

crypto::SecretBytes ToSecret(const std::string& s) {
  return crypto::SecretBytes(s.begin(), s.end());
}

crypto::SecretString Pin(const char* s) { return crypto::SecretString(s); }

crypto::Bytes RandomBytes(size_t n) {
  crypto::Bytes b(n);
  RAND_bytes(b.data(), static_cast<int>(n));
  return b;
}

void TokenBackendTest::SetUp() {
  const std::string missing = ::hsmrewrap::test::ModuleMissingReason(GetParam());
  if (!missing.empty()) GTEST_SKIP() << missing;
  auto t = ::hsmrewrap::test::TestToken::Create(GetParam());
  ASSERT_THAT(t, IsOk());
  token_ = std::move(*t);
}

void TokenBackendTest::TearDown() {
  backend_.reset();
  token_.reset();
}

Pkcs11Backend::Options TokenBackendTest::Opts(bool host_unpadding, size_t pool) const {
  Pkcs11Backend::Options o = token_->BackendOptions();
  o.pool_size = pool;
  o.allow_host_unpadding = host_unpadding;
  return o;
}

void TokenBackendTest::Open(bool host_unpadding, size_t pool) {
  auto b = Pkcs11Backend::Create(Opts(host_unpadding, pool));
  ASSERT_THAT(b, IsOk());
  backend_ = std::move(*b);
}

void TokenBackendTest::Reopen(bool host_unpadding, size_t pool) {
  backend_.reset();
  token_->ReleaseModule();
  Open(host_unpadding, pool);
}

std::string TokenParamName(const ::testing::TestParamInfo<::hsmrewrap::test::TokenKind>& p) {
  return ::hsmrewrap::test::TokenName(p.param);
}

}  // namespace hsmrewrap::hsm::testing
