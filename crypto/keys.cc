#include "crypto/keys.h"

#include <fcntl.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "crypto/encoding.h"
#include "crypto/openssl_util.h"
#include "crypto/pkcs12_parse.h"

namespace hsmrewrap::crypto {

using internal::BioPtr;
using internal::BnCtxPtr;
using internal::BnPtr;
using internal::BnToBytes;
using internal::BnToSecretBytes;
using internal::EvpPkeyCtxPtr;
using internal::EvpPkeyPtr;
using internal::OsslInternal;
using internal::OsslInvalidArgument;
using internal::OsslParamBldPtr;
using internal::OsslParamPtr;
using internal::Pkcs12Ptr;
using internal::SecretBnPtr;
using internal::X509Ptr;

namespace {

constexpr uint32_t kCngRsaPublicMagic = 0x31415352;       // "RSA1"
constexpr uint32_t kCngRsaPrivateMagic = 0x32415352;      // "RSA2"
constexpr uint32_t kCngRsaFullPrivateMagic = 0x33415352;  // "RSA3"
constexpr size_t kCngHeaderLen = 24;
constexpr int kMinRsaBits = 1024;
constexpr int kMaxRsaBits = 16384;
constexpr size_t kMaxKeyInput = 64 * 1024;         // SPKI, certificates, private keys
constexpr size_t kMaxPfxInput = 16 * 1024 * 1024;  // PKCS#12 files
constexpr size_t kMaxSecretFile = 1024 * 1024;

uint32_t ReadLe32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}

void AppendLe32(Bytes* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}

struct CngHeader {
  uint32_t magic;
  uint32_t bit_length;
  uint32_t cb_public_exp;
  uint32_t cb_modulus;
  uint32_t cb_prime1;
  uint32_t cb_prime2;
};

absl::StatusOr<CngHeader> ReadCngHeader(absl::Span<const uint8_t> blob) {
  if (blob.size() < kCngHeaderLen) {
    return absl::InvalidArgumentError("CNG RSA blob: shorter than its 24-byte header");
  }
  CngHeader h;
  h.magic = ReadLe32(&blob[0]);
  h.bit_length = ReadLe32(&blob[4]);
  h.cb_public_exp = ReadLe32(&blob[8]);
  h.cb_modulus = ReadLe32(&blob[12]);
  h.cb_prime1 = ReadLe32(&blob[16]);
  h.cb_prime2 = ReadLe32(&blob[20]);
  // Bounds that keep every later size computation far from overflow.
  if (h.cb_public_exp == 0 || h.cb_public_exp > 8) {
    return absl::InvalidArgumentError("CNG RSA blob: public exponent length out of range");
  }
  if (h.cb_modulus == 0 || h.cb_modulus > kMaxRsaBits / 8) {
    return absl::InvalidArgumentError("CNG RSA blob: modulus length out of range");
  }
  if (h.bit_length == 0 || (h.bit_length + 7) / 8 != h.cb_modulus) {
    return absl::InvalidArgumentError("CNG RSA blob: BitLength does not match cbModulus");
  }
  return h;
}

absl::StatusOr<BnPtr> GetBnParam(const EVP_PKEY* pkey, const char* name) {
  BIGNUM* bn = nullptr;
  if (EVP_PKEY_get_bn_param(pkey, name, &bn) != 1 || bn == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat("key has no parameter ", name));
  }
  return BnPtr(bn);
}

// Secret parameters: wiped when freed. Returns nullptr (and clears errors) if absent.
SecretBnPtr GetSecretBnParam(const EVP_PKEY* pkey, const char* name) {
  BIGNUM* bn = nullptr;
  if (EVP_PKEY_get_bn_param(pkey, name, &bn) != 1) {
    ERR_clear_error();
    return nullptr;
  }
  return SecretBnPtr(bn);
}

