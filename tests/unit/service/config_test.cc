#include "service/config.h"

#include <cstdlib>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace hsmrewrap::service {
namespace {

using ::testing::HasSubstr;

std::string WriteTemp(const std::string& text) {
  char path[] = "/tmp/rewrapd-config-XXXXXX";
  int fd = mkstemp(path);
  EXPECT_GE(fd, 0);
  close(fd);
  std::ofstream(path) << text;
  return path;
}

TEST(ConfigTest, YamlEnvAndDefaults) {
  Config c;
  std::string path = WriteTemp(
      "module: /usr/lib/x86_64-linux-gnu/libsoftokn3.so\n"
      "token: NSS Certificate DB\n"
      "pool_size: 3\n"
      "limits:\n  max_batch_items: 50\n  max_inflight_items: 500\n");
  ASSERT_TRUE(ApplyYamlFile(path, c).ok());
  setenv("HSMREWRAP_LISTEN", "127.0.0.1:6000", 1);
  ASSERT_TRUE(ApplyEnvironment(c).ok());
  unsetenv("HSMREWRAP_LISTEN");
  ASSERT_TRUE(Finalize(c).ok());
  EXPECT_EQ(c.listen, "127.0.0.1:6000");
  EXPECT_EQ(c.token, "NSS Certificate DB");
  EXPECT_EQ(c.pool_size, 3u);
  EXPECT_EQ(c.limits.max_batch_items, 50u);
  EXPECT_FALSE(c.allow_host_unpadding) << "a real module denies host unpadding unless set";
  EXPECT_FALSE(c.state_dir.empty());
}

TEST(ConfigTest, EmbeddedDefaultAllowsHostUnpadding) {
  Config c;
  ASSERT_TRUE(Finalize(c).ok());
  EXPECT_TRUE(c.embedded());
  EXPECT_TRUE(c.allow_host_unpadding);
  EXPECT_EQ(c.listen, "127.0.0.1:50051");
}

TEST(ConfigTest, ClearErrors) {
  Config c;
  auto st = ApplyYamlFile(WriteTemp("listne: 1.2.3.4:5\n"), c);
  EXPECT_THAT(std::string(st.message()), HasSubstr("unknown configuration key 'listne'"));
  Config d;
  st = ApplyYamlFile(WriteTemp("pool_size: many\n"), d);
  EXPECT_THAT(std::string(st.message()), HasSubstr("pool_size"));
  Config e;
  e.module = "/x.so";
  EXPECT_THAT(std::string(Finalize(e).message()), HasSubstr("token"));
  Config f;
  f.token = "x";
  EXPECT_THAT(std::string(Finalize(f).message()), HasSubstr("need module"));
  Config g;
  g.listen = "nocolon";
  EXPECT_THAT(std::string(Finalize(g).message()), HasSubstr("HOST:PORT"));
}

}  // namespace
}  // namespace hsmrewrap::service
