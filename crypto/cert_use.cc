#include "crypto/cert_use.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace hsmrewrap::crypto {

absl::Status CheckEncryptionUse(const Certificate& cert) {
  X509* x = cert.get();
  // X509_get_ext_d2i: crit -1 = absent, -2 = present more than once; null with crit >= 0 =
  // present but malformed.
  int crit = -1;
  auto* bc =
      static_cast<BASIC_CONSTRAINTS*>(X509_get_ext_d2i(x, NID_basic_constraints, &crit, nullptr));
  const bool is_ca = bc != nullptr && bc->ca != 0;
  const bool bc_malformed = bc == nullptr && crit >= 0;
  BASIC_CONSTRAINTS_free(bc);
  ERR_clear_error();
  if (crit == -2) {
    return absl::InvalidArgumentError(
        "recipient certificate has two basicConstraints extensions; refused");
  }
  if (bc_malformed) {
    return absl::InvalidArgumentError(
        "recipient certificate's basicConstraints extension does not decode; refused");
  }
  if (is_ca) {
    return absl::InvalidArgumentError(
        "recipient certificate is a CA certificate (basicConstraints CA:TRUE), not a device's; "
        "send the device's own (end-entity) certificate");
  }
  crit = -1;
  auto* ku = static_cast<ASN1_BIT_STRING*>(X509_get_ext_d2i(x, NID_key_usage, &crit, nullptr));
  ERR_clear_error();
  if (crit == -1) return absl::OkStatus();  // no keyUsage: any use
  if (crit == -2) {
    return absl::InvalidArgumentError("recipient certificate has two keyUsage extensions; refused");
  }
  if (ku == nullptr) {
    return absl::InvalidArgumentError(
        "recipient certificate's keyUsage extension does not decode; refused");
  }
  // RFC 5280 4.2.1.3, by bit number.
  static constexpr const char* kNames[] = {"digitalSignature", "nonRepudiation", "keyEncipherment",
                                           "dataEncipherment", "keyAgreement",   "keyCertSign",
                                           "cRLSign",          "encipherOnly",   "decipherOnly"};
  constexpr int kKeyEncipherment = 2, kKeyAgreement = 4;
  std::string present;
  for (int bit = 0; bit < 9; ++bit) {
    if (ASN1_BIT_STRING_get_bit(ku, bit) != 0)
      absl::StrAppend(&present, present.empty() ? "" : ", ", kNames[bit]);
  }
  const bool is_rsa = cert.public_key().is_rsa();
  const bool fits = ASN1_BIT_STRING_get_bit(ku, is_rsa ? kKeyEncipherment : kKeyAgreement) != 0;
  ASN1_BIT_STRING_free(ku);
  if (fits) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("recipient certificate is not for encryption: its keyUsage (",
                   present.empty() ? "empty" : present, ") lacks ",
                   is_rsa ? "keyEncipherment, which an RSA recipient needs"
                          : "keyAgreement, which an EC recipient needs"));
}

}  // namespace hsmrewrap::crypto
