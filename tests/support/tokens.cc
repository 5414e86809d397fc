#include "tests/support/tokens.h"

#include <stdlib.h>

#include <filesystem>

#include "tests/support/files.h"

namespace hsmrewrap::test {

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
