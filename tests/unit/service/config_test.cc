#include "service/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

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

// The text ApplyYamlFile uses for what a key of this type expects.
std::string ExpectedText(ConfigValueType t) {
  switch (t) {
    case ConfigValueType::kString:
      return "a string";
    case ConfigValueType::kBool:
      return "true or false";
    case ConfigValueType::kUint32:
      return "a non-negative integer";
  }
  return "?";
}

// Values of the wrong type for a key of type `t`: YAML that is not a scalar (lists,
// mappings, an empty value), and for booleans and numbers scalars that do not parse.
std::vector<std::string> WrongValues(ConfigValueType t) {
  std::vector<std::string> v = {"[1, 2]", "[]",   "{a: 1}",         "{}",      "",
                                "~",      "null", "\n  - a\n  - b", "\n  x: 1"};
  switch (t) {
    case ConfigValueType::kString:
      break;
    case ConfigValueType::kBool:
      for (const char* s : {"maybe", "2", "''", "'true false'", "1.0"}) v.push_back(s);
      break;
    case ConfigValueType::kUint32:
      for (const char* s : {"-1", "1.5", "many", "4294967296", "0x10", "''", "true", "1e3"})
        v.push_back(s);
      break;
  }
  return v;
}

// Loads `yaml` from a temporary file; the loader must not throw, whatever the file holds.
absl::Status Load(const std::string& yaml, Config& c) {
  const std::string path = WriteTemp(yaml);
  absl::Status st;
  EXPECT_NO_THROW(st = ApplyYamlFile(path, c)) << yaml;
  std::remove(path.c_str());
  return st;
}

void ExpectInvalid(const std::string& yaml, const std::string& needle) {
  Config c;
  const absl::Status st = Load(yaml, c);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << "YAML:\n"
                                                           << yaml << "\nstatus: " << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr(needle)) << "YAML:\n" << yaml;
}

// The YAML lines that set `key` to `value`: at the top level, or nested in its section.
std::string KeyLine(const ConfigKey& key, bool nested, const std::string& value) {
  if (!nested) return absl::StrCat(key.name, ": ", value, "\n");
  std::string indented = absl::StrReplaceAll(value, {{"\n", "\n  "}});
  return absl::StrCat(key.section, ":\n  ", key.name, ": ", indented, "\n");
}

// A wrong type (here: a list under limits:) used to throw from yaml-cpp past the
// loader and aborted rewrapd. Every key the loader knows (its own table, so a key added
// later is covered too), in every place it may be written, with every wrong type, is an
// InvalidArgument naming the key and the type it wants.
TEST(ConfigTest, EveryKeyRefusesEveryWrongType) {
  ASSERT_FALSE(ConfigKeys().empty());
  int cases = 0;
  for (const ConfigKey& key : ConfigKeys()) {
    for (bool nested : {false, true}) {
      if (nested && *key.section == '\0') continue;
      const std::string shown = nested ? absl::StrCat(key.section, ".", key.name) : key.name;
      for (const std::string& value : WrongValues(key.type)) {
        SCOPED_TRACE(absl::StrCat(shown, " = [", value, "]"));
        ExpectInvalid(KeyLine(key, nested, value),
                      absl::StrCat(shown, ": expected ", ExpectedText(key.type)));
        ++cases;
      }
    }
  }
  EXPECT_GT(cases, 200);
}

// The same table, with a value of the right type: accepted in every place, from the
// environment as HSMREWRAP_<KEY> too (so the list above is not testing unknown keys).
TEST(ConfigTest, EveryKeyAcceptsItsType) {
  for (const ConfigKey& key : ConfigKeys()) {
    const std::string good = key.type == ConfigValueType::kString ? "x"
                             : key.type == ConfigValueType::kBool ? "true"
                                                                  : "4096";
    for (bool nested : {false, true}) {
      if (nested && *key.section == '\0') continue;
      Config c;
      EXPECT_TRUE(Load(KeyLine(key, nested, good), c).ok()) << KeyLine(key, nested, good);
    }
    const std::string var = absl::StrCat("HSMREWRAP_", absl::AsciiStrToUpper(key.name));
    Config c;
    setenv(var.c_str(), good.c_str(), 1);
    EXPECT_TRUE(ApplyEnvironment(c).ok()) << var;
    if (key.type != ConfigValueType::kString) {
      setenv(var.c_str(), "not-a-value", 1);
      EXPECT_THAT(std::string(ApplyEnvironment(c).message()),
                  HasSubstr(absl::StrCat(var, ": ", key.name)));
    }
    unsetenv(var.c_str());
  }
}

