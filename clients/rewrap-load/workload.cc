// Preparation (before timing) and output verification.
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "clients/rewrap-load/load.h"
#include "crypto/rsa.h"
#include "proto/conversions.h"

namespace hsmrewrap::load {
namespace {

std::string OsslError(const std::string& what) {
  std::string out = what;
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    absl::StrAppend(&out, out == what ? ": " : "; ", buf);
  }
  return out;
}

std::string RandomPassword(size_t len) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!";
  std::string raw(len, '\0');
  RAND_bytes(reinterpret_cast<unsigned char*>(raw.data()), static_cast<int>(len));
  std::string out;
  for (char c : raw)
    out.push_back(kAlphabet[static_cast<unsigned char>(c) % (sizeof(kAlphabet) - 1)]);
  return out;
}

absl::StatusOr<Device> MakeDevice(const Options& o, unsigned index) {
  EVP_PKEY* raw = nullptr;
  switch (o.device_kind) {
    case DeviceKind::kRsa:
      raw = EVP_RSA_gen(static_cast<unsigned>(o.device_bits));
      break;
    case DeviceKind::kEcP256:
      raw = EVP_EC_gen("P-256");
      break;
    case DeviceKind::kEcP384:
      raw = EVP_EC_gen("P-384");
      break;
  }
  if (raw == nullptr) return absl::InternalError(OsslError("device key generation"));
  Device d;
  d.key.reset(raw, EVP_PKEY_free);
  d.cert.reset(X509_new(), X509_free);
  X509* c = d.cert.get();
  X509_set_version(c, 2);
  ASN1_INTEGER_set_int64(X509_get_serialNumber(c), 1000 + index);
  X509_gmtime_adj(X509_getm_notBefore(c), -3600);
  X509_gmtime_adj(X509_getm_notAfter(c), 86400L * 30);
  X509_NAME* name = X509_get_subject_name(c);
  const std::string cn = absl::StrCat("rewrap-load device ", index);
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("rewrap-load"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(c, name);
  X509_set_pubkey(c, raw);
  if (X509_sign(c, raw, EVP_sha256()) <= 0) return absl::InternalError(OsslError("X509_sign"));
  unsigned char* der = nullptr;
  int len = o.recipient == RecipientKind::kCertificate ? i2d_X509(c, &der) : i2d_PUBKEY(raw, &der);
  if (len <= 0) return absl::InternalError(OsslError("DER encoding of the recipient"));
  d.recipient_der.assign(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return d;
}

}  // namespace

absl::StatusOr<Workload> Prepare(const Options& o, v1::Keys::Stub& keys) {
  const auto t0 = std::chrono::steady_clock::now();
  if (o.batch == 0 || o.streams == 0 || o.devices == 0) {
    return absl::InvalidArgumentError("--batch, --streams and --devices must be at least 1");
  }
  if (!proto_crypto::IsCmsFormat(o.format) && o.format != v1::RSA_OAEP_SHA1 &&
      o.format != v1::RSA_OAEP_SHA256 && o.format != v1::RSA_OAEP_SHA384 &&
      o.format != v1::RSA_OAEP_SHA512 && o.format != v1::RSA_PKCS1) {
    return absl::InvalidArgumentError(absl::StrCat("format ", v1::OutputFormat_Name(o.format),
                                                   " is not supported by rewrap-load"));
  }
  if (!proto_crypto::IsCmsFormat(o.format) && o.device_kind != DeviceKind::kRsa) {
    return absl::InvalidArgumentError("bare RSA formats need --device-kind rsa");
  }
  if (o.format == v1::CMS_ENVELOPED_PKCS1 && o.device_kind != DeviceKind::kRsa) {
    return absl::InvalidArgumentError(
        "CMS_ENVELOPED_PKCS1 is RSA key transport: it needs --device-kind rsa (EC devices take "
        "CMS_ENVELOPED)");
  }
  crypto::RsaPadding padding;
  if (!proto_crypto::PaddingFromProto(o.padding, &padding))
    return absl::InvalidArgumentError("--padding is not set");

  Workload w;
  // 1. The service key.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  v1::GetPublicKeyRequest req;
  req.set_name(o.key_name);
  req.set_format(v1::DER_SPKI);
  v1::GetPublicKeyResponse resp;
  grpc::Status s = keys.GetPublicKey(&ctx, req, &resp);
  if (!s.ok()) {
    return absl::UnavailableError(absl::StrCat("GetPublicKey(", o.key_name,
                                               "): ", s.error_message(), " (gRPC code ",
                                               s.error_code(), ")"));
  }
  w.service_spki.assign(resp.public_key().begin(), resp.public_key().end());
  auto pub = crypto::PublicKey::FromSpki(w.service_spki);
  if (!pub.ok()) return pub.status();
  w.service_bits = pub->bits();

  // 2. Sealed passwords: a whole number of batches, at least one batch.
  const size_t n = ((std::max<size_t>(o.passwords, o.batch) + o.batch - 1) / o.batch) * o.batch;
  std::vector<std::string> sealed;
  sealed.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    std::string pw = RandomPassword(24);
    auto ct = crypto::RsaEncrypt(
        *pub, padding, absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(pw.data()), pw.size()));
    if (!ct.ok()) return ct.status();
    sealed.emplace_back(ct->begin(), ct->end());
    w.passwords.push_back(std::move(pw));
  }

  // 3. Devices.
  for (unsigned i = 0; i < o.devices; ++i) {
    auto d = MakeDevice(o, i);
    if (!d.ok()) return d.status();
    w.devices.push_back(*std::move(d));
  }

  // 4. Batches.
  for (size_t b = 0; b < n / o.batch; ++b) {
    auto batch = std::make_shared<v1::RewrapRequest>();
    for (size_t j = 0; j < o.batch; ++j) {
      const size_t i = b * o.batch + j;
      v1::RewrapItem* item = batch->add_items();
      item->set_id(std::to_string(i));
      item->set_key_name(o.key_name);
      item->set_padding(o.padding);
      item->set_ciphertext(sealed[i]);
      item->set_format(o.format);
      const Device& dev = w.devices[i % w.devices.size()];
      if (o.recipient == RecipientKind::kCertificate) {
        item->mutable_recipient()->set_certificate(dev.recipient_der);
      } else {
        item->mutable_recipient()->set_public_key(dev.recipient_der);
      }
    }
    w.batches.push_back(std::move(batch));
  }
  w.prepare_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return w;
}

