#include "crypto/pkcs12_parse.h"

#include <openssl/err.h>
#include <openssl/pkcs12.h>
#include <openssl/pkcs7.h>
#include <openssl/provider.h>
#include <openssl/x509.h>

#include <optional>

#include "absl/strings/str_cat.h"

namespace hsmrewrap::crypto::internal {
namespace {

using Outcome = Pkcs12Parsed::Outcome;

template <typename T, void (*F)(T*)>
struct Free {
  void operator()(T* p) const { F(p); }
};
void FreePkcs7Stack(STACK_OF(PKCS7) * s) { sk_PKCS7_pop_free(s, PKCS7_free); }
void FreeBagStack(STACK_OF(PKCS12_SAFEBAG) * s) {
  sk_PKCS12_SAFEBAG_pop_free(s, PKCS12_SAFEBAG_free);
}
using Pkcs7StackPtr = std::unique_ptr<STACK_OF(PKCS7), Free<STACK_OF(PKCS7), FreePkcs7Stack>>;
using BagStackPtr =
    std::unique_ptr<STACK_OF(PKCS12_SAFEBAG), Free<STACK_OF(PKCS12_SAFEBAG), FreeBagStack>>;
using P8Ptr =
    std::unique_ptr<PKCS8_PRIV_KEY_INFO, Free<PKCS8_PRIV_KEY_INFO, PKCS8_PRIV_KEY_INFO_free>>;
using PbeParamPtr = std::unique_ptr<PBEPARAM, Free<PBEPARAM, PBEPARAM_free>>;
using Pbe2ParamPtr = std::unique_ptr<PBE2PARAM, Free<PBE2PARAM, PBE2PARAM_free>>;
using Pbkdf2ParamPtr = std::unique_ptr<PBKDF2PARAM, Free<PBKDF2PARAM, PBKDF2PARAM_free>>;
using ScryptParamsPtr = std::unique_ptr<SCRYPT_PARAMS, Free<SCRYPT_PARAMS, SCRYPT_PARAMS_free>>;

// A count from the DER: absent means 1 (as OpenSSL reads it); nullopt when it is not a
// positive number that fits in 63 bits.
std::optional<uint64_t> Count(const ASN1_INTEGER* i) {
  if (i == nullptr) return 1;
  int64_t v = 0;
  if (ASN1_INTEGER_get_int64(&v, i) != 1 || v < 1) return std::nullopt;
  return static_cast<uint64_t>(v);
}

// The iteration counts of one file, charged before the KDF that uses each one runs.
class Budget {
 public:
  // False (and message() says why) if `count` is not a positive number, is above
  // kMaxPkcs12Iterations, or takes the file's sum above kMaxPkcs12TotalIterations.
  bool Charge(std::optional<uint64_t> count, const char* what) {
    if (!count) {
      message_ = absl::StrCat("the PKCS#12 ", what, " iteration count is not a positive number");
      return false;
    }
    if (*count > kMaxPkcs12Iterations) {
      message_ = absl::StrCat("the PKCS#12 ", what, " iteration count ", *count,
                              " is above the limit of ", kMaxPkcs12Iterations);
      return false;
    }
    total_ += *count;
    if (total_ > kMaxPkcs12TotalIterations) {
      message_ = absl::StrCat("the PKCS#12 file's iteration counts add up to more than ",
                              kMaxPkcs12TotalIterations, " (the limit)");
      return false;
    }
    return true;
  }
  const std::string& message() const { return message_; }

 private:
  uint64_t total_ = 0;
  std::string message_;
};

// The work the password-based encryption `alg` asks for, as an iteration count: PBES2
// (PBKDF2 or scrypt) or a PKCS#5 v1 / PKCS#12 PBE (PBEParameter). Parameters that do not
// decode as either cost nothing: OpenSSL decodes them with the same templates and refuses
// them before any KDF runs.
std::optional<uint64_t> PbeIterations(const X509_ALGOR* alg) {
  if (alg == nullptr || alg->parameter == nullptr) return 1;
  if (OBJ_obj2nid(alg->algorithm) == NID_pbes2) {
    Pbe2ParamPtr pbe2(static_cast<PBE2PARAM*>(
        ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBE2PARAM), alg->parameter)));
    if (!pbe2 || pbe2->keyfunc == nullptr || pbe2->keyfunc->parameter == nullptr) return 1;
    switch (OBJ_obj2nid(pbe2->keyfunc->algorithm)) {
      case NID_id_pbkdf2: {
        Pbkdf2ParamPtr kdf(static_cast<PBKDF2PARAM*>(
            ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBKDF2PARAM), pbe2->keyfunc->parameter)));
        if (!kdf) return 1;
        return Count(kdf->iter);
      }
      case NID_id_scrypt: {
        ScryptParamsPtr sp(static_cast<SCRYPT_PARAMS*>(
            ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(SCRYPT_PARAMS), pbe2->keyfunc->parameter)));
        if (!sp) return 1;
        const auto n = Count(sp->costParameter), r = Count(sp->blockSize),
                   p = Count(sp->parallelizationParameter);
        if (!n || !r || !p) return std::nullopt;
        // N x r x p, saturated (each factor is below 2^63).
        const uint64_t limit = kMaxPkcs12TotalIterations + 1;
        const uint64_t nr = *n >= limit || *r >= limit ? limit : std::min(*n * *r, limit);
        return *p >= limit || nr == limit ? limit : std::min(nr * *p, limit);
      }
      default:
        return 1;  // a KDF OpenSSL does not run
    }
  }
  PbeParamPtr pbe(
      static_cast<PBEPARAM*>(ASN1_TYPE_unpack_sequence(ASN1_ITEM_rptr(PBEPARAM), alg->parameter)));
  if (!pbe) return 1;
  return Count(pbe->iter);
}