absl::Status CheckRsaNumbers(const BIGNUM* n, const BIGNUM* e) {
  const int bits = BN_num_bits(n);
  if (bits < kMinRsaBits || bits > kMaxRsaBits) {
    return absl::InvalidArgumentError(
        absl::StrCat("RSA modulus of ", bits, " bits is outside ", kMinRsaBits, "..", kMaxRsaBits));
  }
  if (!BN_is_odd(n)) return absl::InvalidArgumentError("RSA modulus is even");
  if (!BN_is_odd(e) || BN_is_one(e) || BN_num_bits(e) > 64 || BN_cmp(e, n) >= 0) {
    return absl::InvalidArgumentError("RSA public exponent is invalid");
  }
  return absl::OkStatus();
}

absl::Status ValidatePublicKey(EVP_PKEY* pkey) {
  if (EVP_PKEY_is_a(pkey, "RSA")) {
    auto n = GetBnParam(pkey, OSSL_PKEY_PARAM_RSA_N);
    if (!n.ok()) return n.status();
    auto e = GetBnParam(pkey, OSSL_PKEY_PARAM_RSA_E);
    if (!e.ok()) return e.status();
    return CheckRsaNumbers(n->get(), e->get());
  }
  if (EVP_PKEY_is_a(pkey, "EC")) {
    char group[64] = {0};
    size_t len = 0;
    if (EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                       &len) != 1) {
      ERR_clear_error();
      return absl::InvalidArgumentError("EC key without a named curve is not supported");
    }
    const absl::string_view g(group, len);
    if (g != "prime256v1" && g != "secp384r1" && g != "secp521r1") {
      return absl::InvalidArgumentError(
          absl::StrCat("EC curve ", g, " is not supported (P-256, P-384, P-521 are)"));
    }
    return absl::OkStatus();
  }
  if (EVP_PKEY_is_a(pkey, "RSA-PSS")) {
    return absl::InvalidArgumentError("RSA-PSS keys cannot be used for encryption");
  }
  const char* name = EVP_PKEY_get0_type_name(pkey);
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported key type ", name ? name : "(unknown)", " (RSA or EC expected)"));
}

// Returns the DER inside PEM armour labelled `label`, with a helpful error for the labels
// people commonly confuse.
absl::StatusOr<SecretBytes> PemBody(absl::Span<const uint8_t> data, absl::string_view label) {
  const std::string found = internal::PemLabel(data);
  if (found != label) {
    return absl::InvalidArgumentError(
        absl::StrCat("PEM label is \"", found, "\"; expected \"", label, "\""));
  }
  return internal::PemDecode(data, label);
}

absl::StatusOr<EvpPkeyPtr> RsaPublicFromBytes(absl::Span<const uint8_t> n_bytes,
                                              absl::Span<const uint8_t> e_bytes) {
  BnPtr n(BN_bin2bn(n_bytes.data(), static_cast<int>(n_bytes.size()), nullptr));
  BnPtr e(BN_bin2bn(e_bytes.data(), static_cast<int>(e_bytes.size()), nullptr));
  if (!n || !e) return OsslInternal("BN_bin2bn failed");
  if (absl::Status s = CheckRsaNumbers(n.get(), e.get()); !s.ok()) return s;
  OsslParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get()) != 1) {
    return OsslInternal("OSSL_PARAM_BLD failed");
  }
  OsslParamPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
  EVP_PKEY* pkey = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
    return OsslInternal("building an RSA public key failed");
  }
  return EvpPkeyPtr(pkey);
}

