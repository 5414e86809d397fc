// What running token calls on the supervisor's CallRunner costs (issue 14): the same work
// called directly on the caller's thread (the baseline) and through CallRunner::Run, side by
// side in one run, from 1..N caller threads. `--work-us` is the time one call spends "in the
// token" (a sleep, like a remote token, or --spin for a CPU-bound one such as SoftHSM2's
// ~0.5 ms RSA-2048 decryption). Prints calls/s and the added cost per call.
//   ./build/bench/call-runner/call-runner-bench --seconds 3 --threads 4 --work-us 500 --spin
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "hsm/call_runner.h"

namespace {

using Clock = std::chrono::steady_clock;

void Work(int us, bool spin) {
  if (us <= 0) return;
  if (!spin) {
    std::this_thread::sleep_for(std::chrono::microseconds(us));
    return;
  }
  const auto end = Clock::now() + std::chrono::microseconds(us);
  volatile uint64_t x = 0;
  while (Clock::now() < end) x = x + 1;
}

// Calls per second over `seconds` from `threads` callers running `call`.
template <typename F>
double Measure(unsigned threads, double seconds, F call) {
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> done{0};
  std::vector<std::thread> ts;
  for (unsigned t = 0; t < threads; ++t) {
    ts.emplace_back([&] {
      uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        call();
        ++n;
      }
      done += n;
    });
  }
  const auto t0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : ts) t.join();
  return static_cast<double>(done.load()) /
         std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CallRunner overhead: direct calls vs calls on the runner's threads"};
  double seconds = 3;
  unsigned max_threads = 4;
  int work_us = 500;
  bool spin = false;
  app.add_option("--seconds", seconds, "seconds per measurement (default 3)");
  app.add_option("--threads", max_threads, "callers: 1, 2, 4 ... up to this (default 4)");
  app.add_option("--work-us", work_us, "microseconds one call spends in the token (default 500)");
  app.add_flag("--spin", spin,
               "spend them on the CPU (a software token) instead of sleeping (a remote one)");
  CLI11_PARSE(app, argc, argv);

  hsmrewrap::hsm::CallRunner runner;
  auto failed = [](absl::Status s) -> absl::StatusOr<int> { return s; };
  std::printf("work per call: %d us (%s)\n", work_us, spin ? "CPU" : "sleep");
  std::printf("%-8s %14s %14s %8s %16s\n", "callers", "direct/s", "runner/s", "ratio",
              "added us/call");
  for (unsigned t = 1; t <= max_threads; t *= 2) {
    const double direct = Measure(t, seconds, [&] { Work(work_us, spin); });
    const double run = Measure(t, seconds, [&] {
      (void)runner.Run<absl::StatusOr<int>>(
          [&]() -> absl::StatusOr<int> {
            Work(work_us, spin);
            return 0;
          },
          1, failed);
    });
    // Per caller: 1/run - 1/direct seconds per call.
    const double added_us = (static_cast<double>(t) / run - static_cast<double>(t) / direct) * 1e6;
    std::printf("%-8u %14.0f %14.0f %8.3f %16.1f\n", t, direct, run, run / direct, added_us);
  }
  return 0;
}
