#include "tests/support/tokens.h"

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>

#include "tests/support/files.h"

namespace hsmrewrap::test {

std::string NssInitArgs(const std::string& db_dir) {
  return "configdir='sql:" + db_dir + "' certPrefix='' keyPrefix='' secmod='secmod.db' flags=";
}

const char* TokenName(TokenKind kind) { return kind == TokenKind::kNss ? "nss" : "softhsm"; }

const char* ModulePath(TokenKind kind) {
  return kind == TokenKind::kNss ? kNssSoftokenPath : kSoftHsmPath;
}

std::string ModuleMissingReason(TokenKind kind) {
  if (access(ModulePath(kind), R_OK) == 0) return "";
  return kind == TokenKind::kNss ? std::string("NSS softoken not installed: ") + kNssSoftokenPath +
                                       " is missing (install libnss3)"
                                 : std::string("SoftHSM2 not installed: ") + kSoftHsmPath +
                                       " is missing (install softhsm2)";
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