// The algorithm of an encrypted safe; null for the shapes of CVE-2024-0727 (content absent),
// which OpenSSL 3.0.13+ refuses itself (checked again so an older library cannot be made to
// dereference NULL).
const X509_ALGOR* EncryptedSafeAlgorithm(const PKCS7* p7) {
  if (p7->d.encrypted == nullptr || p7->d.encrypted->enc_data == nullptr ||
      p7->d.encrypted->enc_data->enc_data == nullptr ||
      p7->d.encrypted->enc_data->algorithm == nullptr) {
    return nullptr;
  }
  return p7->d.encrypted->enc_data->algorithm;
}

// Charges every shrouded key bag in `bags` (and in nested safeContents bags).
bool ChargeKeyBags(const STACK_OF(PKCS12_SAFEBAG) * bags, Budget& budget) {
  for (int i = 0; i < sk_PKCS12_SAFEBAG_num(bags); ++i) {
    const PKCS12_SAFEBAG* bag = sk_PKCS12_SAFEBAG_value(bags, i);
    switch (PKCS12_SAFEBAG_get_nid(bag)) {
      case NID_pkcs8ShroudedKeyBag: {
        const X509_ALGOR* alg = nullptr;
        if (const X509_SIG* sig = PKCS12_SAFEBAG_get0_pkcs8(bag)) X509_SIG_get0(sig, &alg, nullptr);
        if (!budget.Charge(PbeIterations(alg), "key bag")) return false;
        break;
      }
      case NID_safeContentsBag:
        if (!ChargeKeyBags(PKCS12_SAFEBAG_get0_safes(bag), budget)) return false;
        break;
      default:
        break;
    }
  }
  return true;
}

// The safes of the file: data safes unpacked (their bags in the clear), encrypted ones as
// they are.
struct Safe {
  PKCS7* p7 = nullptr;  // owned by the authsafes stack
  BagStackPtr bags;     // data safes only
};

// What parse_bag in PKCS12_parse keeps: the first private key and every X.509 certificate.
// False when a bag does not decode or decrypt.
bool TakeBags(const STACK_OF(PKCS12_SAFEBAG) * bags, const char* pass, Pkcs12Parsed& out) {
  for (int i = 0; i < sk_PKCS12_SAFEBAG_num(bags); ++i) {
    const PKCS12_SAFEBAG* bag = sk_PKCS12_SAFEBAG_value(bags, i);
    // PKCS12_parse refuses bags whose friendlyName or localKeyID has the wrong type.
    const ASN1_TYPE* name = PKCS12_SAFEBAG_get0_attr(bag, NID_friendlyName);
    const ASN1_TYPE* id = PKCS12_SAFEBAG_get0_attr(bag, NID_localKeyID);
    if ((name != nullptr && name->type != V_ASN1_BMPSTRING) ||
        (id != nullptr && id->type != V_ASN1_OCTET_STRING)) {
      return false;
    }
    switch (PKCS12_SAFEBAG_get_nid(bag)) {
      case NID_keyBag:
        if (out.key) break;
        out.key.reset(EVP_PKCS82PKEY(PKCS12_SAFEBAG_get0_p8inf(bag)));
        if (!out.key) return false;
        break;
      case NID_pkcs8ShroudedKeyBag: {
        if (out.key) break;
        P8Ptr p8(PKCS12_decrypt_skey(bag, pass, pass == nullptr ? 0 : -1));
        if (!p8) return false;
        out.key.reset(EVP_PKCS82PKEY(p8.get()));
        if (!out.key) return false;
        break;
      }
      case NID_certBag: {
        if (PKCS12_SAFEBAG_get_bag_nid(bag) != NID_x509Certificate) break;
        X509Ptr x(PKCS12_SAFEBAG_get1_cert(bag));
        if (!x) return false;
        out.certs.push_back(std::move(x));
        break;
      }
      case NID_safeContentsBag:
        if (!TakeBags(PKCS12_SAFEBAG_get0_safes(bag), pass, out)) return false;
        break;
      default:
        break;
    }
  }
  return true;
}

