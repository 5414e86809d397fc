// Known-answer self-test per enabled key, the way Intune's on-prem validation kit proves
// that the connector can use its key: seal a random value to the key, rewrap it through the
// engine (the real token path) to a throw-away device key, decrypt that on the host and
// compare. Before that, the key's attributes are read from the token again and checked as
// at load (KeyBackend::RecheckKey): a key whose attributes changed while it was served is
// refused from then on, and every later self-test reports it (by name, with the reason)
// beside the enabled keys. Runs periodically on its own thread and on demand (Keys.SelfTest).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "service/engine.h"
#include "service/metrics.h"

namespace hsmrewrap::service {

struct SelfTestResult {
  std::string key;
  std::string token;  // the token it ran on (one result per key and token that serves it)
  bool ok = false;
  std::string message;  // why it failed; empty when ok
  v1::Path path = v1::PATH_UNSPECIFIED;
  int64_t time_unix = 0;
  double seconds = 0;
};

class SelfTester final {
 public:
  // interval 0 = only on demand.
  SelfTester(RewrapEngine* engine, Metrics* metrics, std::chrono::seconds interval);
  ~SelfTester();
  SelfTester(const SelfTester&) = delete;  // owns a thread
  SelfTester& operator=(const SelfTester&) = delete;

  // Tests `key` (or every enabled key and every key a self-test refused, when empty) now and
  // records the results.
  std::vector<SelfTestResult> RunNow(const std::string& key = "");
  // The last result per key.
  std::vector<SelfTestResult> Last() const;
  // Keys whose attribute re-check refused them (and not passed since), with the reason.
  std::map<std::string, std::string> Refused() const;

 private:
  // Every token that holds `key` (a key no token serves: one failed result).
  std::vector<SelfTestResult> TestKey(const std::string& key);
  SelfTestResult TestKeyOn(const std::string& key, std::optional<size_t> token);
  void Loop();

  RewrapEngine* engine_;
  Metrics* metrics_;
  const std::chrono::seconds interval_;
  std::string device_private_pem_;  // throw-away device key for this process
  std::string device_spki_der_;
  mutable absl::Mutex mu_;
  std::map<std::pair<std::string, std::string>, SelfTestResult> last_
      ABSL_GUARDED_BY(mu_);  // by (key, token)
  std::map<std::string, std::string> refused_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace hsmrewrap::service
