// What a certificate may be used for, as far as rewrapd's recipients are concerned.
#pragma once

#include "absl/status/status.h"
#include "crypto/keys.h"

namespace hsmrewrap::crypto {

// Whether data may be encrypted to `cert`: InvalidArgument, naming what is wrong, when it is
// a CA certificate (basicConstraints CA:TRUE), or has a keyUsage extension without
// keyEncipherment (RSA key) or keyAgreement (EC key), or either extension is malformed or
// given twice. A certificate without keyUsage passes (many device certificates lack it).
absl::Status CheckEncryptionUse(const Certificate& cert);

}  // namespace hsmrewrap::crypto
