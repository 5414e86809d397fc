#include "service/metrics_server.h"

#include <httplib.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace hsmrewrap::service {

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& listen,
                                                                    Metrics* metrics,
                                                                    std::function<Health()> health) {
  const size_t colon = listen.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics_listen: expected HOST:PORT, got '", listen, "'"));
  }
  std::string host = listen.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  std::unique_ptr<MetricsServer> s(new MetricsServer());
  s->server_ = std::make_unique<httplib::Server>();
  s->server_->Get("/metrics", [metrics](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics->Render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  s->server_->Get("/healthz",
                  [health = std::move(health)](const httplib::Request&, httplib::Response& res) {
                    const Health h = health();
                    res.status = h.serving ? 200 : 503;
                    res.set_content(h.json + "\n", "application/json");
                  });
  s->server_->Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(
        "rewrapd: GET /metrics (Prometheus), GET /healthz (200 SERVING / 503 NOT_SERVING, JSON "
        "with a tokens section)\n",
        "text/plain");
  });
  if (port == 0) {
    port = s->server_->bind_to_any_port(host.c_str());
  } else if (!s->server_->bind_to_port(host.c_str(), port)) {
    port = -1;
  }
  if (port <= 0)
    return absl::UnavailableError(absl::StrCat("cannot listen for metrics on ", listen));
  s->address_ = absl::StrCat(listen.substr(0, colon), ":", port);
  httplib::Server* raw = s->server_.get();
  s->thread_ = std::thread([raw] { raw->listen_after_bind(); });
  return s;
}

MetricsServer::~MetricsServer() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace hsmrewrap::service
