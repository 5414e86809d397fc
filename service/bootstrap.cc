#include "service/bootstrap.h"

#include <fcntl.h>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "crypto/encoding.h"
#include "crypto/keys.h"
#include "hsm/pkcs11_backend.h"
#include "hsm/token.h"
#include "hsm/token_supervisor.h"

namespace hsmrewrap::service {
namespace fs = std::filesystem;
namespace {

absl::Status MakePrivateDir(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create ", dir.string(), ": ", ec.message()));
  if (::chmod(dir.c_str(), 0700) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot chmod 0700 ", dir.string(), ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

// Writes a small file readable only by the owner (created 0600 before anything is written).
// Straight through write(2): a stdio FILE would keep a copy of the content (a PIN) in its
// buffer, which fclose frees unwiped.
absl::Status WritePrivateFile(const fs::path& path, absl::Span<const char> content) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create ", path.string(), ": ", std::strerror(errno)));
  }
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      return absl::FailedPreconditionError(
          absl::StrCat("cannot write ", path.string(), ": ", std::strerror(err)));
    }
    done += static_cast<size_t>(n);
  }
  if (::close(fd) != 0)
    return absl::FailedPreconditionError(absl::StrCat("cannot write ", path.string()));
  return absl::OkStatus();
}

absl::StatusOr<crypto::SecretString> RandomPin() {
  crypto::SecretBytes raw(16);
  if (RAND_bytes(raw.data(), static_cast<int>(raw.size())) != 1) {
    return absl::InternalError("RAND_bytes failed");
  }
  static const char kHex[] = "0123456789abcdef";
  crypto::SecretString pin;
  pin.reserve(2 * raw.size());
  for (uint8_t b : raw) {
    pin.push_back(kHex[b >> 4]);
    pin.push_back(kHex[b & 15]);
  }
  return pin;
}

absl::StatusOr<crypto::SecretString> ReadPinFile(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("PIN file ", path, ": ", std::strerror(errno)));
  }
  if (st.st_mode & 0077) {
    spdlog::warn("PIN file {} is readable by group or others (mode {:o}); chmod 600 it", path,
                 st.st_mode & 0777);
  }
  return crypto::ReadSecretFile(path);
}

// The embedded default's files in the state folder:
//   softhsm2.conf, tokens/ (SoftHSM2's object store), user.pin and so.pin (0600).
absl::StatusOr<crypto::SecretString> PrepareEmbedded(const Config& c, bool* created_token) {
  const fs::path dir = fs::absolute(c.state_dir);
  if (auto st = MakePrivateDir(dir / "tokens"); !st.ok()) return st;
  if (auto st = MakePrivateDir(dir); !st.ok()) return st;
  const fs::path conf = dir / "softhsm2.conf";
  if (!fs::exists(conf)) {
    std::string text = absl::StrCat("# Written by rewrapd for its embedded SoftHSM2 token.\n",
                                    "directories.tokendir = ", (dir / "tokens").string(), "\n",
                                    "objectstore.backend = file\n", "log.level = ERROR\n",
                                    "slots.removable = false\n");
    if (auto st = WritePrivateFile(conf, text); !st.ok()) return st;
  }
  // SoftHSM2 reads its configuration from this variable when the module initialises.
  ::setenv("SOFTHSM2_CONF", conf.c_str(), 1);

  auto module = hsm::Module::Load(kSoftHsmModule, "");
  if (!module.ok()) return module.status();
  auto found = hsm::FindToken(**module, hsm::TokenSelector{kEmbeddedTokenLabel, "", ""});
  const fs::path user_pin_path = dir / "user.pin";
  if (found.ok()) {
    *created_token = false;
    return ReadPinFile(user_pin_path.string());
  }
  if (found.status().code() != absl::StatusCode::kNotFound) return found.status();

  // First run: random PINs, stored 0600, then the token.
  auto so_pin = RandomPin();
  auto user_pin = RandomPin();
  if (!so_pin.ok()) return so_pin.status();
  if (!user_pin.ok()) return user_pin.status();
  std::error_code ec;
  fs::remove(user_pin_path, ec);
  fs::remove(dir / "so.pin", ec);
  if (auto st =
          WritePrivateFile(dir / "so.pin", absl::MakeConstSpan(so_pin->data(), so_pin->size()));
      !st.ok())
    return st;
  if (auto st =
          WritePrivateFile(user_pin_path, absl::MakeConstSpan(user_pin->data(), user_pin->size()));
      !st.ok())
    return st;
  auto slot = hsm::InitSoftToken(**module, kEmbeddedTokenLabel, *so_pin, *user_pin);
  if (!slot.ok()) return slot.status();
  *created_token = true;
  spdlog::info("created SoftHSM2 token '{}' in {}", kEmbeddedTokenLabel, (dir / "tokens").string());
  return *std::move(user_pin);
}

}  // namespace

