#include "clients/pfx-import/state.h"

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace hsmrewrap::pfx_import {

std::string StateFile::Key(const std::string& upn, const std::string& thumbprint,
                           const std::string& target) {
  return absl::StrCat(absl::AsciiStrToLower(upn), "\n", absl::AsciiStrToLower(thumbprint), "\n",
                      target);
}

absl::StatusOr<std::unique_ptr<StateFile>> StateFile::Open(const std::string& path) {
  auto s = std::make_unique<StateFile>();
  s->path_ = path;
  {
    std::ifstream in(path);
    std::string line;
    while (in && std::getline(in, line)) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_object() || !j.contains("upn") || !j.contains("thumbprint") ||
          !j.contains("target") || !j["upn"].is_string() || !j["thumbprint"].is_string() ||
          !j["target"].is_string()) {
        continue;
      }
      s->done_.insert(Key(j["upn"].get<std::string>(), j["thumbprint"].get<std::string>(),
                          j["target"].get<std::string>()));
    }
  }
  s->out_.open(path, std::ios::app);
  if (!s->out_) return absl::PermissionDeniedError(absl::StrCat("cannot write state file ", path));
  return s;
}

bool StateFile::Done(const std::string& upn, const std::string& thumbprint,
                     const std::string& target) const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_.count(Key(upn, thumbprint, target)) != 0;
}

bool StateFile::Claim(const std::string& upn, const std::string& thumbprint,
                      const std::string& target) {
  const std::string k = Key(upn, thumbprint, target);
  std::lock_guard<std::mutex> lock(mu_);
  return done_.count(k) == 0 && claimed_.insert(k).second;
}

void StateFile::Release(const std::string& upn, const std::string& thumbprint,
                        const std::string& target) {
  std::lock_guard<std::mutex> lock(mu_);
  claimed_.erase(Key(upn, thumbprint, target));
}

absl::Status StateFile::Record(const std::string& upn, const std::string& thumbprint,
                               const std::string& target) {
  nlohmann::json j{{"upn", upn},
                   {"thumbprint", thumbprint},
                   {"target", target},
                   {"time", absl::FormatTime(absl::RFC3339_sec, absl::Now(), absl::UTCTimeZone())}};
  std::lock_guard<std::mutex> lock(mu_);
  out_ << j.dump() << "\n";
  out_.flush();
  if (!out_) return absl::DataLossError(absl::StrCat("cannot append to state file ", path_));
  const std::string k = Key(upn, thumbprint, target);
  done_.insert(k);
  claimed_.erase(k);
  return absl::OkStatus();
}

}  // namespace hsmrewrap::pfx_import
