#include "tests/integration/test_crypto.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/cms.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <cstdlib>

#include "tests/leakcheck/record.h"

namespace hsmrewrap::it {
namespace {

namespace v1 = hsmrewrap::v1;

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
struct CtxFree {
  void operator()(EVP_PKEY_CTX* c) const { EVP_PKEY_CTX_free(c); }
};
using CtxPtr = std::unique_ptr<EVP_PKEY_CTX, CtxFree>;
struct BnFree {
  void operator()(BIGNUM* b) const { BN_clear_free(b); }
};
using BnPtr = std::unique_ptr<BIGNUM, BnFree>;

[[noreturn]] void Die(const std::string& what) {
  fprintf(stderr, "test_crypto: %s: %s\n", what.c_str(), OpenSslErrors().c_str());
  abort();
}

std::string BioContents(BIO* b) {
  char* p = nullptr;
  long n = BIO_get_mem_data(b, &p);
  return std::string(p, static_cast<size_t>(n));
}

template <typename F>
std::string ToDer(F f) {
  unsigned char* p = nullptr;
  int n = f(&p);
  if (n <= 0) Die("i2d");
  std::string out(reinterpret_cast<char*>(p), static_cast<size_t>(n));
  OPENSSL_free(p);
  return out;
}

BnPtr GetBn(EVP_PKEY* k, const char* name) {
  BIGNUM* bn = nullptr;
  if (EVP_PKEY_get_bn_param(k, name, &bn) != 1) return nullptr;
  return BnPtr(bn);
}

std::string BnBytes(const BIGNUM* bn, size_t pad_to = 0) {
  size_t n = static_cast<size_t>(BN_num_bytes(bn));
  size_t len = pad_to > n ? pad_to : n;
  std::string out(len, '\0');
  BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(len));
  return out;
}

const EVP_MD* MdOf(Pad p) {
  switch (p) {
    case Pad::kOaepSha1:
      return EVP_sha1();
    case Pad::kOaepSha256:
      return EVP_sha256();
    case Pad::kOaepSha384:
      return EVP_sha384();
    case Pad::kOaepSha512:
      return EVP_sha512();
    case Pad::kPkcs1:
      return nullptr;
  }
  return nullptr;
}

bool SetPadding(EVP_PKEY_CTX* ctx, Pad p) {
  if (p == Pad::kPkcs1) return EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1;
  return EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) == 1 &&
         EVP_PKEY_CTX_set_rsa_oaep_md(ctx, MdOf(p)) == 1 &&
         EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, MdOf(p)) == 1;
}

void PutLe32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace

std::string OpenSslErrors() {
  std::string s;
  unsigned long e;
  char buf[256];
  while ((e = ERR_get_error()) != 0) {
    ERR_error_string_n(e, buf, sizeof(buf));
    s += (s.empty() ? "" : "; ") + std::string(buf);
  }
  return s;
}

std::string HexEncode(const std::string& b) {
  static const char kHex[] = "0123456789abcdef";
  std::string s;
  for (unsigned char c : b) {
    s.push_back(kHex[c >> 4]);
    s.push_back(kHex[c & 15]);
  }
  return s;
}

std::string HexDecode(const std::string& hex) {
  auto nib = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (hex.size() % 2 != 0) Die("odd hex length");
  std::string out;
  for (size_t i = 0; i < hex.size(); i += 2) {
    int hi = nib(hex[i]), lo = nib(hex[i + 1]);
    if (hi < 0 || lo < 0) Die("bad hex");
    out.push_back(static_cast<char>(hi * 16 + lo));
  }
  return out;
}

std::string Sha256(const std::string& b) {
  unsigned char d[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(b.data()), b.size(), d);
  return std::string(reinterpret_cast<char*>(d), sizeof(d));
}

std::string Sha1(const std::string& b) {
  unsigned char d[SHA_DIGEST_LENGTH];
  SHA1(reinterpret_cast<const unsigned char*>(b.data()), b.size(), d);
  return std::string(reinterpret_cast<char*>(d), sizeof(d));
}

std::string RandomBytes(size_t n) {
  std::string s(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(s.data()), static_cast<int>(n)) != 1) Die("RAND");
  return s;
}

std::string RandomAscii(size_t n) {
  static const char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#%&()*+,-./:;<=>?@[]^_{|}~";
  std::string r = RandomBytes(n), s;
  for (unsigned char c : r) s.push_back(kAlphabet[c % (sizeof(kAlphabet) - 1)]);
  return s;
}

Pkey GenerateRsa(int bits) {
  EVP_PKEY* k = EVP_RSA_gen(static_cast<unsigned int>(bits));
  if (k == nullptr) Die("EVP_RSA_gen");
  return Pkey(k);
}

