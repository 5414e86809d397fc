#include "tests/security/pki.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_join.h"

namespace hsmrewrap::sec {
namespace {

[[noreturn]] void Die(const char* what) {
  fprintf(stderr, "pki: %s failed: %s\n", what, it::OpenSslErrors().c_str());
  abort();
}

it::Pkey NewKey(KeyKind kind) {
  if (kind == KeyKind::kRsa2048) return it::GenerateRsa(2048);
  it::Pkey k(EVP_EC_gen("P-256"));
  if (!k) Die("EVP_EC_gen");
  return k;
}

std::string KeyPem(EVP_PKEY* k) {
  BIO* b = BIO_new(BIO_s_mem());
  if (PEM_write_bio_PrivateKey(b, k, nullptr, nullptr, 0, nullptr, nullptr) != 1)
    Die("PEM_write_bio_PrivateKey");
  char* data = nullptr;
  long n = BIO_get_mem_data(b, &data);
  std::string s(data, static_cast<size_t>(n));
  BIO_free(b);
  return s;
}

void AddExt(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  if (ext == nullptr) Die("X509V3_EXT_conf_nid");
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

it::X509Ptr NewCert(EVP_PKEY* key, const std::string& cn, long nb, long na) {
  it::X509Ptr c(X509_new());
  X509_set_version(c.get(), 2);
  std::string serial = it::RandomBytes(12);
  serial[0] = static_cast<char>((serial[0] & 0x7f) | 1);
  BIGNUM* bn = BN_bin2bn(reinterpret_cast<const unsigned char*>(serial.data()), 12, nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(c.get()));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(c.get()), nb);
  X509_gmtime_adj(X509_getm_notAfter(c.get()), na);
  X509_NAME* name = X509_get_subject_name(c.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("hsm-rewrap security tests"),
                             -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_pubkey(c.get(), key);
  return c;
}

void Finish(Issued& out) {
  out.cert_pem = it::CertPem(out.cert.get());
  out.cert_der = it::CertDer(out.cert.get());
  out.key_pem = KeyPem(out.key.get());
}

}  // namespace

Issued MakeCa(const std::string& cn) {
  Issued ca;
  ca.key = NewKey(KeyKind::kEc);
  ca.cert = NewCert(ca.key.get(), cn, -7200, 86400L * 30);
  X509_set_issuer_name(ca.cert.get(), X509_get_subject_name(ca.cert.get()));
  AddExt(ca.cert.get(), ca.cert.get(), NID_basic_constraints, "critical,CA:TRUE");
  AddExt(ca.cert.get(), ca.cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign");
  AddExt(ca.cert.get(), ca.cert.get(), NID_subject_key_identifier, "hash");
  if (X509_sign(ca.cert.get(), ca.key.get(), EVP_sha256()) <= 0) Die("X509_sign");
  Finish(ca);
  return ca;
}

Issued Issue(const Issued& ca, const std::string& cn, const std::vector<std::string>& sans,
             KeyKind kind, const std::string& eku, long nb, long na, const Extensions& ext) {
  Issued out;
  out.key = NewKey(kind);
  out.cert = NewCert(out.key.get(), cn, nb, na);
  X509_set_issuer_name(out.cert.get(), X509_get_subject_name(ca.cert.get()));
  AddExt(out.cert.get(), ca.cert.get(), NID_basic_constraints,
         ext.ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
  AddExt(out.cert.get(), ca.cert.get(), NID_authority_key_identifier, "keyid");
  if (!ext.key_usage.empty()) AddExt(out.cert.get(), ca.cert.get(), NID_key_usage, ext.key_usage);
  if (!sans.empty())
    AddExt(out.cert.get(), ca.cert.get(), NID_subject_alt_name, absl::StrJoin(sans, ","));
  if (!eku.empty()) AddExt(out.cert.get(), ca.cert.get(), NID_ext_key_usage, eku);
  if (X509_sign(out.cert.get(), ca.key.get(), EVP_sha256()) <= 0) Die("X509_sign");
  Finish(out);
  return out;
}

}  // namespace hsmrewrap::sec
