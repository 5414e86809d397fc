// libFuzzer target: CMS EnvelopedData building to a caller-supplied recipient (the device
// certificate or public key of a RewrapItem) with every key transport and content cipher.
// Input: byte 0 options, byte 1 plaintext length, then the plaintext, then the recipient
// (X.509 or SPKI, DER or PEM). What is built must parse back as CMS EnvelopedData.
#include <openssl/cms.h>
#include <openssl/objects.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "crypto/cms.h"
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
  }
  if (auto key = crypto::PublicKey::FromSpki(recipient); key.ok()) {
    auto cms = crypto::CmsEnvelopeToPublicKey(*key, plaintext, options);
    if (cms.ok()) CheckEnveloped(*cms);
  }
  return 0;
}
