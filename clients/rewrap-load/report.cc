// The report in three forms: JSON (machine-readable), text (terminal) and a self-contained
// HTML page with inline SVG charts (no scripts, no external resources).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "clients/rewrap-load/load.h"

namespace hsmrewrap::load {
namespace {

using nlohmann::json;

json LatJson(const LatencySummary& s) {
  return json{{"count", s.count},    {"p50_ms", s.p50_ms},   {"p90_ms", s.p90_ms},
              {"p99_ms", s.p99_ms},  {"p999_ms", s.p999_ms}, {"max_ms", s.max_ms},
              {"mean_ms", s.mean_ms}};
}

const char* DeviceKindName(DeviceKind k) {
  switch (k) {
    case DeviceKind::kRsa:
      return "rsa";
    case DeviceKind::kEcP256:
      return "ec-p256";
    case DeviceKind::kEcP384:
      return "ec-p384";
  }
  return "?";
}

std::string Esc(const std::string& s) {
  return absl::StrReplaceAll(s, {{"&", "&amp;"}, {"<", "&lt;"}, {">", "&gt;"}, {"\"", "&quot;"}});
}

std::string LatRow(const char* what, const LatencySummary& s) {
  return absl::StrFormat(
      "%-6s p50 %8.2f  p90 %8.2f  p99 %8.2f  p99.9 %8.2f  max %8.2f  mean %8.2f ms\n", what,
      s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms, s.mean_ms);
}

// A "nice" axis maximum >= v.
double NiceMax(double v) {
  if (v <= 0) return 1;
  const double p = std::pow(10.0, std::floor(std::log10(v)));
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    if (m * p >= v) return m * p;
  }
  return 10 * p;
}

constexpr int kW = 760, kH = 260, kL = 70, kR = 20, kT = 20, kB = 45;

std::string Axes(double ymax, const std::string& ylabel, const std::string& xlabel) {
  std::string svg;
  const int pw = kW - kL - kR, ph = kH - kT - kB;
  for (int i = 0; i <= 4; ++i) {
    const double y = kT + ph - ph * i / 4.0;
    absl::StrAppendFormat(&svg, "<line x1='%d' y1='%.1f' x2='%d' y2='%.1f' stroke='#ddd'/>", kL, y,
                          kL + pw, y);
    absl::StrAppendFormat(&svg, "<text x='%d' y='%.1f' text-anchor='end' font-size='11'>%g</text>",
                          kL - 6, y + 4, ymax * i / 4.0);
  }
  absl::StrAppendFormat(&svg, "<line x1='%d' y1='%d' x2='%d' y2='%d' stroke='#333'/>", kL, kT + ph,
                        kL + pw, kT + ph);
  absl::StrAppendFormat(&svg, "<line x1='%d' y1='%d' x2='%d' y2='%d' stroke='#333'/>", kL, kT, kL,
                        kT + ph);
  absl::StrAppendFormat(&svg,
                        "<text x='14' y='%d' font-size='12' transform='rotate(-90 14 %d)' "
                        "text-anchor='middle'>%s</text>",
                        kT + ph / 2, kT + ph / 2, Esc(ylabel));
  absl::StrAppendFormat(&svg, "<text x='%d' y='%d' font-size='12' text-anchor='middle'>%s</text>",
                        kL + pw / 2, kH - 6, Esc(xlabel));
  return svg;
}

std::string ThroughputSvg(const Report& r) {
  const auto& v = r.items_per_second;
  double peak = 0;
  for (uint64_t x : v) peak = std::max(peak, static_cast<double>(x));
  const double ymax = NiceMax(peak * 1.1);
  const int pw = kW - kL - kR, ph = kH - kT - kB;
  const size_t n = std::max<size_t>(v.size(), 1);
  std::string svg = absl::StrFormat(
      "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' "
      "font-family='sans-serif'>",
      kW, kH);
  svg += Axes(ymax, "items/s", "seconds since start");
  std::string pts;
  for (size_t i = 0; i < v.size(); ++i) {
    const double x = kL + pw * (static_cast<double>(i) + 0.5) / static_cast<double>(n);
    const double y = kT + ph - ph * static_cast<double>(v[i]) / ymax;
    absl::StrAppendFormat(&pts, "%.1f,%.1f ", x, y);
  }
  absl::StrAppendFormat(
      &svg, "<polyline fill='none' stroke='#1f6feb' stroke-width='2' points='%s'/>", pts);
  for (size_t i = 0; i < v.size(); i += std::max<size_t>(1, v.size() / 10)) {
    const double x = kL + pw * (static_cast<double>(i) + 0.5) / static_cast<double>(n);
    absl::StrAppendFormat(&svg,
                          "<text x='%.1f' y='%d' font-size='11' text-anchor='middle'>%d</text>", x,
                          kT + ph + 15, static_cast<int>(i));
  }
  // Mean line.
  const double ym = kT + ph - ph * r.items_per_s / ymax;
  absl::StrAppendFormat(
      &svg,
      "<line x1='%d' y1='%.1f' x2='%d' y2='%.1f' stroke='#d73a49' stroke-dasharray='4 3'/>"
      "<text x='%d' y='%.1f' font-size='11' fill='#d73a49' text-anchor='end'>mean %.0f/s</text>",
      kL, ym, kL + pw, ym, kL + pw, ym - 4, r.items_per_s);
  svg += "</svg>";
  return svg;
}

std::string LatencySvg(const Report& r) {
  const auto& h = r.latency_histogram;
  uint64_t peak = 0;
  for (const auto& b : h) peak = std::max(peak, b.second);
  const double ymax = NiceMax(static_cast<double>(peak) * 1.1);
  const int pw = kW - kL - kR, ph = kH - kT - kB;
  std::string svg = absl::StrFormat(
      "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' "
      "font-family='sans-serif'>",
      kW, kH);
  svg += Axes(ymax, "items", "latency per item, ms (log scale, upper bound of bucket)");
  const size_t n = std::max<size_t>(h.size(), 1);
  const double bw = static_cast<double>(pw) / static_cast<double>(n);
  for (size_t i = 0; i < h.size(); ++i) {
    const double x = kL + bw * static_cast<double>(i);
    const double bh = ph * static_cast<double>(h[i].second) / ymax;
    absl::StrAppendFormat(&svg,
                          "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='#2da44e'>"
                          "<title>&lt;= %.3g ms: %llu items</title></rect>",
                          x + 1, kT + ph - bh, std::max(1.0, bw - 2), bh, h[i].first,
                          static_cast<unsigned long long>(h[i].second));
    if (n <= 12 || i % ((n + 11) / 12) == 0) {
      absl::StrAppendFormat(&svg,
                            "<text x='%.1f' y='%d' font-size='10' text-anchor='middle'>%.3g</text>",
                            x + bw / 2, kT + ph + 14, h[i].first);
    }
  }
  svg += "</svg>";
  return svg;
}

std::string RssSvg(const Report& r) {
  double peak = 0, tmax = 1;
  for (const auto& s : r.proc_series)
    peak = std::max(peak, s.rss_kib / 1024.0), tmax = std::max(tmax, s.t_s);
  const double ymax = NiceMax(std::max(peak * 1.1, 64.0));
  const int pw = kW - kL - kR, ph = kH - kT - kB;
  std::string svg = absl::StrFormat(
      "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' "
      "font-family='sans-serif'>",
      kW, kH);
  svg += Axes(ymax, "rewrapd RSS, MiB", "seconds since start");
  std::string pts;
  for (const auto& s : r.proc_series) {
    absl::StrAppendFormat(&pts, "%.1f,%.1f ", kL + pw * s.t_s / tmax,
                          kT + ph - ph * (s.rss_kib / 1024.0) / ymax);
  }
  absl::StrAppendFormat(
      &svg, "<polyline fill='none' stroke='#8250df' stroke-width='2' points='%s'/>", pts);
  const double y64 = kT + ph - ph * 64.0 / ymax;
  absl::StrAppendFormat(
      &svg,
      "<line x1='%d' y1='%.1f' x2='%d' y2='%.1f' stroke='#d73a49' stroke-dasharray='4 3'/>"
      "<text x='%d' y='%.1f' font-size='11' fill='#d73a49' text-anchor='end'>64 MiB</text>",
      kL, y64, kL + pw, y64, kL + pw, y64 - 4);
  svg += "</svg>";
  return svg;
}

}  // namespace