TEST(ConfigTest, SectionMustBeAMappingOfItsKeys) {
  std::set<std::string> sections;
  for (const ConfigKey& key : ConfigKeys()) {
    if (*key.section != '\0') sections.insert(key.section);
  }
  ASSERT_EQ(sections.count("limits"), 1u);
  for (const std::string& section : sections) {
    for (const char* value : {" [1, 2]", " 5", " x", "", " ~", "\n  - max_batch_items: 1"}) {
      SCOPED_TRACE(value);
      ExpectInvalid(absl::StrCat(section, ":", value, "\n"),
                    absl::StrCat(section, ": expected a mapping"));
    }
    ExpectInvalid(absl::StrCat(section, ":\n  nope: 1\n"),
                  absl::StrCat("unknown key '", section, ".nope'"));
    // A top-level key does not belong in a section.
    ExpectInvalid(absl::StrCat(section, ":\n  listen: 127.0.0.1:1\n"),
                  absl::StrCat("unknown key '", section, ".listen'"));
    ExpectInvalid(absl::StrCat(section, ":\n  ? [a, b]\n  : 1\n"),
                  "a key must be a name, got a list");
    Config empty;
    EXPECT_TRUE(Load(absl::StrCat(section, ": {}\n"), empty).ok());
  }
}

TEST(ConfigTest, FileShapeErrors) {
  // An empty or comments-only file sets nothing (an example file with every line commented out).
  for (const char* nothing : {"", "# only a comment\n\n", "~\n"}) {
    Config c;
    EXPECT_TRUE(Load(nothing, c).ok()) << "'" << nothing << "'";
    EXPECT_EQ(c.listen, Config{}.listen);
  }
  ExpectInvalid("- listen: 127.0.0.1:1\n",
                "the top level must be a mapping of 'key: value' lines, got a list");
  ExpectInvalid("listen\n", "the top level must be a mapping of 'key: value' lines, got 'listen'");
  ExpectInvalid("pool_size: 1\n---\npool_size: 2\n", "holds 2 YAML documents");
  ExpectInvalid("pool_size: [1\n", "config ");  // not YAML at all: yaml-cpp's reason
  ExpectInvalid("? [a, b]\n: 1\n", "line 1: a key must be a name, got a list");
  ExpectInvalid("? {a: 1}\n: 1\n", "a key must be a name, got a mapping");
  ExpectInvalid("~: 1\n", "a key must be a name, got an empty value");
  ExpectInvalid("'': 1\n", "unknown configuration key ''");
  Config missing;
  EXPECT_EQ(ApplyYamlFile("/nonexistent/rewrapd.yaml", missing).code(),
            absl::StatusCode::kInvalidArgument);
  Config explicit_empty;
  EXPECT_TRUE(Load("{}\n", explicit_empty).ok()) << "{} deliberately sets nothing";
}

// yaml-cpp keeps both entries of a repeated key (the later would win unseen): refused,
// with both lines. A limit is one setting whether written at the top level or in limits:.
TEST(ConfigTest, KeyGivenTwice) {
  ExpectInvalid("pool_size: 1\nlisten: 127.0.0.1:1\npool_size: 2\n",
                "line 3: 'pool_size' is given twice (also on line 1)");
  ExpectInvalid("limits:\n  max_batch_items: 1\n  max_batch_items: 2\n",
                "'limits.max_batch_items' is given twice (also on line 2)");
  ExpectInvalid("max_batch_items: 1\nlimits:\n  max_batch_items: 2\n",
                "'limits.max_batch_items' is given twice (also as 'max_batch_items' on line 1)");
  ExpectInvalid("limits: {}\nlimits: {}\n", "'limits' is given twice");
}

TEST(ConfigTest, NullStringHintsAtQuotes) {
  ExpectInvalid("metrics_listen:\n",
                "line 1: metrics_listen: expected a string, got an empty value (null); write \"\" "
                "for an empty string");
  Config c;
  c.metrics_listen = "127.0.0.1:1";
  ASSERT_TRUE(Load("metrics_listen: \"\"\n", c).ok());
  EXPECT_EQ(c.metrics_listen, "");
}

