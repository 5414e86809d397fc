// A throw-away PKI for the security tests, made with OpenSSL at run time (nothing is
// checked in): CAs, a server certificate for 127.0.0.1, client certificates with a CN and
// an optional URI SAN, device certificates (RSA or EC) valid, expired, from another CA, with
// or without keyUsage, or CAs themselves.
#pragma once

#include <string>
#include <vector>

#include "tests/integration/test_crypto.h"

namespace hsmrewrap::sec {

struct Issued {
  it::Pkey key;
  it::X509Ptr cert;
  std::string cert_pem, key_pem, cert_der;
};

enum class KeyKind { kEc, kRsa2048 };

// Extensions of an issued certificate beyond the defaults (basicConstraints CA:FALSE,
// authorityKeyIdentifier).
struct Extensions {
  std::string key_usage;  // keyUsage in OpenSSL syntax ("critical,digitalSignature"); "" = none
  bool ca = false;        // basicConstraints CA:TRUE (a sub-CA) instead of CA:FALSE
};

Issued MakeCa(const std::string& cn);
// `sans`: OpenSSL subjectAltName syntax items ("URI:spiffe://x/y", "IP:127.0.0.1",
// "DNS:localhost"). `eku`: extendedKeyUsage in OpenSSL syntax ("clientAuth"); "" = none.
// Validity: now + not_before_s .. now + not_after_s (seconds, may be negative).
Issued Issue(const Issued& ca, const std::string& cn, const std::vector<std::string>& sans,
             KeyKind kind, const std::string& eku, long not_before_s = -3600,
             long not_after_s = 86400, const Extensions& ext = {});

}  // namespace hsmrewrap::sec