std::string PrivateKeyPkcs8Der(EVP_PKEY* k) {
  BioPtr b(BIO_new(BIO_s_mem()));
  if (i2d_PKCS8PrivateKeyInfo_bio(b.get(), k) != 1) Die("i2d_PKCS8PrivateKeyInfo_bio");
  return BioContents(b.get());
}

std::string PrivateKeyPkcs8Pem(EVP_PKEY* k) {
  BioPtr b(BIO_new(BIO_s_mem()));
  if (PEM_write_bio_PrivateKey(b.get(), k, nullptr, nullptr, 0, nullptr, nullptr) != 1) Die("PEM");
  return BioContents(b.get());
}

std::string PrivateKeyPkcs1Der(EVP_PKEY* k) {
  return ToDer([k](unsigned char** p) { return i2d_PrivateKey(k, p); });
}

std::string SpkiDer(EVP_PKEY* k) {
  return ToDer([k](unsigned char** p) { return i2d_PUBKEY(k, p); });
}

std::string SpkiPem(EVP_PKEY* k) {
  BioPtr b(BIO_new(BIO_s_mem()));
  if (PEM_write_bio_PUBKEY(b.get(), k) != 1) Die("PEM_write_bio_PUBKEY");
  return BioContents(b.get());
}

std::string RsaPublicKeyDer(EVP_PKEY* k) {
  return ToDer([k](unsigned char** p) { return i2d_PublicKey(k, p); });
}

Pkey ParsePublicKey(const std::string& der_or_pem) {
  BioPtr b(BIO_new_mem_buf(der_or_pem.data(), static_cast<int>(der_or_pem.size())));
  EVP_PKEY* k = nullptr;
  if (der_or_pem.find("-----BEGIN") != std::string::npos) {
    k = PEM_read_bio_PUBKEY(b.get(), nullptr, nullptr, nullptr);
  } else {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(der_or_pem.data());
    k = d2i_PUBKEY(nullptr, &p, static_cast<long>(der_or_pem.size()));
    if (k != nullptr &&
        p != reinterpret_cast<const unsigned char*>(der_or_pem.data()) + der_or_pem.size()) {
      EVP_PKEY_free(k);  // trailing bytes
      k = nullptr;
    }
  }
  ERR_clear_error();
  return Pkey(k);
}

std::string RsaModulus(EVP_PKEY* k) {
  BnPtr n = GetBn(k, OSSL_PKEY_PARAM_RSA_N);
  if (!n) Die("n");
  return BnBytes(n.get());
}

std::string RsaExponent(EVP_PKEY* k) {
  BnPtr e = GetBn(k, OSSL_PKEY_PARAM_RSA_E);
  if (!e) Die("e");
  return BnBytes(e.get());
}