absl::StatusOr<RsaPrivateKeyParts> PartsFromPkey(const EVP_PKEY* pkey) {
  if (!EVP_PKEY_is_a(pkey, "RSA")) {
    const char* name = EVP_PKEY_get0_type_name(pkey);
    return absl::InvalidArgumentError(
        absl::StrCat("not an RSA key (", name ? name : "unknown type", ")"));
  }
  auto n = GetBnParam(pkey, OSSL_PKEY_PARAM_RSA_N);
  if (!n.ok()) return n.status();
  auto e = GetBnParam(pkey, OSSL_PKEY_PARAM_RSA_E);
  if (!e.ok()) return e.status();
  if (absl::Status s = CheckRsaNumbers(n->get(), e->get()); !s.ok()) return s;
  SecretBnPtr d = GetSecretBnParam(pkey, OSSL_PKEY_PARAM_RSA_D);
  if (!d || BN_is_zero(d.get())) {
    return absl::InvalidArgumentError("RSA key has no private exponent");
  }
  RsaPrivateKeyParts parts;
  parts.n = BnToBytes(n->get());
  parts.e = BnToBytes(e->get());
  parts.d = BnToSecretBytes(d.get());
  parts.bits = BN_num_bits(n->get());
  // A key with more than two primes cannot be expressed as PKCS#11 CRT attributes: such keys
  // are returned as (n, e, d) only.
  SecretBnPtr f3 = GetSecretBnParam(pkey, OSSL_PKEY_PARAM_RSA_FACTOR3);
  if (f3) return parts;
  SecretBnPtr p = GetSecretBnParam(pkey, OSSL_PKEY_PARAM_RSA_FACTOR1);
  SecretBnPtr q = GetSecretBnParam(pkey, OSSL_PKEY_PARAM_RSA_FACTOR2);
  SecretBnPtr dp = GetSecretBnParam(pkey, OSSL_PKEY_PARAM_RSA_EXPONENT1);
  SecretBnPtr dq = GetSecretBnParam(pkey, OSSL_PKEY_PARAM_RSA_EXPONENT2);
  SecretBnPtr qinv = GetSecretBnParam(pkey, OSSL_PKEY_PARAM_RSA_COEFFICIENT1);
  if (p && q && dp && dq && qinv) {
    parts.p = BnToSecretBytes(p.get());
    parts.q = BnToSecretBytes(q.get());
    parts.dp = BnToSecretBytes(dp.get());
    parts.dq = BnToSecretBytes(dq.get());
    parts.qinv = BnToSecretBytes(qinv.get());
  }
  return parts;
}

absl::StatusOr<RsaPrivateKeyParts> PrivateKeyFromDer(absl::Span<const uint8_t> der) {
  const unsigned char* p = der.data();
  EvpPkeyPtr pkey(d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(der.size())));  // NOLINT
  if (!pkey) {
    ERR_clear_error();  // the errors may describe key material
    return absl::InvalidArgumentError(
        "not an unencrypted PKCS#8 PrivateKeyInfo or PKCS#1 RSAPrivateKey");
  }
  if (p != der.data() + der.size()) {
    return absl::InvalidArgumentError("trailing data after the private key");
  }
  return PartsFromPkey(pkey.get());
}

}  // namespace

// ---------------------------------------------------------------------------------------
// PublicKey

absl::StatusOr<PublicKey> PublicKey::Adopt(EVP_PKEY* owned) {
  EvpPkeyPtr holder(owned);
  if (!holder) return absl::InvalidArgumentError("no key");
  if (absl::Status s = ValidatePublicKey(holder.get()); !s.ok()) return s;
  return PublicKey(std::shared_ptr<EVP_PKEY>(holder.release(), EvpPkeyDeleter()));
}

