// Helpers shared by the pfx-import tests: running pfx-import and shell lines, and making
// keys, certificates and PKCS#12 files with OpenSSL. Temp dirs, files, commands and
// rewrapd come from tests/support.
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <map>
#include <string>
#include <vector>

#include "tests/support/command.h"

namespace hsmrewrap::pfx_test {

std::string SharedDir();      // HSMREWRAP_SHARED_DIR (compile definition)
std::string PfxImportPath();  // $<TARGET_FILE:pfx-import>

std::string ShellQuote(const std::string& s);

// Runs pfx-import (PfxImportPath()) with `args` and extra environment variables.
test::CommandResult RunPfxImport(const std::vector<std::string>& args,
                                 const std::map<std::string, std::string>& env = {});
// Runs a shell command line; returns its exit code; output goes to *log.
int Shell(const std::string& command, std::string* log);

// OpenSSL objects.
struct KeyCert {
  EVP_PKEY* key = nullptr;
  X509* cert = nullptr;
  KeyCert() = default;
  KeyCert(KeyCert&& o) noexcept;
  KeyCert& operator=(KeyCert&& o) noexcept;
  KeyCert(const KeyCert&) = delete;
  ~KeyCert();
};
EVP_PKEY* NewRsaKey(int bits = 2048);
// Self-signed certificate; validity relative to now in seconds; key_usage e.g.
// "critical,digitalSignature,keyEncipherment" or "" for none.
KeyCert MakeKeyCert(const std::string& cn, long not_before_offset, long not_after_offset,
                    const std::string& key_usage);
// PKCS#12 bytes (AES-256/PBKDF2 defaults). `cert` may be null; extra certificates in `ca`.
std::string MakePfx(EVP_PKEY* key, X509* cert, const std::vector<X509*>& ca,
                    const std::string& password);
std::string KeyPem(EVP_PKEY* key);        // PKCS#8 PEM
std::string PublicKeyPem(EVP_PKEY* key);  // SPKI PEM
std::string CertPem(X509* cert);

}  // namespace hsmrewrap::pfx_test