std::string ReportJson(const Report& r) {
  const Options& o = r.options;
  json j;
  j["config"] = {
      {"target", r.target},
      {"key_name", o.key_name},
      {"padding", v1::Padding_Name(o.padding)},
      {"format", v1::OutputFormat_Name(o.format)},
      {"device_kind", DeviceKindName(o.device_kind)},
      {"device_bits", o.device_bits},
      {"recipient", o.recipient == RecipientKind::kCertificate ? "certificate" : "public-key"},
      {"devices", o.devices},
      {"batch", o.batch},
      {"streams", o.streams},
      {"depth", o.depth},
      {"rate", o.rate},
      {"duration_s", o.duration_s},
      {"items_limit", o.items},
      {"verify_all", o.verify_all},
      {"mode", o.rate > 0 ? "open" : "closed"}};
  j["prepare_s"] = r.prepare_s;
  j["elapsed_s"] = r.elapsed_s;
  j["items"] = r.items;
  j["ok_items"] = r.ok_items;
  j["batches"] = r.batches;
  j["items_per_s"] = r.items_per_s;
  j["batches_per_s"] = r.batches_per_s;
  j["latency"] = {{"item", LatJson(r.item_latency)}, {"batch", LatJson(r.batch_latency)}};
  j["errors"] = r.errors;
  j["error_items"] = r.error_items;
  j["mismatches"] = r.mismatches;
  j["verified"] = r.verified;
  j["paths"] = r.paths;
  j["tokens"] = r.tokens;
  if (o.rate > 0) {
    j["open_loop"] = {{"target_items_per_s", o.rate},
                      {"scheduled_items", r.scheduled_items},
                      {"skipped_items", r.skipped_items},
                      {"max_send_lag_ms", r.max_send_lag_ms},
                      {"behind", r.behind}};
  }
  j["client_cpu"] = {{"seconds", r.client_cpu_s},
                     {"cores", r.elapsed_s > 0 ? r.client_cpu_s / r.elapsed_s : 0.0}};
  if (r.server_cpu_s >= 0) {
    json series = json::array();
    for (const auto& s : r.proc_series)
      series.push_back({{"t_s", s.t_s}, {"cpu_s", s.server_cpu_s}, {"rss_kib", s.rss_kib}});
    j["server"] = {{"pid", o.server_pid},
                   {"cpu_s", r.server_cpu_s},
                   {"cores", r.elapsed_s > 0 ? r.server_cpu_s / r.elapsed_s : 0.0},
                   {"cpu_us_per_item",
                    r.items > 0 ? r.server_cpu_s * 1e6 / static_cast<double>(r.items) : 0.0},
                   {"rss_kib_first", r.server_rss_kib_first},
                   {"rss_kib_last", r.server_rss_kib_last},
                   {"rss_kib_max", r.server_rss_kib_max},
                   {"vmhwm_kib", r.server_vmhwm_kib},
                   {"series", series}};
  }
  j["items_per_second"] = r.items_per_second;
  json hist = json::array();
  for (const auto& [ub, n] : r.latency_histogram) hist.push_back({{"le_ms", ub}, {"items", n}});
  j["latency_histogram"] = hist;
  j["notes"] = r.stream_errors;
  return j.dump(2) + "\n";
}

