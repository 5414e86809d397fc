#include "crypto/pfx.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pkcs12.h>
#include <openssl/pkcs7.h>
#include <openssl/provider.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <mutex>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "crypto/encoding.h"
#include "crypto/openssl_util.h"

namespace hsmrewrap::crypto {
namespace {

constexpr size_t kMaxPfx = 16 * 1024 * 1024;
constexpr char kProblemPayloadUrl[] = "type.hsmrewrap/pfx-problem";

template <typename T, void (*F)(T*)>
struct Free {
  void operator()(T* p) const { F(p); }
};
using Pkcs12Ptr = std::unique_ptr<PKCS12, Free<PKCS12, PKCS12_free>>;
void FreePkcs7Stack(STACK_OF(PKCS7) * s) { sk_PKCS7_pop_free(s, PKCS7_free); }
void FreeX509Stack(STACK_OF(X509) * s) { sk_X509_pop_free(s, X509_free); }

absl::Status Problem(PfxProblem p, const std::string& message) {
  ERR_clear_error();  // messages never include OpenSSL's queue: it may depend on the password
  absl::Status s = p == PfxProblem::kUnsupported ? absl::UnimplementedError(message)
                                                 : absl::InvalidArgumentError(message);
  s.SetPayload(kProblemPayloadUrl, absl::Cord(PfxProblemName(p)));
  return s;
}

// The CVE-2024-0727 shapes: a ContentInfo whose content is absent. OpenSSL 3.0.13+ checks
// this itself; we check again so an older library cannot be made to dereference NULL.
bool AuthSafesWellFormed(PKCS12* p12) {
  std::unique_ptr<STACK_OF(PKCS7), Free<STACK_OF(PKCS7), FreePkcs7Stack>> safes(
      PKCS12_unpack_authsafes(p12));
  if (!safes) return false;
  for (int i = 0; i < sk_PKCS7_num(safes.get()); ++i) {
    PKCS7* p7 = sk_PKCS7_value(safes.get(), i);
    if (p7 == nullptr) return false;
    switch (OBJ_obj2nid(p7->type)) {
      case NID_pkcs7_data:
        if (p7->d.data == nullptr) return false;
        break;
      case NID_pkcs7_encrypted:
        if (p7->d.encrypted == nullptr || p7->d.encrypted->enc_data == nullptr ||
            p7->d.encrypted->enc_data->enc_data == nullptr ||
            p7->d.encrypted->enc_data->algorithm == nullptr) {
          return false;
        }
        break;
      default:
        break;  // enveloped (public-key privacy mode) etc.: PKCS12_parse refuses them
    }
  }
  return true;
}

absl::Time Asn1ToTime(const ASN1_TIME* t) {
  struct tm tm = {};
  if (t == nullptr || ASN1_TIME_to_tm(t, &tm) != 1) return absl::InfinitePast();
  absl::CivilSecond cs(tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                       tm.tm_sec);
  return absl::FromCivil(cs, absl::UTCTimeZone());
}

std::string SubjectLine(X509* x) {
  std::unique_ptr<BIO, Free<BIO, BIO_free_all>> bio(BIO_new(BIO_s_mem()));
  if (!bio) return "";
  X509_NAME_print_ex(bio.get(), X509_get_subject_name(x), 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);  // NOLINT(runtime/int): OpenSSL's type
  return n > 0 ? std::string(data, static_cast<size_t>(n)) : std::string();
}

std::string Thumbprint(X509* x) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(x, EVP_sha1(), md, &len) != 1) return "";
  return HexEncode(absl::MakeConstSpan(md, len));
}

std::string FormatUtc(absl::Time t) {
  return absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", t, absl::UTCTimeZone());
}

}  // namespace

