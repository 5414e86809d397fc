// rewrapd: the hsm-rewrap daemon.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "hsm/token_supervisor.h"
#include "service/bootstrap.h"
#include "service/config.h"
#include "service/engine.h"
#include "service/interceptors.h"
#include "service/key_admin.h"
#include "service/keys_service.h"
#include "service/metrics.h"
#include "service/metrics_server.h"
#include "service/policy.h"
#include "service/rewrap_service.h"
#include "service/selftest.h"
#include "service/tls.h"
#include "service/token_metrics.h"

#ifndef HSMREWRAP_VERSION
#define HSMREWRAP_VERSION "0.0.0"
#endif

namespace hsmrewrap::service {
namespace {

// spdlog flag %* : the message, escaped for a JSON string.
class JsonEscapedMessage final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    static const char kHex[] = "0123456789abcdef";
    for (char ch : msg.payload) {
      const auto u = static_cast<unsigned char>(ch);
      if (ch == '"' || ch == '\\') {
        dest.push_back('\\');
        dest.push_back(ch);
      } else if (u < 0x20) {
        const char esc[] = {'\\', 'u', '0', '0', kHex[u >> 4], kHex[u & 15]};
        dest.append(esc, esc + sizeof(esc));
      } else {
        dest.push_back(ch);
      }
    }
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JsonEscapedMessage>();
  }
};

void SetUpLogging(const Config& c) {
  auto logger = spdlog::stderr_color_mt("rewrapd");
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(c.log_level));
  const bool json = c.log_format == "json" || (c.log_format.empty() && !::isatty(STDERR_FILENO));
  if (json) {
    auto f = std::make_unique<spdlog::pattern_formatter>();
    f->add_flag<JsonEscapedMessage>('*').set_pattern(
        R"({"time":"%Y-%m-%dT%H:%M:%S.%f%z","level":"%l","logger":"%n","pid":%P,"msg":"%*"})");
    logger->set_formatter(std::move(f));
  }
  // Says that debug logging is on (the leak check relies on seeing a debug line from every run).
  spdlog::debug("log level {}, {} format", c.log_level, json ? "json" : "text");
}

std::atomic<int> g_signal{0};
std::atomic<bool> g_reload{false};
std::atomic<bool> token_healthy{false};

// Gauges read at scrape time: build, token, engine queue, PKCS#11 calls and sessions.
void DeclareProcessMetrics(Metrics& m, const Config& c, RewrapEngine& engine,
                           const Started& started) {
  const std::string label = started.token_label;
  const std::string host_unpadding = c.allow_host_unpadding ? "allowed" : "denied";
  m.DeclareGauge(
      "hsmrewrap_build_info", "Build and configuration of this rewrapd", [label, host_unpadding] {
        return std::vector<std::pair<Metrics::Labels, double>>{
            {{{"version", HSMREWRAP_VERSION}, {"token", label}, {"host_unpadding", host_unpadding}},
             1.0}};
      });
  m.DeclareGauge("hsmrewrap_token_up", "1 while the token answers", [] {
    return std::vector<std::pair<Metrics::Labels, double>>{{{}, token_healthy.load() ? 1.0 : 0.0}};
  });
  m.DeclareGauge("hsmrewrap_inflight_items", "Items queued or running in the engine", [&engine] {
    return std::vector<std::pair<Metrics::Labels, double>>{
        {{}, static_cast<double>(engine.inflight())}};
  });
  if (auto* sup = dynamic_cast<hsm::TokenSupervisor*>(started.backend.get()))
    DeclareTokenMetrics(m, sup);
}
void OnSignal(int sig) { g_signal.store(sig); }
void OnHangup(int) { g_reload.store(true); }

