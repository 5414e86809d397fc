#include "service/key_admin.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "hsm/key_policy.h"

namespace hsmrewrap::service {

KeyDescription KeyAdmin::Describe(const hsm::KeyInfo& info) {
  KeyDescription d;
  d.info = info;
  d.pkcs1_implicit_rejection = info.allow_pkcs1 && info.caps.pkcs1_implicit_rejection;
  auto pub = crypto::PublicKey::FromSpki(info.spki_der);
  if (pub.ok()) d.spki_sha256 = pub->Sha256Hex();
  d.paths = engine_->PathsFor(info);
  d.in_token_outputs = engine_->InTokenOutputs(info);
  return d;
}

absl::StatusOr<KeyDescription> KeyAdmin::Publish(hsm::KeyInfo info) { return Describe(info); }

absl::StatusOr<KeyDescription> KeyAdmin::CreateKey(const std::string& name, uint32_t bits,
                                                   bool allow_pkcs1) {
  if (auto st = hsm::CheckNewKeyName(name); !st.ok()) return st;
  if (bits == 0) bits = 2048;
  if (bits != 2048 && bits != 3072 && bits != 4096) {
    return absl::InvalidArgumentError(absl::StrCat("bits must be 2048, 3072 or 4096, not ", bits));
  }
  auto info = engine_->backend().CreateKey(name, static_cast<int>(bits), allow_pkcs1);
  if (!info.ok()) return info.status();
  spdlog::info("created key '{}' ({} bits, allow_pkcs1={})", name, bits, allow_pkcs1);
  return Publish(*std::move(info));
}

absl::StatusOr<KeyDescription> KeyAdmin::ImportKey(const std::string& name, const ImportedKey& key,
                                                   bool allow_pkcs1) {
  if (auto st = hsm::CheckNewKeyName(name); !st.ok()) return st;
  absl::StatusOr<crypto::RsaPrivateKeyParts> parts;
  switch (key.form) {
    case ImportedKey::Form::kPkcs8:
      parts = crypto::ParseRsaPrivateKey(crypto::Reveal(key.key));
      break;
    case ImportedKey::Form::kPfx:
      parts = crypto::ParseRsaPrivateKeyFromPfx(key.pfx, key.password);
      break;
    case ImportedKey::Form::kCngFullPrivateBlob:
      parts = crypto::ParseCngFullPrivateBlob(crypto::Reveal(key.key));
      break;
    case ImportedKey::Form::kNone:
      return absl::InvalidArgumentError(
          "no key given: set pkcs8, pfx or cng_rsa_full_private_blob");
  }
  if (!parts.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the key does not parse: ", parts.status().message()));
  }
  if (parts->bits < 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("the key has ", parts->bits, " bits; at least 1024 are required"));
  }
  auto info = engine_->backend().ImportKey(name, *parts, allow_pkcs1);
  if (!info.ok()) return info.status();
  spdlog::info("imported key '{}' ({} bits, allow_pkcs1={})", name, parts->bits, allow_pkcs1);
  return Publish(*std::move(info));
}

absl::StatusOr<KeyDescription> KeyAdmin::SetEnabled(const std::string& name, bool enabled) {
  auto info = engine_->backend().SetEnabled(name, enabled);
  if (!info.ok()) return info.status();
  spdlog::info("key '{}' {}", name, enabled ? "enabled" : "disabled");
  return Publish(*std::move(info));
}

absl::StatusOr<std::vector<KeyDescription>> KeyAdmin::ListKeys(const KeyFilter& visible) {
  auto keys = engine_->backend().ListKeys();
  if (!keys.ok()) return keys.status();
  std::vector<KeyDescription> out;
  for (const auto& k : *keys) {
    if (!visible || visible(k.name)) out.push_back(Describe(k));
  }
  return out;
}

absl::StatusOr<crypto::PublicKey> KeyAdmin::GetPublicKey(const std::string& name) {
  auto key = engine_->backend().Resolve(name);
  if (!key.ok()) return key.status();
  return (*key)->public_key;
}

absl::StatusOr<std::vector<SelfTestResult>> KeyAdmin::SelfTest(const std::string& name,
                                                               const KeyFilter& visible) {
  if (!name.empty()) {
    // Only an unknown key is an error of the call; a refused one (unsafe attributes) is a
    // failed result that says why.
    auto key = engine_->backend().Resolve(name);
    if (!key.ok() && key.status().code() == absl::StatusCode::kNotFound) return key.status();
  }
  std::vector<SelfTestResult> out;
  for (auto& r : selftest_->RunNow(name)) {
    if (!visible || visible(r.key)) out.push_back(std::move(r));
  }
  return out;
}

}  // namespace hsmrewrap::service