std::string PfxProblemName(PfxProblem p) {
  switch (p) {
    case PfxProblem::kNone:
      return "none";
    case PfxProblem::kNotPkcs12:
      return "not-pkcs12";
    case PfxProblem::kWrongPassword:
      return "wrong-password";
    case PfxProblem::kNoPrivateKey:
      return "no-private-key";
    case PfxProblem::kNoCertificate:
      return "no-certificate";
    case PfxProblem::kKeyMismatch:
      return "key-mismatch";
    case PfxProblem::kExpired:
      return "expired";
    case PfxProblem::kNotYetValid:
      return "not-yet-valid";
    case PfxProblem::kKeyUsage:
      return "key-usage";
    case PfxProblem::kUnsupported:
      return "unsupported";
  }
  return "unknown";
}

PfxProblem PfxProblemOf(const absl::Status& status) {
  if (status.ok()) return PfxProblem::kNone;
  auto payload = status.GetPayload(kProblemPayloadUrl);
  if (!payload) return PfxProblem::kNone;
  const std::string name(*payload);
  for (PfxProblem p :
       {PfxProblem::kNotPkcs12, PfxProblem::kWrongPassword, PfxProblem::kNoPrivateKey,
        PfxProblem::kNoCertificate, PfxProblem::kKeyMismatch, PfxProblem::kExpired,
        PfxProblem::kNotYetValid, PfxProblem::kKeyUsage, PfxProblem::kUnsupported}) {
    if (PfxProblemName(p) == name) return p;
  }
  return PfxProblem::kNone;
}

absl::StatusOr<PfxContents> OpenPfx(absl::Span<const uint8_t> pfx, const SecretString& password) {
  internal::EnsureLegacyProvider();
  ERR_clear_error();
  if (pfx.empty()) return Problem(PfxProblem::kNotPkcs12, "not a PKCS#12 file: the file is empty");
  if (pfx.size() > kMaxPfx) {
    return Problem(PfxProblem::kNotPkcs12, "not a PKCS#12 file: larger than 16 MiB");
  }
  const unsigned char* p = pfx.data();
  Pkcs12Ptr p12(d2i_PKCS12(nullptr, &p, static_cast<long>(pfx.size())));  // NOLINT(runtime/int)
  if (!p12) {
    return Problem(PfxProblem::kNotPkcs12,
                   "not a PKCS#12 file (it does not decode as a PFX structure)");
  }
  if (!AuthSafesWellFormed(p12.get())) {
    return Problem(PfxProblem::kNotPkcs12,
                   "not a valid PKCS#12 file: its contents are malformed or missing");
  }
  // PKCS12_parse checks the MAC itself, so on success the password was right. Only when it
  // fails is the MAC checked separately, to tell a wrong password from other problems
  // (each check runs the PBKDF again, which costs ~0.2 s at GnuTLS's 600000 iterations).
  // An empty password may have been written as "no password" (NULL) or as "" depending
  // on the producer; PKCS12_parse tries both when given "".
  const char* pass = password.c_str();
  const int pass_len = static_cast<int>(password.size());
  const bool has_mac = PKCS12_mac_present(p12.get()) == 1;
  EVP_PKEY* raw_key = nullptr;
  X509* raw_cert = nullptr;
  STACK_OF(X509)* raw_ca = nullptr;
  const bool parsed = PKCS12_parse(p12.get(), pass, &raw_key, &raw_cert, &raw_ca) == 1;
  std::shared_ptr<EVP_PKEY> key(raw_key, EVP_PKEY_free);
  std::shared_ptr<X509> cert(raw_cert, X509_free);
  std::unique_ptr<STACK_OF(X509), Free<STACK_OF(X509), FreeX509Stack>> ca(raw_ca);
  if (!parsed) {
    ERR_clear_error();
    if (has_mac) {
      bool mac_ok = PKCS12_verify_mac(p12.get(), pass, pass_len) == 1;
      if (!mac_ok && password.empty()) mac_ok = PKCS12_verify_mac(p12.get(), nullptr, 0) == 1;
      if (!mac_ok) {
        return Problem(PfxProblem::kWrongPassword,
                       "wrong password (the PKCS#12 integrity check failed)");
      }
      return Problem(PfxProblem::kUnsupported,
                     "the PKCS#12 password is right but its contents do not decrypt "
                     "(unsupported or corrupt encryption)");
    }
    return Problem(PfxProblem::kWrongPassword,
                   "wrong password, or the PKCS#12 contents use an unsupported or corrupt "
                   "encryption (the file has no integrity MAC to tell which)");
  }
  PfxContents out;
  const int others = ca ? sk_X509_num(ca.get()) : 0;
  for (int i = 0; i < others; ++i) {
    X509* x = sk_X509_value(ca.get(), i);
    X509_up_ref(x);
    out.chain.emplace_back(x, X509_free);
  }
  if (!key) return Problem(PfxProblem::kNoPrivateKey, "the PKCS#12 file contains no private key");
  if (!cert) {
    if (others == 0) {
      return Problem(PfxProblem::kNoCertificate, "the PKCS#12 file contains no certificate");
    }
    return Problem(PfxProblem::kKeyMismatch,
                   absl::StrCat("no certificate in the PKCS#12 file matches its private key (",
                                others, " certificate(s) checked)"));
  }
  // PKCS12_parse pairs by key; check again explicitly (contract of this function).
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    return Problem(PfxProblem::kKeyMismatch,
                   "the certificate's public key does not match the private key");
  }
  out.private_key = key;
  out.certificate = cert;
  out.thumbprint = Thumbprint(cert.get());
  out.not_before = Asn1ToTime(X509_get0_notBefore(cert.get()));
  out.not_after = Asn1ToTime(X509_get0_notAfter(cert.get()));
  out.key_bits = EVP_PKEY_get_bits(key.get());
  switch (EVP_PKEY_get_base_id(key.get())) {
    case EVP_PKEY_RSA:
      out.key_type = "RSA";
      break;
    case EVP_PKEY_RSA_PSS:
      out.key_type = "RSA-PSS";
      break;
    case EVP_PKEY_EC:
      out.key_type = "EC";
      break;
    case EVP_PKEY_ED25519:
      out.key_type = "Ed25519";
      break;
    default:
      out.key_type = "other";
      break;
  }
  out.subject = SubjectLine(cert.get());
  ERR_clear_error();
  return out;
}