// No core dumps and no ptrace by other users: secrets pass through this process. Memory is
// locked (no PINs or plaintexts in swap) where RLIMIT_MEMLOCK or CAP_IPC_LOCK allow it.
void HardenProcess() {
  if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
    spdlog::warn("prctl(PR_SET_DUMPABLE, 0) failed: {}", std::strerror(errno));
  struct rlimit no_core {
    0, 0
  };
  ::setrlimit(RLIMIT_CORE, &no_core);
  // Only without a finite RLIMIT_MEMLOCK (root, or LimitMEMLOCK=infinity): with MCL_FUTURE a
  // finite limit would make later allocations fail once reached. MCL_ONFAULT locks pages as
  // they are touched instead of populating every thread stack.
  struct rlimit ml {};
  const bool unlimited = ::getrlimit(RLIMIT_MEMLOCK, &ml) == 0 && ml.rlim_cur == RLIM_INFINITY;
  if (!unlimited && ::geteuid() != 0) {
    spdlog::warn(
        "memory not locked: RLIMIT_MEMLOCK is finite; secrets could reach swap. Set "
        "LimitMEMLOCK=infinity "
        "(the systemd unit does) or run without swap");
  } else if (::mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0) {
    spdlog::info("memory locked (mlockall, on fault): secrets are not swapped out");
  } else {
    spdlog::warn("memory not locked (mlockall: {}); secrets could reach swap",
                 std::strerror(errno));
  }
}

// rewrapctl beside this binary (installed) or in the build tree (../clients), else by name.
std::string RewrapctlPath() {
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return "rewrapctl";
  for (const auto& p : {self.parent_path() / "rewrapctl",
                        self.parent_path().parent_path() / "clients" / "rewrapctl"}) {
    if (std::filesystem::exists(p, ec)) {
      auto rel = std::filesystem::relative(p, std::filesystem::current_path(), ec);
      std::string s = (ec || rel.empty()) ? p.string() : rel.string();
      return s.find('/') == std::string::npos ? "./" + s : s;
    }
  }
  return "rewrapctl";
}

