// Prometheus text-format metrics (exposition format 0.0.4). There is no Prometheus
// client library in Debian bookworm, so the few metric types rewrapd needs are written
// here: counters and histograms keyed by label values, and gauges read at scrape time.
// Served over HTTP by cpp-httplib (service/metrics_server.h).
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace hsmrewrap::service {

class Metrics final {
 public:
  using Labels = std::vector<std::pair<std::string, std::string>>;

  // Declares a family once; later calls with the same name are ignored.
  void DeclareCounter(const std::string& name, const std::string& help);
  void DeclareHistogram(const std::string& name, const std::string& help,
                        std::vector<double> buckets);
  // A gauge (or, with type "counter", a counter kept elsewhere) whose samples are produced
  // at scrape time.
  void DeclareGauge(const std::string& name, const std::string& help,
                    std::function<std::vector<std::pair<Labels, double>>()> read,
                    const std::string& type = "gauge");

  void Add(const std::string& name, const Labels& labels, double v = 1);
  // Sets a counter to an absolute value (for counts kept elsewhere, e.g. PKCS#11 calls).
  void Set(const std::string& name, const Labels& labels, double v);
  void Observe(const std::string& name, const Labels& labels, double v);

  // The whole exposition text.
  std::string Render() const;

 private:
  struct Histogram {
    std::vector<uint64_t> counts;  // per bucket (not cumulative) + the +Inf bucket
    double sum = 0;
    uint64_t count = 0;
  };
  struct Family {
    std::string type, help;
    std::vector<double> buckets;
    std::map<Labels, double> values;                               // counters
    std::map<Labels, Histogram> histograms;                        // histograms
    std::function<std::vector<std::pair<Labels, double>>()> read;  // gauges
  };
  mutable absl::Mutex mu_;
  std::map<std::string, Family> families_ ABSL_GUARDED_BY(mu_);
};

// Latency buckets in seconds, 100 µs to 10 s.
std::vector<double> LatencyBuckets();

}  // namespace hsmrewrap::service
