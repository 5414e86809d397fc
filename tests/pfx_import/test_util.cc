#include "tests/pfx_import/test_util.h"

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "tests/leakcheck/record.h"
#include "tests/support/files.h"

namespace hsmrewrap::pfx_test {

std::string SharedDir() { return HSMREWRAP_SHARED_DIR; }
std::string PfxImportPath() { return PFX_IMPORT_BIN; }

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

int Shell(const std::string& command, std::string* log) {
  char tmpl[] = "/tmp/pfx-shell-XXXXXX";
  const int fd = mkstemp(tmpl);
  if (fd >= 0) close(fd);
  const std::string full = "( " + command + " ) >" + tmpl + " 2>&1 </dev/null";
  const int status = std::system(full.c_str());
  *log = test::ReadFileOrEmpty(tmpl);
  unlink(tmpl);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

test::CommandResult RunPfxImport(const std::vector<std::string>& args,
                                 const std::map<std::string, std::string>& env) {
  std::vector<std::string> argv = {PfxImportPath()};
  argv.insert(argv.end(), args.begin(), args.end());
  return test::RunCommand(argv, "", std::chrono::seconds(300), env);
}

KeyCert::KeyCert(KeyCert&& o) noexcept : key(o.key), cert(o.cert) {
  o.key = nullptr;
  o.cert = nullptr;
}
KeyCert& KeyCert::operator=(KeyCert&& o) noexcept {
  std::swap(key, o.key);
  std::swap(cert, o.cert);
  return *this;
}
KeyCert::~KeyCert() {
  EVP_PKEY_free(key);
  X509_free(cert);
}

EVP_PKEY* NewRsaKey(int bits) { return EVP_RSA_gen(static_cast<unsigned int>(bits)); }

KeyCert MakeKeyCert(const std::string& cn, long not_before_offset, long not_after_offset,
                    const std::string& key_usage) {
  KeyCert kc;
  kc.key = NewRsaKey(2048);
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), static_cast<long>(std::rand() & 0x7fffffff));
  X509_gmtime_adj(X509_getm_notBefore(x), not_before_offset);
  X509_gmtime_adj(X509_getm_notAfter(x), not_after_offset);
  X509_set_pubkey(x, kc.key);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x, name);
  if (!key_usage.empty()) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, NID_key_usage, key_usage.c_str());
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
  }
  X509_sign(x, kc.key, EVP_sha256());
  kc.cert = x;
  return kc;
}

std::string MakePfx(EVP_PKEY* key, X509* cert, const std::vector<X509*>& ca,
                    const std::string& password) {
  leakcheck::RecordSecret(password);
  STACK_OF(X509)* stack = sk_X509_new_null();
  for (X509* c : ca) sk_X509_push(stack, c);
  PKCS12* p12 = PKCS12_create(password.c_str(), "test", key, cert, stack, 0, 0, 0, 0, 0);
  sk_X509_free(stack);
  if (p12 == nullptr) return "";
  unsigned char* der = nullptr;
  const int len = i2d_PKCS12(p12, &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  PKCS12_free(p12);
  return out;
}

namespace {
std::string BioString(BIO* bio) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string s(data, static_cast<size_t>(n));
  BIO_free(bio);
  return s;
}
}  // namespace

std::string KeyPem(EVP_PKEY* key) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  return BioString(bio);
}
std::string PublicKeyPem(EVP_PKEY* key) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PUBKEY(bio, key);
  return BioString(bio);
}
std::string CertPem(X509* cert) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(bio, cert);
  return BioString(bio);
}

}  // namespace hsmrewrap::pfx_test