// RFC 7512: the module and the PIN file may come from the token URI (p11-kit parses it).
TEST(ConfigTest, TokenUriChoosesModuleAndPinSource) {
  Config c;
  c.token_uri =
      "pkcs11:token=hsm-rewrap?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/"
      "pin";
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

TEST(ConfigTest, TokensListIsTheSetAndEachEntryTakesTheSingleTokenKeys) {
  Config c;
  std::string path = WriteTemp(
      "pool_size: 3\n"
      "allow_host_unpadding: true\n"
      "tokens:\n"
      "  - name: hsm-a\n"
      "    module: /usr/lib/softhsm/libsofthsm2.so\n"
      "    token: unit-a\n"
      "    pin_file: /run/a.pin\n"
      "    pool_size: 8\n"
      "    workers: 10\n"
      "    allow_host_unpadding: false\n"
      "  - name: hsm-b\n"
      "    token_uri: \"pkcs11:token=unit-b?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/b.pin\"\n"
      "    init_args: \"x=1\"\n");
  ASSERT_TRUE(ApplyYamlFile(path, c).ok());
  ASSERT_TRUE(Finalize(c).ok()) << Finalize(c);
  ASSERT_EQ(c.tokens.size(), 2u);
  EXPECT_EQ(c.tokens[0].name, "hsm-a");
  EXPECT_EQ(c.tokens[0].pool_size, 8u);
  EXPECT_EQ(c.tokens[0].workers, 10u);
  EXPECT_EQ(c.tokens[0].allow_host_unpadding, false);
  EXPECT_EQ(c.tokens[1].module, "/usr/lib/softhsm/libsofthsm2.so");  // from module-path=
  EXPECT_EQ(c.tokens[1].pin_file, "/run/b.pin");                     // from pin-source=
  EXPECT_EQ(c.tokens[1].init_args, "x=1");
  EXPECT_EQ(c.tokens[1].pool_size, 3u);  // the top-level default
  EXPECT_EQ(c.tokens[1].workers, 3u);
  EXPECT_EQ(c.tokens[1].allow_host_unpadding, true);
  EXPECT_EQ(c.workers, 13u);  // the sum
  const std::string d = Describe(c);
  EXPECT_THAT(d, HasSubstr("tokens:               2"));
  EXPECT_THAT(d, HasSubstr("- hsm-a: module /usr/lib/softhsm/libsofthsm2.so, label unit-a"));
  EXPECT_THAT(d, HasSubstr("- hsm-b: module"));
  std::remove(path.c_str());
}

TEST(ConfigTest, TheSingleTokenKeysAreAListOfOne) {
  Config c;
  c.module = "/usr/lib/softhsm/libsofthsm2.so";
  c.token = "t";
  c.pool_size = 4;
  ASSERT_TRUE(Finalize(c).ok());
  ASSERT_EQ(c.tokens.size(), 1u);
  EXPECT_EQ(c.tokens[0].name, "");  // named after its label when opened
  EXPECT_EQ(c.tokens[0].module, c.module);
  EXPECT_EQ(c.tokens[0].pool_size, 4u);
  Config e;  // the embedded default
  ASSERT_TRUE(Finalize(e).ok());
  ASSERT_EQ(e.tokens.size(), 1u);
  EXPECT_TRUE(e.tokens[0].embedded());
  EXPECT_EQ(e.tokens[0].allow_host_unpadding, true);
}

TEST(ConfigTest, TokensListErrorsNameTheEntry) {
  struct Case {
    std::string yaml, error;
  } cases[] = {
      {"tokens: []\n", "tokens: expected a list of tokens"},
      {"tokens: x\n", "tokens: expected a list"},
      {"tokens:\n  - x\n", "tokens[0]: expected a mapping"},
      {"tokens:\n  - name: a\n    modul: /m.so\n", "unknown key 'tokens[0].modul'"},
      {"tokens:\n  - name: a\n    pool_size: lots\n", "tokens[0].pool_size"},
      {"tokens:\n  - name: a\n    name: b\n", "'tokens[0].name' is given twice"},
      {"tokens:\n  - name: a\n    module: [x]\n", "tokens[0].module: expected a string"},
  };
  for (const auto& c : cases) {
    Config cfg;
    std::string path = WriteTemp(c.yaml);
    auto st = ApplyYamlFile(path, cfg);
    EXPECT_FALSE(st.ok()) << c.yaml;
    EXPECT_THAT(std::string(st.message()), HasSubstr(c.error)) << c.yaml;
    std::remove(path.c_str());
  }
  struct Final {
    std::string yaml, error;
  } finals[] = {
      {"tokens:\n  - module: /m.so\n    token: t\n", "tokens[0].name: missing"},
      {"tokens:\n  - name: a b\n    module: /m.so\n    token: t\n", "'a b' is not valid"},
      {"tokens:\n  - name: a\n    module: /m.so\n    token: t\n  - name: a\n    module: /m.so\n"
       "    token: u\n",
       "'a' is given to two tokens"},
      {"tokens:\n  - name: a\n    token: t\n", "tokens 'a': module is missing"},
      {"tokens:\n  - name: a\n    module: /m.so\n", "tokens 'a': name the token"},
      {"module: /m.so\ntoken: t\ntokens:\n  - name: a\n    module: /m.so\n    token: t\n",
       "put them into the entries of tokens:"},
      {"tokens:\n  - name: a\n    module: /m.so\n    token_uri: \"pkcs11:token=t?pin-value=1\"\n",
       "tokens 'a': token_uri: pin-value is not accepted"},
  };
  for (const auto& f : finals) {
    Config cfg;
    std::string path = WriteTemp(f.yaml);
    ASSERT_TRUE(ApplyYamlFile(path, cfg).ok()) << f.yaml;
    auto st = Finalize(cfg);
    EXPECT_FALSE(st.ok()) << f.yaml;
    EXPECT_THAT(std::string(st.message()), HasSubstr(f.error)) << f.yaml;
    std::remove(path.c_str());
  }
}

}  // namespace
}  // namespace hsmrewrap::service