X509Ptr SelfSignedCert(EVP_PKEY* k, const std::string& cn) {
  X509Ptr c(X509_new());
  X509_set_version(c.get(), 2);
  std::string serial = RandomBytes(12);
  serial[0] = static_cast<char>(serial[0] & 0x7f) | 1;
  BnPtr bn(BN_bin2bn(reinterpret_cast<const unsigned char*>(serial.data()), 12, nullptr));
  BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(c.get()));
  X509_gmtime_adj(X509_getm_notBefore(c.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(c.get()), 86400L * 365);
  X509_NAME* name = X509_get_subject_name(c.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("hsm-rewrap tests"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(c.get(), name);
  X509_set_pubkey(c.get(), k);
  if (X509_sign(c.get(), k, EVP_sha256()) <= 0) Die("X509_sign");
  return c;
}

std::string CertDer(X509* c) {
  return ToDer([c](unsigned char** p) { return i2d_X509(c, p); });
}

std::string CertPem(X509* c) {
  BioPtr b(BIO_new(BIO_s_mem()));
  if (PEM_write_bio_X509(b.get(), c) != 1) Die("PEM_write_bio_X509");
  return BioContents(b.get());
}

std::string Pkcs12(EVP_PKEY* k, X509* c, const std::string& password) {
  leakcheck::RecordSecret(password);  // the service gets it with the PFX (ImportKey)
  PKCS12* p12 = PKCS12_create(password.c_str(), "imported", k, c, nullptr, 0, 0, 0, 0, 0);
  if (p12 == nullptr) Die("PKCS12_create");
  std::string der = ToDer([p12](unsigned char** p) { return i2d_PKCS12(p12, p); });
  PKCS12_free(p12);
  return der;
}

std::string CngFullPrivateBlob(EVP_PKEY* k) {
  BnPtr n = GetBn(k, OSSL_PKEY_PARAM_RSA_N), e = GetBn(k, OSSL_PKEY_PARAM_RSA_E),
        d = GetBn(k, OSSL_PKEY_PARAM_RSA_D), p = GetBn(k, OSSL_PKEY_PARAM_RSA_FACTOR1),
        q = GetBn(k, OSSL_PKEY_PARAM_RSA_FACTOR2), dp = GetBn(k, OSSL_PKEY_PARAM_RSA_EXPONENT1),
        dq = GetBn(k, OSSL_PKEY_PARAM_RSA_EXPONENT2),
        qi = GetBn(k, OSSL_PKEY_PARAM_RSA_COEFFICIENT1);
  if (!n || !e || !d || !p || !q || !dp || !dq || !qi) Die("RSA params");
  const int bits = EVP_PKEY_get_bits(k);
  const size_t cb_mod = static_cast<size_t>((bits + 7) / 8);
  const size_t cb_prime = static_cast<size_t>((bits / 2 + 7) / 8);
  const std::string eb = BnBytes(e.get());
  std::string blob;
  PutLe32(&blob, 0x33415352);  // "RSA3"
  PutLe32(&blob, static_cast<uint32_t>(bits));
  PutLe32(&blob, static_cast<uint32_t>(eb.size()));
  PutLe32(&blob, static_cast<uint32_t>(cb_mod));
  PutLe32(&blob, static_cast<uint32_t>(cb_prime));
  PutLe32(&blob, static_cast<uint32_t>(cb_prime));
  blob += eb;
  blob += BnBytes(n.get(), cb_mod);
  blob += BnBytes(p.get(), cb_prime);
  blob += BnBytes(q.get(), cb_prime);
  blob += BnBytes(dp.get(), cb_prime);
  blob += BnBytes(dq.get(), cb_prime);
  blob += BnBytes(qi.get(), cb_prime);
  blob += BnBytes(d.get(), cb_mod);
  return blob;
}

const char* PadName(Pad p) {
  switch (p) {
    case Pad::kOaepSha1:
      return "OAEP-SHA1";
    case Pad::kOaepSha256:
      return "OAEP-SHA256";
    case Pad::kOaepSha384:
      return "OAEP-SHA384";
    case Pad::kOaepSha512:
      return "OAEP-SHA512";
    case Pad::kPkcs1:
      return "PKCS1";
  }
  return "?";
}

Pad PadOf(v1::Padding p) {
  switch (p) {
    case v1::OAEP_SHA1:
      return Pad::kOaepSha1;
    case v1::OAEP_SHA256:
      return Pad::kOaepSha256;
    case v1::OAEP_SHA384:
      return Pad::kOaepSha384;
    case v1::OAEP_SHA512:
      return Pad::kOaepSha512;
    case v1::PKCS1:
      return Pad::kPkcs1;
    default:
      Die("PadOf(Padding): no such padding");
  }
}

Pad PadOf(v1::OutputFormat f) {
  switch (f) {
    case v1::RSA_OAEP_SHA1:
      return Pad::kOaepSha1;
    case v1::RSA_OAEP_SHA256:
      return Pad::kOaepSha256;
    case v1::RSA_OAEP_SHA384:
      return Pad::kOaepSha384;
    case v1::RSA_OAEP_SHA512:
      return Pad::kOaepSha512;
    case v1::RSA_PKCS1:
      return Pad::kPkcs1;
    default:
      Die("PadOf(OutputFormat): not a bare RSA format");
  }
}

bool IsCms(v1::OutputFormat f) { return f == v1::CMS_ENVELOPED || f == v1::CMS_ENVELOPED_PKCS1; }

size_t MaxPlaintext(Pad p, size_t modulus_len) {
  size_t overhead = 0;
  switch (p) {
    case Pad::kOaepSha1:
      overhead = 2 * 20 + 2;
      break;
    case Pad::kOaepSha256:
      overhead = 2 * 32 + 2;
      break;
    case Pad::kOaepSha384:
      overhead = 2 * 48 + 2;
      break;
    case Pad::kOaepSha512:
      overhead = 2 * 64 + 2;
      break;
    case Pad::kPkcs1:
      overhead = 11;
      break;
  }
  return modulus_len > overhead ? modulus_len - overhead : 0;
}

std::optional<std::string> RsaEncrypt(EVP_PKEY* pub, Pad p, const std::string& pt) {
  leakcheck::RecordSecret(pt);  // every sealed plaintext: the leak check searches the logs for it
  CtxPtr ctx(EVP_PKEY_CTX_new(pub, nullptr));
  size_t len = 0;
  if (!ctx || EVP_PKEY_encrypt_init(ctx.get()) != 1 || !SetPadding(ctx.get(), p) ||
      EVP_PKEY_encrypt(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(pt.data()),
                       pt.size()) != 1) {
    ERR_clear_error();
    return std::nullopt;
  }
  std::string out(len, '\0');
  if (EVP_PKEY_encrypt(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &len,
                       reinterpret_cast<const unsigned char*>(pt.data()), pt.size()) != 1) {
    ERR_clear_error();
    return std::nullopt;
  }
  out.resize(len);
  return out;
}

std::optional<std::string> RsaDecrypt(EVP_PKEY* priv, Pad p, const std::string& ct) {
  CtxPtr ctx(EVP_PKEY_CTX_new(priv, nullptr));
  size_t len = 0;
  if (!ctx || EVP_PKEY_decrypt_init(ctx.get()) != 1 || !SetPadding(ctx.get(), p) ||
      EVP_PKEY_decrypt(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(ct.data()),
                       ct.size()) != 1) {
    ERR_clear_error();
    return std::nullopt;
  }
  std::string out(len, '\0');
  if (EVP_PKEY_decrypt(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &len,
                       reinterpret_cast<const unsigned char*>(ct.data()), ct.size()) != 1) {
    ERR_clear_error();
    return std::nullopt;
  }
  out.resize(len);
  return out;
}

CmsResult CmsDecrypt(EVP_PKEY* priv, X509* cert, const std::string& der) {
  CmsResult r;
  BioPtr in(BIO_new_mem_buf(der.data(), static_cast<int>(der.size())));
  CMS_ContentInfo* cms = d2i_CMS_bio(in.get(), nullptr);
  if (cms == nullptr) {
    r.error = "not DER CMS: " + OpenSslErrors();
    return r;
  }
  if (OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_enveloped) {
    r.error = "CMS content type is not envelopedData";
    CMS_ContentInfo_free(cms);
    return r;
  }
  STACK_OF(CMS_RecipientInfo)* ris = CMS_get0_RecipientInfos(cms);
  r.recipients = ris ? sk_CMS_RecipientInfo_num(ris) : 0;
  if (r.recipients > 0) {
    CMS_RecipientInfo* ri = sk_CMS_RecipientInfo_value(ris, 0);
    if (CMS_RecipientInfo_type(ri) == CMS_RECIPINFO_TRANS) {
      X509_ALGOR* alg = nullptr;
      if (CMS_RecipientInfo_ktri_get0_algs(ri, nullptr, nullptr, &alg) == 1 && alg != nullptr) {
        const ASN1_OBJECT* oid = nullptr;
        X509_ALGOR_get0(&oid, nullptr, nullptr, alg);
        r.key_transport_nid = OBJ_obj2nid(oid);
      }
      ASN1_OCTET_STRING* keyid = nullptr;
      X509_NAME* issuer = nullptr;
      ASN1_INTEGER* serial = nullptr;
      if (CMS_RecipientInfo_ktri_get0_signer_id(ri, &keyid, &issuer, &serial) == 1) {
        if (keyid != nullptr) {
          r.rid_key_id.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(keyid)),
                              static_cast<size_t>(ASN1_STRING_length(keyid)));
        }
        r.rid_issuer_serial = issuer != nullptr && serial != nullptr;
      }
    }
  }
  BioPtr out(BIO_new(BIO_s_mem()));
  if (CMS_decrypt(cms, priv, cert, nullptr, out.get(), 0) != 1) {
    r.error = "CMS_decrypt failed: " + OpenSslErrors();
  } else {
    r.ok = true;
    r.plaintext = BioContents(out.get());
  }
  CMS_ContentInfo_free(cms);
  return r;
}

