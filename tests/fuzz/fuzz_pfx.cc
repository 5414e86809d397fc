// libFuzzer target: PFX (PKCS#12) reading as pfx-import and ImportKey(PFX) do it, with the
// passwords of the seed files (../shared/vectors: "foo", "", "Hello, 世界", "TestCert"), then
// the import checks for each purpose.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/time/clock.h"
#include "crypto/keys.h"
#include "crypto/pfx.h"

namespace crypto = hsmrewrap::crypto;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::Span<const uint8_t> in(data, size);
  // The first byte picks the password so the fuzzer can reach the decrypting paths of
  // every seed; the seeds are the files as they are, so the password byte is also tried
  // as part of the PFX (both interpretations run).
  static const char* const kPasswords[] = {"foo", "", "Hello, \xe4\xb8\x96\xe7\x95\x8c",
                                           "TestCert"};
  for (const char* pw : kPasswords) {
    const crypto::SecretString password(pw);
    auto contents = crypto::OpenPfx(in, password);
    if (contents.ok()) {
      for (auto purpose : {crypto::PfxPurpose::kUnassigned, crypto::PfxPurpose::kSmimeEncryption,
                           crypto::PfxPurpose::kSmimeSigning}) {
        (void)crypto::CheckPfxForImport(*contents, purpose, absl::Now());
      }
    } else {
      (void)crypto::PfxProblemName(crypto::PfxProblemOf(contents.status()));
    }
    (void)crypto::ParseRsaPrivateKeyFromPfx(in, password);
  }
  return 0;
}
