// hsmrewrap fault module: a PKCS#11 module that loads the real module and forwards every
// call through the real CK_FUNCTION_LIST, injecting what a small configuration file says:
// error codes per function (always, at a rate, every Nth call, calls N..M, or inside a time
// window) and added latency per function. The file is re-read whenever it changes (mtime,
// size or inode), so a test can switch faults on and off while rewrapd runs: a rule
// `fail * CKR_DEVICE_REMOVED` is a token that went away, deleting it is the token coming
// back. Used by the reliability tests, scripts/soak.sh and scripts/bench.sh (latency).
//
// Environment:
//   HSMREWRAP_FAULT_CONFIG  the configuration file (absent or missing file = forward only),
//                           unless a file named like this module plus ".conf" exists
//                           (fault.so -> fault.so.conf): then that one. A copy of the module
//                           per token (tests of several tokens in one process) so has a
//                           configuration of its own.
//   HSMREWRAP_FAULT_MODULE  absolute path of the real module (else the file's `module`
//                           line, else SoftHSM2)
//
// Configuration (one directive a line, `#` starts a comment; FUNCS is a comma-separated
// list of C_ names or `*` for every function except C_GetFunctionList):
//   module PATH                      the real module (read once, when loaded)
//   env NAME VALUE                   setenv(NAME, VALUE) just before the real module is
//                                    loaded (read once): e.g. P11_KIT_SERVER_ADDRESS for a
//                                    p11-kit client module, which reads it when loaded
//   delay FUNCS MICROSECONDS         sleep before each call of FUNCS (no CPU, like a network)
//   fail FUNCS CKR_NAME [CONDITION...]
//       CONDITIONs (all must hold; none = every call "until told otherwise"):
//         rate=P        with probability P (0..1)
//         every=N       the Nth, 2Nth, ... call of FUNCS counted by this rule
//         calls=N-M     calls N..M (1-based) counted by this rule; `calls=N-` = from N on
//         window=A-B    A..B seconds after the file was (re)loaded; `window=A-` = from A on
//         forward       call the real function first, then return CKR_NAME anyway (the
//                       token did the work but the answer was lost)
//   hang FUNCS [forever]             each call of FUNCS blocks, before it is forwarded, until
//                                    no `hang` rule names it any more (the file changed);
//                                    `forever`: it never returns. A call released after the
//                                    real module was finalised (C_Finalize) meanwhile returns
//                                    CKR_CRYPTOKI_NOT_INITIALIZED without being forwarded: its
//                                    handles belong to a library instance that has ended.
//                                    C_Finalize and C_GetFunctionList never hang.
//   The first `fail` rule that fires wins. Counters and the clock restart on every reload.
//   An injected failure is not forwarded (unless `forward`), so e.g. a failed C_Decrypt
//   leaves the real session with its decrypt operation still active, like a real fault.
//   C_Finalize is always forwarded (the real module's state stays consistent).
// Write the file atomically (write a temporary file, then rename) so no half file is read.
// A file that does not parse is reported on stderr and ignored (the previous rules stay).
#include <dlfcn.h>
#include <p11-kit/pkcs11.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

