// rewrap-load: load generator and correctness checker for rewrapd.
//
// Three phases, kept apart so that the timed phase does nothing but send, receive and
// count:
//   1. Prepare(): fetches the service key (Keys.GetPublicKey), seals distinct random
//      passwords to it with OpenSSL, makes device keys and certificates, and builds every
//      RewrapRequest the run will send (immutable; reused cyclically).
//   2. Run(): closed loop (streams x depth batches outstanding) or open loop (a target
//      rate; lateness is measured against the schedule, so a slow service shows up as
//      latency and as "behind", not as a quietly lower send rate).
//   3. The Report: JSON, text and a self-contained HTML page.
// Correctness is checked while measuring: a deterministic sample of outputs (every item
// with --verify-all) is decrypted with the device private keys and compared with the
// password; a mismatch counts as an error.
#pragma once

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "crypto/keys.h"
#include "hsmrewrap/v1/rewrap.grpc.pb.h"

namespace hsmrewrap::load {

namespace v1 = ::hsmrewrap::v1;

enum class DeviceKind { kRsa, kEcP256, kEcP384 };
enum class RecipientKind { kCertificate, kPublicKey };

struct Options {
  std::string key_name = "default";
  v1::Padding padding = v1::OAEP_SHA256;
  v1::OutputFormat format = v1::CMS_ENVELOPED;
  DeviceKind device_kind = DeviceKind::kRsa;
  RecipientKind recipient = RecipientKind::kCertificate;
  int device_bits = 2048;
  unsigned devices = 16;      // distinct device keys/certificates
  unsigned passwords = 2048;  // distinct sealed passwords (rounded up to a multiple of batch)
  unsigned batch = 64;
  unsigned streams = 4;
  unsigned depth = 2;              // closed loop: batches outstanding per stream
  double rate = 0;                 // items/s; > 0 = open loop
  size_t max_outstanding = 20000;  // open loop: items in flight before sends are skipped
  double duration_s = 10;          // used when items == 0
  uint64_t items = 0;              // stop after this many items (rounded up to whole batches)
  double warmup_s = 0;             // measured but not counted
  bool verify_all = false;
  unsigned verify_every = 100;  // sample: every Nth item (1%)
  pid_t server_pid = 0;         // rewrapd's pid, for server CPU and RSS
  bool progress = true;         // live line on a terminal
  double timeout_s = 60;        // per-stream deadline slack beyond the run
};

// Device key pair plus its recipient encodings.
struct Device {
  std::shared_ptr<EVP_PKEY> key;  // private
  std::shared_ptr<X509> cert;
  std::string recipient_der;  // certificate or SPKI, per Options::recipient
};

// Everything prepared before timing.
struct Workload {
  crypto::Bytes service_spki;
  int service_bits = 0;
  std::vector<std::string> passwords;  // plaintexts, kept to verify outputs
  std::vector<Device> devices;
  // Batches; item ids are "<index into passwords>"; the device of item i is i % devices.
  std::vector<std::shared_ptr<const v1::RewrapRequest>> batches;
  double prepare_s = 0;
};

absl::StatusOr<Workload> Prepare(const Options& options, v1::Keys::Stub& keys);

// Decrypts one output with the device key and compares it with the expected password.
// Returns "" on a match, else why not.
std::string VerifyOutput(const Options& options, const Device& device, const std::string& expected,
                         const std::string& output);

struct LatencySummary {
  double p50_ms = 0, p90_ms = 0, p99_ms = 0, p999_ms = 0, max_ms = 0, mean_ms = 0;
  uint64_t count = 0;
};

struct ProcSample {
  double t_s = 0;
  double server_cpu_s = 0;  // cumulative
  uint64_t rss_kib = 0;
};

struct Report {
  Options options;
  std::string target;
  double prepare_s = 0;
  double elapsed_s = 0;
  uint64_t items = 0;  // items with a result (ok or error)
  uint64_t ok_items = 0;
  uint64_t batches = 0;
  double items_per_s = 0, batches_per_s = 0;
  LatencySummary item_latency, batch_latency;
  std::map<std::string, uint64_t> errors;  // by ItemError code / stream status / MISMATCH
  uint64_t error_items = 0;
  uint64_t mismatches = 0;
  uint64_t verified = 0;
  std::map<std::string, uint64_t> paths;  // result path -> items
  std::map<std::string, uint64_t> tokens;  // the token that ran it (RewrapResult.token) -> items
  // Open loop.
  uint64_t scheduled_items = 0, skipped_items = 0;
  double max_send_lag_ms = 0;
  bool behind = false;
  // CPU.
  double client_cpu_s = 0;
  double server_cpu_s = -1;  // -1 = unknown
  uint64_t server_rss_kib_last = 0, server_rss_kib_max = 0, server_vmhwm_kib = 0;
  uint64_t server_rss_kib_first = 0;
  std::vector<ProcSample> proc_series;     // once a second
  std::vector<uint64_t> items_per_second;  // completed items per wall-clock second
  // Latency histogram for the chart: bucket upper bounds (ms) and item counts.
  std::vector<std::pair<double, uint64_t>> latency_histogram;
  std::vector<std::string> stream_errors;  // first few non-OK stream statuses
};

// Runs the load. The channel may balance over several targets.
Report Run(const Options& options, const Workload& work, std::shared_ptr<grpc::Channel> channel);

std::string ReportJson(const Report& r);
std::string ReportText(const Report& r);
std::string ReportHtml(const Report& r);

// /proc readers (Linux). Return false when the process is gone.
bool ReadProcCpu(pid_t pid, double* cpu_s);
bool ReadProcMem(pid_t pid, uint64_t* rss_kib, uint64_t* hwm_kib);

}  // namespace hsmrewrap::load
