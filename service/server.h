// rewrapd once its configuration is read (service/main.cc parses the command line): opens
// the token, starts the engine, the Rewrap and Keys services (with their authorization and
// metrics interceptors), the metrics endpoint and the self-tester; follows the token's and
// the audit log's health; reloads the policy on SIGHUP; on SIGTERM or SIGINT drains and stops.
#pragma once

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>

#include <atomic>
#include <memory>
#include <optional>

#include "absl/status/statusor.h"
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

namespace hsmrewrap::service {

class Server final {
 public:
  // Checks what `config` (finalized) refers to: the TLS files, the policy and, with
  // `open_audit_log`, opens the audit log. The token is not touched. An error is a
  // configuration error (rewrapd exits 2).
  static absl::StatusOr<std::unique_ptr<Server>> Create(Config config, bool open_audit_log);
  ~Server();
  Server(const Server&) = delete;  // owns threads and the listening socket
  Server& operator=(const Server&) = delete;

  // Serves until SIGTERM or SIGINT, then drains. Returns the exit status: 0, or 1 when the
  // token cannot be opened or an address cannot be bound. Once per process (it installs
  // the signal handlers); logging is set up by then.
  int Run();

 private:
  Server(Config config, std::shared_ptr<grpc::ServerCredentials> credentials,
         std::unique_ptr<Security> security);

  // Start-up, in this order.
  void LogSecuritySettings() const;
  bool OpenToken();
  void StartEngine();  // engine, metrics, PKCS#11 call timing, self-tester, key admin
  bool StartGrpc();    // the services and their interceptors, health
  void LogKeys();
  bool StartMetricsServer();
  void AnnounceReady() const;
  // Running: health follows the token and the audit log; SIGHUP reloads the policy.
  void ServeUntilSignal();
  void ReloadPolicy();
  void FollowHealth();
  void SetHealth(bool serving);
  // Stopping: NOT_SERVING, no new calls, shutdown_grace_s for the calls in flight.
  void Drain();

  void DeclareProcessMetrics();

  const Config config_;
  const std::shared_ptr<grpc::ServerCredentials> credentials_;
  const std::unique_ptr<Security> security_;
  // Declared in the order they start; destroyed the other way round, so each goes after
  // everything that uses it.
  std::optional<Started> started_;
  std::unique_ptr<RewrapEngine> engine_;
  Metrics metrics_;
  // Removes the PKCS#11 call observer (which records into metrics_) before metrics_ goes:
  // the module outlives it. By then the server, the self-test thread and the workers are idle.
  struct ObserverGuard {
    std::vector<hsm::TokenSupervisor*> supervisors;
    ~ObserverGuard() {
      for (auto* s : supervisors) s->SetCallObserver(nullptr);
    }
  } observer_guard_;
  std::unique_ptr<SelfTester> selftest_;
  std::unique_ptr<KeyAdmin> key_admin_;
  std::unique_ptr<AuthorizedCalls> authorized_calls_;
  std::unique_ptr<RewrapServiceImpl> rewrap_service_;
  std::unique_ptr<KeysServiceImpl> keys_service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::string address_;  // HOST:PORT actually bound
  std::unique_ptr<MetricsServer> metrics_server_;
  std::atomic<bool> token_healthy_{false};
  std::atomic<bool> serving_now_{false};  // what health says, also for /healthz
  // /healthz: the state and a tokens section (per token: state, in-flight, items, reconnects,
  // outage seconds) and the keys no up token serves.
  MetricsServer::Health HealthReport() const;
};

}  // namespace hsmrewrap::service
