#include "tests/unit/crypto/test_util.h"

#include <openssl/bn.h>
#include <openssl/cms.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <fstream>
#include <iterator>
#include <map>
#include <mutex>

#include "gtest/gtest.h"

namespace hsmrewrap::crypto::testing {
namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free_all(b); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
struct CtxFree {
  void operator()(EVP_PKEY_CTX* c) const { EVP_PKEY_CTX_free(c); }
};
using CtxPtr = std::unique_ptr<EVP_PKEY_CTX, CtxFree>;

std::string BioString(BIO* bio) {
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio, &data);  // NOLINT(runtime/int)
  return std::string(data, static_cast<size_t>(len));
}

template <typename F>
Bytes I2d(F f) {
  unsigned char* der = nullptr;
  const int len = f(&der);
  if (len <= 0) {
    ADD_FAILURE() << "i2d failed";
    return Bytes();
  }
  Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

}  // namespace

EvpPkeyPtr RsaKey(int bits) {
  static std::mutex mu;
  static auto* cache = new std::map<int, EvpPkeyPtr>();  // shared across the test binary
  static struct Cleanup {
    ~Cleanup() { cache->clear(); }  // keeps LeakSanitizer quiet
  } cleanup;
  std::lock_guard<std::mutex> lock(mu);
  EvpPkeyPtr& k = (*cache)[bits];
  if (k == nullptr) k.reset(EVP_RSA_gen(static_cast<unsigned int>(bits)));
  if (k == nullptr) return nullptr;
  EVP_PKEY_up_ref(k.get());
  return EvpPkeyPtr(k.get());
}

EvpPkeyPtr EcKey(const char* curve) { return EvpPkeyPtr(EVP_EC_gen(curve)); }

X509Ptr SelfSignedCert(EVP_PKEY* key, const std::string& cn, long serial) {  // NOLINT
  X509Ptr x(X509_new());
  X509_set_version(x.get(), X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), serial);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 3600L * 24 * 365);
  X509_set_pubkey(x.get(), key);
  X509_NAME* name = X509_get_subject_name(x.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x.get(), name);
  if (X509_sign(x.get(), key, EVP_sha256()) <= 0) {
    ADD_FAILURE() << "X509_sign failed";
    return nullptr;
  }
  return x;
}

Bytes CertDer(X509* x) {
  return I2d([x](unsigned char** p) { return i2d_X509(x, p); });
}

std::string CertPem(X509* x) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), x);
  return BioString(bio.get());
}

Bytes Pkcs8Der(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  i2d_PKCS8PrivateKey_bio(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  const std::string s = BioString(bio.get());
  return Bytes(s.begin(), s.end());
}

std::string Pkcs8Pem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  return BioString(bio.get());
}

Bytes Pkcs1Der(EVP_PKEY* key) {
  return I2d([key](unsigned char** p) { return i2d_PrivateKey(key, p); });
}

std::string Pkcs1Pem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey_traditional(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  return BioString(bio.get());
}

Bytes SpkiDer(EVP_PKEY* key) {
  return I2d([key](unsigned char** p) { return i2d_PUBKEY(key, p); });
}

Bytes BnParam(EVP_PKEY* key, const char* name) {
  BIGNUM* bn = nullptr;
  if (EVP_PKEY_get_bn_param(key, name, &bn) != 1) {
    ADD_FAILURE() << "no parameter " << name;
    return Bytes();
  }
  Bytes out(static_cast<size_t>(BN_num_bytes(bn)));
  BN_bn2bin(bn, out.data());
  BN_clear_free(bn);
  return out;
}

Bytes BnParamPadded(EVP_PKEY* key, const char* name, size_t len) {
  Bytes b = BnParam(key, name);
  if (b.size() > len) {
    ADD_FAILURE() << name << " longer than " << len;
    return b;
  }
  Bytes out(len - b.size(), 0);
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

Bytes OpenSslRsaEncrypt(EVP_PKEY* key, const EVP_MD* md, const Bytes& msg) {
  CtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr));
  EVP_PKEY_encrypt_init(ctx.get());
  if (md != nullptr) {
    EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_OAEP_PADDING);
    EVP_PKEY_CTX_set_rsa_oaep_md(ctx.get(), md);
    EVP_PKEY_CTX_set_rsa_mgf1_md(ctx.get(), md);
  } else {
    EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING);
  }
  Bytes out(static_cast<size_t>(EVP_PKEY_get_size(key)));
  size_t len = out.size();
  if (EVP_PKEY_encrypt(ctx.get(), out.data(), &len, msg.data(), msg.size()) != 1) {
    ADD_FAILURE() << "EVP_PKEY_encrypt failed";
    return Bytes();
  }
  out.resize(len);
  return out;
}

Bytes RawRsaDecrypt(EVP_PKEY* key, const Bytes& ciphertext) {
  CtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr));
  EVP_PKEY_decrypt_init(ctx.get());
  EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_NO_PADDING);
  Bytes out(static_cast<size_t>(EVP_PKEY_get_size(key)));
  size_t len = out.size();
  if (EVP_PKEY_decrypt(ctx.get(), out.data(), &len, ciphertext.data(), ciphertext.size()) != 1) {
    ADD_FAILURE() << "raw RSA decrypt failed";
    return Bytes();
  }
  out.resize(len);
  return out;
}

std::optional<Bytes> CmsDecrypt(const Bytes& der, EVP_PKEY* key, X509* cert) {
  const unsigned char* p = der.data();
  CMS_ContentInfo* cms = d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(der.size()));  // NOLINT
  if (cms == nullptr) return std::nullopt;
  BioPtr out(BIO_new(BIO_s_mem()));
  const int ok = CMS_decrypt(cms, key, cert, nullptr, out.get(), CMS_BINARY);
  CMS_ContentInfo_free(cms);
  if (ok != 1) {
    ERR_print_errors_fp(stderr);
    return std::nullopt;
  }
  const std::string s = BioString(out.get());
  return Bytes(s.begin(), s.end());
}

std::optional<std::string> SharedDir() {
#ifdef HSMREWRAP_SHARED_DIR
  const std::string dir = HSMREWRAP_SHARED_DIR;
  struct stat st;
  if (stat((dir + "/vectors").c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return dir;
#endif
  return std::nullopt;
}

Bytes ReadFileOrDie(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    ADD_FAILURE() << "cannot read " << path;
    return Bytes();
  }
  return Bytes(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

Bytes ToBytes(std::string_view s) { return Bytes(s.begin(), s.end()); }

SecretString Secret(std::string_view s) { return SecretString(s.data(), s.size()); }

}  // namespace hsmrewrap::crypto::testing
