// rewrap-connector: streams JSON Lines rewrap requests through rewrapd's RewrapStream
// (one or several replicas) and writes one JSON Lines result per request, in input order.
//
// Shape: one reader (input -> parsed items, bounded by a window), N stream workers (each
// owns one RewrapStream at a time, up to `inflight` batches on it, a reader thread for its
// responses), and an in-order writer. Failed streams and retryable item errors put the
// items back on a queue with exponential backoff and jitter; another stream (round robin:
// another replica) takes them. Every input line gets exactly one output line.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "hsmrewrap/v1/rewrap.pb.h"

namespace hsmrewrap::connector {

namespace v1 = ::hsmrewrap::v1;

struct Options {
  size_t batch = 100;      // items per RewrapRequest (the service takes at most 1000)
  size_t streams = 4;      // concurrent RewrapStreams
  size_t inflight = 4;     // batches in flight per stream (the service reads up to 8)
  size_t window = 0;       // input lines held at once; 0 = batch * streams * inflight * 2
  double deadline_s = 30;  // a batch not answered within this is DEADLINE_EXCEEDED
  int max_attempts = 8;    // per item, first try included
  std::chrono::milliseconds backoff_base{100};
  std::chrono::milliseconds backoff_max{5000};
  bool progress = false;  // print a progress line on stderr (a TTY) every second
  v1::ContentCipher default_cipher = v1::AES_256_CBC;
  // Rotation (--reseal --to KEY): input lines are userPFXCertificate records; output the
  // same records sealed to `reseal_to` with `reseal_padding`.
  bool reseal = false;
  std::string reseal_to;
  v1::Padding reseal_padding = v1::OAEP_SHA512;
};

// --- Name mapping (case-insensitive; '-' and '_' are ignored) -----------------------------

// Graph userPfxPaddingScheme names: oaepSha256, oaepSha384, oaepSha512, oaepSha1, pkcs1;
// "none" (and 0) means oaepSha512 as Intune's module does; the Graph integers 0..5 too.
absl::StatusOr<v1::Padding> ParsePaddingScheme(const nlohmann::json& value);
// The Graph (camelCase) name of a padding, e.g. "oaepSha512".
std::string PaddingSchemeName(v1::Padding p);
// cms (default), cmsPkcs1, rsaOaepSha256, rsaOaepSha1, rsaOaepSha384, rsaOaepSha512,
// rsaPkcs1, apple; the proto names (CMS_ENVELOPED, APPLE_ENCRYPTED_PAYLOAD, ...) too.
absl::StatusOr<v1::OutputFormat> ParseFormat(const std::string& name);
// aes256 (default), aes128, 3des; also aes-256-cbc, AES_128_CBC, des-ede3-cbc, des3.
absl::StatusOr<v1::ContentCipher> ParseContentCipher(const std::string& name);

// One request line -> item (its id is set by the caller). `id` receives the caller's id
// (a string; numbers are printed) when the line has one.
absl::StatusOr<v1::RewrapItem> ParseRequest(const nlohmann::json& line, const Options& options);
// One userPFXCertificate record -> the item that re-seals its password.
absl::StatusOr<v1::RewrapItem> ParseResealRecord(const nlohmann::ordered_json& record,
                                                 const Options& options);

struct Summary {
  uint64_t total = 0, done = 0, failed = 0;
  uint64_t item_retries = 0;     // items sent again after a retryable item error
  uint64_t stream_failures = 0;  // streams that broke (their in-flight items were sent again)
  uint64_t resent = 0;           // items sent again because their stream broke
  std::map<std::string, uint64_t> failed_by_code;
  double seconds = 0;
};

// Runs the whole job. `errors`, when not null, receives failed results instead of `out`.
// Returns the summary; the status is not OK only when the job could not run (bad input
// stream and the like), never because items failed.
// `channels`: one per replica (streams are spread over them and move to the next one
// when they fail).
absl::StatusOr<Summary> Run(const Options& options,
                            const std::vector<std::shared_ptr<grpc::Channel>>& channels,
                            std::istream& in, std::ostream& out, std::ostream* errors);

std::string FormatSummary(const Summary& s);

}  // namespace hsmrewrap::connector