absl::StatusOr<PublicKey> PublicKey::FromSpki(absl::Span<const uint8_t> der_or_pem) {
  if (!der_or_pem.empty() && der_or_pem[0] == 0x30) {
    // Fast path: DER. One d2i_PUBKEY, no copies.
    if (der_or_pem.size() > kMaxKeyInput) {
      return absl::InvalidArgumentError("public key too large");
    }
    const unsigned char* p = der_or_pem.data();
    EVP_PKEY* pkey = d2i_PUBKEY(nullptr, &p, static_cast<long>(der_or_pem.size()));  // NOLINT
    if (pkey == nullptr) return OsslInvalidArgument("not a DER SubjectPublicKeyInfo");
    if (p != der_or_pem.data() + der_or_pem.size()) {
      EVP_PKEY_free(pkey);
      return absl::InvalidArgumentError("trailing data after SubjectPublicKeyInfo");
    }
    return Adopt(pkey);
  }
  if (internal::LooksLikePem(der_or_pem)) {
    const std::string label = internal::PemLabel(der_or_pem);
    if (label == "RSA PUBLIC KEY") {
      return absl::InvalidArgumentError(
          "PKCS#1 \"RSA PUBLIC KEY\" is not accepted; use SubjectPublicKeyInfo "
          "(\"PUBLIC KEY\", e.g. openssl pkey -pubout)");
    }
    auto der = PemBody(der_or_pem, "PUBLIC KEY");
    if (!der.ok()) return der.status();
    if (der->empty() || (*der)[0] != 0x30) {
      return absl::InvalidArgumentError("PEM body is not a DER SubjectPublicKeyInfo");
    }
    return FromSpki(Reveal(*der));
  }
  return absl::InvalidArgumentError("not a SubjectPublicKeyInfo (neither DER nor PEM)");
}

absl::StatusOr<PublicKey> PublicKey::FromCngPublicBlob(absl::Span<const uint8_t> blob) {
  auto h = ReadCngHeader(blob);
  if (!h.ok()) return h.status();
  if (h->magic == kCngRsaFullPrivateMagic || h->magic == kCngRsaPrivateMagic) {
    return absl::InvalidArgumentError(
        "this is a CNG RSA *private* key blob; refusing to read it as a public key");
  }
  if (h->magic != kCngRsaPublicMagic) {
    return absl::InvalidArgumentError("not a CNG RSAPUBLICBLOB (magic is not \"RSA1\")");
  }
  if (h->cb_prime1 != 0 || h->cb_prime2 != 0) {
    return absl::InvalidArgumentError("CNG RSAPUBLICBLOB: cbPrime1/cbPrime2 must be 0");
  }
  const size_t want = kCngHeaderLen + size_t{h->cb_public_exp} + size_t{h->cb_modulus};
  if (blob.size() != want) {
    return absl::InvalidArgumentError(absl::StrCat("CNG RSAPUBLICBLOB: length ", blob.size(),
                                                   " does not match header (", want, ")"));
  }
  absl::Span<const uint8_t> e = blob.subspan(kCngHeaderLen, h->cb_public_exp);
  absl::Span<const uint8_t> n = blob.subspan(kCngHeaderLen + h->cb_public_exp, h->cb_modulus);
  if (n[0] == 0 ||
      static_cast<uint32_t>(8 * h->cb_modulus - (__builtin_clz(n[0]) - 24)) != h->bit_length) {
    return absl::InvalidArgumentError("CNG RSAPUBLICBLOB: BitLength does not match modulus");
  }
  return FromRsaComponents(n, e);
}

absl::StatusOr<PublicKey> PublicKey::FromRsaComponents(absl::Span<const uint8_t> n,
                                                       absl::Span<const uint8_t> e) {
  if (n.size() > kMaxRsaBits / 8 + 1 || e.size() > 64) {
    return absl::InvalidArgumentError("RSA component too large");
  }
  auto pkey = RsaPublicFromBytes(n, e);
  if (!pkey.ok()) return pkey.status();
  return Adopt(pkey->release());
}

