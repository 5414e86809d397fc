#include "crypto/secret.h"

#include <openssl/crypto.h>

namespace hsmrewrap::crypto {

void Cleanse(void* p, size_t n) {
  if (p != nullptr && n != 0) OPENSSL_cleanse(p, n);
}

}  // namespace hsmrewrap::crypto
