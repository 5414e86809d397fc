// PKCS#12 parsing with bounded work, shared by ParseRsaPrivateKeyFromPfx (ImportKey) and
// OpenPfx (pfx-import). Internal to crypto/.
//
// A PKCS#12 file chooses how much work opening it costs: the MAC and every password-based
// encryption (PBE) in it carry their own iteration count, and OpenSSL runs whatever count
// the file names (a MAC iteration count of 2^31-1 kept rewrapd's admin thread busy for an
// hour). ParsePkcs12 reads every count from the DER and refuses the file before running a
// KDF with a count above the limits below; counts that only show once an encrypted part is
// decrypted (a shrouded key bag inside an encrypted safe) are checked when they show,
// before they are used. It then does what PKCS12_parse does (which cannot be bounded: it
// decrypts nested bags with whatever count they carry): verifies the MAC, decrypts each
// encrypted safe once and the first private key, and collects the certificates.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "crypto/openssl_util.h"
#include "crypto/secret.h"

namespace hsmrewrap::crypto {

// The largest iteration count of one PKCS#12 MAC or PBE (PBKDF2, the PKCS#12 KDF, PKCS#5
// v1; for scrypt, N x r x p). Real producers stay below: OpenSSL 3 writes 2048, Windows
// 2000, Java 10000 (older releases up to 100000), GnuTLS 3.8 600000.
// docs/operator-guide.md §11 states the limits and what a file at them costs.
inline constexpr uint64_t kMaxPkcs12Iterations = 1'000'000;
// The largest sum of all iteration counts of one file (MAC, encrypted safes, key bags): a
// real file has two or three counts; this bounds files with many safes or keys.
inline constexpr uint64_t kMaxPkcs12TotalIterations = 3'000'000;

namespace internal {

struct Pkcs12Parsed {
  enum class Outcome {
    kOk,
    kTooMuchWork,    // an iteration count above the limits (or not a positive number);
                     // `message` says which count and the limit
    kMalformed,      // the structure does not decode (no KDF ran)
    kWrongPassword,  // the MAC does not verify
    kNotDecrypted,   // the MAC verified (or there is none) but the contents do not decrypt
                     // or decode
  };
  Outcome outcome = Outcome::kOk;
  std::string message;  // kTooMuchWork: names the count and the limit (no secret in it)
  bool has_mac = false;
  EvpPkeyPtr key;              // the first private key (keyBag or shrouded), or null
  std::vector<X509Ptr> certs;  // every X.509 certBag, in file order
};

// Opens `p12` with `password` as PKCS12_parse(p12, password, ...) would, in bounded work: an
// empty password also tries "no password" (NULL), a MAC (when present) must verify, the
// first private key and every certificate are returned. If the contents do not decrypt and
// OpenSSL's legacy provider is not loaded yet (RC2-40 files), it is loaded and they are
// decrypted again.
Pkcs12Parsed ParsePkcs12(PKCS12* p12, const SecretString& password);

}  // namespace internal
}  // namespace hsmrewrap::crypto
