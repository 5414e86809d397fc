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
#include "crypto/pkcs12_parse.h"

namespace hsmrewrap::crypto {
namespace {

constexpr size_t kMaxPfx = 16 * 1024 * 1024;
constexpr char kProblemPayloadUrl[] = "type.hsmrewrap/pfx-problem";

template <typename T, void (*F)(T*)>
struct Free {
  void operator()(T* p) const { F(p); }
};
using Pkcs12Ptr = std::unique_ptr<PKCS12, Free<PKCS12, PKCS12_free>>;

absl::Status Problem(PfxProblem p, const std::string& message) {
  ERR_clear_error();  // messages never include OpenSSL's queue: it may depend on the password
  absl::Status s = p == PfxProblem::kUnsupported ? absl::UnimplementedError(message)
                                                 : absl::InvalidArgumentError(message);
  s.SetPayload(kProblemPayloadUrl, absl::Cord(PfxProblemName(p)));
  return s;
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
  // Bounded: every iteration count is checked before it is used (pkcs12_parse.h). The
  // CVE-2024-0727 shapes (a ContentInfo whose content is absent) are malformed there.
  internal::Pkcs12Parsed parsed = internal::ParsePkcs12(p12.get(), password);
  switch (parsed.outcome) {
    case internal::Pkcs12Parsed::Outcome::kOk:
      break;
    case internal::Pkcs12Parsed::Outcome::kTooMuchWork:
      return Problem(PfxProblem::kNotPkcs12, parsed.message);
    case internal::Pkcs12Parsed::Outcome::kMalformed:
      return Problem(PfxProblem::kNotPkcs12,
                     "not a valid PKCS#12 file: its contents are malformed or missing");
    case internal::Pkcs12Parsed::Outcome::kWrongPassword:
      return Problem(PfxProblem::kWrongPassword,
                     "wrong password (the PKCS#12 integrity check failed)");
    case internal::Pkcs12Parsed::Outcome::kNotDecrypted:
      if (parsed.has_mac) {
        return Problem(PfxProblem::kUnsupported,
                       "the PKCS#12 password is right but its contents do not decrypt "
                       "(unsupported or corrupt encryption)");
      }
      return Problem(PfxProblem::kWrongPassword,
                     "wrong password, or the PKCS#12 contents use an unsupported or corrupt "
                     "encryption (the file has no integrity MAC to tell which)");
  }
  // As PKCS12_parse pairs them: the first certificate that matches the key is the
  // end-entity certificate, every other one is the chain.
  std::shared_ptr<EVP_PKEY> key(parsed.key.release(), EVP_PKEY_free);
  std::shared_ptr<X509> cert;
  std::vector<std::shared_ptr<X509>> chain;
  for (auto& x : parsed.certs) {
    if (key && !cert) {
      ERR_set_mark();
      const bool match = X509_check_private_key(x.get(), key.get()) == 1;
      ERR_pop_to_mark();
      if (match) {
        cert.reset(x.release(), X509_free);
        continue;
      }
    }
    chain.emplace_back(x.release(), X509_free);
  }
  PfxContents out;
  const size_t others = chain.size();
  out.chain = std::move(chain);
  if (!key) return Problem(PfxProblem::kNoPrivateKey, "the PKCS#12 file contains no private key");
  if (!cert) {
    if (others == 0) {
      return Problem(PfxProblem::kNoCertificate, "the PKCS#12 file contains no certificate");
    }
    return Problem(PfxProblem::kKeyMismatch,
                   absl::StrCat("no certificate in the PKCS#12 file matches its private key (",
                                others, " certificate(s) checked)"));
  }
  // Paired by X509_check_private_key above; checked again (contract of this function).
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
