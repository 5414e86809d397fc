// Helpers shared by the pfx-import tests: temp dirs, running commands, making keys,
// certificates and PKCS#12 files with OpenSSL, and running rewrapd.
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

namespace hsmrewrap::pfx_test {

std::string SharedDir();      // HSMREWRAP_SHARED_DIR (compile definition)
std::string PfxImportPath();  // $<TARGET_FILE:pfx-import>

class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string ReadFile(const std::string& path);
void WriteFile(const std::string& path, const std::string& data);
bool HaveTool(const std::string& name);  // found in PATH
std::string ShellQuote(const std::string& s);

struct Result {
  int exit_code = -1;
  std::string out, err;
};
// Runs `argv` with extra environment variables (others inherited), stdin from /dev/null.
Result Run(const std::vector<std::string>& argv,
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

// rewrapd started for a test: --state-dir TMP --listen 127.0.0.1:0.
class Rewrapd {
 public:
  // Empty error on success.
  bool Start(const std::string& state_dir, std::string* error);
  ~Rewrapd();
  const std::string& address() const { return address_; }

 private:
  pid_t pid_ = -1;
  std::string address_;
  std::string err_file_;
};

}  // namespace hsmrewrap::pfx_test
