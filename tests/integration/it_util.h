// Helpers shared by the integration tests: service keys made over the Keys API, items,
// and checks of results against an OpenSSL device. Functions named Assert*/Make* use
// gtest ASSERTs; call them under ASSERT_NO_FATAL_FAILURE.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "tests/integration/test_crypto.h"
#include "tests/support/command.h"
#include "tests/support/files.h"
#include "tests/support/rewrapd_harness.h"
#include "tests/support/temp_dir.h"

namespace hsmrewrap::it {

namespace v1 = hsmrewrap::v1;

// The test-support library's names, as the integration and reliability tests use them.
using test::CommandResult;
using test::CurrentToken;
using test::ParseTokenFlag;
using test::ReadFileOrEmpty;
using test::RewrapdHarness;
using test::RewrapdPath;
using test::RunCommand;
using test::SetDeadline;
using test::TempDir;
using test::TokenKind;
using test::TokenName;
using test::TokenUnavailableReason;
using test::WriteFile;

// A service key as the tests see it: its name, its public key (from GetPublicKey DER) and
// its ListKeys entry.
struct ServiceKey {
  std::string name;
  Pkey pub;
  size_t modulus_len = 0;
  v1::KeyInfo info;                             // from ListKeys
  std::set<int> PathsFor(v1::Padding p) const;  // the advertised paths for padding p
};

std::string StatusText(const grpc::Status& s);  // "CODE: message"
const char* PathName(int path);
const char* CodeName(int code);
const char* FormatName(int format);
const char* PaddingName(int padding);

// ListKeys entry of `name` (ASSERTs it is there).
void FindKeyInfo(RewrapdHarness* h, const std::string& name, v1::KeyInfo* out);
// Fetches the DER public key and ListKeys entry of an existing key.
void LoadServiceKey(RewrapdHarness* h, const std::string& name, ServiceKey* out);
// CreateKey + LoadServiceKey.
void CreateServiceKey(RewrapdHarness* h, const std::string& name, uint32_t bits, bool allow_pkcs1,
                      ServiceKey* out);
// ImportKey (request prepared by the caller, name set) + LoadServiceKey.
void ImportServiceKey(RewrapdHarness* h, const v1::ImportKeyRequest& req, ServiceKey* out);

// Encrypts `secret` to the service key with `padding` (OpenSSL, as a sealer would).
std::string Seal(const ServiceKey& key, v1::Padding padding, const std::string& secret);

enum class Rcp { kCertDer, kCertPem, kSpkiDer, kSpkiPem };
const char* RcpName(Rcp r);
bool IsCert(Rcp r);
void SetRecipient(v1::RewrapItem* item, const Device& d, Rcp r);

v1::RewrapItem* AddItem(v1::RewrapRequest* req, const std::string& id, const std::string& key,
                        v1::Padding padding, const std::string& ct, const Device& d, Rcp rcp,
                        v1::OutputFormat format);

// Calls Rewrap; ASSERTs an OK status and one result per item.
void CallRewrap(RewrapdHarness* h, const v1::RewrapRequest& req, v1::RewrapResponse* resp);

// Checks one successful result: id, no error, decrypts to `secret`, the path is one the
// key advertises for the padding, and on NSS never HOST_UNPADDING for OAEP. For CMS it
// also checks the key transport algorithm and the recipient identifier.
void ExpectRewrapped(const v1::RewrapResult& r, const std::string& id, const Device& d, Rcp rcp,
                     v1::OutputFormat format, const std::string& secret, const ServiceKey& key,
                     v1::Padding padding);

// Checks one failed result: id, code, empty ciphertext.
void ExpectItemError(const v1::RewrapResult& r, const std::string& id, v1::ItemError::Code code);

}  // namespace hsmrewrap::it