// Decrypts the safes with `pass` and takes their bags; the key bags inside encrypted safes
// are charged to `budget` before anything is decrypted with them.
Outcome Decrypt(const std::vector<Safe>& safes, const char* pass, Budget budget,
                Pkcs12Parsed& out) {
  out.key.reset();
  out.certs.clear();
  for (const Safe& safe : safes) {
    if (safe.bags) {
      if (!TakeBags(safe.bags.get(), pass, out)) return Outcome::kNotDecrypted;
      continue;
    }
    BagStackPtr bags(PKCS12_unpack_p7encdata(safe.p7, pass, pass == nullptr ? 0 : -1));
    if (!bags) return Outcome::kNotDecrypted;
    if (!ChargeKeyBags(bags.get(), budget)) {
      out.message = budget.message();
      return Outcome::kTooMuchWork;
    }
    if (!TakeBags(bags.get(), pass, out)) return Outcome::kNotDecrypted;
  }
  return Outcome::kOk;
}

Pkcs12Parsed Parse(PKCS12* p12, const SecretString& password) {
  Pkcs12Parsed out;
  auto fail = [&out](Outcome o, std::string message = "") {
    out.outcome = o;
    out.message = std::move(message);
    out.key.reset();
    out.certs.clear();
    return std::move(out);
  };
  // 1. Every count visible without the password: the MAC, each encrypted safe, each key
  //    bag in the clear. Nothing has run yet.
  Budget budget;
  out.has_mac = PKCS12_mac_present(p12) == 1;
  if (out.has_mac) {
    const ASN1_INTEGER* iter = nullptr;
    PKCS12_get0_mac(nullptr, nullptr, nullptr, &iter, p12);
    if (!budget.Charge(Count(iter), "MAC")) return fail(Outcome::kTooMuchWork, budget.message());
  }
  Pkcs7StackPtr authsafes(PKCS12_unpack_authsafes(p12));
  if (!authsafes) return fail(Outcome::kMalformed);
  std::vector<Safe> safes;
  for (int i = 0; i < sk_PKCS7_num(authsafes.get()); ++i) {
    PKCS7* p7 = sk_PKCS7_value(authsafes.get(), i);
    if (p7 == nullptr) return fail(Outcome::kMalformed);
    switch (OBJ_obj2nid(p7->type)) {
      case NID_pkcs7_data: {
        if (p7->d.data == nullptr) return fail(Outcome::kMalformed);
        BagStackPtr bags(PKCS12_unpack_p7data(p7));
        if (!bags) return fail(Outcome::kMalformed);
        if (!ChargeKeyBags(bags.get(), budget)) {
          return fail(Outcome::kTooMuchWork, budget.message());
        }
        safes.push_back({p7, std::move(bags)});
        break;
      }
      case NID_pkcs7_encrypted: {
        const X509_ALGOR* alg = EncryptedSafeAlgorithm(p7);
        if (alg == nullptr) return fail(Outcome::kMalformed);
        if (!budget.Charge(PbeIterations(alg), "encrypted safe")) {
          return fail(Outcome::kTooMuchWork, budget.message());
        }
        safes.push_back({p7, nullptr});
        break;
      }
      default:
        break;  // enveloped (public-key privacy mode) etc.: PKCS12_parse skips them too
    }
  }

  // 2. The MAC. An empty password may have been written as "no password" (NULL) or as ""
  //    depending on the producer: both are tried, as PKCS12_parse does.
  const char* pass = password.c_str();
  std::vector<const char*> candidates;
  if (out.has_mac) {
    if (password.empty()) {
      if (PKCS12_verify_mac(p12, nullptr, 0) == 1) {
        candidates = {nullptr};
      } else if (PKCS12_verify_mac(p12, "", 0) == 1) {
        candidates = {""};
      }
    } else if (PKCS12_verify_mac(p12, pass, -1) == 1) {
      candidates = {pass};
    }
    if (candidates.empty()) return fail(Outcome::kWrongPassword);
  } else {
    candidates =
        password.empty() ? std::vector<const char*>{nullptr, ""} : std::vector<const char*>{pass};
  }

  // 3. The contents; once more with the legacy provider if they do not decrypt without it.
  for (int attempt = 0; attempt < 2; ++attempt) {
    for (const char* candidate : candidates) {
      const Outcome o = Decrypt(safes, candidate, budget, out);
      if (o == Outcome::kOk) return out;
      if (o == Outcome::kTooMuchWork) return fail(o, out.message);
    }
    if (attempt > 0 || OSSL_PROVIDER_available(nullptr, "legacy") == 1 || !EnsureLegacyProvider()) {
      break;
    }
  }
  return fail(Outcome::kNotDecrypted);
}

}  // namespace

Pkcs12Parsed ParsePkcs12(PKCS12* p12, const SecretString& password) {
  Pkcs12Parsed out = Parse(p12, password);
  ERR_clear_error();  // the queue may depend on the password
  return out;
}

}  // namespace hsmrewrap::crypto::internal
