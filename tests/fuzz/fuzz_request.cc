// libFuzzer target: request validation and the whole per-item path of the engine (the
// same RewrapEngine rewrapd runs) over an in-memory key backend whose decryption is real.
// Input: a serialized hsmrewrap.v1.RewrapRequest. Checked for every item: one result with
// the item's id; an error and no output, or an output and a path; every decryption
// failure carries the one message.
//
// The service key: $HSMREWRAP_FUZZ_KEY (a PEM private key; scripts/fuzz.sh points it at
// the Wycheproof RSA-2048 key the seeds were sealed to), else a fresh RSA-2048 key.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>

#include "absl/synchronization/notification.h"
#include "service/engine.h"
#include "tests/unit/service/fake_backend.h"

namespace {

namespace v1 = hsmrewrap::v1;
using hsmrewrap::crypto::RsaPadding;

void Check(bool condition) {
  if (!condition) std::abort();
}

hsmrewrap::service::RewrapEngine* Engine() {
  static hsmrewrap::service::RewrapEngine* engine = [] {
    auto backend = std::make_shared<hsmrewrap::testing::FakeBackend>();
    hsmrewrap::hsm::KeyCapabilities caps;
    caps.decrypt = {RsaPadding::kOaepSha1, RsaPadding::kOaepSha256, RsaPadding::kPkcs1};
    caps.unwrap = {RsaPadding::kOaepSha1, RsaPadding::kPkcs1};
    caps.raw_rsa = true;
    std::string pem;
    if (const char* path = std::getenv("HSMREWRAP_FUZZ_KEY")) {
      std::ifstream in(path);
      std::stringstream ss;
      ss << in.rdbuf();
      pem = ss.str();
    }
    if (pem.empty()) pem = hsmrewrap::testing::MakeRsaPrivateKeyPem(2048);
    backend->AddKeyPem("default", pem, 2048, caps, /*allow_pkcs1=*/true);
    backend->AddKeyPem("oaep-only", pem, 2048, caps, /*allow_pkcs1=*/false);
    backend->AddKeyPem("disabled", pem, 2048, caps, /*allow_pkcs1=*/true);
    (void)backend->SetEnabled("disabled", false);
    backend->SetWrapPaddings({RsaPadding::kOaepSha1, RsaPadding::kPkcs1});
    hsmrewrap::service::RewrapEngine::Options options;
    options.workers = 1;
    options.allow_host_unpadding = true;
    options.limits.max_batch_items = 8;
    return new hsmrewrap::service::RewrapEngine(backend, options);
  }();
  return engine;
}

void CheckResult(const v1::RewrapItem& item, const v1::RewrapResult& r) {
  Check(r.id() == item.id());
  if (r.has_error()) {
    Check(r.error().code() != v1::ItemError::CODE_UNSPECIFIED);
    Check(r.ciphertext().empty());
    if (r.error().code() == v1::ItemError::DECRYPT_FAILED) {
      Check(r.error().message() == hsmrewrap::hsm::kDecryptFailedText);
    }
  } else {
    Check(!r.ciphertext().empty());
    Check(r.path() != v1::PATH_UNSPECIFIED);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto request = std::make_shared<v1::RewrapRequest>();
  if (!request->ParseFromArray(data, static_cast<int>(size))) return 0;
  auto* engine = Engine();

  // Item by item, as a worker runs them.
  for (const auto& item : request->items()) CheckResult(item, engine->ProcessItem(item));

  // And as a batch: batch-level limits, then one result per item, in order.
  absl::Notification done;
  v1::RewrapResponse response;
  absl::Status s = engine->Submit(request, [&](v1::RewrapResponse r) {
    response = std::move(r);
    done.Notify();
  });
  if (!s.ok()) {
    Check(request->items_size() == 0 || request->items_size() > 8);
    return 0;
  }
  done.WaitForNotification();
  Check(response.results_size() == request->items_size());
  for (int i = 0; i < request->items_size(); ++i)
    CheckResult(request->items(i), response.results(i));
  return 0;
}
