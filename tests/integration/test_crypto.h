// OpenSSL helpers for the integration tests: the "device" side (key generation,
// certificates, decryption of the service's outputs) and the "sealer" side (encryption to
// a service public key). Deliberately independent of hsmrewrap::crypto, so the tests check
// the service against plain OpenSSL rather than against our own code.
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>
#include <optional>
#include <string>

#include "hsmrewrap/v1/rewrap.pb.h"
#include "tests/support/openssl_keys.h"

namespace hsmrewrap::it {

using Pkey = test::EvpPkeyPtr;
using X509Ptr = test::X509Ptr;

// The OpenSSL error queue as text (and clears it).
std::string OpenSslErrors();

std::string HexEncode(const std::string& b);
std::string HexDecode(const std::string& hex);  // aborts the test binary on bad hex
std::string Sha256(const std::string& b);
std::string Sha1(const std::string& b);
std::string RandomBytes(size_t n);
std::string RandomAscii(size_t n);  // printable, no whitespace

Pkey GenerateRsa(int bits);
std::string PrivateKeyPkcs8Der(EVP_PKEY* k);
std::string PrivateKeyPkcs8Pem(EVP_PKEY* k);
std::string PrivateKeyPkcs1Der(EVP_PKEY* k);  // RSAPrivateKey
std::string SpkiDer(EVP_PKEY* k);
std::string SpkiPem(EVP_PKEY* k);
std::string RsaPublicKeyDer(EVP_PKEY* k);            // PKCS#1 RSAPublicKey (the SPKI BIT STRING)
Pkey ParsePublicKey(const std::string& der_or_pem);  // SPKI; null on failure
std::string RsaModulus(EVP_PKEY* k);                 // big-endian, no leading zeros
std::string RsaExponent(EVP_PKEY* k);

X509Ptr SelfSignedCert(EVP_PKEY* k, const std::string& cn);
std::string CertDer(X509* c);
std::string CertPem(X509* c);
// PKCS#12 with the key and certificate (OpenSSL 3 defaults: AES-256-CBC, PBKDF2).
std::string Pkcs12(EVP_PKEY* k, X509* c, const std::string& password);
// CNG BCRYPT_RSAFULLPRIVATE_BLOB (magic "RSA3"): what Intune's key export writes.
std::string CngFullPrivateBlob(EVP_PKEY* k);

enum class Pad { kOaepSha1, kOaepSha256, kOaepSha384, kOaepSha512, kPkcs1 };
const char* PadName(Pad p);
Pad PadOf(hsmrewrap::v1::Padding p);
// The padding of a bare RSA_* output format (must not be a CMS format).
Pad PadOf(hsmrewrap::v1::OutputFormat f);
bool IsCms(hsmrewrap::v1::OutputFormat f);
size_t MaxPlaintext(Pad p, size_t modulus_len);

std::optional<std::string> RsaEncrypt(EVP_PKEY* pub, Pad p, const std::string& pt);
std::optional<std::string> RsaDecrypt(EVP_PKEY* priv, Pad p, const std::string& ct);

struct CmsResult {
  bool ok = false;
  std::string plaintext;
  std::string error;
  int recipients = 0;
  int key_transport_nid = 0;       // NID_rsaesOaep or NID_rsaEncryption
  bool rid_issuer_serial = false;  // recipient named by issuer+serial
  std::string rid_key_id;          // or by subjectKeyIdentifier
};
// Parses DER ContentInfo(EnvelopedData) and decrypts with `priv` (and `cert`, if given,
// to match issuer+serial recipients).
CmsResult CmsDecrypt(EVP_PKEY* priv, X509* cert, const std::string& der);

// A device: RSA key, self-signed certificate, and the four recipient encodings.
struct Device {
  Pkey key;
  X509Ptr cert;
  std::string cert_der, cert_pem, spki_der, spki_pem;
};
Device MakeDevice(int bits, const std::string& cn);
Device MakeEcDevice(const std::string& cn);  // P-256
// A device for `key` (RSA or EC): a self-signed certificate and the four encodings.
Device DeviceFor(Pkey key, const std::string& cn);

// Decrypts a successful RewrapResult's ciphertext as `format` says, for `device`.
// Returns the plaintext, or nullopt with *why set.
std::optional<std::string> DecryptOutput(const Device& device, hsmrewrap::v1::OutputFormat format,
                                         bool recipient_is_certificate, const std::string& ct,
                                         std::string* why);

}  // namespace hsmrewrap::it
