// Serves Metrics::Render() at GET /metrics over HTTP (cpp-httplib), on its own thread, and
// GET /healthz: 200 "SERVING" or 503 "NOT_SERVING", the same state as the gRPC health
// service. Plain HTTP on purpose: Kubernetes' gRPC probes cannot present a client
// certificate to an mTLS listener, an httpGet probe on this port can always reach it.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "service/metrics.h"

namespace httplib {
class Server;
}

namespace hsmrewrap::service {

class MetricsServer final {
 public:
  // What /healthz answers: 200 when serving, else 503, with a JSON body.
  struct Health {
    bool serving = false;
    std::string json;
  };
  // Binds HOST:PORT (port 0 picks one) and starts serving. `health` answers /healthz
  // (called on the HTTP thread; must be thread-safe).
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& listen,
                                                              Metrics* metrics,
                                                              std::function<Health()> health);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;  // owns a thread and a socket
  MetricsServer& operator=(const MetricsServer&) = delete;
  const std::string& address() const { return address_; }

 private:
  MetricsServer() = default;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::string address_;
};

}  // namespace hsmrewrap::service