#define HSMREWRAP_FAULT_FUNCTIONS(X)                                                              \
  X(C_Initialize)                                                                                 \
  X(C_Finalize) X(C_GetInfo) X(C_GetSlotList) X(C_GetSlotInfo) X(C_GetTokenInfo) X(               \
      C_GetMechanismList) X(C_GetMechanismInfo) X(C_InitToken) X(C_InitPIN) X(C_SetPIN)           \
      X(C_OpenSession) X(C_CloseSession) X(C_CloseAllSessions) X(C_GetSessionInfo) X(             \
          C_GetOperationState) X(C_SetOperationState) X(C_Login) X(C_Logout) X(C_CreateObject)    \
          X(C_CopyObject) X(C_DestroyObject) X(C_GetObjectSize) X(C_GetAttributeValue) X(         \
              C_SetAttributeValue) X(C_FindObjectsInit) X(C_FindObjects) X(C_FindObjectsFinal)    \
              X(C_EncryptInit) X(C_Encrypt) X(C_EncryptUpdate) X(C_EncryptFinal) X(C_DecryptInit) \
                  X(C_Decrypt) X(C_DecryptUpdate) X(C_DecryptFinal) X(C_DigestInit) X(C_Digest)   \
                      X(C_DigestUpdate) X(C_DigestKey) X(C_DigestFinal) X(C_SignInit) X(C_Sign)   \
                          X(C_SignUpdate) X(C_SignFinal) X(C_SignRecoverInit) X(C_SignRecover)    \
                              X(C_VerifyInit) X(C_Verify) X(C_VerifyUpdate) X(C_VerifyFinal)      \
                                  X(C_VerifyRecoverInit) X(C_VerifyRecover)                       \
                                      X(C_DigestEncryptUpdate) X(C_DecryptDigestUpdate)           \
                                          X(C_SignEncryptUpdate) X(C_DecryptVerifyUpdate)         \
                                              X(C_GenerateKey) X(C_GenerateKeyPair) X(C_WrapKey)  \
                                                  X(C_UnwrapKey) X(C_DeriveKey) X(C_SeedRandom)   \
                                                      X(C_GenerateRandom) X(C_GetFunctionStatus)  \
                                                          X(C_CancelFunction)                     \
                                                              X(C_WaitForSlotEvent)

enum Fn : size_t {
#define X(n) k_##n,
  HSMREWRAP_FAULT_FUNCTIONS(X)
#undef X
      kNumFunctions
};

constexpr const char* kNames[] = {
#define X(n) #n,
    HSMREWRAP_FAULT_FUNCTIONS(X)
#undef X
};

