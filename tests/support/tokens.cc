#include "tests/support/tokens.h"

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>

#include "tests/support/files.h"

namespace hsmrewrap::test {

std::string NssInitArgs(const std::string& db_dir) {
  return "configdir='sql:" + db_dir + "' certPrefix='' keyPrefix='' secmod='secmod.db' flags=";
}

const char* TokenName(TokenKind kind) {
  switch (kind) {
    case TokenKind::kSoftHsm:
      return "softhsm";
    case TokenKind::kNss:
      return "nss";
    case TokenKind::kOpenCryptoki:
      return "opencryptoki";
    case TokenKind::kTpm:
      return "tpm";
  }
  return "?";
}

const char* ModulePath(TokenKind kind) {
  switch (kind) {
    case TokenKind::kSoftHsm:
      return kSoftHsmPath;
    case TokenKind::kNss:
      return kNssSoftokenPath;
    case TokenKind::kOpenCryptoki:
      return kOpenCryptokiPath;
    case TokenKind::kTpm:
      return kTpm2Pkcs11Path;
  }
  return "";
}

std::string ModuleMissingReason(TokenKind kind) {
  const char* package = "";
  switch (kind) {
    case TokenKind::kSoftHsm:
      package = "softhsm2";
      break;
    case TokenKind::kNss:
      package = "libnss3";
      break;
    case TokenKind::kOpenCryptoki:
      package = "opencryptoki libopencryptoki0";
      break;
    case TokenKind::kTpm:
      package = "libtpm2-pkcs11-1 libtpm2-pkcs11-tools swtpm tpm2-abrmd";
      break;
  }
  if (access(ModulePath(kind), R_OK) != 0) {
    return std::string(TokenName(kind)) + " not installed: " + ModulePath(kind) +
           " is missing (install " + package + ")";
  }
  if (kind == TokenKind::kOpenCryptoki && getenv("HSMREWRAP_OPENCRYPTOKI_SLOT") == nullptr) {
    return "openCryptoki is not up: run the test under tests/support/hw_tokens.sh opencryptoki";
  }
  if (kind == TokenKind::kTpm && getenv("TPM2_PKCS11_STORE") == nullptr) {
    return "no TPM: run the test under tests/support/hw_tokens.sh tpm";
  }
  return "";
}

std::string SetUpSoftHsmConfig(const std::string& dir) {
  std::filesystem::create_directories(dir + "/tokens");
  const std::string conf = dir + "/softhsm2.conf";
  WriteFile(conf, "directories.tokendir = " + dir +
                      "/tokens\nobjectstore.backend = file\n"
                      "log.level = ERROR\n");
  setenv("SOFTHSM2_CONF", conf.c_str(), 1);
  return conf;
}

}  // namespace hsmrewrap::test
