// RSA_padding_check_PKCS1_OAEP_mgf1 and RSA_padding_check_PKCS1_type_2 are deprecated in
// OpenSSL 3.0 but are the library's own constant-time decoders; we use them on purpose
// for the host-unpadding path (raw RSA done in the token).
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include "crypto/rsa.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "crypto/openssl_util.h"

namespace hsmrewrap::crypto {

using internal::EvpPkeyCtxPtr;
using internal::EvpPkeyPtr;
using internal::OsslInternal;

size_t HashLen(HashAlg h) {
  switch (h) {
    case HashAlg::kSha1:
      return 20;
    case HashAlg::kSha256:
      return 32;
    case HashAlg::kSha384:
      return 48;
    case HashAlg::kSha512:
      return 64;
  }
  return 0;
}

const EVP_MD* HashMd(HashAlg h) {
  switch (h) {
    case HashAlg::kSha1:
      return EVP_sha1();
    case HashAlg::kSha256:
      return EVP_sha256();
    case HashAlg::kSha384:
      return EVP_sha384();
    case HashAlg::kSha512:
      return EVP_sha512();
  }
  return nullptr;
}

HashAlg OaepHash(RsaPadding p) {
  switch (p) {
    case RsaPadding::kOaepSha1:
      return HashAlg::kSha1;
    case RsaPadding::kOaepSha256:
      return HashAlg::kSha256;
    case RsaPadding::kOaepSha384:
      return HashAlg::kSha384;
    case RsaPadding::kOaepSha512:
      return HashAlg::kSha512;
    case RsaPadding::kPkcs1:
      break;
  }
  return HashAlg::kSha256;  // not meaningful for kPkcs1 (documented)
}

size_t MaxPlaintextLen(RsaPadding p, size_t modulus_len) {
  if (p == RsaPadding::kPkcs1) return modulus_len >= 11 ? modulus_len - 11 : 0;
  const size_t overhead = 2 * HashLen(OaepHash(p)) + 2;
  return modulus_len >= overhead ? modulus_len - overhead : 0;
}

namespace {

constexpr absl::string_view kDecryptionFailed = "decryption failed";

// Sets padding (and OAEP hashes) on an encrypt/decrypt context.
bool SetPadding(EVP_PKEY_CTX* ctx, RsaPadding padding) {
  if (padding == RsaPadding::kPkcs1) {
    return EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) > 0;
  }
  const EVP_MD* md = HashMd(OaepHash(padding));
  return EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) > 0 &&
         EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md) > 0 && EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md) > 0;
}

bool ValidPadding(RsaPadding p) {
  switch (p) {
    case RsaPadding::kOaepSha1:
    case RsaPadding::kOaepSha256:
    case RsaPadding::kOaepSha384:
    case RsaPadding::kOaepSha512:
    case RsaPadding::kPkcs1:
      return true;
  }
  return false;
}

// Decrypts with a host private key; every failure of the padding check is the same status.
absl::StatusOr<SecretBytes> DecryptWith(EVP_PKEY* pkey, RsaPadding padding,
                                        absl::Span<const uint8_t> ciphertext) {
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, pkey, nullptr));
  if (!ctx || EVP_PKEY_decrypt_init(ctx.get()) != 1 || !SetPadding(ctx.get(), padding)) {
    return OsslInternal("RSA decryption setup failed");
  }
  SecretBytes out(static_cast<size_t>(EVP_PKEY_get_size(pkey)));
  size_t out_len = out.size();
  if (EVP_PKEY_decrypt(ctx.get(), out.data(), &out_len, ciphertext.data(), ciphertext.size()) !=
      1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(kDecryptionFailed);
  }
  out.resize(out_len);
  return out;
}

}  // namespace

absl::StatusOr<Bytes> RsaEncrypt(const PublicKey& key, RsaPadding padding,
                                 absl::Span<const uint8_t> plaintext) {
  if (!key.is_rsa()) return absl::InvalidArgumentError("RSA encryption needs an RSA key");
  if (!ValidPadding(padding)) return absl::InvalidArgumentError("unknown RSA padding");
  const size_t k = static_cast<size_t>(EVP_PKEY_get_size(key.get()));
  const size_t max = MaxPlaintextLen(padding, k);
  if (plaintext.size() > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("plaintext of ", plaintext.size(), " bytes exceeds the ", max,
                     "-byte limit of this padding for a ", k * 8, "-bit key"));
  }
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key.get(), nullptr));
  if (!ctx || EVP_PKEY_encrypt_init(ctx.get()) != 1 || !SetPadding(ctx.get(), padding)) {
    return OsslInternal("RSA encryption setup failed");
  }
  Bytes out(k);
  size_t out_len = out.size();
  if (EVP_PKEY_encrypt(ctx.get(), out.data(), &out_len, plaintext.data(), plaintext.size()) != 1) {
    ERR_clear_error();  // may mention the plaintext length only, but keep the text fixed
    return absl::InternalError("RSA encryption failed");
  }
  out.resize(out_len);
  return out;
}