absl::StatusOr<PublicKey> PublicKey::FromAnyPublicKeyFile(absl::Span<const uint8_t> bytes) {
  if (bytes.size() >= 4 && ReadLe32(bytes.data()) == kCngRsaPublicMagic) {
    return FromCngPublicBlob(bytes);
  }
  if (bytes.size() >= 4 && (ReadLe32(bytes.data()) == kCngRsaFullPrivateMagic ||
                            ReadLe32(bytes.data()) == kCngRsaPrivateMagic)) {
    return FromCngPublicBlob(bytes);  // refuses with a clear message
  }
  if (internal::LooksLikePem(bytes) || (!bytes.empty() && bytes[0] == 0x30)) {
    return FromSpki(bytes);
  }
  return absl::InvalidArgumentError(
      "unrecognised public key file: expected PEM or DER SubjectPublicKeyInfo, or a CNG "
      "RSAPUBLICBLOB");
}

absl::StatusOr<PublicKey> PublicKey::FromEvpPkey(EVP_PKEY* pkey) {
  if (pkey == nullptr) return absl::InvalidArgumentError("no key");
  // Re-encoding as SPKI drops any private half the caller's key may carry.
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(pkey, &der);
  if (len <= 0) return OsslInvalidArgument("cannot encode the key as SubjectPublicKeyInfo");
  const unsigned char* p = der;
  EVP_PKEY* pub = d2i_PUBKEY(nullptr, &p, len);
  OPENSSL_free(der);
  if (pub == nullptr) return OsslInvalidArgument("cannot decode SubjectPublicKeyInfo");
  return Adopt(pub);
}

bool PublicKey::is_rsa() const { return EVP_PKEY_is_a(pkey_.get(), "RSA") == 1; }
bool PublicKey::is_ec() const { return EVP_PKEY_is_a(pkey_.get(), "EC") == 1; }
int PublicKey::bits() const { return EVP_PKEY_get_bits(pkey_.get()); }

Bytes PublicKey::modulus() const {
  auto n = GetBnParam(pkey_.get(), OSSL_PKEY_PARAM_RSA_N);
  return n.ok() ? BnToBytes(n->get()) : Bytes();
}

Bytes PublicKey::public_exponent() const {
  auto e = GetBnParam(pkey_.get(), OSSL_PKEY_PARAM_RSA_E);
  return e.ok() ? BnToBytes(e->get()) : Bytes();
}

Bytes PublicKey::SpkiDer() const {
  unsigned char* der = nullptr;
  const int len = i2d_PUBKEY(pkey_.get(), &der);
  if (len <= 0) {
    ERR_clear_error();
    return Bytes();
  }
  Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

std::string PublicKey::SpkiPem() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), pkey_.get()) != 1) {
    ERR_clear_error();
    return std::string();
  }
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);  // NOLINT(runtime/int)
  return std::string(data, static_cast<size_t>(len));
}

Bytes PublicKey::CngPublicBlob() const {
  if (!is_rsa()) return Bytes();
  const Bytes n = modulus();
  const Bytes e = public_exponent();
  Bytes out;
  out.reserve(kCngHeaderLen + n.size() + e.size());
  AppendLe32(&out, kCngRsaPublicMagic);
  AppendLe32(&out, static_cast<uint32_t>(bits()));
  AppendLe32(&out, static_cast<uint32_t>(e.size()));
  AppendLe32(&out, static_cast<uint32_t>(n.size()));
  AppendLe32(&out, 0);
  AppendLe32(&out, 0);
  out.insert(out.end(), e.begin(), e.end());
  out.insert(out.end(), n.begin(), n.end());
  return out;
}

std::string PublicKey::Sha256Hex() const { return internal::DigestHex(EVP_sha256(), SpkiDer()); }

bool PublicKey::Equals(const PublicKey& other) const {
  return EVP_PKEY_eq(pkey_.get(), other.pkey_.get()) == 1;
}

// ---------------------------------------------------------------------------------------
// Certificate