int Run(int argc, char** argv) {
  CLI::App app{
      "rewrapd: rewraps sealed secrets with RSA keys kept in a PKCS#11 token.\n"
      "With no arguments it creates (first run) and uses an embedded SoftHSM2 token\n"
      "under the state folder, with a 2048-bit key named 'default', and serves on\n"
      "127.0.0.1:50051. Every option is also a key of the YAML --config file and an\n"
      "HSMREWRAP_<KEY> environment variable; flags win over both.",
      "rewrapd"};
  std::optional<std::string> config_file, state_dir, listen, module, init_args, token, token_uri,
      pin_file, log_level, metrics_listen, tls_cert, tls_key, client_ca, policy, audit_log;
  std::optional<uint32_t> pool_size, workers, max_batch, max_inflight, max_message,
      selftest_interval, shutdown_grace, reconnect_backoff_max, token_call_timeout;
  bool allow_host_unpadding = false, deny_host_unpadding = false, check_config = false,
       version = false, insecure = false;
  app.add_option("--config", config_file, "YAML configuration file")->check(CLI::ExistingFile);
  app.add_option("--state-dir", state_dir,
                 "state folder (default $XDG_STATE_HOME/hsm-rewrap or ~/.local/state/hsm-rewrap)");
  app.add_option("--listen", listen,
                 "HOST:PORT to serve gRPC on (default 127.0.0.1:50051; port 0 picks one)");
  app.add_option("--module", module, "PKCS#11 module path (default: the embedded SoftHSM2 token)");
  app.add_option("--init-args", init_args,
                 "vendor C_Initialize argument string (NSS softoken needs one)");
  app.add_option("--token", token, "token label");
  app.add_option("--token-uri", token_uri,
                 "RFC 7512 PKCS#11 URI of the token (pkcs11:token=...;serial=...)");
  app.add_option("--pin-file", pin_file,
                 "file holding the user PIN (else $HSMREWRAP_PIN or the systemd credential 'pin')");
  app.add_flag("--allow-host-unpadding", allow_host_unpadding,
               "allow raw RSA in the token + OAEP/PKCS#1 unpadding on the host for paddings the "
               "token cannot do");
  app.add_flag("--deny-host-unpadding", deny_host_unpadding,
               "never unpad on the host (the embedded default allows it)");
  app.add_option("--pool-size", pool_size, "PKCS#11 sessions (default: 2 x cores, at least 2)");
  app.add_option("--workers", workers,
                 "engine threads that run items (default: max(pool size, cores)); more than the "
                 "pool size only helps when host work is large next to the token's time");
  app.add_option("--max-batch-items", max_batch, "items per batch (default 1000)");
  app.add_option("--max-inflight-items", max_inflight, "items queued or running (default 10000)");
  app.add_option("--max-message-bytes", max_message, "largest request message (default 16 MiB)");
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error (default info)");
  std::optional<std::string> log_format;
  app.add_option("--log-format", log_format,
                 "json or text (default: json unless stderr is a terminal)");
  app.add_option("--metrics-listen", metrics_listen,
                 "HOST:PORT for Prometheus metrics at GET /metrics (default off)");
  app.add_option("--selftest-interval", selftest_interval,
                 "seconds between known-answer self-tests (default 300; 0 = on demand)");
  app.add_option("--tls-cert", tls_cert,
                 "server certificate chain (PEM); with --tls-key serves TLS");
  app.add_option("--tls-key", tls_key, "server private key (PEM)");
  app.add_option("--client-ca", client_ca,
                 "CA bundle (PEM): require client certificates that chain to it (mTLS)");
  app.add_flag("--insecure", insecure,
               "allow plaintext gRPC on a non-loopback address (logs a warning)");
  app.add_option(
      "--policy", policy,
      "policy file (YAML): identities -> RPCs, keys, recipients, rate limits; SIGHUP reloads it");
  app.add_option("--audit-log", audit_log,
                 "append one JSON line per item here; rewraps stop if it cannot be written");
  app.add_option("--shutdown-grace", shutdown_grace,
                 "seconds in-flight batches get to finish after SIGTERM/SIGINT before rewrapd "
                 "stops (default 10)");
  app.add_option("--reconnect-backoff-max", reconnect_backoff_max,
                 "token lost: longest wait in ms between re-initialisation attempts (default 2000; "
                 "100-600000)");
  app.add_option(
      "--token-call-timeout", token_call_timeout,
      "seconds a PKCS#11 call may stay inside the module before the token counts as lost and the "
      "call's items are answered UNAVAILABLE (default 10; 1-3600)");
  app.add_flag("--check-config", check_config,
               "validate the configuration, print what rewrapd would do, exit");
  app.add_flag("--version", version, "print the version and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // --help exits 0; a usage error exits 2 with the reason
  }
  if (version) {
    std::cout << "rewrapd " << HSMREWRAP_VERSION << "\n";
    return 0;
  }

  Config c;
  if (config_file) {
    c.config_file = *config_file;
    if (auto st = ApplyYamlFile(*config_file, c); !st.ok()) {
      std::cerr << "rewrapd: " << st.message() << "\n";
      return 2;
    }
  }
  if (auto st = ApplyEnvironment(c); !st.ok()) {
    std::cerr << "rewrapd: " << st.message() << "\n";
    return 2;
  }
  if (state_dir) c.state_dir = *state_dir;
  if (listen) c.listen = *listen;
  if (module) c.module = *module;
  if (init_args) c.init_args = *init_args;
  if (token) c.token = *token;
  if (token_uri) c.token_uri = *token_uri;
  if (pin_file) c.pin_file = *pin_file;
  if (log_level) c.log_level = *log_level;
  if (log_format) c.log_format = *log_format;
  if (metrics_listen) c.metrics_listen = *metrics_listen;
  if (selftest_interval) c.selftest_interval_s = *selftest_interval;
  if (shutdown_grace) c.shutdown_grace_s = *shutdown_grace;
  if (reconnect_backoff_max) c.reconnect_backoff_max_ms = *reconnect_backoff_max;
  if (token_call_timeout) c.token_call_timeout_s = *token_call_timeout;
  if (pool_size) c.pool_size = *pool_size;
  if (workers) c.workers = *workers;
  if (tls_cert) c.tls_cert = *tls_cert;
  if (tls_key) c.tls_key = *tls_key;
  if (client_ca) c.client_ca = *client_ca;
  if (insecure) c.insecure = true;
  if (policy) c.policy = *policy;
  if (audit_log) c.audit_log = *audit_log;
  if (max_batch) c.limits.max_batch_items = *max_batch;
  if (max_inflight) c.limits.max_inflight_items = *max_inflight;
  if (max_message) c.limits.max_message_bytes = *max_message;
  if (allow_host_unpadding && deny_host_unpadding) {
    std::cerr
        << "rewrapd: --allow-host-unpadding and --deny-host-unpadding contradict each other\n";
    return 2;
  }
  if (allow_host_unpadding || deny_host_unpadding) {
    c.allow_host_unpadding = allow_host_unpadding;
    c.allow_host_unpadding_set = true;
  }
  if (auto st = Finalize(c); !st.ok()) {
    std::cerr << "rewrapd: configuration: " << st.message() << "\n";
    return 2;
  }
  auto server_creds = MakeServerCredentials(c);
  if (!server_creds.ok()) {
    std::cerr << "rewrapd: configuration: " << server_creds.status().message() << "\n";
    return 2;
  }
  std::unique_ptr<AuditLog> audit;
  if (!c.audit_log.empty() && !check_config) {
    auto a = AuditLog::Open(c.audit_log);
    if (!a.ok()) {
      std::cerr << "rewrapd: configuration: " << a.status().message() << "\n";
      return 2;
    }
    audit = *std::move(a);
  }
  auto security = Security::Create(c.policy, std::move(audit));
  if (!security.ok()) {
    std::cerr << "rewrapd: configuration: " << security.status().message() << "\n";
    return 2;
  }
  if (check_config) {
    std::cout << "configuration is valid\n" << Describe(c);
    return 0;
  }

  SetUpLogging(c);
  HardenProcess();
  if (!c.tls() && !IsLoopbackListen(c.listen)) {
    spdlog::warn(
        "INSECURE: serving plaintext gRPC on {} (insecure is set): anyone who can reach this "
        "address "
        "can call rewrapd and read its traffic. Use tls_cert, tls_key and client_ca in production.",
        c.listen);
  }
  if (c.tls() && c.client_ca.empty()) {
    spdlog::warn("TLS without client certificates (client_ca unset): callers are anonymous");
  }
  if (!(*security)->has_policy()) {
    if (c.tls() && !c.client_ca.empty()) {
      spdlog::warn(
          "no policy file: every client whose certificate chains to {} may call every RPC on every "
          "key and rewrap to any recipient",
          c.client_ca);
    } else {
      spdlog::info("no policy file: every caller may do everything (development mode)");
    }
  } else {
    spdlog::info("policy {} loaded (SIGHUP reloads it)", c.policy);
  }
  // A network token's client module (p11-kit-client.so) writes to a socket whose server may
  // have died: that must be an error return (token lost), not SIGPIPE killing rewrapd.
  std::signal(SIGPIPE, SIG_IGN);

  auto started = OpenToken(c);
  if (!started.ok()) {
    spdlog::error("cannot open the token: {}", started.status().ToString());
    return 1;
  }
  if (c.allow_host_unpadding) {
    spdlog::warn(
        "HOST UNPADDING IS ALLOWED: for paddings this token cannot decrypt natively, the token "
        "does raw RSA "
        "and the padding is removed on this host, so plaintext passes through host memory. "
        "{}",
        c.embedded() ? "This is the embedded SoftHSM2 development default; use a real HSM and "
                       "leave allow_host_unpadding off in production."
                     : "It was enabled by configuration.");
  }

  RewrapEngine::Options eo;
  eo.workers = c.workers;
  eo.limits = c.limits;
  eo.allow_host_unpadding = c.allow_host_unpadding;
  RewrapEngine engine(started->backend, eo);
  Metrics metrics;
  DeclareServiceMetrics(metrics);
  DeclareProcessMetrics(metrics, c, engine, *started);
  // Time every PKCS#11 call. The guard removes the observer before `metrics` goes away (the
  // module outlives it); by then the server, the self-test thread and the workers are idle.
  // The supervisor sets the observer on every module it loads (after a token loss too).
  struct ObserverGuard {
    hsm::TokenSupervisor* supervisor = nullptr;
    ~ObserverGuard() {
      if (supervisor) supervisor->SetCallObserver(nullptr);
    }
  } observer_guard;
  if (auto* sup = dynamic_cast<hsm::TokenSupervisor*>(started->backend.get())) {
    metrics.DeclareHistogram("hsmrewrap_pkcs11_call_seconds",
                             "Latency of PKCS#11 calls by function and result", LatencyBuckets());
    observer_guard.supervisor = sup;
    sup->SetCallObserver([&metrics](const char* function, bool ok, double seconds) {
      metrics.Observe("hsmrewrap_pkcs11_call_seconds",
                      {{"function", function}, {"result", ok ? "ok" : "error"}}, seconds);
    });
  }
  SelfTester selftest(&engine, &metrics, std::chrono::seconds(c.selftest_interval_s));
  AuthorizedCalls authorized_calls(security->get());
  RewrapServiceImpl rewrap_service(&engine, &metrics, &authorized_calls);
  KeyAdmin key_admin(&engine, &selftest);
  KeysServiceImpl keys_service(&key_admin, started->token_label, &authorized_calls);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(c.listen, *server_creds, &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(c.limits.max_message_bytes));
  builder.RegisterService(&rewrap_service);
  builder.RegisterService(&keys_service);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<MetricsInterceptorFactory>(&metrics));
  interceptors.push_back(std::make_unique<AuthorizationInterceptorFactory>(&authorized_calls));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    spdlog::error("cannot listen on {}", c.listen);
    return 1;
  }
  const std::string host = c.listen.substr(0, c.listen.rfind(':'));
  const std::string addr = absl::StrCat(host, ":", port);

  auto* health = server->GetHealthCheckService();
  std::atomic<bool> serving_now{false};  // what health says, also for the metrics server's /healthz
  auto set_health = [&](bool ok) {
    serving_now.store(ok);
    health->SetServingStatus(ok);
    health->SetServingStatus("hsmrewrap.v1.Rewrap", ok);
    health->SetServingStatus("hsmrewrap.v1.Keys", ok);
  };
  set_health(true);

  auto keys = key_admin.ListKeys();
  if (keys.ok()) {
    for (const auto& key : *keys) {
      const hsm::KeyInfo& k = key.info;
      v1::KeyInfo info;
      KeyToProto(key, started->token_label, &info);
      std::string paths;
      for (const auto& p : info.paths()) {
        absl::StrAppend(&paths, paths.empty() ? "" : ", ", v1::Padding_Name(p.padding()), "=");
        if (p.paths().empty()) absl::StrAppend(&paths, "none");
        for (int i = 0; i < p.paths_size(); ++i) {
          absl::StrAppend(&paths, i ? "|" : "", v1::Path_Name(static_cast<v1::Path>(p.paths(i))));
        }
      }
      spdlog::info("key '{}': {} bits, {}, paths: {}{}", k.name, k.bits,
                   k.enabled ? "enabled" : "disabled", paths,
                   info.pkcs1_implicit_rejection()
                       ? " (PKCS1 implicit rejection: bad padding gives a pseudo-random secret)"
                       : "");
    }
  }

  std::unique_ptr<MetricsServer> metrics_server;
  if (!c.metrics_listen.empty()) {
    auto ms = MetricsServer::Start(c.metrics_listen, &metrics,
                                   [&serving_now] { return serving_now.load(); });
    if (!ms.ok()) {
      spdlog::error("{}", std::string(ms.status().message()));
      return 1;
    }
    metrics_server = *std::move(ms);
    spdlog::info("metrics on http://{}/metrics", metrics_server->address());
  }

  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  std::signal(SIGHUP, OnHangup);
  // Type=notify: systemd learns that the token is open and the port bound (a no-op
  // outside systemd).
  sd_notifyf(0, "READY=1\nSTATUS=serving on %s, token %s", addr.c_str(),
             started->token_label.c_str());
  std::cout << "rewrapd serving on " << addr << std::endl;
  std::cout << "token: " << started->token_label
            << (c.embedded() ? " (embedded SoftHSM2 in " + c.state_dir + ")" : "")
            << "\ntry:   " << RewrapctlPath() << " --target " << addr << " keys list" << std::endl;

  // Health follows the token; signals end the loop.
  token_healthy.store(true);
  while (g_signal.load() == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    if (g_reload.exchange(false)) {
      if (auto st = (*security)->Reload(); st.ok()) {
        spdlog::info("SIGHUP: policy {} reloaded", c.policy.empty() ? "(none)" : c.policy);
      } else {
        spdlog::error("SIGHUP: policy not reloaded, the previous one stays in force: {}",
                      std::string(st.message()));
      }
    }
    const bool token_ok = started->backend->Healthy();
    token_healthy.store(token_ok);
    // A broken audit log stops the service for good (fail closed).
    const bool now = token_ok && (*security)->serving();
    if (now != serving_now.load()) {
      set_health(now);
      const char* why = !(*security)->serving() ? "audit log unwritable" : "token unavailable";
      if (now)
        spdlog::info("token is back: serving");
      else
        spdlog::error("{}: health NOT_SERVING", why);
      sd_notifyf(0, "STATUS=%s%s", now ? "serving" : why, now ? "" : ": NOT_SERVING");
    }
  }
  // Drain: NOT_SERVING so balancers move away, no new calls; calls in flight get up to
  // shutdown_grace_s to finish, then are cancelled.
  const size_t inflight = engine.inflight();
  spdlog::info("signal {}: draining ({} items in flight) for up to {} s", g_signal.load(), inflight,
               c.shutdown_grace_s);
  set_health(false);
  sd_notify(0, "STOPPING=1\nSTATUS=draining");
  const auto drain_start = std::chrono::steady_clock::now();
  // gRPC's Shutdown(deadline) cancels the calls at the deadline but still waits for their
  // reactors, i.e. for the engine: at the deadline the engine stops starting items, so the
  // rest of every batch fails fast (UNAVAILABLE, without the token) and the calls end.
  std::mutex grace_mu;
  std::condition_variable grace_cv;
  bool drained = false;
  std::thread grace_timer([&] {
    std::unique_lock<std::mutex> l(grace_mu);
    if (!grace_cv.wait_for(l, std::chrono::seconds(c.shutdown_grace_s), [&] { return drained; })) {
      spdlog::warn("shutdown grace of {} s is over: items not yet started fail UNAVAILABLE",
                   c.shutdown_grace_s);
      engine.StopAccepting();
    }
  });
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(c.shutdown_grace_s));
  server->Wait();
  {
    std::lock_guard<std::mutex> l(grace_mu);
    drained = true;
  }
  grace_cv.notify_all();
  grace_timer.join();
  spdlog::info(
      "stopped after {:.2f} s of draining ({} items still in the engine)",
      std::chrono::duration<double>(std::chrono::steady_clock::now() - drain_start).count(),
      engine.inflight());
  return 0;
}

}  // namespace
}  // namespace hsmrewrap::service

int main(int argc, char** argv) { return hsmrewrap::service::Run(argc, argv); }