absl::Status CheckPfxForImport(const PfxContents& c, PfxPurpose purpose, absl::Time now) {
  if (now > c.not_after) {
    return Problem(PfxProblem::kExpired,
                   absl::StrCat("the certificate expired on ", FormatUtc(c.not_after)));
  }
  if (now < c.not_before) {
    return Problem(PfxProblem::kNotYetValid,
                   absl::StrCat("the certificate is not valid before ", FormatUtc(c.not_before)));
  }
  if (purpose == PfxPurpose::kUnassigned || !c.certificate) return absl::OkStatus();
  const uint32_t ku = X509_get_key_usage(c.certificate.get());  // computes the extensions
  if ((X509_get_extension_flags(c.certificate.get()) & EXFLAG_INVALID) != 0) {
    ERR_clear_error();
    return Problem(PfxProblem::kKeyUsage, "the certificate's extensions are malformed");
  }
  if (ku == UINT32_MAX) return absl::OkStatus();  // no KeyUsage extension: any use
  if (purpose == PfxPurpose::kSmimeEncryption) {
    const bool ec = c.key_type == "EC";
    const uint32_t need = ec ? (KU_KEY_ENCIPHERMENT | KU_KEY_AGREEMENT) : KU_KEY_ENCIPHERMENT;
    if ((ku & need) == 0) {
      return Problem(PfxProblem::kKeyUsage,
                     ec ? "the certificate's KeyUsage has neither keyEncipherment nor "
                          "keyAgreement, which smimeEncryption needs"
                        : "the certificate's KeyUsage lacks keyEncipherment, which "
                          "smimeEncryption needs");
    }
  } else if (purpose == PfxPurpose::kSmimeSigning) {
    if ((ku & (KU_DIGITAL_SIGNATURE | KU_NON_REPUDIATION)) == 0) {
      return Problem(PfxProblem::kKeyUsage,
                     "the certificate's KeyUsage has neither digitalSignature nor "
                     "nonRepudiation, which smimeSigning needs");
    }
  }
  return absl::OkStatus();
}

}  // namespace hsmrewrap::crypto