absl::StatusOr<crypto::SecretString> ReadPin(const Config& c) {
  if (!c.pin_file.empty()) return ReadPinFile(c.pin_file);
  if (const char* env = std::getenv("HSMREWRAP_PIN"); env != nullptr) {
    crypto::SecretString pin(env);
    crypto::Cleanse(const_cast<char*>(env), std::strlen(env));  // not left in the environment block
    ::unsetenv("HSMREWRAP_PIN");
    return pin;
  }
  if (const char* creds = std::getenv("CREDENTIALS_DIRECTORY"); creds != nullptr) {
    const std::string path = absl::StrCat(creds, "/pin");
    if (fs::exists(path)) return crypto::ReadSecretFile(path);
  }
  return absl::FailedPreconditionError(
      "no PIN: set pin_file (--pin-file FILE), the HSMREWRAP_PIN environment variable, or a "
      "systemd credential named 'pin'");
}

namespace {

// A token's PIN: its pin_file; with one token also $HSMREWRAP_PIN or the systemd credential.
absl::StatusOr<crypto::SecretString> ReadTokenPin(const TokenConfig& t, const Config& c) {
  if (!t.pin_file.empty()) return ReadPinFile(t.pin_file);
  if (c.tokens.size() > 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "token '", t.name, "': no pin_file (or pin-source= in its token_uri): with several "
        "tokens each names its PIN file"));
  }
  return ReadPin(c);  // the single-token form: c.pin_file is t.pin_file
}

}  // namespace

absl::StatusOr<Started> OpenToken(const Config& c) {
  Started out;
  std::vector<hsm::TokenSet::Member> members;
  const bool several = c.tokens.size() > 1;
  for (size_t n = 0; n < c.tokens.size(); ++n) {
    const TokenConfig& t = c.tokens[n];
    hsm::Pkcs11Backend::Options opts;
    absl::StatusOr<crypto::SecretString> pin;
    if (t.embedded()) {
      pin = PrepareEmbedded(c, &out.created_token);
      opts.module_path = kSoftHsmModule;
      opts.token.label = kEmbeddedTokenLabel;
    } else {
      pin = ReadTokenPin(t, c);
      opts.module_path = t.module;
      opts.init_args = t.init_args;
      opts.token.label = t.token;
      opts.token.uri = t.token_uri;
    }
    if (!pin.ok()) return pin.status();
    opts.user_pin = *std::move(pin);
    opts.pool_size = t.pool_size;
    opts.max_concurrency = t.max_concurrency;
    opts.allow_host_unpadding = t.allow_host_unpadding.value_or(false);
    // The supervisor re-runs this factory (a fresh module, login, pool and key handles)
    // whenever the token is lost and comes back.
    hsm::TokenSupervisor::Options so;
    so.max_backoff = absl::Milliseconds(c.reconnect_backoff_max_ms);
    so.call_timeout = absl::Seconds(c.token_call_timeout_s);
    so.name = several ? t.name : "";
    so.start_lost_when_unavailable = several;
    auto supervisor =
        hsm::TokenSupervisor::Create([opts]() { return hsm::Pkcs11Backend::Create(opts); }, so);
    if (!supervisor.ok()) {
      if (!several) return supervisor.status();
      return absl::Status(supervisor.status().code(),
                          absl::StrCat("token '", t.name, "': ", supervisor.status().message()));
    }
    hsm::TokenSet::Member m;
    m.supervisor = std::shared_ptr<hsm::TokenSupervisor>(std::move(*supervisor));
    m.backend = m.supervisor;
    m.name = t.name.empty() ? m.backend->TokenLabel() : t.name;
    m.allow_host_unpadding = opts.allow_host_unpadding;
    m.sessions = t.pool_size;
    members.push_back(std::move(m));
  }
  out.tokens = std::make_shared<hsm::TokenSet>(std::move(members));
  out.backend = out.tokens;
  if (several && !out.tokens->Healthy()) {
    return absl::UnavailableError(
        "none of the tokens could be opened (each is named in the errors above)");
  }
  out.tokens->LoadReferences();
  out.token_label = out.backend->TokenLabel();

  if (c.tokens.size() == 1 && c.tokens[0].embedded()) {
    auto key = out.backend->GetKey(c.default_key);
    if (key.status().code() == absl::StatusCode::kNotFound) {
      auto created = out.backend->CreateKey(c.default_key, 2048, false);
      if (!created.ok()) return created.status();
      out.created_key = true;
      spdlog::info("created 2048-bit service key '{}'", c.default_key);
    } else if (!key.ok()) {
      return key.status();
    }
  }
  return out;
}

}  // namespace hsmrewrap::service
