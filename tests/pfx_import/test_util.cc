#include "tests/pfx_import/test_util.h"

#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/leakcheck/record.h"

namespace hsmrewrap::pfx_test {

std::string SharedDir() { return HSMREWRAP_SHARED_DIR; }
std::string PfxImportPath() { return PFX_IMPORT_BIN; }

TempDir::TempDir() {
  std::string tmpl = "/tmp/pfx-import-test-XXXXXX";
  char* p = mkdtemp(tmpl.data());
  path_ = p != nullptr ? p : "/tmp";
}
TempDir::~TempDir() {
  if (path_ != "/tmp" && std::getenv("PFX_TEST_KEEP_TMP") == nullptr) {
    std::string log;
    Shell("rm -rf " + ShellQuote(path_), &log);
  }
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

bool HaveTool(const std::string& name) {
  std::string log;
  return Shell("command -v " + ShellQuote(name) + " >/dev/null 2>&1", &log) == 0;
}

int Shell(const std::string& command, std::string* log) {
  char tmpl[] = "/tmp/pfx-shell-XXXXXX";
  const int fd = mkstemp(tmpl);
  if (fd >= 0) close(fd);
  const std::string full = "( " + command + " ) >" + tmpl + " 2>&1 </dev/null";
  const int status = std::system(full.c_str());
  *log = ReadFile(tmpl);
  unlink(tmpl);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

Result Run(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env) {
  Result r;
  char out_t[] = "/tmp/pfx-run-out-XXXXXX";
  char err_t[] = "/tmp/pfx-run-err-XXXXXX";
  const int out_fd = mkstemp(out_t);
  const int err_fd = mkstemp(err_t);
  const pid_t pid = fork();
  if (pid == 0) {
    const int in_fd = open("/dev/null", O_RDONLY);
    dup2(in_fd, 0);
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  close(out_fd);
  close(err_fd);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = ReadFile(out_t);
  r.err = ReadFile(err_t);
  unlink(out_t);
  unlink(err_t);
  return r;
}

KeyCert::KeyCert(KeyCert&& o) noexcept : key(o.key), cert(o.cert) {
  o.key = nullptr;
  o.cert = nullptr;
}
KeyCert& KeyCert::operator=(KeyCert&& o) noexcept {
  std::swap(key, o.key);
  std::swap(cert, o.cert);
  return *this;
}
KeyCert::~KeyCert() {
  EVP_PKEY_free(key);
  X509_free(cert);
}

EVP_PKEY* NewRsaKey(int bits) { return EVP_RSA_gen(static_cast<unsigned int>(bits)); }

KeyCert MakeKeyCert(const std::string& cn, long not_before_offset, long not_after_offset,
                    const std::string& key_usage) {
  KeyCert kc;
  kc.key = NewRsaKey(2048);
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), static_cast<long>(std::rand() & 0x7fffffff));
  X509_gmtime_adj(X509_getm_notBefore(x), not_before_offset);
  X509_gmtime_adj(X509_getm_notAfter(x), not_after_offset);
  X509_set_pubkey(x, kc.key);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x, name);
  if (!key_usage.empty()) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, x, x, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, NID_key_usage, key_usage.c_str());
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
  }
  X509_sign(x, kc.key, EVP_sha256());
  kc.cert = x;
  return kc;
}

std::string MakePfx(EVP_PKEY* key, X509* cert, const std::vector<X509*>& ca,
                    const std::string& password) {
  leakcheck::RecordSecret(password);
  STACK_OF(X509)* stack = sk_X509_new_null();
  for (X509* c : ca) sk_X509_push(stack, c);
  PKCS12* p12 = PKCS12_create(password.c_str(), "test", key, cert, stack, 0, 0, 0, 0, 0);
  sk_X509_free(stack);
  if (p12 == nullptr) return "";
  unsigned char* der = nullptr;
  const int len = i2d_PKCS12(p12, &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  PKCS12_free(p12);
  return out;
}

namespace {
std::string BioString(BIO* bio) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  std::string s(data, static_cast<size_t>(n));
  BIO_free(bio);
  return s;
}
}  // namespace

std::string KeyPem(EVP_PKEY* key) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, key, nullptr, nullptr, 0, nullptr, nullptr);
  return BioString(bio);
}
std::string PublicKeyPem(EVP_PKEY* key) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PUBKEY(bio, key);
  return BioString(bio);
}
std::string CertPem(X509* cert) {
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(bio, cert);
  return BioString(bio);
}

bool Rewrapd::Start(const std::string& state_dir, std::string* error) {
  // stdout goes to a file (not a pipe we would later close: rewrapd must never get SIGPIPE).
  // Logs at trace level with an audit log; with the leak check on (tests/leakcheck/record.h)
  // they are kept in its collection, and the token's PINs are recorded.
  std::string log_dir = leakcheck::NewLogDir("rewrapd");
  if (log_dir.empty()) log_dir = state_dir;
  const std::string out_file = log_dir + "/rewrapd.stdout";
  const std::string audit_file = log_dir + "/audit.jsonl";
  err_file_ = log_dir + "/rewrapd.stderr";
  pid_ = fork();
  if (pid_ == 0) {
    const int ofd = open(out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const int efd = open(err_file_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(ofd, 1);
    dup2(efd, 2);
    execl(REWRAPD_BIN, REWRAPD_BIN, "--state-dir", state_dir.c_str(), "--listen", "127.0.0.1:0",
          "--log-level", "trace", "--audit-log", audit_file.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // Wait for "rewrapd serving on HOST:PORT" (60 s max).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  std::string buf;
  while (std::chrono::steady_clock::now() < deadline) {
    buf = ReadFile(out_file);
    const size_t at = buf.find("serving on ");
    if (at != std::string::npos) {
      const size_t eol = buf.find('\n', at);
      if (eol != std::string::npos) {
        address_ = buf.substr(at + 11, eol - at - 11);
        while (!address_.empty() && (address_.back() == '\r' || address_.back() == ' ')) {
          address_.pop_back();
        }
        leakcheck::RecordSecret(ReadFile(state_dir + "/user.pin"));
        leakcheck::RecordSecret(ReadFile(state_dir + "/so.pin"));
        return true;
      }
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  *error =
      "rewrapd did not report 'serving on'; stdout: " + buf + "; stderr: " + ReadFile(err_file_);
  return false;
}

Rewrapd::~Rewrapd() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    for (int i = 0; i < 200; ++i) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

}  // namespace hsmrewrap::pfx_test