absl::StatusOr<Certificate> Certificate::Parse(absl::Span<const uint8_t> der_or_pem) {
  SecretBytes pem_der;  // not secret; reuses the PEM decoder's container type
  absl::Span<const uint8_t> der = der_or_pem;
  if (der.empty() || der[0] != 0x30) {
    if (!internal::LooksLikePem(der_or_pem)) {
      return absl::InvalidArgumentError("not a certificate (neither DER nor PEM)");
    }
    auto decoded = PemBody(der_or_pem, "CERTIFICATE");
    if (!decoded.ok()) return decoded.status();
    pem_der = std::move(*decoded);
    der = Reveal(pem_der);
  }
  if (der.size() > kMaxKeyInput) return absl::InvalidArgumentError("certificate too large");
  const unsigned char* p = der.data();
  X509Ptr x(d2i_X509(nullptr, &p, static_cast<long>(der.size())));  // NOLINT
  if (!x) return OsslInvalidArgument("not a DER X.509 certificate");
  if (p != der.data() + der.size()) {
    return absl::InvalidArgumentError("trailing data after the certificate");
  }
  // The key was decoded along with the certificate; share it rather than re-parse.
  EVP_PKEY* pkey = X509_get0_pubkey(x.get());
  if (pkey == nullptr) {
    return OsslInvalidArgument("certificate public key is missing or unsupported");
  }
  if (EVP_PKEY_up_ref(pkey) != 1) return OsslInternal("EVP_PKEY_up_ref failed");
  auto key = PublicKey::Adopt(pkey);
  if (!key.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("certificate key: ", key.status().message()));
  }
  return Certificate(std::shared_ptr<X509>(x.release(), X509Deleter()), std::move(*key));
}

namespace {
std::string CertDigestHex(X509* x, const EVP_MD* md) {
  unsigned char buf[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(x, md, buf, &len) != 1) {
    ERR_clear_error();
    return "";
  }
  return HexEncode(absl::MakeConstSpan(buf, len));
}
}  // namespace

std::string Certificate::Sha1Hex() const { return CertDigestHex(x509_.get(), EVP_sha1()); }
std::string Certificate::Sha256Hex() const { return CertDigestHex(x509_.get(), EVP_sha256()); }

// ---------------------------------------------------------------------------------------
// Private keys

absl::StatusOr<RsaPrivateKeyParts> ParseRsaPrivateKey(absl::Span<const uint8_t> der_or_pem) {
  if (der_or_pem.size() > kMaxKeyInput) return absl::InvalidArgumentError("key too large");
  if (!der_or_pem.empty() && der_or_pem[0] == 0x30) return PrivateKeyFromDer(der_or_pem);
  if (!internal::LooksLikePem(der_or_pem)) {
    return absl::InvalidArgumentError("not a private key (neither DER nor PEM)");
  }
  const std::string label = internal::PemLabel(der_or_pem);
  if (label == "ENCRYPTED PRIVATE KEY") {
    return absl::InvalidArgumentError("encrypted PKCS#8 keys are not supported; decrypt first");
  }
  if (label != "PRIVATE KEY" && label != "RSA PRIVATE KEY") {
    return absl::InvalidArgumentError(absl::StrCat(
        "PEM label is \"", label, "\"; expected \"PRIVATE KEY\" or \"RSA PRIVATE KEY\""));
  }
  auto der = internal::PemDecode(der_or_pem, label);
  if (!der.ok()) return der.status();
  return PrivateKeyFromDer(Reveal(*der));
}

