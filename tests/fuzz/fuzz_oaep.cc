// libFuzzer target: the host-side constant-time padding decoders (crypto::OaepUnpad,
// crypto::Pkcs1Unpad) that HOST_UNPADDING runs on the token's raw RSA output.
// Input: byte 0 selects the decoder and hash, byte 1 the modulus length, the rest is the
// encoded message `em` (as a raw RSA decryption returns it).
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "crypto/rsa.h"

namespace {

using hsmrewrap::crypto::HashAlg;

constexpr HashAlg kHashes[] = {HashAlg::kSha1, HashAlg::kSha256, HashAlg::kSha384,
                               HashAlg::kSha512};

void Check(bool condition) {
  if (!condition) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t selector = data[0];
  const size_t em_len = size - 2;
  // Common RSA sizes, plus "exactly the input" so that short and long inputs both occur.
  const size_t moduli[] = {256, 384, 512, em_len};
  const size_t modulus_len = moduli[data[1] % 4];
  const absl::Span<const uint8_t> em(data + 2, em_len);

  if (selector % 5 == 4) {
    auto out = hsmrewrap::crypto::Pkcs1Unpad(em, modulus_len);
    // EME-PKCS1-v1_5: 00 02 PS(>= 8 bytes) 00 M.
    if (out.ok()) {
      Check(modulus_len >= 11 && out->size() <= modulus_len - 11);
    } else {
      Check(out.status().message() == "decryption failed");
    }
    return 0;
  }
  const HashAlg hash = kHashes[selector % 4];
  const HashAlg mgf1 = kHashes[(selector / 5) % 4];
  auto out = hsmrewrap::crypto::OaepUnpad(em, modulus_len, hash, mgf1);
  if (out.ok()) {
    const size_t h = hsmrewrap::crypto::HashLen(hash);
    // EME-OAEP: 00 maskedSeed(hLen) maskedDB(k - hLen - 1) with DB = lHash PS 01 M.
    Check(modulus_len >= 2 * h + 2 && out->size() <= modulus_len - 2 * h - 2);
  } else {
    // One status for every failure (no oracle in the message).
    Check(out.status().message() == "decryption failed");
  }
  return 0;
}
