#include "proto/conversions.h"

namespace hsmrewrap::proto_crypto {

using crypto::RsaPadding;

namespace {

// Each RSA padding once: the API's padding, its bare output format and its Intune name.
struct PaddingRow {
  RsaPadding rsa;
  v1::Padding padding;
  v1::OutputFormat bare_format;
  const char* scheme_name;
};
constexpr PaddingRow kPaddings[] = {
    {RsaPadding::kOaepSha256, v1::OAEP_SHA256, v1::RSA_OAEP_SHA256, "oaepSha256"},
    {RsaPadding::kOaepSha384, v1::OAEP_SHA384, v1::RSA_OAEP_SHA384, "oaepSha384"},
    {RsaPadding::kOaepSha512, v1::OAEP_SHA512, v1::RSA_OAEP_SHA512, "oaepSha512"},
    {RsaPadding::kOaepSha1, v1::OAEP_SHA1, v1::RSA_OAEP_SHA1, "oaepSha1"},
    {RsaPadding::kPkcs1, v1::PKCS1, v1::RSA_PKCS1, "pkcs1"},
};

template <typename Pred>
const PaddingRow* Find(Pred pred) {
  for (const PaddingRow& row : kPaddings) {
    if (pred(row)) return &row;
  }
  return nullptr;
}

const PaddingRow* OfRsa(RsaPadding p) {
  return Find([p](const PaddingRow& row) { return row.rsa == p; });
}
const PaddingRow* OfProto(v1::Padding p) {
  return Find([p](const PaddingRow& row) { return row.padding == p; });
}

}  // namespace

bool PaddingFromProto(v1::Padding p, RsaPadding* out) {
  const PaddingRow* row = OfProto(p);
  if (row == nullptr) return false;
  *out = row->rsa;
  return true;
}

v1::Padding PaddingToProto(RsaPadding p) {
  const PaddingRow* row = OfRsa(p);
  return row != nullptr ? row->padding : v1::PADDING_UNSPECIFIED;
}

bool IsCmsFormat(v1::OutputFormat f) {
  return f == v1::CMS_ENVELOPED || f == v1::CMS_ENVELOPED_PKCS1;
}

bool IsBareFormat(v1::OutputFormat f) {
  return !IsCmsFormat(f) && f != v1::APPLE_ENCRYPTED_PAYLOAD;
}

RsaPadding BarePadding(v1::OutputFormat f) {
  const PaddingRow* row = Find([f](const PaddingRow& r) { return r.bare_format == f; });
  return row != nullptr ? row->rsa : RsaPadding::kOaepSha256;
}

v1::OutputFormat BareFormatFor(v1::Padding p, v1::OutputFormat if_unknown) {
  const PaddingRow* row = OfProto(p);
  return row != nullptr ? row->bare_format : if_unknown;
}

crypto::CmsContentCipher ContentCipherFromProto(v1::ContentCipher c) {
  switch (c) {
    case v1::AES_128_CBC:
      return crypto::CmsContentCipher::kAes128Cbc;
    case v1::DES_EDE3_CBC:
      return crypto::CmsContentCipher::kDes3Cbc;
    case v1::AES_256_CBC:
    default:
      return crypto::CmsContentCipher::kAes256Cbc;
  }
}

crypto::CmsKeyTransport KeyTransportFor(v1::OutputFormat f) {
  return f == v1::CMS_ENVELOPED_PKCS1 || f == v1::APPLE_ENCRYPTED_PAYLOAD
             ? crypto::CmsKeyTransport::kRsaPkcs1
             : crypto::CmsKeyTransport::kRsaOaepSha256;
}

const char* PaddingSchemeName(RsaPadding p) {
  const PaddingRow* row = OfRsa(p);
  return row != nullptr ? row->scheme_name : "";
}

}  // namespace hsmrewrap::proto_crypto