absl::StatusOr<RsaPrivateKeyParts> ParseRsaPrivateKeyFromPfx(absl::Span<const uint8_t> pfx,
                                                             const SecretString& password) {
  constexpr absl::string_view kWrongPassword = "wrong PFX password or not a PKCS#12 file";
  if (pfx.empty() || pfx.size() > kMaxPfxInput) {
    return absl::InvalidArgumentError("not a PKCS#12 file (empty or larger than 16 MiB)");
  }
  const unsigned char* p = pfx.data();
  Pkcs12Ptr p12(d2i_PKCS12(nullptr, &p, static_cast<long>(pfx.size())));  // NOLINT
  if (!p12) {
    ERR_clear_error();
    return absl::InvalidArgumentError("not a PKCS#12 file (DER decoding failed)");
  }
  // Bounded: every iteration count is checked before it is used (pkcs12_parse.h).
  internal::Pkcs12Parsed parsed = internal::ParsePkcs12(p12.get(), password);
  switch (parsed.outcome) {
    case internal::Pkcs12Parsed::Outcome::kOk:
      break;
    case internal::Pkcs12Parsed::Outcome::kTooMuchWork:
      return absl::InvalidArgumentError(parsed.message);
    case internal::Pkcs12Parsed::Outcome::kMalformed:
      return absl::InvalidArgumentError("not a PKCS#12 file (its contents are malformed)");
    case internal::Pkcs12Parsed::Outcome::kWrongPassword:
      return absl::InvalidArgumentError(absl::StrCat(kWrongPassword, " (MAC verification failed)"));
    case internal::Pkcs12Parsed::Outcome::kNotDecrypted:
      return absl::InvalidArgumentError(absl::StrCat(
          kWrongPassword, ", or its contents use an unsupported or corrupt encryption"));
  }
  EvpPkeyPtr pkey = std::move(parsed.key);
  if (!pkey) return absl::InvalidArgumentError("the PFX contains no private key");
  auto parts = PartsFromPkey(pkey.get());
  if (!parts.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("PFX private key: ", parts.status().message()));
  }
  return parts;
}

absl::StatusOr<RsaPrivateKeyParts> ParseCngFullPrivateBlob(absl::Span<const uint8_t> blob) {
  auto h = ReadCngHeader(blob);
  if (!h.ok()) return h.status();
  if (h->magic == kCngRsaPublicMagic) {
    return absl::InvalidArgumentError("this is a CNG RSA public key blob, not a private key");
  }
  if (h->magic == kCngRsaPrivateMagic) {
    return absl::InvalidArgumentError(
        "BCRYPT_RSAPRIVATE_BLOB (\"RSA2\") is not supported; export RSAFULLPRIVATEBLOB");
  }
  if (h->magic != kCngRsaFullPrivateMagic) {
    return absl::InvalidArgumentError("not a CNG RSAFULLPRIVATEBLOB (magic is not \"RSA3\")");
  }
  if (h->cb_prime1 == 0 || h->cb_prime2 == 0 || h->cb_prime1 > h->cb_modulus ||
      h->cb_prime2 > h->cb_modulus) {
    return absl::InvalidArgumentError("CNG RSAFULLPRIVATEBLOB: prime lengths out of range");
  }
  // Header, PublicExponent, Modulus, Prime1, Prime2, Exponent1 (cbPrime1),
  // Exponent2 (cbPrime2), Coefficient (cbPrime1), PrivateExponent (cbModulus).
  const size_t e_len = h->cb_public_exp, n_len = h->cb_modulus;
  const size_t p_len = h->cb_prime1, q_len = h->cb_prime2;
  const size_t want = kCngHeaderLen + e_len + 2 * n_len + 3 * p_len + 2 * q_len;
  if (blob.size() != want) {
    return absl::InvalidArgumentError(absl::StrCat("CNG RSAFULLPRIVATEBLOB: length ", blob.size(),
                                                   " does not match header (", want, ")"));
  }
  size_t off = kCngHeaderLen;
  auto take = [&](size_t len) {
    absl::Span<const uint8_t> s = blob.subspan(off, len);
    off += len;
    return s;
  };
  const auto e_bytes = take(e_len);
  const auto n_bytes = take(n_len);
  const auto p_bytes = take(p_len);
  const auto q_bytes = take(q_len);
  const auto dp_bytes = take(p_len);
  const auto dq_bytes = take(q_len);
  const auto qinv_bytes = take(p_len);
  const auto d_bytes = take(n_len);

  auto secret_bn = [](absl::Span<const uint8_t> b) {
    return SecretBnPtr(BN_bin2bn(b.data(), static_cast<int>(b.size()), nullptr));
  };
  BnPtr n(BN_bin2bn(n_bytes.data(), static_cast<int>(n_bytes.size()), nullptr));
  BnPtr e(BN_bin2bn(e_bytes.data(), static_cast<int>(e_bytes.size()), nullptr));
  SecretBnPtr p = secret_bn(p_bytes), q = secret_bn(q_bytes), dp = secret_bn(dp_bytes),
              dq = secret_bn(dq_bytes), qinv = secret_bn(qinv_bytes), d = secret_bn(d_bytes);
  if (!n || !e || !p || !q || !dp || !dq || !qinv || !d) return OsslInternal("BN_bin2bn failed");
  if (static_cast<uint32_t>(BN_num_bits(n.get())) != h->bit_length) {
    return absl::InvalidArgumentError("CNG RSAFULLPRIVATEBLOB: BitLength does not match modulus");
  }
  if (absl::Status s = CheckRsaNumbers(n.get(), e.get()); !s.ok()) return s;
  // Consistency: n == p * q, and d, dp, dq, qinv are non-zero. A blob that fails this is
  // corrupt; importing it would produce a key that decrypts garbage.
  BnCtxPtr ctx(BN_CTX_secure_new());
  SecretBnPtr pq(BN_new());
  if (!ctx || !pq || BN_mul(pq.get(), p.get(), q.get(), ctx.get()) != 1) {
    return OsslInternal("BN_mul failed");
  }
  if (BN_cmp(pq.get(), n.get()) != 0 || BN_is_zero(d.get()) || BN_is_zero(dp.get()) ||
      BN_is_zero(dq.get()) || BN_is_zero(qinv.get())) {
    return absl::InvalidArgumentError(
        "CNG RSAFULLPRIVATEBLOB: inconsistent key (Modulus != Prime1 * Prime2)");
  }
  RsaPrivateKeyParts parts;
  parts.n = BnToBytes(n.get());
  parts.e = BnToBytes(e.get());
  parts.d = BnToSecretBytes(d.get());
  parts.p = BnToSecretBytes(p.get());
  parts.q = BnToSecretBytes(q.get());
  parts.dp = BnToSecretBytes(dp.get());
  parts.dq = BnToSecretBytes(dq.get());
  parts.qinv = BnToSecretBytes(qinv.get());
  parts.bits = BN_num_bits(n.get());
  return parts;
}

