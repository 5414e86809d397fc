#include "hsm/backend.h"

#include <openssl/ec.h>

#include "absl/strings/str_cat.h"

namespace hsmrewrap::hsm {

const char* PathName(Path p) {
  switch (p) {
    case Path::kInToken:
      return "IN_TOKEN";
    case Path::kTokenDecrypt:
      return "TOKEN_DECRYPT";
    case Path::kHostUnpadding:
      return "HOST_UNPADDING";
  }
  return "UNKNOWN";
}

const char* OutcomeName(Outcome o) {
  switch (o) {
    case Outcome::kOk:
      return "ok";
    case Outcome::kDecryptFailed:
      return "decrypt_failed";
    case Outcome::kRetryable:
      return "retryable";
    case Outcome::kRefused:
      return "refused";
  }
  return "unknown";
}

const char* CmsKeyTransportName(crypto::CmsKeyTransport t) {
  switch (t) {
    case crypto::CmsKeyTransport::kRsaOaepSha256:
      return "OAEP-SHA256";
    case crypto::CmsKeyTransport::kRsaPkcs1:
      return "PKCS1";
  }
  return "UNKNOWN";
}

const char* CmsContentCipherName(crypto::CmsContentCipher c) {
  switch (c) {
    case crypto::CmsContentCipher::kAes256Cbc:
      return "AES-256-CBC";
    case crypto::CmsContentCipher::kAes128Cbc:
      return "AES-128-CBC";
    case crypto::CmsContentCipher::kDes3Cbc:
      return "DES-EDE3-CBC";
  }
  return "UNKNOWN";
}

std::string CmsFormSetName(const CmsFormSet& s) {
  std::string out = "{";
  for (const auto& [t, c] : s) {
    if (out.size() > 1) out += ",";
    absl::StrAppend(&out, CmsKeyTransportName(t), "/", CmsContentCipherName(c));
  }
  return out + "}";
}

std::string EcCmsFormSetName(const EcCmsFormSet& s) {
  std::string out = "{";
  for (const auto& [curve, c] : s) {
    if (out.size() > 1) out += ",";
    const char* name = EC_curve_nid2nist(curve);
    absl::StrAppend(&out, name ? name : "?", "/", CmsContentCipherName(c));
  }
  return out + "}";
}

OpResult<crypto::CmsTokenParts> KeyBackend::EnvelopeInToken(const KeyRefPtr&, RsaPadding,
                                                               absl::Span<const uint8_t>,
                                                               const crypto::PublicKey&,
                                                               const crypto::CmsOptions&) {
  return OpResult<crypto::CmsTokenParts>::Refused(
      absl::UnimplementedError("this backend does not build CMS in the token"));
}

Outcome OutcomeOfStatus(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kOk:
      return Outcome::kOk;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kCancelled:
      return Outcome::kRetryable;
    default:
      return Outcome::kRefused;
  }
}

absl::Status CheckKeyUse(const KeyInfo& key, RsaPadding padding) {
  if (!key.enabled) {
    return absl::FailedPreconditionError(absl::StrCat("key '", key.name, "' is disabled"));
  }
  if (padding == RsaPadding::kPkcs1 && !key.allow_pkcs1) {
    return absl::FailedPreconditionError(
        absl::StrCat("key '", key.name,
                     "' does not accept PKCS1 sealed secrets; only keys created or imported with "
                     "allow_pkcs1 do"));
  }
  return absl::OkStatus();
}

std::vector<Path> PathsFor(const KeyInfo& key, RsaPadding padding, bool can_wrap_output,
                           bool host_unpadding) {
  std::vector<Path> paths;
  if (can_wrap_output && key.caps.unwrap.count(padding)) paths.push_back(Path::kInToken);
  if (key.caps.decrypt.count(padding)) paths.push_back(Path::kTokenDecrypt);
  if (host_unpadding && key.caps.raw_rsa) paths.push_back(Path::kHostUnpadding);
  return paths;
}

absl::StatusOr<KeyInfo> KeyBackend::GetKey(const std::string& name) {
  auto ref = Resolve(name);
  if (!ref.ok()) return ref.status();
  return (*ref)->info;
}

absl::Status KeyBackend::RecheckKey(const std::string& name) { return Resolve(name).status(); }

namespace {

// Whether `path` is one `key` offers for `padding` (Unimplemented naming it if not).
absl::Status CheckPath(const KeyInfo& key, RsaPadding padding, Path path, bool can_wrap_output) {
  for (Path p : PathsFor(key, padding, can_wrap_output, /*host_unpadding=*/true)) {
    if (p == path) return absl::OkStatus();
  }
  return absl::UnimplementedError(absl::StrCat(PathName(path), " is not available for key '",
                                               key.name, "' with this padding on this token"));
}

}  // namespace

OpResult<crypto::SecretBytes> KeyBackend::Decrypt(const std::string& key_name, RsaPadding padding,
                                                  absl::Span<const uint8_t> ciphertext, Path path) {
  using R = OpResult<crypto::SecretBytes>;
  auto key = Resolve(key_name);
  if (!key.ok()) return R::FromStatus(key.status());
  if (auto s = CheckKeyUse((*key)->info, padding); !s.ok()) return R::Refused(s);
  if (path == Path::kInToken) {
    return R::Refused(absl::InvalidArgumentError("Decrypt() does not take the IN_TOKEN path"));
  }
  if (auto s = CheckPath((*key)->info, padding, path, false); !s.ok()) return R::Refused(s);
  return Decrypt(*key, padding, ciphertext, path);
}

OpResult<Bytes> KeyBackend::RewrapInToken(const std::string& key_name, RsaPadding in_padding,
                                          absl::Span<const uint8_t> ciphertext,
                                          const crypto::PublicKey& device_key,
                                          RsaPadding out_padding) {
  using R = OpResult<Bytes>;
  auto key = Resolve(key_name);
  if (!key.ok()) return R::FromStatus(key.status());
  if (auto s = CheckKeyUse((*key)->info, in_padding); !s.ok()) return R::Refused(s);
  if (!device_key.is_rsa()) {
    return R::Refused(absl::InvalidArgumentError("IN_TOKEN rewrap needs an RSA device key"));
  }
  if (auto s = CheckPath((*key)->info, in_padding, Path::kInToken,
                         WrapPaddings().count(out_padding) > 0);
      !s.ok()) {
    return R::Refused(s);
  }
  return RewrapInToken(*key, in_padding, ciphertext, device_key, out_padding);
}

}  // namespace hsmrewrap::hsm