std::string VerifyOutput(const Options& o, const Device& device, const std::string& expected,
                         const std::string& output) {
  std::string plain;
  if (proto_crypto::IsCmsFormat(o.format)) {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(output.data());
    CMS_ContentInfo* cms = d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(output.size()));
    if (cms == nullptr) return OsslError("output is not DER CMS");
    BIO* out = BIO_new(BIO_s_mem());
    X509* cert = o.recipient == RecipientKind::kCertificate ? device.cert.get() : nullptr;
    const int rc = CMS_decrypt(cms, device.key.get(), cert, nullptr, out, 0);
    if (rc == 1) {
      char* data = nullptr;
      long len = BIO_get_mem_data(out, &data);
      plain.assign(data, static_cast<size_t>(len));
    }
    BIO_free(out);
    CMS_ContentInfo_free(cms);
    if (rc != 1) return OsslError("CMS_decrypt with the device key failed");
  } else {
    const crypto::RsaPadding pad = proto_crypto::BarePadding(o.format);
    EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new(device.key.get(), nullptr);
    if (ctx == nullptr || EVP_PKEY_decrypt_init(ctx) <= 0) {
      EVP_PKEY_CTX_free(ctx);
      return OsslError("EVP_PKEY_decrypt_init");
    }
    if (pad == crypto::RsaPadding::kPkcs1) {
      EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING);
    } else {
      const EVP_MD* md = crypto::HashMd(crypto::OaepHash(pad));
      EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING);
      EVP_PKEY_CTX_set_rsa_oaep_md(ctx, md);
      EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, md);
    }
    size_t len = static_cast<size_t>(EVP_PKEY_get_size(device.key.get()));
    plain.resize(len);
    const int rc =
        EVP_PKEY_decrypt(ctx, reinterpret_cast<unsigned char*>(plain.data()), &len,
                         reinterpret_cast<const unsigned char*>(output.data()), output.size());
    EVP_PKEY_CTX_free(ctx);
    if (rc <= 0) return OsslError("RSA decrypt with the device key failed");
    plain.resize(len);
  }
  if (plain != expected) return "the decrypted output differs from the sealed password";
  return "";
}

}  // namespace hsmrewrap::load