std::string ReportText(const Report& r) {
  const Options& o = r.options;
  std::string s;
  absl::StrAppendFormat(
      &s, "rewrap-load: %s, key %s (%s), %s to %s %d-bit device %s\n", r.target, o.key_name,
      v1::Padding_Name(o.padding), v1::OutputFormat_Name(o.format), DeviceKindName(o.device_kind),
      o.device_bits, o.recipient == RecipientKind::kCertificate ? "certificates" : "public keys");
  if (o.rate > 0) {
    absl::StrAppendFormat(&s, "open loop: target %.0f items/s, batch %u, %u streams\n", o.rate,
                          o.batch, o.streams);
  } else {
    absl::StrAppendFormat(&s, "closed loop: batch %u, %u streams x %u batches in flight\n", o.batch,
                          o.streams, o.depth);
  }
  absl::StrAppendFormat(&s, "prepared in %.1f s; ran %.2f s\n", r.prepare_s, r.elapsed_s);
  absl::StrAppendFormat(&s, "items    %llu (%llu ok)   %.1f items/s\n",
                        static_cast<unsigned long long>(r.items),
                        static_cast<unsigned long long>(r.ok_items), r.items_per_s);
  absl::StrAppendFormat(&s, "batches  %llu   %.1f batches/s\n",
                        static_cast<unsigned long long>(r.batches), r.batches_per_s);
  s += LatRow("item", r.item_latency);
  s += LatRow("batch", r.batch_latency);
  absl::StrAppendFormat(&s, "verified %llu outputs with the device keys; mismatches %llu\n",
                        static_cast<unsigned long long>(r.verified),
                        static_cast<unsigned long long>(r.mismatches));
  if (r.errors.empty()) {
    s += "errors   none\n";
  } else {
    s += "errors  ";
    for (const auto& [k, v] : r.errors) absl::StrAppend(&s, " ", k, "=", v);
    s += "\n";
  }
  if (!r.paths.empty()) {
    s += "paths   ";
    for (const auto& [k, v] : r.paths) absl::StrAppend(&s, " ", k, "=", v);
    s += "\n";
  }
  if (o.rate > 0) {
    absl::StrAppendFormat(
        &s,
        "open loop: scheduled %llu, skipped %llu (too many in flight), max send lag %.1f ms: %s\n",
        static_cast<unsigned long long>(r.scheduled_items),
        static_cast<unsigned long long>(r.skipped_items), r.max_send_lag_ms,
        r.behind ? "BEHIND (the service did not keep up with the rate)" : "kept up");
  }
  absl::StrAppendFormat(&s, "client CPU %.2f s (%.2f cores)\n", r.client_cpu_s,
                        r.elapsed_s > 0 ? r.client_cpu_s / r.elapsed_s : 0.0);
  if (r.server_cpu_s >= 0) {
    absl::StrAppendFormat(&s,
                          "server CPU %.2f s (%.2f cores, %.0f us/item); RSS first %.1f MiB, max "
                          "%.1f MiB, last %.1f MiB, VmHWM %.1f MiB\n",
                          r.server_cpu_s, r.elapsed_s > 0 ? r.server_cpu_s / r.elapsed_s : 0.0,
                          r.items > 0 ? r.server_cpu_s * 1e6 / static_cast<double>(r.items) : 0.0,
                          r.server_rss_kib_first / 1024.0, r.server_rss_kib_max / 1024.0,
                          r.server_rss_kib_last / 1024.0, r.server_vmhwm_kib / 1024.0);
  }
  for (const auto& n : r.stream_errors) absl::StrAppend(&s, "note: ", n, "\n");
  return s;
}

