#include "service/metrics.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace hsmrewrap::service {
namespace {

std::string Escape(const std::string& v) {
  return absl::StrReplaceAll(v, {{"\\", "\\\\"}, {"\"", "\\\""}, {"\n", "\\n"}});
}

std::string LabelText(const Metrics::Labels& labels, const std::string& extra_key = "",
                      const std::string& extra_value = "") {
  if (labels.empty() && extra_key.empty()) return "";
  std::string s = "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    absl::StrAppend(&s, first ? "" : ",", k, "=\"", Escape(v), "\"");
    first = false;
  }
  if (!extra_key.empty())
    absl::StrAppend(&s, first ? "" : ",", extra_key, "=\"", extra_value, "\"");
  return s + "}";
}

std::string Num(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return absl::StrCat(static_cast<int64_t>(v));
  return absl::StrCat(v);
}

}  // namespace

std::vector<double> LatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
}

void Metrics::DeclareCounter(const std::string& name, const std::string& help) {
  absl::MutexLock l(&mu_);
  auto& f = families_[name];
  if (f.type.empty()) {
    f.type = "counter";
    f.help = help;
  }
}

void Metrics::DeclareHistogram(const std::string& name, const std::string& help,
                               std::vector<double> buckets) {
  absl::MutexLock l(&mu_);
  auto& f = families_[name];
  if (f.type.empty()) {
    f.type = "histogram";
    f.help = help;
    f.buckets = std::move(buckets);
  }
}

void Metrics::DeclareGauge(const std::string& name, const std::string& help,
                           std::function<std::vector<std::pair<Labels, double>>()> read,
                           const std::string& type) {
  absl::MutexLock l(&mu_);
  auto& f = families_[name];
  f.type = type;
  f.help = help;
  f.read = std::move(read);
}

void Metrics::Add(const std::string& name, const Labels& labels, double v) {
  absl::MutexLock l(&mu_);
  auto it = families_.find(name);
  if (it != families_.end()) it->second.values[labels] += v;
}

void Metrics::Set(const std::string& name, const Labels& labels, double v) {
  absl::MutexLock l(&mu_);
  auto it = families_.find(name);
  if (it != families_.end()) it->second.values[labels] = v;
}

void Metrics::Observe(const std::string& name, const Labels& labels, double v) {
  absl::MutexLock l(&mu_);
  auto it = families_.find(name);
  if (it == families_.end()) return;
  Family& f = it->second;
  Histogram& h = f.histograms[labels];
  if (h.counts.empty()) h.counts.assign(f.buckets.size() + 1, 0);
  size_t i = 0;
  while (i < f.buckets.size() && v > f.buckets[i]) ++i;
  h.counts[i]++;
  h.sum += v;
  h.count++;
}

std::string Metrics::Render() const {
  // Gauges are read outside the lock: their callbacks may take other locks.
  std::map<std::string, std::vector<std::pair<Labels, double>>> gauges;
  std::map<std::string, std::function<std::vector<std::pair<Labels, double>>()>> readers;
  {
    absl::MutexLock l(&mu_);
    for (const auto& [name, f] : families_) {
      if (f.read) readers[name] = f.read;
    }
  }
  for (const auto& [name, read] : readers) gauges[name] = read();

  // Formatted from a copy, so a scrape holds the lock that every batch's counting needs only
  // for the copy (the label sets are bounded: service/rewrap_service.cc RecordBatch).
  std::map<std::string, Family> families;
  {
    absl::MutexLock l(&mu_);
    families = families_;
  }
  std::string out;
  for (const auto& [name, f] : families) {
    absl::StrAppend(&out, "# HELP ", name, " ", f.help, "\n# TYPE ", name, " ", f.type, "\n");
    if (f.read) {
      for (const auto& [labels, v] : gauges[name])
        absl::StrAppend(&out, name, LabelText(labels), " ", Num(v), "\n");
    } else if (f.type == "counter") {
      for (const auto& [labels, v] : f.values)
        absl::StrAppend(&out, name, LabelText(labels), " ", Num(v), "\n");
    } else {
      for (const auto& [labels, h] : f.histograms) {
        uint64_t cumulative = 0;
        for (size_t i = 0; i < f.buckets.size(); ++i) {
          cumulative += h.counts[i];
          absl::StrAppend(&out, name, "_bucket", LabelText(labels, "le", Num(f.buckets[i])), " ",
                          cumulative, "\n");
        }
        cumulative += h.counts.back();
        absl::StrAppend(&out, name, "_bucket", LabelText(labels, "le", "+Inf"), " ", cumulative,
                        "\n");
        absl::StrAppend(&out, name, "_sum", LabelText(labels), " ", Num(h.sum), "\n");
        absl::StrAppend(&out, name, "_count", LabelText(labels), " ", h.count, "\n");
      }
    }
  }
  return out;
}

}  // namespace hsmrewrap::service
