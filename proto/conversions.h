// The API's enums (hsmrewrap.v1) in crypto/ terms and back: paddings, output formats, content
// ciphers, CMS key transport, and the Intune paddingScheme names. Linked by rewrapd and by
// the clients alike (proto and crypto only: no hsm, no gRPC server code).
#pragma once

#include "crypto/cms.h"
#include "crypto/rsa.h"
#include "hsmrewrap/v1/rewrap.pb.h"

namespace hsmrewrap::proto_crypto {

namespace v1 = ::hsmrewrap::v1;

// False for PADDING_UNSPECIFIED and values the API does not define (*out untouched).
bool PaddingFromProto(v1::Padding p, crypto::RsaPadding* out);
v1::Padding PaddingToProto(crypto::RsaPadding p);

// CMS_ENVELOPED or CMS_ENVELOPED_PKCS1.
bool IsCmsFormat(v1::OutputFormat f);
// Bare formats carry the RSA-encrypted secret itself (no CMS, no Apple payload). A value the
// API does not define counts as bare (callers check OutputFormat_IsValid first).
bool IsBareFormat(v1::OutputFormat f);
// The padding of a bare RSA output format; RSA-OAEP-SHA256 for any other format.
crypto::RsaPadding BarePadding(v1::OutputFormat f);
// The bare RSA output format of a padding; `if_unknown` for PADDING_UNSPECIFIED and values
// the API does not define.
v1::OutputFormat BareFormatFor(v1::Padding p, v1::OutputFormat if_unknown);

// AES-256-CBC (the API's default) for values the API does not define.
crypto::CmsContentCipher ContentCipherFromProto(v1::ContentCipher c);
// The key transport of a CMS-based format: PKCS#1 v1.5 for CMS_ENVELOPED_PKCS1 and
// APPLE_ENCRYPTED_PAYLOAD (as MDM servers' envelopes for iOS/macOS), otherwise OAEP-SHA256.
crypto::CmsKeyTransport KeyTransportFor(v1::OutputFormat f);

// Intune's paddingScheme name, camelCase: oaepSha256, oaepSha384, oaepSha512, oaepSha1, pkcs1.
const char* PaddingSchemeName(crypto::RsaPadding p);

}  // namespace hsmrewrap::proto_crypto