std::string ReportHtml(const Report& r) {
  std::string h =
      "<!DOCTYPE html><html><head><meta charset='utf-8'><title>rewrap-load report</title><style>"
      "body{font-family:sans-serif;margin:24px;max-width:820px}table{border-collapse:collapse}"
      "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}"
      "td.l,th.l{text-align:left}pre{background:#f6f8fa;padding:8px;font-size:12px}"
      "</style></head><body><h1>rewrap-load report</h1>";
  absl::StrAppend(&h, "<pre>", Esc(ReportText(r)), "</pre>");
  h += "<h2>Latency</h2><table><tr><th "
       "class='l'></th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>mean</"
       "th></tr>";
  for (const auto& [name, s] :
       {std::pair<const char*, const LatencySummary&>{"per item (ms)", r.item_latency},
        std::pair<const char*, const LatencySummary&>{"per batch (ms)", r.batch_latency}}) {
    absl::StrAppendFormat(&h,
                          "<tr><td "
                          "class='l'>%s</td><td>%.2f</td><td>%.2f</td><td>%.2f</td><td>%.2f</"
                          "td><td>%.2f</td><td>%.2f</td></tr>",
                          name, s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms, s.mean_ms);
  }
  h += "</table>";
  absl::StrAppend(&h, "<h2>Throughput over time</h2>", ThroughputSvg(r));
  absl::StrAppend(&h, "<h2>Latency distribution</h2>", LatencySvg(r));
  if (!r.proc_series.empty()) absl::StrAppend(&h, "<h2>rewrapd resident memory</h2>", RssSvg(r));
  h += "</body></html>\n";
  return h;
}

}  // namespace hsmrewrap::load