absl::StatusOr<SecretBytes> RsaDecryptWithPrivateKey(
    absl::Span<const uint8_t> private_key_pem_or_der, RsaPadding padding,
    absl::Span<const uint8_t> ciphertext) {
  if (!ValidPadding(padding)) return absl::InvalidArgumentError("unknown RSA padding");
  EvpPkeyPtr pkey;
  {
    const unsigned char* p = private_key_pem_or_der.data();
    if (!private_key_pem_or_der.empty() && private_key_pem_or_der[0] == 0x30) {
      pkey.reset(d2i_AutoPrivateKey(nullptr, &p,
                                    static_cast<long>(private_key_pem_or_der.size())));  // NOLINT
    } else {
      internal::BioPtr bio(BIO_new_mem_buf(private_key_pem_or_der.data(),
                                           static_cast<int>(private_key_pem_or_der.size())));
      if (bio) pkey.reset(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
    }
  }
  if (!pkey || !EVP_PKEY_is_a(pkey.get(), "RSA")) {
    ERR_clear_error();
    return absl::InvalidArgumentError("not an RSA private key (PKCS#8/PKCS#1, PEM or DER)");
  }
  return DecryptWith(pkey.get(), padding, ciphertext);
}

// Both unpadders copy the raw RSA output right-aligned into a modulus_len buffer (restoring
// any leading zeros the caller dropped), then hand it to OpenSSL's constant-time decoder.
// Only public lengths (em.size(), modulus_len) decide early returns.
absl::StatusOr<SecretBytes> OaepUnpad(absl::Span<const uint8_t> em, size_t modulus_len,
                                      HashAlg hash, HashAlg mgf1_hash) {
  const EVP_MD* md = HashMd(hash);
  const EVP_MD* mgf1 = HashMd(mgf1_hash);
  if (md == nullptr || mgf1 == nullptr || modulus_len > 2048 || em.size() > modulus_len ||
      modulus_len < 2 * HashLen(hash) + 2) {
    return absl::InvalidArgumentError(kDecryptionFailed);
  }
  SecretBytes padded(modulus_len, 0);
  std::copy(em.begin(), em.end(), padded.end() - static_cast<ptrdiff_t>(em.size()));
  SecretBytes out(modulus_len);
  const int n = RSA_padding_check_PKCS1_OAEP_mgf1(
      out.data(), static_cast<int>(out.size()), padded.data(), static_cast<int>(padded.size()),
      static_cast<int>(modulus_len), nullptr, 0, md, mgf1);
  // The error queue is cleared on every path so nothing observable differs.
  ERR_clear_error();
  if (n < 0) return absl::InvalidArgumentError(kDecryptionFailed);
  out.resize(static_cast<size_t>(n));
  return out;
}

absl::StatusOr<SecretBytes> Pkcs1Unpad(absl::Span<const uint8_t> em, size_t modulus_len) {
  if (modulus_len > 2048 || modulus_len < RSA_PKCS1_PADDING_SIZE || em.size() > modulus_len) {
    return absl::InvalidArgumentError(kDecryptionFailed);
  }
  SecretBytes padded(modulus_len, 0);
  std::copy(em.begin(), em.end(), padded.end() - static_cast<ptrdiff_t>(em.size()));
  SecretBytes out(modulus_len);
  const int n = RSA_padding_check_PKCS1_type_2(out.data(), static_cast<int>(out.size()),
                                               padded.data(), static_cast<int>(padded.size()),
                                               static_cast<int>(modulus_len));
  ERR_clear_error();
  if (n < 0) return absl::InvalidArgumentError(kDecryptionFailed);
  out.resize(static_cast<size_t>(n));
  return out;
}

Bytes RandomBytes(size_t n) {
  Bytes b(n);
  if (n > 0 && RAND_bytes(b.data(), static_cast<int>(n)) != 1) {
    std::fprintf(stderr, "RAND_bytes failed: aborting\n");
    std::abort();
  }
  return b;
}

Bytes StripLeadingZeros(absl::Span<const uint8_t> v) {
  size_t i = 0;
  while (i + 1 < v.size() && v[i] == 0) ++i;
  return Bytes(v.begin() + i, v.end());
}

int BitLength(absl::Span<const uint8_t> be) {
  size_t i = 0;
  while (i < be.size() && be[i] == 0) ++i;
  if (i == be.size()) return 0;
  int bits = static_cast<int>((be.size() - i - 1) * 8);
  for (uint8_t top = be[i]; top != 0; top >>= 1) ++bits;
  return bits;
}

absl::StatusOr<HostRsaKey> HostRsaKey::Generate(int bits) {
  std::shared_ptr<EVP_PKEY> pkey(EVP_RSA_gen(static_cast<unsigned int>(bits)), EVP_PKEY_free);
  if (!pkey) return OsslInternal("EVP_RSA_gen failed");
  auto pub = PublicKey::FromEvpPkey(pkey.get());
  if (!pub.ok()) return pub.status();
  return HostRsaKey(std::move(pkey), *std::move(pub));
}

absl::StatusOr<SecretBytes> HostRsaKey::Decrypt(RsaPadding padding,
                                                absl::Span<const uint8_t> ciphertext) const {
  return DecryptWith(pkey_.get(), padding, ciphertext);
}

const char* Pkcs1MalformationName(Pkcs1Malformation kind) {
  switch (kind) {
    case Pkcs1Malformation::kNoSeparator:
      return "no zero separator";
    case Pkcs1Malformation::kWrongBlockType:
      return "block type 01";
    case Pkcs1Malformation::kShortPadding:
      return "7-byte padding string";
    case Pkcs1Malformation::kWrongLeadingByte:
      return "leading byte 01";
  }
  return "?";
}

absl::StatusOr<Bytes> NonConformantPkcs1Ciphertext(const PublicKey& key, Pkcs1Malformation kind) {
  const Bytes nb = key.modulus();
  const Bytes eb = key.public_exponent();
  const size_t k = static_cast<size_t>((key.bits() + 7) / 8);
  constexpr size_t kMessageLen = 16;
  if (k < 11 + kMessageLen || nb.empty() || eb.empty()) {
    return absl::InternalError("bad public key");
  }
  Bytes block = RandomBytes(k);
  for (size_t i = 2; i < k; ++i) {
    while (block[i] == 0) block[i] = RandomBytes(1)[0];
  }
  block[0] = 0x00;  // keeps m < n
  block[1] = 0x02;
  switch (kind) {
    case Pkcs1Malformation::kNoSeparator:
      break;
    case Pkcs1Malformation::kWrongBlockType:
      block[1] = 0x01;
      block[k - kMessageLen - 1] = 0x00;
      break;
    case Pkcs1Malformation::kShortPadding:
      block[2 + 7] = 0x00;  // PS is block[2..8]
      break;
    case Pkcs1Malformation::kWrongLeadingByte:
      block[0] = 0x01;
      block[k - kMessageLen - 1] = 0x00;
      break;
  }
  internal::BnPtr n(BN_bin2bn(nb.data(), static_cast<int>(nb.size()), nullptr));
  internal::BnPtr e(BN_bin2bn(eb.data(), static_cast<int>(eb.size()), nullptr));
  internal::BnPtr m(BN_bin2bn(block.data(), static_cast<int>(block.size()), nullptr));
  internal::BnPtr c(BN_new());
  internal::BnCtxPtr ctx(BN_CTX_new());
  if (n && m && BN_cmp(m.get(), n.get()) >= 0) {
    return absl::InvalidArgumentError(absl::StrCat("a PKCS#1 block with ",
                                                   Pkcs1MalformationName(kind),
                                                   " does not fit below this modulus"));
  }
  if (!n || !e || !m || !c || !ctx ||
      BN_mod_exp(c.get(), m.get(), e.get(), n.get(), ctx.get()) != 1) {
    return OsslInternal("raw RSA encryption of the PKCS#1 probe failed");
  }
  Bytes out(k);
  if (BN_bn2binpad(c.get(), out.data(), static_cast<int>(k)) != static_cast<int>(k)) {
    return absl::InternalError("raw RSA probe ciphertext does not fit the modulus");
  }
  return out;
}

}  // namespace hsmrewrap::crypto