// ---------------------------------------------------------------------------------------
// Secret files

absl::StatusOr<SecretString> ReadSecretFile(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return absl::ErrnoToStatus(err, absl::StrCat("cannot open ", path));
  }
  struct FdCloser {
    int fd;
    ~FdCloser() { close(fd); }
  } closer{fd};
  // Growing reallocates through the zeroizing allocator, which wipes each old buffer.
  SecretString out;
  out.reserve(4096);
  struct stat st;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
    if (static_cast<uint64_t>(st.st_size) > kMaxSecretFile) {
      return absl::InvalidArgumentError(absl::StrCat(path, " is larger than 1 MiB"));
    }
    out.reserve(static_cast<size_t>(st.st_size) + 1);
  }
  size_t used = 0;
  for (;;) {
    if (out.size() - used < 256) out.resize(used + 4096);
    const ssize_t n = read(fd, &out[used], out.size() - used);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      return absl::ErrnoToStatus(err, absl::StrCat("cannot read ", path));
    }
    if (n == 0) break;
    used += static_cast<size_t>(n);
    if (used > kMaxSecretFile) {
      return absl::InvalidArgumentError(absl::StrCat(path, " is larger than 1 MiB"));
    }
  }
  // Shrinking keeps the buffer; the unused tail held only zeros from resize().
  out.resize(used);
  if (!out.empty() && out.back() == '\n') {
    out.pop_back();
    if (!out.empty() && out.back() == '\r') out.pop_back();
  }
  return out;
}

}  // namespace hsmrewrap::crypto