struct NamedRv {
  const char* name;
  CK_RV rv;
};
// The codes the reliability tests inject plus a few more that are useful.
constexpr NamedRv kCodes[] = {
    {"CKR_DEVICE_ERROR", CKR_DEVICE_ERROR},
    {"CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED},
    {"CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY},
    {"CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT},
    {"CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID},
    {"CKR_SESSION_CLOSED", CKR_SESSION_CLOSED},
    {"CKR_SESSION_COUNT", CKR_SESSION_COUNT},
    {"CKR_GENERAL_ERROR", CKR_GENERAL_ERROR},
    {"CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED},
    {"CKR_HOST_MEMORY", CKR_HOST_MEMORY},
    {"CKR_PIN_INCORRECT", CKR_PIN_INCORRECT},
    {"CKR_PIN_LOCKED", CKR_PIN_LOCKED},
    {"CKR_CRYPTOKI_NOT_INITIALIZED", CKR_CRYPTOKI_NOT_INITIALIZED},
    {"CKR_ENCRYPTED_DATA_INVALID", CKR_ENCRYPTED_DATA_INVALID},
    {"CKR_OPERATION_ACTIVE", CKR_OPERATION_ACTIVE},
    {"CKR_ARGUMENTS_BAD", CKR_ARGUMENTS_BAD},
    {"CKR_KEY_FUNCTION_NOT_PERMITTED", CKR_KEY_FUNCTION_NOT_PERMITTED},
    {"CKR_MECHANISM_INVALID", CKR_MECHANISM_INVALID},
    {"CKR_KEY_SIZE_RANGE", CKR_KEY_SIZE_RANGE},
    {"CKR_TEMPLATE_INCONSISTENT", CKR_TEMPLATE_INCONSISTENT},
    {"CKR_ATTRIBUTE_VALUE_INVALID", CKR_ATTRIBUTE_VALUE_INVALID},
};

struct Rule {
  std::vector<bool> funcs = std::vector<bool>(kNumFunctions, false);
  CK_RV rv = CKR_OK;
  double rate = -1;                   // < 0: not a condition
  uint64_t every = 0;                 // 0: not a condition
  uint64_t first = 0, last = 0;       // calls=first-last (1-based); first 0: not a condition
  double win_from = -1, win_to = -1;  // window; win_from < 0: not a condition
  bool forward = false;
  mutable std::atomic<uint64_t> count{0};
};

struct Rules {
  std::vector<std::unique_ptr<Rule>> fail;
  long delay_us[kNumFunctions] = {};
  bool hang[kNumFunctions] = {};
  bool hang_forever[kNumFunctions] = {};
  std::chrono::steady_clock::time_point loaded = std::chrono::steady_clock::now();
};

CK_FUNCTION_LIST g_list;                // ours: every entry a forwarding wrapper
CK_FUNCTION_LIST_PTR g_real = nullptr;  // the real module's list
std::once_flag g_once;
CK_RV g_init_rv = CKR_GENERAL_ERROR;
// Never destroyed: a call hanging inside this module may still read them while the
// process runs its exit-time destructors.
std::string& g_config_path = *new std::string;
std::mutex g_rules_mu;  // guards g_rules (the pointer) and g_stamp
std::shared_ptr<const Rules>& g_rules =
    *new std::shared_ptr<const Rules>(std::make_shared<Rules>());
std::atomic<uint64_t> g_finalized{0};  // C_Finalize calls forwarded so far
struct Stamp {
  bool exists = false;
  long long mtime_ns = 0, size = 0, ino = 0;
  bool operator==(const Stamp& o) const {
    return exists == o.exists && mtime_ns == o.mtime_ns && size == o.size && ino == o.ino;
  }
};
Stamp g_stamp;
std::atomic<long long> g_next_check_ns{0};
constexpr long long kCheckEveryNs = 10'000'000;  // re-stat the file at most every 10 ms

long long NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

bool ParseFuncs(const std::string& list, Rule* r, long* delay_target, long delay,
                std::string* err) {
  std::stringstream ss(list);
  std::string name;
  while (std::getline(ss, name, ',')) {
    bool found = false;
    for (size_t i = 0; i < kNumFunctions; ++i) {
      if (name == "*" || name == kNames[i]) {
        if (r) r->funcs[i] = true;
        if (delay_target) delay_target[i] = delay;
        found = true;
      }
    }
    if (!found) {
      *err = "unknown function '" + name + "'";
      return false;
    }
  }
  return true;
}

bool ParseRange(const std::string& v, double* a, double* b) {
  size_t dash = v.find('-');
  if (dash == std::string::npos) return false;
  char* end = nullptr;
  // `end` points into the string parsed, so that string must outlive the check.
  const std::string first = v.substr(0, dash);
  *a = std::strtod(first.c_str(), &end);
  if (dash == 0 || *end != '\0') return false;
  std::string rest = v.substr(dash + 1);
  if (rest.empty()) {
    *b = 1e300;
    return true;
  }
  *b = std::strtod(rest.c_str(), &end);
  return *end == '\0' && *b >= *a;
}

// Parses the configuration text. Returns null and sets *err on a bad line.
// What is read once, when the module is loaded.
struct LoadTime {
  std::string module;
  std::vector<std::pair<std::string, std::string>> env;
};

std::shared_ptr<Rules> Parse(const std::string& text, LoadTime* load, std::string* err) {
  auto rules = std::make_shared<Rules>();
  std::stringstream in(text);
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (size_t h = line.find('#'); h != std::string::npos) line.resize(h);
    std::stringstream ls(line);
    std::vector<std::string> w;
    for (std::string t; ls >> t;) w.push_back(t);
    if (w.empty()) continue;
    const std::string where = "line " + std::to_string(lineno) + ": ";
    if (w[0] == "module" && w.size() == 2) {
      if (load) load->module = w[1];
    } else if (w[0] == "env" && w.size() == 3) {
      if (load) load->env.emplace_back(w[1], w[2]);
    } else if (w[0] == "delay" && w.size() == 3) {
      char* end = nullptr;
      long us = std::strtol(w[2].c_str(), &end, 10);
      if (*end != '\0' || us < 0) {
        *err = where + "delay needs microseconds >= 0";
        return nullptr;
      }
      if (!ParseFuncs(w[1], nullptr, rules->delay_us, us, err)) {
        *err = where + *err;
        return nullptr;
      }
    } else if (w[0] == "hang" && (w.size() == 2 || (w.size() == 3 && w[2] == "forever"))) {
      Rule r;
      if (!ParseFuncs(w[1], &r, nullptr, 0, err)) {
        *err = where + *err;
        return nullptr;
      }
      for (size_t i = 0; i < kNumFunctions; ++i) {
        if (!r.funcs[i] || i == k_C_Finalize) continue;
        rules->hang[i] = true;
        if (w.size() == 3) rules->hang_forever[i] = true;
      }
    } else if (w[0] == "fail" && w.size() >= 3) {
      auto r = std::make_unique<Rule>();
      if (!ParseFuncs(w[1], r.get(), nullptr, 0, err)) {
        *err = where + *err;
        return nullptr;
      }
      bool known = false;
      for (const auto& c : kCodes) {
        if (w[2] == c.name) {
          r->rv = c.rv;
          known = true;
        }
      }
      if (!known) {
        *err = where + "unknown return value '" + w[2] + "'";
        return nullptr;
      }
      for (size_t i = 3; i < w.size(); ++i) {
        const std::string& c = w[i];
        size_t eq = c.find('=');
        const std::string key = c.substr(0, eq),
                          val = eq == std::string::npos ? "" : c.substr(eq + 1);
        char* end = nullptr;
        double a = 0, b = 0;
        if (key == "rate") {
          r->rate = std::strtod(val.c_str(), &end);
          if (val.empty() || *end != '\0' || r->rate < 0 || r->rate > 1) {
            *err = where + "rate must be 0..1";
            return nullptr;
          }
        } else if (key == "every") {
          r->every = std::strtoull(val.c_str(), &end, 10);
          if (val.empty() || *end != '\0' || r->every == 0) {
            *err = where + "every must be >= 1";
            return nullptr;
          }
        } else if (key == "calls" && ParseRange(val, &a, &b) && a >= 1) {
          r->first = static_cast<uint64_t>(a);
          r->last = b >= 1.8e19 ? UINT64_MAX : static_cast<uint64_t>(b);
        } else if (key == "window" && ParseRange(val, &a, &b) && a >= 0) {
          r->win_from = a;
          r->win_to = b;
        } else if (key == "forward" && val.empty()) {
          r->forward = true;
        } else {
          *err = where + "bad condition '" + c + "'";
          return nullptr;
        }
      }
      rules->fail.push_back(std::move(r));
    } else {
      *err = where +
             "expected `module PATH`, `delay FUNCS US`, `hang FUNCS [forever]` or `fail FUNCS "
             "CKR_NAME [...]`";
      return nullptr;
    }
  }
  return rules;
}

std::string ReadAll(const std::string& path, bool* ok) {
  std::ifstream f(path);
  *ok = static_cast<bool>(f);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

Stamp StatConfig() {
  Stamp s;
  struct stat st {};
  if (g_config_path.empty() || ::stat(g_config_path.c_str(), &st) != 0) return s;
  s.exists = true;
  s.mtime_ns = static_cast<long long>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
  s.size = st.st_size;
  s.ino = static_cast<long long>(st.st_ino);
  return s;
}

// Re-reads the configuration if the file changed (checked at most every 10 ms).
std::shared_ptr<const Rules> CurrentRules() {
  const long long now = NowNs();
  if (!g_config_path.empty() && now >= g_next_check_ns.load(std::memory_order_relaxed)) {
    g_next_check_ns.store(now + kCheckEveryNs, std::memory_order_relaxed);
    Stamp s = StatConfig();
    std::lock_guard<std::mutex> l(g_rules_mu);
    if (!(s == g_stamp)) {
      g_stamp = s;
      if (!s.exists) {
        g_rules = std::make_shared<Rules>();
      } else {
        bool ok = false;
        std::string text = ReadAll(g_config_path, &ok), err;
        auto parsed = ok ? Parse(text, nullptr, &err) : nullptr;
        if (parsed) {
          g_rules = std::move(parsed);
        } else {
          std::fprintf(stderr, "hsmrewrap fault module: %s: %s (ignored)\n", g_config_path.c_str(),
                       ok ? err.c_str() : "cannot read");
        }
      }
    }
  }
  std::lock_guard<std::mutex> l(g_rules_mu);
  return g_rules;
}

double Uniform() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}

void SleepUs(long us) {
  if (us <= 0) return;
  struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

// Before a call of `fn`: hangs while a `hang` rule names it, sleeps its delay, then returns
// the return value to inject (CKR_OK: none). *forward says whether the real function is
// still to be called.
CK_RV Decide(size_t fn, bool* forward) {
  std::shared_ptr<const Rules> rules = CurrentRules();
  if (rules->hang[fn]) {
    const uint64_t finalized = g_finalized.load();
    while (rules->hang[fn]) {
      SleepUs(10000);
      if (!rules->hang_forever[fn]) rules = CurrentRules();
    }
    if (g_finalized.load() != finalized) {
      *forward = false;
      return CKR_CRYPTOKI_NOT_INITIALIZED;
    }
  }
  SleepUs(rules->delay_us[fn]);
  *forward = true;
  const double t =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - rules->loaded).count();
  for (const auto& r : rules->fail) {
    if (!r->funcs[fn]) continue;
    const uint64_t n = r->count.fetch_add(1) + 1;
    if (r->every != 0 && n % r->every != 0) continue;
    if (r->first != 0 && (n < r->first || n > r->last)) continue;
    if (r->win_from >= 0 && (t < r->win_from || t > r->win_to)) continue;
    if (r->rate >= 0 && Uniform() >= r->rate) continue;
    *forward = r->forward || fn == k_C_Finalize;
    return r->rv;
  }
  return CKR_OK;
}

template <size_t I, auto Member, typename F>
struct Fwd;
template <size_t I, auto Member, typename... A>
struct Fwd<I, Member, CK_RV (*)(A...)> {
  static CK_RV Call(A... a) {
    bool forward = true;
    const CK_RV injected = Decide(I, &forward);
    CK_RV rv = CKR_OK;
    if (forward) {
      auto fn = g_real->*Member;
      rv = fn == nullptr ? CKR_FUNCTION_NOT_SUPPORTED : fn(a...);
      if (I == k_C_Finalize) g_finalized.fetch_add(1);
    }
    return injected != CKR_OK ? injected : rv;
  }
};

extern "C" CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list);

void Init() {
  if (const char* c = std::getenv("HSMREWRAP_FAULT_CONFIG"); c != nullptr) g_config_path = c;
  Dl_info self{};
  if (dladdr(reinterpret_cast<void*>(&Init), &self) != 0 && self.dli_fname != nullptr) {
    const std::string own = std::string(self.dli_fname) + ".conf";
    if (::access(own.c_str(), R_OK) == 0) g_config_path = own;
  }
  std::string module = "/usr/lib/softhsm/libsofthsm2.so";
  if (!g_config_path.empty()) {
    bool ok = false;
    std::string text = ReadAll(g_config_path, &ok), err;
    if (ok) {
      LoadTime from_file;
      auto parsed = Parse(text, &from_file, &err);
      if (!parsed) {
        std::fprintf(stderr, "hsmrewrap fault module: %s: %s (ignored)\n", g_config_path.c_str(),
                     err.c_str());
      } else {
        g_rules = std::move(parsed);
        if (!from_file.module.empty()) module = from_file.module;
        for (const auto& [name, value] : from_file.env) ::setenv(name.c_str(), value.c_str(), 1);
      }
      g_stamp = StatConfig();
    }
  }
  if (const char* m = std::getenv("HSMREWRAP_FAULT_MODULE"); m != nullptr && *m != '\0') module = m;
  void* lib = dlopen(module.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    std::fprintf(stderr, "hsmrewrap fault module: cannot load %s: %s\n", module.c_str(), dlerror());
    return;
  }
  auto get = reinterpret_cast<CK_C_GetFunctionList>(dlsym(lib, "C_GetFunctionList"));
  if (get == nullptr || get(&g_real) != CKR_OK || g_real == nullptr) {
    std::fprintf(stderr, "hsmrewrap fault module: %s has no usable C_GetFunctionList\n",
                 module.c_str());
    return;
  }
  g_list.version = g_real->version;
  g_list.C_GetFunctionList = C_GetFunctionList;
#define X(n) g_list.n = &Fwd<k_##n, &CK_FUNCTION_LIST::n, decltype(g_list.n)>::Call;
  HSMREWRAP_FAULT_FUNCTIONS(X)
#undef X
  g_init_rv = CKR_OK;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) CK_RV C_GetFunctionList(
    CK_FUNCTION_LIST_PTR_PTR list) {
  if (list == nullptr) return CKR_ARGUMENTS_BAD;
  std::call_once(g_once, Init);
  if (g_init_rv != CKR_OK) return g_init_rv;
  *list = &g_list;
  return CKR_OK;
}
