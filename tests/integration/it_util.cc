#include "tests/integration/it_util.h"

#include <openssl/evp.h>
#include <openssl/obj_mac.h>

#include "tests/leakcheck/record.h"

namespace hsmrewrap::it {

std::set<int> ServiceKey::PathsFor(v1::Padding p) const {
  std::set<int> out;
  for (const auto& ps : info.paths()) {
    if (ps.padding() == p) {
      for (int path : ps.paths()) out.insert(path);
    }
  }
  return out;
}

std::string StatusText(const grpc::Status& s) {
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  int c = static_cast<int>(s.error_code());
  std::string name = c >= 0 && c <= 16 ? kNames[c] : std::to_string(c);
  return name + ": " + s.error_message();
}

const char* PathName(int path) {
  switch (path) {
    case v1::PATH_UNSPECIFIED:
      return "PATH_UNSPECIFIED";
    case v1::IN_TOKEN:
      return "IN_TOKEN";
    case v1::TOKEN_DECRYPT:
      return "TOKEN_DECRYPT";
    case v1::HOST_UNPADDING:
      return "HOST_UNPADDING";
  }
  return "PATH_?";
}

const char* CodeName(int code) {
  if (v1::ItemError::Code_IsValid(code)) {
    return v1::ItemError::Code_Name(static_cast<v1::ItemError::Code>(code)).c_str();
  }
  return "CODE_?";
}

const char* FormatName(int format) {
  if (v1::OutputFormat_IsValid(format)) {
    return v1::OutputFormat_Name(static_cast<v1::OutputFormat>(format)).c_str();
  }
  return "FORMAT_?";
}

const char* PaddingName(int padding) {
  if (v1::Padding_IsValid(padding)) {
    return v1::Padding_Name(static_cast<v1::Padding>(padding)).c_str();
  }
  return "PADDING_?";
}

void FindKeyInfo(RewrapdHarness* h, const std::string& name, v1::KeyInfo* out) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::ListKeysResponse resp;
  grpc::Status s = h->keys().ListKeys(&ctx, v1::ListKeysRequest(), &resp);
  ASSERT_TRUE(s.ok()) << "ListKeys: " << StatusText(s);
  for (const auto& k : resp.keys()) {
    if (k.name() == name) {
      *out = k;
      return;
    }
  }
  FAIL() << "ListKeys does not list key '" << name << "'";
}

void LoadServiceKey(RewrapdHarness* h, const std::string& name, ServiceKey* out) {
  out->name = name;
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::GetPublicKeyRequest req;
  req.set_name(name);
  req.set_format(v1::DER_SPKI);
  v1::GetPublicKeyResponse resp;
  grpc::Status s = h->keys().GetPublicKey(&ctx, req, &resp);
  ASSERT_TRUE(s.ok()) << "GetPublicKey(" << name << ", DER_SPKI): " << StatusText(s);
  out->pub = ParsePublicKey(resp.public_key());
  ASSERT_NE(out->pub, nullptr) << "GetPublicKey(" << name << ", DER_SPKI) is not a DER SPKI";
  ASSERT_EQ(EVP_PKEY_get_base_id(out->pub.get()), EVP_PKEY_RSA);
  out->modulus_len = static_cast<size_t>(EVP_PKEY_get_size(out->pub.get()));
  ASSERT_NO_FATAL_FAILURE(FindKeyInfo(h, name, &out->info));
}

void CreateServiceKey(RewrapdHarness* h, const std::string& name, uint32_t bits, bool allow_pkcs1,
                      ServiceKey* out) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::CreateKeyRequest req;
  req.set_name(name);
  req.set_bits(bits);
  req.set_allow_pkcs1(allow_pkcs1);
  v1::KeyInfo info;
  grpc::Status s = h->keys().CreateKey(&ctx, req, &info);
  ASSERT_TRUE(s.ok()) << "CreateKey(" << name << ", " << bits << "): " << StatusText(s);
  ASSERT_EQ(info.name(), name);
  ASSERT_NO_FATAL_FAILURE(LoadServiceKey(h, name, out));
}

void ImportServiceKey(RewrapdHarness* h, const v1::ImportKeyRequest& req, ServiceKey* out) {
  // The private key material and PFX password the service gets: never in its logs.
  leakcheck::RecordSecret(req.pkcs8());
  leakcheck::RecordSecret(req.cng_rsa_full_private_blob());
  leakcheck::RecordSecret(req.pfx().password());
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::KeyInfo info;
  grpc::Status s = h->keys().ImportKey(&ctx, req, &info);
  ASSERT_TRUE(s.ok()) << "ImportKey(" << req.name() << "): " << StatusText(s);
  ASSERT_EQ(info.name(), req.name());
  ASSERT_NO_FATAL_FAILURE(LoadServiceKey(h, req.name(), out));
}

std::string Seal(const ServiceKey& key, v1::Padding padding, const std::string& secret) {
  auto ct = RsaEncrypt(key.pub.get(), PadOf(padding), secret);
  EXPECT_TRUE(ct.has_value()) << "OpenSSL cannot seal to " << key.name << " with "
                              << PaddingName(padding);
  return ct.value_or("");
}

