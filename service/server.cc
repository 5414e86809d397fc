#include "service/server.h"

#include <nlohmann/json.hpp>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/tls.h"
#include "service/token_metrics.h"

#ifndef HSMREWRAP_VERSION
#define HSMREWRAP_VERSION "0.0.0"
#endif

namespace hsmrewrap::service {
namespace {

std::atomic<int> g_signal{0};
std::atomic<bool> g_reload{false};

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

// "OAEP_SHA256=IN_TOKEN|TOKEN_DECRYPT, ..." for the start-up banner.
std::string PathsText(const v1::KeyInfo& info) {
  std::string paths;
  for (const auto& p : info.paths()) {
    absl::StrAppend(&paths, paths.empty() ? "" : ", ", v1::Padding_Name(p.padding()), "=");
    if (p.paths().empty()) absl::StrAppend(&paths, "none");
    for (int i = 0; i < p.paths_size(); ++i) {
      absl::StrAppend(&paths, i ? "|" : "", v1::Path_Name(static_cast<v1::Path>(p.paths(i))));
    }
  }
  return paths;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Create(Config config, bool open_audit_log) {
  auto credentials = MakeServerCredentials(config);
  if (!credentials.ok()) return credentials.status();
  std::unique_ptr<AuditLog> audit;
  if (!config.audit_log.empty() && open_audit_log) {
    auto a = AuditLog::Open(config.audit_log);
    if (!a.ok()) return a.status();
    audit = *std::move(a);
  }
  auto security = Security::Create(config.policy, std::move(audit));
  if (!security.ok()) return security.status();
  return std::unique_ptr<Server>(
      new Server(std::move(config), *std::move(credentials), *std::move(security)));
}

Server::Server(Config config, std::shared_ptr<grpc::ServerCredentials> credentials,
               std::unique_ptr<Security> security)
    : config_(std::move(config)),
      credentials_(std::move(credentials)),
      security_(std::move(security)) {}

Server::~Server() = default;

int Server::Run() {
  HardenProcess();
  LogSecuritySettings();
  // A network token's client module (p11-kit-client.so) writes to a socket whose server may
  // have died: that must be an error return (token lost), not SIGPIPE killing rewrapd.
  std::signal(SIGPIPE, SIG_IGN);
  if (!OpenToken()) return 1;
  StartEngine();
  if (!StartGrpc()) return 1;
  LogKeys();
  if (!StartMetricsServer()) return 1;
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  std::signal(SIGHUP, OnHangup);
  AnnounceReady();
  ServeUntilSignal();
  Drain();
  return 0;
}

void Server::LogSecuritySettings() const {
  const Config& c = config_;
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
  if (!security_->has_policy()) {
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
}

bool Server::OpenToken() {
  auto started = service::OpenToken(config_);
  if (!started.ok()) {
    spdlog::error("cannot open the token: {}", started.status().ToString());
    return false;
  }
  started_ = *std::move(started);
  bool host_unpadding = false;
  for (const auto& t : config_.tokens) host_unpadding |= t.allow_host_unpadding.value_or(false);
  if (host_unpadding) {
    spdlog::warn(
        "HOST UNPADDING IS ALLOWED: for paddings this token cannot decrypt natively, the token "
        "does raw RSA "
        "and the padding is removed on this host, so plaintext passes through host memory. "
        "{}",
        config_.embedded()
            ? "This is the embedded SoftHSM2 development default; use a real HSM and "
              "leave allow_host_unpadding off in production."
            : config_.tokens_given ? "It was enabled by configuration (for the tokens whose "
                                     "allow_host_unpadding is true)."
                                   : "It was enabled by configuration.");
  }
  return true;
}

void Server::StartEngine() {
  RewrapEngine::Options eo;
  eo.workers = config_.workers;
  eo.limits = config_.limits;
  eo.allow_host_unpadding = config_.allow_host_unpadding;
  eo.in_token_cms = config_.in_token_cms;
  eo.require_in_token = config_.require_in_token;
  engine_ = std::make_unique<RewrapEngine>(started_->tokens, eo);
  DeclareServiceMetrics(metrics_);
  DeclareProcessMetrics();
  // Time every PKCS#11 call. The supervisor sets the observer on every module it loads
  // (after a token loss too).
  metrics_.DeclareHistogram("hsmrewrap_pkcs11_call_seconds",
                            "Latency of PKCS#11 calls by function and result", LatencyBuckets());
  for (size_t i = 0; i < started_->tokens->size(); ++i) {
    hsm::TokenSupervisor* sup = started_->tokens->member(i).supervisor.get();
    if (sup == nullptr) continue;
    observer_guard_.supervisors.push_back(sup);
    sup->SetCallObserver([this](const char* function, bool ok, double seconds) {
      metrics_.Observe("hsmrewrap_pkcs11_call_seconds",
                       {{"function", function}, {"result", ok ? "ok" : "error"}}, seconds);
    });
  }
  selftest_ = std::make_unique<SelfTester>(engine_.get(), &metrics_,
                                           std::chrono::seconds(config_.selftest_interval_s));
  key_admin_ = std::make_unique<KeyAdmin>(engine_.get(), selftest_.get());
}

// Gauges read at scrape time: build, token, engine queue, PKCS#11 calls and sessions.
void Server::DeclareProcessMetrics() {
  const std::string label = started_->token_label;
  const std::string host_unpadding = config_.allow_host_unpadding ? "allowed" : "denied";
  using Samples = std::vector<std::pair<Metrics::Labels, double>>;
  metrics_.DeclareGauge(
      "hsmrewrap_build_info", "Build and configuration of this rewrapd", [label, host_unpadding] {
        return Samples{
            {{{"version", HSMREWRAP_VERSION}, {"token", label}, {"host_unpadding", host_unpadding}},
             1.0}};
      });
  metrics_.DeclareGauge("hsmrewrap_token_up", "1 while the token answers", [this] {
    return Samples{{{}, token_healthy_.load() ? 1.0 : 0.0}};
  });
  metrics_.DeclareGauge("hsmrewrap_inflight_items", "Items queued or running in the engine",
                        [this] {
                          return Samples{{{}, static_cast<double>(engine_->inflight())}};
                        });
  DeclareTokenMetrics(metrics_, started_->tokens);
}

bool Server::StartGrpc() {
  authorized_calls_ = std::make_unique<AuthorizedCalls>(security_.get());
  rewrap_service_ = std::make_unique<RewrapServiceImpl>(engine_.get(), &metrics_,
                                                        authorized_calls_.get(), config_.limits);
  keys_service_ = std::make_unique<KeysServiceImpl>(key_admin_.get(), started_->token_label,
                                                    authorized_calls_.get(),
                                                    config_.limits.max_queued_key_calls);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config_.listen, credentials_, &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(config_.limits.max_message_bytes));
  // Without BDP probing a stream's HTTP/2 window stays near one message: gRPC does not read
  // ahead megabytes of batches a stream's reactor has stopped reading (a caller that never
  // reads its answers would otherwise make rewrapd hold them; service/stream_reactor.h).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  builder.RegisterService(rewrap_service_.get());
  builder.RegisterService(keys_service_.get());
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<MetricsInterceptorFactory>(&metrics_));
  interceptors.push_back(
      std::make_unique<AuthorizationInterceptorFactory>(authorized_calls_.get()));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  grpc_server_ = builder.BuildAndStart();
  if (!grpc_server_ || port == 0) {
    spdlog::error("cannot listen on {}", config_.listen);
    return false;
  }
  const std::string host = config_.listen.substr(0, config_.listen.rfind(':'));
  address_ = absl::StrCat(host, ":", port);
  SetHealth(true);
  return true;
}

void Server::LogKeys() {
  auto keys = key_admin_->ListKeys();
  if (!keys.ok()) return;
  for (const auto& key : *keys) {
    const hsm::KeyInfo& k = key.info;
    v1::KeyInfo info;
    KeyToProto(key, started_->token_label, &info);
    spdlog::info("key '{}': {} bits, {}, paths: {}{}", k.name, k.bits,
                 k.enabled ? "enabled" : "disabled", PathsText(info),
                 info.pkcs1_implicit_rejection()
                     ? " (PKCS1 implicit rejection: bad padding gives a pseudo-random secret)"
                     : "");
  }
}

bool Server::StartMetricsServer() {
  if (config_.metrics_listen.empty()) return true;
  auto ms = MetricsServer::Start(config_.metrics_listen, &metrics_,
                                 [this] { return HealthReport(); });
  if (!ms.ok()) {
    spdlog::error("{}", std::string(ms.status().message()));
    return false;
  }
  metrics_server_ = *std::move(ms);
  spdlog::info("metrics on http://{}/metrics", metrics_server_->address());
  return true;
}

void Server::AnnounceReady() const {
  // Type=notify: systemd learns that the token is open and the port bound (a no-op
  // outside systemd).
  sd_notifyf(0, "READY=1\nSTATUS=serving on %s, token %s", address_.c_str(),
             started_->token_label.c_str());
  std::cout << "rewrapd serving on " << address_ << std::endl;
  std::cout << "token: " << started_->token_label
            << (config_.embedded() ? " (embedded SoftHSM2 in " + config_.state_dir + ")" : "")
            << "\ntry:   " << RewrapctlPath() << " --target " << address_ << " keys list"
            << std::endl;
}

void Server::ServeUntilSignal() {
  token_healthy_.store(true);
  while (g_signal.load() == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    if (g_reload.exchange(false)) ReloadPolicy();
    FollowHealth();
  }
}

void Server::ReloadPolicy() {
  if (auto st = security_->Reload(); st.ok()) {
    spdlog::info("SIGHUP: policy {} reloaded", config_.policy.empty() ? "(none)" : config_.policy);
  } else {
    spdlog::error("SIGHUP: policy not reloaded, the previous one stays in force: {}",
                  std::string(st.message()));
  }
}

void Server::FollowHealth() {
  // SERVING while every key has at least one token up that serves it (with one token: while
  // it is up).
  const std::vector<std::string> orphans = started_->tokens->KeysWithoutUpToken();
  const bool token_ok = started_->tokens->Healthy() && orphans.empty();
  token_healthy_.store(token_ok);
  // A broken audit log stops the service for good (fail closed).
  const bool now = token_ok && security_->serving();
  if (now == serving_now_.load()) return;
  SetHealth(now);
  const std::string why =
      !security_->serving() ? "audit log unwritable"
      : started_->tokens->size() == 1 || !started_->tokens->Healthy()
          ? "token unavailable"
          : absl::StrCat("no token that is up serves key(s) ", absl::StrJoin(orphans, ", "));
  if (now)
    spdlog::info("token is back: serving");
  else
    spdlog::error("{}: health NOT_SERVING", why);
  sd_notifyf(0, "STATUS=%s%s", now ? "serving" : why.c_str(), now ? "" : ": NOT_SERVING");
}

MetricsServer::Health Server::HealthReport() const {
  MetricsServer::Health h;
  h.serving = serving_now_.load();
  nlohmann::json j;
  j["status"] = h.serving ? "SERVING" : "NOT_SERVING";
  const hsm::TokenSet& set = *started_->tokens;
  nlohmann::json tokens = nlohmann::json::array();
  for (size_t i = 0; i < set.size(); ++i) {
    const auto& m = set.member(i);
    nlohmann::json t;
    t["name"] = m.name;
    t["up"] = m.backend->Healthy();
    t["state"] = m.supervisor ? hsm::TokenSupervisor::StateName(m.supervisor->state())
                              : (m.backend->Healthy() ? "up" : "lost");
    t["inflight"] = set.stats(i).inflight.load();
    t["items"] = set.stats(i).items.load();
    t["failovers"] = set.stats(i).failovers.load();
    t["reconnects"] = m.supervisor ? m.supervisor->reconnects() : 0;
    t["last_outage_seconds"] = m.supervisor ? m.supervisor->last_outage_seconds() : 0.0;
    tokens.push_back(std::move(t));
  }
  j["tokens"] = std::move(tokens);
  nlohmann::json keys = nlohmann::json::object();
  for (const auto& [name, holders] : set.Holders()) {
    nlohmann::json names = nlohmann::json::array();
    for (size_t i : holders) names.push_back(set.member(i).name);
    keys[name] = std::move(names);
  }
  j["keys"] = std::move(keys);
  j["keys_without_up_token"] = set.KeysWithoutUpToken();
  h.json = j.dump();
  return h;
}

void Server::SetHealth(bool serving) {
  serving_now_.store(serving);
  auto* health = grpc_server_->GetHealthCheckService();
  health->SetServingStatus(serving);
  health->SetServingStatus("hsmrewrap.v1.Rewrap", serving);
  health->SetServingStatus("hsmrewrap.v1.Keys", serving);
}

void Server::Drain() {
  const uint32_t grace_s = config_.shutdown_grace_s;
  spdlog::info("signal {}: draining ({} items in flight) for up to {} s", g_signal.load(),
               engine_->inflight(), grace_s);
  SetHealth(false);
  sd_notify(0, "STOPPING=1\nSTATUS=draining");
  const auto drain_start = std::chrono::steady_clock::now();
  // gRPC's Shutdown(deadline) cancels the calls at the deadline but still waits for their
  // reactors, i.e. for the engine: at the deadline the engine stops starting items, so the
  // rest of every batch fails fast (UNAVAILABLE, without the token) and the calls end.
  absl::Mutex mu;
  bool drained = false;
  std::thread grace_timer([&] {
    absl::MutexLock l(&mu);
    if (!mu.AwaitWithTimeout(absl::Condition(&drained), absl::Seconds(grace_s))) {
      spdlog::warn("shutdown grace of {} s is over: items not yet started fail UNAVAILABLE",
                   grace_s);
      engine_->StopAccepting();
    }
  });
  grpc_server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(grace_s));
  grpc_server_->Wait();
  {
    absl::MutexLock l(&mu);
    drained = true;
  }
  grace_timer.join();
  spdlog::info(
      "stopped after {:.2f} s of draining ({} items still in the engine)",
      std::chrono::duration<double>(std::chrono::steady_clock::now() - drain_start).count(),
      engine_->inflight());
}

}  // namespace hsmrewrap::service
