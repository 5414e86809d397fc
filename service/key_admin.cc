#include "service/key_admin.h"

#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "proto/conversions.h"
#include "service/item_result.h"
#include "hsm/key_policy.h"

namespace hsmrewrap::service {

KeyDescription KeyAdmin::Describe(const std::vector<hsm::TokenSet::Holding>& holdings) {
  KeyDescription d;
  hsm::TokenSet& set = engine_->tokens();
  bool described = false;
  std::vector<std::string> missing;
  for (const auto& h : holdings) {
    const auto& member = set.member(h.member);
    v1::KeyTokenInfo t;
    t.set_name(member.name);
    t.set_token_label(member.backend->TokenLabel());
    t.set_up(member.backend->Healthy());
    if (!h.info.ok()) {
      const auto code = h.info.status().code();
      t.set_state(code == absl::StatusCode::kNotFound           ? v1::KeyTokenInfo::ABSENT
                  : code == absl::StatusCode::kFailedPrecondition ? v1::KeyTokenInfo::REFUSED
                                                                  : v1::KeyTokenInfo::UNAVAILABLE);
      if (code != absl::StatusCode::kNotFound) t.set_message(std::string(h.info.status().message()));
      if (code != absl::StatusCode::kUnavailable) missing.push_back(member.name);
      d.tokens.push_back(std::move(t));
      continue;
    }
    const hsm::KeyInfo& info = *h.info;
    t.set_state(v1::KeyTokenInfo::SERVING);
    t.set_enabled(info.enabled);
    t.set_spki_sha256(hsm::SpkiSha256Hex(info.spki_der));
    const bool implicit = info.allow_pkcs1 && info.caps.pkcs1_implicit_rejection;
    t.set_pkcs1_implicit_rejection(implicit);
    auto paths = engine_->PathsFor(info, h.member);
    for (const auto& [padding, ps] : paths) {
      auto* p = t.add_paths();
      p->set_padding(proto_crypto::PaddingToProto(padding));
      for (hsm::Path x : ps) p->add_paths(PathToProto(x));
    }
    auto outputs = engine_->InTokenOutputs(info, h.member);
    for (const auto& o : outputs) *t.add_in_token_outputs() = o;
    if (!described) {  // the key as the first token that serves it sees it
      described = true;
      d.info = info;
      d.pkcs1_implicit_rejection = implicit;
      d.spki_sha256 = t.spki_sha256();
      d.paths = std::move(paths);
      d.in_token_outputs = std::move(outputs);
    }
    d.tokens.push_back(std::move(t));
  }
  if (!missing.empty() && described) {
    d.clone_advice = absl::StrCat(
        "not on token(s) ", absl::StrJoin(missing, ", "),
        ": a key made in a token stays there; clone it with the HSM vendor's tools (backup/"
        "restore or key replication to the same key label), or, for a key born in software, "
        "ImportKey the same PKCS#8/PFX/CNG blob with tokens naming them "
        "(docs/operator-guide.md, \"Several HSMs\")");
  }
  return d;
}

absl::StatusOr<KeyDescription> KeyAdmin::Publish(const hsm::KeyInfo& written) {
  auto listing = engine_->tokens().ListByToken();
  auto it = listing.keys.find(written.name);
  if (it == listing.keys.end()) {  // not listed any more (a token went away meanwhile)
    std::vector<hsm::TokenSet::Holding> one{{0, written}};
    return Describe(one);
  }
  return Describe(it->second);
}

absl::StatusOr<KeyDescription> KeyAdmin::CreateKey(const std::string& name, uint32_t bits,
                                                   bool allow_pkcs1, const std::string& token) {
  if (auto st = hsm::CheckNewKeyName(name); !st.ok()) return st;
  if (bits == 0) bits = 2048;
  if (bits != 2048 && bits != 3072 && bits != 4096) {
    return absl::InvalidArgumentError(absl::StrCat("bits must be 2048, 3072 or 4096, not ", bits));
  }
  hsm::TokenSet& set = engine_->tokens();
  absl::StatusOr<hsm::KeyInfo> info;
  if (token.empty()) {
    info = set.CreateKey(name, static_cast<int>(bits), allow_pkcs1);
  } else {
    auto i = set.IndexOf(token);
    if (!i) return absl::InvalidArgumentError(absl::StrCat("token '", token, "' is not a token of this rewrapd"));
    info = set.CreateKeyOn(*i, name, static_cast<int>(bits), allow_pkcs1);
  }
  if (!info.ok()) return info.status();
  spdlog::info("created key '{}' ({} bits, allow_pkcs1={})", name, bits, allow_pkcs1);
  return Publish(*info);
}

absl::StatusOr<KeyDescription> KeyAdmin::ImportKey(const std::string& name, const ImportedKey& key,
                                                   bool allow_pkcs1,
                                                   const std::vector<std::string>& tokens) {
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
  auto info = engine_->tokens().ImportKeyOn(tokens, name, *parts, allow_pkcs1);
  if (!info.ok()) return info.status();
  spdlog::info("imported key '{}' ({} bits, allow_pkcs1={})", name, parts->bits, allow_pkcs1);
  return Publish(*info);
}

absl::StatusOr<KeyDescription> KeyAdmin::SetEnabled(const std::string& name, bool enabled) {
  auto info = engine_->backend().SetEnabled(name, enabled);
  if (!info.ok()) return info.status();
  spdlog::info("key '{}' {}", name, enabled ? "enabled" : "disabled");
  return Publish(*info);
}

absl::StatusOr<std::vector<KeyDescription>> KeyAdmin::ListKeys(const KeyFilter& visible) {
  auto listing = engine_->tokens().ListByToken();
  if (listing.keys.empty() && !listing.unavailable.ok()) return listing.unavailable;
  std::vector<KeyDescription> out;
  for (const auto& [name, holdings] : listing.keys) {
    if (visible && !visible(name)) continue;
    KeyDescription d = Describe(holdings);
    if (d.info.name.empty()) d.info.name = name;  // held by no token that serves it
    out.push_back(std::move(d));
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