Device MakeDevice(int bits, const std::string& cn) { return DeviceFor(GenerateRsa(bits), cn); }

Device MakeEcDevice(const std::string& cn) { return DeviceFor(Pkey(EVP_EC_gen("P-256")), cn); }

Device DeviceFor(Pkey key, const std::string& cn) {
  Device d;
  d.key = std::move(key);
  d.cert = SelfSignedCert(d.key.get(), cn);
  d.cert_der = CertDer(d.cert.get());
  d.cert_pem = CertPem(d.cert.get());
  d.spki_der = SpkiDer(d.key.get());
  d.spki_pem = SpkiPem(d.key.get());
  return d;
}

std::optional<std::string> DecryptOutput(const Device& device, v1::OutputFormat format,
                                         bool recipient_is_certificate, const std::string& ct,
                                         std::string* why) {
  if (IsCms(format)) {
    CmsResult r =
        CmsDecrypt(device.key.get(), recipient_is_certificate ? device.cert.get() : nullptr, ct);
    if (!r.ok) {
      *why = r.error;
      return std::nullopt;
    }
    return r.plaintext;
  }
  const size_t mod_len = static_cast<size_t>(EVP_PKEY_get_size(device.key.get()));
  if (ct.size() != mod_len) {
    *why = "bare RSA output is " + std::to_string(ct.size()) + " bytes, modulus is " +
           std::to_string(mod_len);
    return std::nullopt;
  }
  auto pt = RsaDecrypt(device.key.get(), PadOf(format), ct);
  if (!pt) *why = std::string("does not decrypt with ") + PadName(PadOf(format));
  return pt;
}

}  // namespace hsmrewrap::it