const char* RcpName(Rcp r) {
  switch (r) {
    case Rcp::kCertDer:
      return "certificate DER";
    case Rcp::kCertPem:
      return "certificate PEM";
    case Rcp::kSpkiDer:
      return "public_key DER";
    case Rcp::kSpkiPem:
      return "public_key PEM";
  }
  return "?";
}

bool IsCert(Rcp r) { return r == Rcp::kCertDer || r == Rcp::kCertPem; }

void SetRecipient(v1::RewrapItem* item, const Device& d, Rcp r) {
  switch (r) {
    case Rcp::kCertDer:
      item->mutable_recipient()->set_certificate(d.cert_der);
      break;
    case Rcp::kCertPem:
      item->mutable_recipient()->set_certificate(d.cert_pem);
      break;
    case Rcp::kSpkiDer:
      item->mutable_recipient()->set_public_key(d.spki_der);
      break;
    case Rcp::kSpkiPem:
      item->mutable_recipient()->set_public_key(d.spki_pem);
      break;
  }
}

v1::RewrapItem* AddItem(v1::RewrapRequest* req, const std::string& id, const std::string& key,
                        v1::Padding padding, const std::string& ct, const Device& d, Rcp rcp,
                        v1::OutputFormat format) {
  v1::RewrapItem* item = req->add_items();
  item->set_id(id);
  item->set_key_name(key);
  item->set_padding(padding);
  item->set_ciphertext(ct);
  SetRecipient(item, d, rcp);
  item->set_format(format);
  return item;
}

void CallRewrap(RewrapdHarness* h, const v1::RewrapRequest& req, v1::RewrapResponse* resp) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  grpc::Status s = h->rewrap().Rewrap(&ctx, req, resp);
  ASSERT_TRUE(s.ok()) << "Rewrap of " << req.items_size() << " items: " << StatusText(s);
  ASSERT_EQ(resp->results_size(), req.items_size()) << "one result per item";
}

void ExpectRewrapped(const v1::RewrapResult& r, const std::string& id, const Device& d, Rcp rcp,
                     v1::OutputFormat format, const std::string& secret, const ServiceKey& key,
                     v1::Padding padding) {
  const std::string what = "item '" + id + "' (" + key.name + ", " + PaddingName(padding) + " -> " +
                           FormatName(format) + ", " + RcpName(rcp) + ")";
  EXPECT_EQ(r.id(), id) << what << ": result out of order";
  if (r.has_error()) {
    ADD_FAILURE() << what << " failed: " << CodeName(r.error().code()) << " \""
                  << r.error().message() << "\"";
    return;
  }
  std::string why;
  auto pt = DecryptOutput(d, format, IsCert(rcp), r.ciphertext(), &why);
  if (!pt) {
    ADD_FAILURE() << what << ": the output does not decrypt: " << why;
  } else {
    EXPECT_TRUE(*pt == secret) << what << ": decrypts to the wrong plaintext (" << pt->size()
                               << " bytes, want " << secret.size() << ")";
  }
  if (IsCms(format) && EVP_PKEY_is_a(d.key.get(), "RSA")) {  // key transport (EC: agreement)
    CmsResult c = CmsDecrypt(d.key.get(), nullptr, r.ciphertext());
    EXPECT_EQ(c.recipients, 1) << what;
    EXPECT_EQ(c.key_transport_nid, format == v1::CMS_ENVELOPED ? NID_rsaesOaep : NID_rsaEncryption)
        << what << ": wrong key transport algorithm";
    if (IsCert(rcp)) {
      EXPECT_TRUE(c.rid_issuer_serial) << what << ": recipient not identified by issuer+serial";
    } else {
      EXPECT_TRUE(c.rid_key_id == Sha1(RsaPublicKeyDer(d.key.get())))
          << what << ": recipient not identified by subjectKeyIdentifier = SHA-1 of the key";
    }
  }
  const std::set<int> advertised = key.PathsFor(padding);
  EXPECT_NE(r.path(), v1::PATH_UNSPECIFIED) << what << ": no path reported";
  EXPECT_TRUE(advertised.count(r.path()) == 1)
      << what << ": path " << PathName(r.path()) << " is not among the paths ListKeys advertises";
  if (CurrentToken() == TokenKind::kNss && padding != v1::PKCS1) {
    EXPECT_NE(r.path(), v1::HOST_UNPADDING) << what << ": HOST_UNPADDING on NSS for OAEP";
  }
}

void ExpectItemError(const v1::RewrapResult& r, const std::string& id, v1::ItemError::Code code) {
  EXPECT_EQ(r.id(), id) << "result out of order";
  EXPECT_TRUE(r.has_error()) << "item '" << id << "' should fail with " << CodeName(code)
                             << " but succeeded (path " << PathName(r.path()) << ")";
  EXPECT_EQ(r.error().code(), code)
      << "item '" << id << "': got " << CodeName(r.error().code()) << " \"" << r.error().message()
      << "\", want " << CodeName(code);
  EXPECT_FALSE(r.error().message().empty()) << "item '" << id << "': empty error message";
  EXPECT_TRUE(r.ciphertext().empty()) << "item '" << id << "': failed item carries a ciphertext";
}

}  // namespace hsmrewrap::it
