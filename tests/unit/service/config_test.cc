#include "service/config.h"

#include <cstdlib>
#include <fstream>
#include <thread>

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

// Sessions default to 2 x cores; workers to max(pool, cores): a worker never waits for a
// session unless the operator asks for more workers (docs/benchmarks.md has the figures).
TEST(ConfigTest, PoolAndWorkerDefaults) {
  const uint32_t cores = std::max(1u, std::thread::hardware_concurrency());
  Config c;
  ASSERT_TRUE(Finalize(c).ok());
  EXPECT_EQ(c.pool_size, std::max(2u, 2 * cores));
  EXPECT_EQ(c.workers, c.pool_size);
  Config one;
  one.pool_size = 1;
  ASSERT_TRUE(Finalize(one).ok());
  EXPECT_EQ(one.workers, cores) << "one session still gets a worker per core for the host work";
  Config set;
  ASSERT_TRUE(ApplyYamlFile(WriteTemp("pool_size: 8\nworkers: 12\n"), set).ok());
  ASSERT_TRUE(Finalize(set).ok());
  EXPECT_EQ(set.pool_size, 8u);
  EXPECT_EQ(set.workers, 12u);
  Config env;
  setenv("HSMREWRAP_WORKERS", "5", 1);
  ASSERT_TRUE(ApplyEnvironment(env).ok());
  unsetenv("HSMREWRAP_WORKERS");
  ASSERT_TRUE(Finalize(env).ok());
  EXPECT_EQ(env.workers, 5u);
  Config bad;
  bad.workers = 5000;
  EXPECT_THAT(std::string(Finalize(bad).message()), HasSubstr("workers: at most 1024"));
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


// RFC 7512: the module and the PIN file may come from the token URI (p11-kit parses it).
TEST(ConfigTest, TokenUriChoosesModuleAndPinSource) {
  Config c;
  c.token_uri = "pkcs11:token=hsm-rewrap?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin";
  ASSERT_TRUE(Finalize(c).ok());
  EXPECT_EQ(c.module, "/usr/lib/softhsm/libsofthsm2.so");
  EXPECT_EQ(c.pin_file, "/run/pin");
  EXPECT_FALSE(c.embedded());

  // module-name is looked up in p11-kit's module configuration (softhsm2.module, from the
  // softhsm2 package).
  Config named;
  named.token_uri = "pkcs11:token=hsm-rewrap?module-name=softhsm2";
  ASSERT_TRUE(Finalize(named).ok());
  EXPECT_THAT(named.module, HasSubstr("libsofthsm2.so"));

  Config unknown;
  unknown.token_uri = "pkcs11:token=x?module-name=no-such-module";
  EXPECT_THAT(std::string(Finalize(unknown).message()), HasSubstr("no-such-module"));
}

TEST(ConfigTest, TokenUriConflictsAndPinValueAreErrors) {
  Config pin;
  pin.token_uri = "pkcs11:token=t?module-path=/m.so&pin-value=1234";
  EXPECT_THAT(std::string(Finalize(pin).message()), HasSubstr("pin-value"));

  Config differ;
  differ.module = "/a.so";
  differ.token_uri = "pkcs11:token=t?module-path=/b.so";
  EXPECT_THAT(std::string(Finalize(differ).message()), HasSubstr("differ"));

  Config bad;
  bad.module = "/a.so";
  bad.token_uri = "pkcs11:token=%zz";
  EXPECT_THAT(std::string(Finalize(bad).message()), HasSubstr("token_uri"));
}

TEST(ConfigTest, DefaultKeyMayBeAUri) {
  Config c;
  c.default_key = "pkcs11:object=intune-2026;type=private";
  ASSERT_TRUE(Finalize(c).ok());
  EXPECT_EQ(c.default_key, "intune-2026");

  Config token_attr;
  token_attr.default_key = "pkcs11:token=other;object=k";
  EXPECT_THAT(std::string(Finalize(token_attr).message()), HasSubstr("only object= and type="));

  Config wrong_type;
  wrong_type.default_key = "pkcs11:object=k;type=cert";
  EXPECT_THAT(std::string(Finalize(wrong_type).message()), HasSubstr("type must be private"));

  Config no_object;
  no_object.default_key = "pkcs11:type=private";
  EXPECT_THAT(std::string(Finalize(no_object).message()), HasSubstr("object="));
}

}  // namespace
}  // namespace hsmrewrap::service
