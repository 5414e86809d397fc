// libFuzzer target: CMS EnvelopedData building to a caller-supplied recipient (the device
// certificate or public key of a RewrapItem) with every key transport and content cipher.
// Input: byte 0 options, byte 1 plaintext length, then the plaintext, then the recipient
// (X.509 or SPKI, DER or PEM). What is built must parse back as CMS EnvelopedData.
// The same input also drives the in-token DER assembly (crypto/cms_assemble.h): IV,
// encrypted key and encrypted content are cut from the plaintext bytes (right-sized or not,
// by bit 7 of byte 0; key agreement for EC recipients, with a caller key id cut from the
// plaintext for bare keys); whatever it accepts must parse back too.
#include <openssl/cms.h>
#include <openssl/objects.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "crypto/cms.h"
#include "crypto/cms_assemble.h"
#include "crypto/keys.h"

namespace crypto = hsmrewrap::crypto;

namespace {

void Check(bool condition) {
  if (!condition) std::abort();
}

void CheckEnveloped(const crypto::Bytes& der) {
  const unsigned char* p = der.data();
  CMS_ContentInfo* cms = d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(der.size()));
  Check(cms != nullptr && p == der.data() + der.size());
  Check(OBJ_obj2nid(CMS_get0_type(cms)) == NID_pkcs7_enveloped);
  Check(sk_CMS_RecipientInfo_num(CMS_get0_RecipientInfos(cms)) == 1);
  CMS_ContentInfo_free(cms);
}

// Parts for CmsAssemble*: sized for `key` and the cipher when `right_size`, else cut
// straight from `bytes` (the assembly must refuse or still give valid DER).
crypto::CmsTokenParts PartsFrom(absl::Span<const uint8_t> bytes, const crypto::PublicKey& key,
                                   const crypto::CmsOptions& o, bool right_size) {
  crypto::CmsTokenParts parts;
  auto take = [&bytes](size_t n) {
    n = n < bytes.size() ? n : bytes.size();
    crypto::Bytes out(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n));
    bytes.remove_prefix(n);
    return out;
  };
  const size_t k = static_cast<size_t>((key.bits() + 7) / 8);
  parts.iv = take(right_size ? crypto::CmsContentIvLen(o.cipher) : bytes.size() % 17);
  if (key.is_ec()) {  // key agreement: a wrapped content key and an ephemeral point
    auto point = crypto::EcPointOf(key);
    parts.encrypted_key = right_size ? crypto::Bytes(crypto::CmsContentKeyLen(o.cipher) + 8, 0x5a)
                                     : take(bytes.size() / 3);
    parts.ephemeral_point = right_size && point.ok() ? point->point : take(bytes.size() / 2);
  } else {
    parts.encrypted_key = right_size ? crypto::Bytes(k, 0x5a) : take(bytes.size() / 2);
  }
  parts.encrypted_content = take(right_size ? bytes.size() / 16 * 16 : bytes.size());
  return parts;
}

// The in-token assembly for `key`: key agreement for EC keys, key transport for RSA.
void Assemble(const crypto::Certificate* cert, const crypto::PublicKey& key,
              const crypto::CmsOptions& options, absl::Span<const uint8_t> bytes, bool right_size) {
  const crypto::CmsTokenParts parts = PartsFrom(bytes, key, options, right_size);
  absl::StatusOr<crypto::Bytes> der;
  if (key.is_ec()) {
    der = cert ? crypto::CmsAssembleKeyAgreeToCertificate(*cert, options.cipher, parts)
               : crypto::CmsAssembleKeyAgreeToPublicKey(key, options.cipher, parts, bytes.first(
                                                                              bytes.size() % 9));
  } else {
    der = cert ? crypto::CmsAssembleToCertificate(*cert, options, parts)
               : crypto::CmsAssembleToPublicKey(key, options, parts, bytes.first(bytes.size() % 9));
  }
  if (der.ok()) CheckEnveloped(*der);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t opts = data[0];
  const size_t plain_len = data[1] < size - 2 ? data[1] : size - 2;
  const absl::Span<const uint8_t> plaintext(data + 2, plain_len);
  const absl::Span<const uint8_t> recipient(data + 2 + plain_len, size - 2 - plain_len);

  static const crypto::CmsKeyTransport kTransports[] = {crypto::CmsKeyTransport::kRsaOaepSha256,
                                                        crypto::CmsKeyTransport::kRsaPkcs1};
  static const crypto::CmsContentCipher kCiphers[] = {crypto::CmsContentCipher::kAes256Cbc,
                                                      crypto::CmsContentCipher::kAes128Cbc,
                                                      crypto::CmsContentCipher::kDes3Cbc};
  crypto::CmsOptions options;
  options.key_transport = kTransports[opts % 2];
  options.cipher = kCiphers[(opts / 2) % 3];

  if (auto cert = crypto::Certificate::Parse(recipient); cert.ok()) {
    auto cms = crypto::CmsEnvelopeToCertificate(*cert, plaintext, options);
    if (cms.ok()) CheckEnveloped(*cms);
    Assemble(&*cert, cert->public_key(), options, plaintext, opts & 0x80);
  }
  if (auto key = crypto::PublicKey::FromSpki(recipient); key.ok()) {
    auto cms = crypto::CmsEnvelopeToPublicKey(*key, plaintext, options);
    if (cms.ok()) CheckEnveloped(*cms);
    Assemble(nullptr, *key, options, plaintext, opts & 0x80);
  }
  return 0;
}
