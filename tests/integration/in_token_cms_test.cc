// In-token CMS through the real rewrapd (issue: the default output never puts the password
// in host memory where the token can build it). Runs once per token (--token=softhsm|nss):
//  - NSS softoken builds every CMS form in the token: path IN_TOKEN, and the output opens
//    with `openssl cms -decrypt` and with BouncyCastle (a Java program compiled here); its
//    DER is what `openssl cms -encrypt` writes for the same recipient and options, apart
//    from the random parts;
//  - SoftHSM2 cannot (no CBC wrapping): the same requests come back on a host path, and
//    with require_in_token they fail UNSUPPORTED naming what the token lacks.
#include <gtest/gtest.h>

#include <openssl/evp.h>

#include <regex>

#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

#include "tests/integration/it_env.h"
#include "tests/integration/it_util.h"

namespace hsmrewrap::it {
namespace {

const v1::OutputFormat kCmsFormats[] = {v1::CMS_ENVELOPED, v1::CMS_ENVELOPED_PKCS1};
const v1::ContentCipher kCiphers[] = {v1::AES_256_CBC, v1::AES_128_CBC, v1::DES_EDE3_CBC};

const char* CipherName(v1::ContentCipher c) {
  switch (c) {
    case v1::AES_256_CBC:
      return "aes256";
    case v1::AES_128_CBC:
      return "aes128";
    default:
      return "des3";
  }
}

class InTokenCmsTest : public RewrapdTest {
 protected:
  static const Device& Dev() {
    static Device d = MakeDevice(2048, "in-token-device");
    return d;
  }
  static const Device& EcDev(bool p384 = false) {
    static Device d256 = MakeEcDevice("in-token-ec-p256");
    static Device d384 = DeviceFor(Pkey(EVP_EC_gen("P-384")), "in-token-ec-p384");
    return p384 ? d384 : d256;
  }
  const ServiceKey& Key() {
    static ServiceKey k;
    if (k.pub == nullptr) CreateServiceKey(h_, "cms-key", 2048, /*allow_pkcs1=*/true, &k);
    return k;
  }
  std::string File(const std::string& name) { return tmp_.path() + "/" + name; }
  // BouncyCastle as a second consumer: compiles tests/support/bc/BcCmsDecrypt.java and runs
  // its jobs ("CMS KEY CERT cert|keyid OUT" lines) in one JVM.
  void RunBouncyCastle(const std::string& jobs, const std::string& name) {
    const std::string cp =
        "/usr/share/java/bcprov.jar:/usr/share/java/bcpkix.jar:/usr/share/java/bcutil.jar";
    ASSERT_TRUE(WriteFile(File(name), jobs));
    const std::vector<std::string> javac = {"javac", "-cp", cp, "-d", tmp_.path(),
                                            std::string(HSMREWRAP_SOURCE_DIR) +
                                                "/tests/support/bc/BcCmsDecrypt.java"};
    CommandResult cr = RunCommand(javac);
    ASSERT_EQ(cr.exit_code, 0) << cr.Describe(javac)
                               << "\n(scripts/setup.sh installs default-jdk-headless and "
                                  "libbcpkix-java)";
    const std::vector<std::string> java = {"java", "-cp", tmp_.path() + ":" + cp, "BcCmsDecrypt",
                                           File(name)};
    cr = RunCommand(java);
    EXPECT_EQ(cr.exit_code, 0) << cr.Describe(java);
  }
  TempDir tmp_{"in-token-cms"};
};

TEST_F(InTokenCmsTest, ListKeysSaysWhichOutputsAreBuiltInToken) {
  const ServiceKey& k = Key();
  ASSERT_NE(k.pub, nullptr);
  std::map<int, std::set<int>> cms;  // format -> ciphers
  std::set<int> bare;
  for (const auto& o : k.info.in_token_outputs()) {
    if (o.format() == v1::CMS_ENVELOPED || o.format() == v1::CMS_ENVELOPED_PKCS1) {
      cms[o.format()].insert(o.content_ciphers().begin(), o.content_ciphers().end());
    } else {
      EXPECT_EQ(o.content_ciphers_size(), 0) << FormatName(o.format());
      bare.insert(o.format());
    }
    EXPECT_NE(o.format(), v1::APPLE_ENCRYPTED_PAYLOAD);
  }
  if (nss()) {
    for (v1::OutputFormat f : kCmsFormats) {
      EXPECT_EQ(cms[f], (std::set<int>{v1::AES_256_CBC, v1::AES_128_CBC, v1::DES_EDE3_CBC}))
          << FormatName(f);
    }
    EXPECT_EQ(bare, (std::set<int>{v1::RSA_OAEP_SHA1, v1::RSA_OAEP_SHA256, v1::RSA_OAEP_SHA384,
                                   v1::RSA_OAEP_SHA512, v1::RSA_PKCS1}));
  } else {
    EXPECT_TRUE(cms.empty()) << "SoftHSM2 2.6 has no CBC wrapping";
    EXPECT_EQ(bare, (std::set<int>{v1::RSA_OAEP_SHA1, v1::RSA_PKCS1}));
  }
}

// Every CMS form to a certificate and to a bare key, RSA (key transport) and EC P-256/P-384
// (key agreement) devices: IN_TOKEN exactly on NSS, and the output opens with OpenSSL
// (ExpectRewrapped) and with BouncyCastle.
TEST_F(InTokenCmsTest, EveryCmsFormOpensWithOpenSslAndBouncyCastle) {
  const ServiceKey& k = Key();
  ASSERT_NE(k.pub, nullptr);
  struct Case {
    const Device* device;
    v1::OutputFormat format;
    v1::ContentCipher cipher;
    Rcp rcp;
  };
  std::vector<Case> cases;
  for (v1::OutputFormat f : kCmsFormats) {
    for (v1::ContentCipher c : kCiphers) {
      for (Rcp rcp : {Rcp::kCertDer, Rcp::kSpkiDer}) cases.push_back({&Dev(), f, c, rcp});
    }
  }
  for (bool p384 : {false, true}) {  // EC: CMS_ENVELOPED with AES only
    for (v1::ContentCipher c : {v1::AES_256_CBC, v1::AES_128_CBC}) {
      for (Rcp rcp : {Rcp::kCertDer, Rcp::kSpkiDer}) {
        cases.push_back({&EcDev(p384), v1::CMS_ENVELOPED, c, rcp});
      }
    }
  }
  v1::RewrapRequest req;
  std::vector<std::string> secrets;
  for (const Case& c : cases) {
    secrets.push_back(RandomAscii(1 + secrets.size() * 3));
    AddItem(&req,
            absl::StrCat(c.device->key.get() == Dev().key.get() ? "rsa" : "ec", secrets.size(), "-",
                         FormatName(c.format), "-", CipherName(c.cipher), "-", RcpName(c.rcp)),
            k.name, v1::OAEP_SHA256, Seal(k, v1::OAEP_SHA256, secrets.back()), *c.device, c.rcp,
            c.format)
        ->set_content_cipher(c.cipher);
  }
  v1::RewrapResponse resp;
  ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, req, &resp));
  std::string jobs;
  for (int i = 0; i < resp.results_size(); ++i) {
    const auto& r = resp.results(i);
    const auto& item = req.items(i);
    const Case& c = cases[static_cast<size_t>(i)];
    ExpectRewrapped(r, item.id(), *c.device, c.rcp, item.format(), secrets[i], k, v1::OAEP_SHA256);
    if (nss()) {
      EXPECT_EQ(r.path(), v1::IN_TOKEN) << item.id() << ": " << PathName(r.path());
    } else {
      EXPECT_NE(r.path(), v1::IN_TOKEN) << item.id();
    }
    const std::string out = File(absl::StrCat("out", i, ".der"));
    const std::string key = File(absl::StrCat("dev", i, ".p8"));
    const std::string crt = File(absl::StrCat("dev", i, ".crt"));
    ASSERT_TRUE(WriteFile(out, r.ciphertext()));
    ASSERT_TRUE(WriteFile(key, PrivateKeyPkcs8Der(c.device->key.get())));
    ASSERT_TRUE(WriteFile(crt, c.device->cert_der));
    absl::StrAppend(&jobs, out, " ", key, " ", crt, " ", IsCert(c.rcp) ? "cert" : "keyid", " ",
                    out, ".plain\n");
  }
  printf("[in-token] %s: %d CMS outputs (RSA and EC devices)\n", TokenName(CurrentToken()),
         resp.results_size());

  ASSERT_NO_FATAL_FAILURE(RunBouncyCastle(jobs, "jobs"));
  for (int i = 0; i < resp.results_size(); ++i) {
    const std::string out = File(absl::StrCat("out", i, ".der"));
    EXPECT_EQ(ReadFileOrEmpty(out + ".plain"), secrets[i])
        << req.items(i).id() << ": BouncyCastle: " << ReadFileOrEmpty(out + ".plain.err");
  }
}

// docs/rewrap-connector.md's recipient table, row by row: what comes out of rewrapd (OIDs as
// `openssl cms -cmsout -print` names them, how the recipient is named) or the error it is
// refused with; every output opens with OpenSSL and BouncyCastle.
std::vector<std::vector<std::string>> RecipientTable() {
  const std::string doc =
      ReadFileOrEmpty(std::string(HSMREWRAP_SOURCE_DIR) + "/docs/rewrap-connector.md");
  std::vector<std::vector<std::string>> rows;
  const size_t begin = doc.find("<!-- recipient-table");
  const size_t end = doc.find("<!-- end recipient-table -->");
  if (begin == std::string::npos || end == std::string::npos) return rows;
  std::istringstream lines(doc.substr(begin, end - begin));
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("| ", 0) != 0 || line.rfind("| format", 0) == 0) continue;
    std::vector<std::string> cells;
    for (absl::string_view cell : absl::StrSplit(line.substr(1), '|')) {
      cells.push_back(std::string(absl::StripAsciiWhitespace(cell)));
    }
    if (!cells.empty() && cells.back().empty()) cells.pop_back();
    rows.push_back(cells);
  }
  return rows;
}

TEST_F(InTokenCmsTest, RecipientTableInTheDocsIsWhatComesOut) {
  const ServiceKey& k = Key();
  ASSERT_NE(k.pub, nullptr);
  const auto rows = RecipientTable();
  ASSERT_GE(rows.size(), 20u) << "the table in docs/rewrap-connector.md was not found";
  const std::map<std::string, v1::OutputFormat> formats = {
      {"cms", v1::CMS_ENVELOPED},          {"cmsPkcs1", v1::CMS_ENVELOPED_PKCS1},
      {"apple", v1::APPLE_ENCRYPTED_PAYLOAD}, {"rsaOaepSha256", v1::RSA_OAEP_SHA256},
      {"rsaPkcs1", v1::RSA_PKCS1}};
  const std::map<std::string, v1::ContentCipher> ciphers = {
      {"aes256", v1::AES_256_CBC}, {"aes128", v1::AES_128_CBC}, {"3des", v1::DES_EDE3_CBC},
      {"", v1::AES_256_CBC}};
  const std::map<std::string, std::string> rid_names = {
      {"issuer and serial", "issuerAndSerialNumber"},
      {"subjectKeyIdentifier", "subjectKeyIdentifier"},
      {"rKeyId", "rKeyId"}};
  std::string jobs;
  std::vector<std::pair<std::string, std::string>> bc_expect;  // out file, secret
  int n = 0;
  for (const auto& row : rows) {
    ASSERT_GE(row.size(), 4u) << absl::StrJoin(row, "|");
    const std::string what = absl::StrJoin(row, " | ");
    ASSERT_TRUE(formats.count(row[0]) && ciphers.count(row[2])) << what;
    const std::string& device_text = row[1];
    const Device& d = absl::StartsWith(device_text, "RSA")         ? Dev()
                      : absl::StartsWith(device_text, "EC P-384") ? EcDev(true)
                                                                   : EcDev(false);
    const Rcp rcp = absl::EndsWith(device_text, "certificate") ? Rcp::kCertDer : Rcp::kSpkiDer;
    const v1::OutputFormat format = formats.at(row[0]);
    // Hex: the Apple payload's plist escapes XML's special characters.
    const std::string secret = HexEncode(RandomBytes(9 + static_cast<size_t>(n)));
    v1::RewrapRequest req;
    v1::RewrapItem* item = AddItem(&req, absl::StrCat("row", n), k.name, v1::OAEP_SHA256,
                                   Seal(k, v1::OAEP_SHA256, secret), d, rcp, format);
    if (!row[2].empty()) item->set_content_cipher(ciphers.at(row[2]));
    if (format == v1::APPLE_ENCRYPTED_PAYLOAD) item->set_pfx(Pkcs12(d.key.get(), d.cert.get(), secret));
    v1::RewrapResponse resp;
    ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, req, &resp));
    const auto& r = resp.results(0);
    ++n;
    if (absl::StartsWith(row[3], "refused: ")) {
      const std::string code = row[3].substr(9);
      EXPECT_TRUE(r.has_error()) << what << ": not refused";
      EXPECT_EQ(CodeName(r.error().code()), code) << what << ": " << r.error().message();
      EXPECT_EQ(r.path(), v1::PATH_UNSPECIFIED) << what;
      continue;
    }
    ASSERT_FALSE(r.has_error()) << what << ": " << r.error().message();
    if (format == v1::RSA_OAEP_SHA256 || format == v1::RSA_PKCS1) {
      ExpectRewrapped(r, item->id(), d, rcp, format, secret, k, v1::OAEP_SHA256);
      continue;
    }
    ASSERT_EQ(row.size(), 6u) << what;
    const std::string out = File(absl::StrCat("row", n, ".der"));
    ASSERT_TRUE(WriteFile(out, r.ciphertext()));
    const std::vector<std::string> print = {"openssl", "cms", "-cmsout", "-print",
                                            "-inform", "DER", "-in", out};
    CommandResult cr = RunCommand(print);
    ASSERT_EQ(cr.exit_code, 0) << cr.Describe(print);
    // The OIDs as `openssl asn1parse` names them: "rsaesOaep (SHA-256, MGF1-SHA-256)" is the
    // algorithm with sha256 in its parameters; "a, b" are both there.
    const std::vector<std::string> parse = {"openssl", "asn1parse", "-inform", "DER", "-in", out};
    CommandResult oids = RunCommand(parse);
    ASSERT_EQ(oids.exit_code, 0) << oids.Describe(parse);
    const std::string alg = row[3].substr(0, row[3].find(" ("));
    for (absl::string_view name : absl::StrSplit(alg, ", ")) {
      EXPECT_NE(oids.out.find(absl::StrCat(":", name, "\n")), std::string::npos)
          << what << "\n" << oids.out;
    }
    if (absl::StrContains(row[3], "SHA-256")) {
      EXPECT_NE(oids.out.find(":sha256\n"), std::string::npos) << what;
      EXPECT_NE(oids.out.find(":mgf1\n"), std::string::npos) << what;
    }
    EXPECT_NE(oids.out.find(":" + row[4] + "\n"), std::string::npos) << what;
    ASSERT_TRUE(rid_names.count(row[5])) << what;
    EXPECT_NE(cr.out.find(rid_names.at(row[5])), std::string::npos) << what << "\n" << cr.out;
    if (format != v1::APPLE_ENCRYPTED_PAYLOAD) {
      ExpectRewrapped(r, item->id(), d, rcp, format, secret, k, v1::OAEP_SHA256);
    }
    const std::string key = File(absl::StrCat("row", n, ".p8"));
    const std::string crt = File(absl::StrCat("row", n, ".crt"));
    ASSERT_TRUE(WriteFile(key, PrivateKeyPkcs8Der(d.key.get())));
    ASSERT_TRUE(WriteFile(crt, d.cert_der));
    absl::StrAppend(&jobs, out, " ", key, " ", crt, " ", IsCert(rcp) ? "cert" : "keyid", " ", out,
                    ".plain\n");
    bc_expect.emplace_back(out, format == v1::APPLE_ENCRYPTED_PAYLOAD
                                    ? "<string>" + secret + "</string>"
                                    : secret);
  }
  ASSERT_NO_FATAL_FAILURE(RunBouncyCastle(jobs, "table-jobs"));
  for (const auto& [out, want] : bc_expect) {
    const std::string got = ReadFileOrEmpty(out + ".plain");
    EXPECT_NE(got.find(want), std::string::npos)
        << out << ": BouncyCastle: " << ReadFileOrEmpty(out + ".plain.err");
  }
  printf("[table] %s: %d rows of docs/rewrap-connector.md checked, %zu outputs opened by "
         "BouncyCastle\n",
         TokenName(CurrentToken()), n, bc_expect.size());
}

// recipient_key_id: a device whose certificate carries a CA-chosen subjectKeyIdentifier finds
// a bare-key output named by that SKI (OpenSSL with -recip, BouncyCastle by the certificate);
// a certificate without SKI: the default key id (SHA-1 of the key) is found by the key.
TEST_F(InTokenCmsTest, RecipientKeyIdNamesTheDeviceAsItsCertificateDoes) {
  const ServiceKey& k = Key();
  ASSERT_NE(k.pub, nullptr);
  struct Made {
    std::string name, newkey, ski_ext;
    std::string ski;  // bytes given as recipient_key_id; empty: none
  };
  const std::vector<Made> devs = {
      {"rsa-ski", "rsa:2048", "subjectKeyIdentifier=0A:0B:0C:0D:0E:0F", HexDecode("0a0b0c0d0e0f")},
      {"ec-ski", "ec", "subjectKeyIdentifier=C0:FF:EE:00:42", HexDecode("c0ffee0042")},
      {"rsa-noski", "rsa:2048", "subjectKeyIdentifier=none", ""}};
  std::string jobs;
  std::vector<std::pair<std::string, std::string>> expect;
  for (const Made& dv : devs) {
    std::vector<std::string> req_cmd = {
        "openssl", "req", "-x509", "-newkey", dv.newkey, "-nodes", "-subj", "/CN=" + dv.name,
        "-days", "2", "-addext", "basicConstraints=critical,CA:FALSE", "-addext", dv.ski_ext,
        "-keyout", File(dv.name + ".key"), "-out", File(dv.name + ".crt")};
    if (dv.newkey == "ec") req_cmd.insert(req_cmd.begin() + 5, {"-pkeyopt", "ec_paramgen_curve:P-256"});
    CommandResult cr = RunCommand(req_cmd);
    ASSERT_EQ(cr.exit_code, 0) << cr.Describe(req_cmd);
    const std::vector<std::string> pub = {"openssl", "x509", "-in", File(dv.name + ".crt"),
                                          "-pubkey", "-noout"};
    cr = RunCommand(pub);
    ASSERT_EQ(cr.exit_code, 0) << cr.Describe(pub);
    const std::string password = RandomAscii(23);
    v1::RewrapRequest req;
    v1::RewrapItem* item = req.add_items();
    item->set_id(dv.name);
    item->set_key_name(k.name);
    item->set_padding(v1::OAEP_SHA256);
    item->set_ciphertext(Seal(k, v1::OAEP_SHA256, password));
    item->mutable_recipient()->set_public_key(cr.out);  // PEM SPKI
    item->set_format(v1::CMS_ENVELOPED);
    item->set_recipient_key_id(dv.ski);
    v1::RewrapResponse resp;
    ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, req, &resp));
    ASSERT_FALSE(resp.results(0).has_error()) << dv.name << ": " << resp.results(0).error().message();
    const std::string out = File(dv.name + ".der");
    ASSERT_TRUE(WriteFile(out, resp.results(0).ciphertext()));
    // OpenSSL as the device: with its certificate when it has an SKI, else with its key alone.
    std::vector<std::string> dec = {"openssl", "cms", "-decrypt", "-inform", "DER", "-in", out,
                                    "-inkey", File(dv.name + ".key")};
    if (!dv.ski.empty()) dec.insert(dec.end(), {"-recip", File(dv.name + ".crt")});
    cr = RunCommand(dec);
    EXPECT_EQ(cr.exit_code, 0) << cr.Describe(dec);
    EXPECT_EQ(cr.out, password) << dv.name;
    // BouncyCastle: by the certificate (its SKI) when it has one, else by the key's id.
    const std::vector<std::string> p8 = {"openssl", "pkcs8", "-topk8", "-nocrypt", "-in",
                                         File(dv.name + ".key"), "-outform", "DER", "-out",
                                         File(dv.name + ".p8")};
    cr = RunCommand(p8);
    ASSERT_EQ(cr.exit_code, 0) << cr.Describe(p8);
    const std::vector<std::string> der = {"openssl", "x509", "-in", File(dv.name + ".crt"),
                                          "-outform", "DER", "-out", File(dv.name + ".cder")};
    cr = RunCommand(der);
    ASSERT_EQ(cr.exit_code, 0) << cr.Describe(der);
    absl::StrAppend(&jobs, out, " ", File(dv.name + ".p8"), " ", File(dv.name + ".cder"), " ",
                    dv.ski.empty() ? "keyid" : "cert", " ", out, ".plain\n");
    expect.emplace_back(out, password);
  }
  // Without recipient_key_id the certificate's custom SKI does not match (what the field is for).
  {
    const std::vector<std::string> pub = {"openssl", "x509", "-in", File("rsa-ski.crt"), "-pubkey",
                                          "-noout"};
    CommandResult cr = RunCommand(pub);
    v1::RewrapRequest req;
    AddItem(&req, "no-id", k.name, v1::OAEP_SHA256, Seal(k, v1::OAEP_SHA256, "x"), Dev(),
            Rcp::kSpkiDer, v1::CMS_ENVELOPED)
        ->mutable_recipient()
        ->set_public_key(cr.out);
    v1::RewrapResponse resp;
    ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, req, &resp));
    ASSERT_TRUE(WriteFile(File("no-id.der"), resp.results(0).ciphertext()));
    const std::vector<std::string> dec = {"openssl", "cms", "-decrypt", "-inform", "DER", "-in",
                                          File("no-id.der"), "-inkey", File("rsa-ski.key"),
                                          "-recip", File("rsa-ski.crt")};
    cr = RunCommand(dec);
    EXPECT_NE(cr.exit_code, 0) << "a custom SKI matched the SHA-1 key id";
  }
  // recipient_key_id with a certificate recipient is refused.
  {
    v1::RewrapRequest req;
    AddItem(&req, "cert-id", k.name, v1::OAEP_SHA256, Seal(k, v1::OAEP_SHA256, "x"), Dev(),
            Rcp::kCertDer, v1::CMS_ENVELOPED)
        ->set_recipient_key_id("\x01\x02");
    v1::RewrapResponse resp;
    ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, req, &resp));
    ExpectItemError(resp.results(0), "cert-id", v1::ItemError::INVALID_ITEM);
  }
  ASSERT_NO_FATAL_FAILURE(RunBouncyCastle(jobs, "ski-jobs"));
  for (const auto& [out, want] : expect) {
    EXPECT_EQ(ReadFileOrEmpty(out + ".plain"), want)
        << out << ": BouncyCastle: " << ReadFileOrEmpty(out + ".plain.err");
  }
}

// A token that caps its secret objects' length (NSS softoken: 256 bytes) cannot unwrap the
// longest secrets an RSA-3072 key carries: such a valid item is never DECRYPT_FAILED, it is
// rewrapped on the host path; shorter secrets stay IN_TOKEN.
TEST_F(InTokenCmsTest, SecretsLongerThanTheTokenUnwrapsFallBackNeverFail) {
  ServiceKey k;
  ASSERT_NO_FATAL_FAILURE(CreateServiceKey(h_, "cms-3072", 3072, false, &k));
  const Device big = MakeDevice(4096, "device-4096");
  const std::string longest = RandomAscii(384 - 66), shortest = RandomAscii(200);
  v1::RewrapRequest req;
  AddItem(&req, "long-cms", k.name, v1::OAEP_SHA256, Seal(k, v1::OAEP_SHA256, longest), big,
          Rcp::kCertDer, v1::CMS_ENVELOPED);
  AddItem(&req, "long-bare", k.name, v1::OAEP_SHA256, Seal(k, v1::OAEP_SHA256, longest), big,
          Rcp::kSpkiDer, v1::RSA_OAEP_SHA256);
  AddItem(&req, "short-cms", k.name, v1::OAEP_SHA256, Seal(k, v1::OAEP_SHA256, shortest), big,
          Rcp::kCertDer, v1::CMS_ENVELOPED);
  std::string bad = Seal(k, v1::OAEP_SHA256, shortest);
  bad[7] ^= 1;
  AddItem(&req, "bad", k.name, v1::OAEP_SHA256, bad, big, Rcp::kCertDer, v1::CMS_ENVELOPED);
  v1::RewrapResponse resp;
  ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, req, &resp));
  ExpectRewrapped(resp.results(0), "long-cms", big, Rcp::kCertDer, v1::CMS_ENVELOPED, longest, k,
                  v1::OAEP_SHA256);
  ExpectRewrapped(resp.results(1), "long-bare", big, Rcp::kSpkiDer, v1::RSA_OAEP_SHA256, longest,
                  k, v1::OAEP_SHA256);
  ExpectRewrapped(resp.results(2), "short-cms", big, Rcp::kCertDer, v1::CMS_ENVELOPED, shortest,
                  k, v1::OAEP_SHA256);
  ExpectItemError(resp.results(3), "bad", v1::ItemError::DECRYPT_FAILED);
  if (nss()) {
    EXPECT_EQ(resp.results(0).path(), v1::TOKEN_DECRYPT);
    EXPECT_EQ(resp.results(1).path(), v1::TOKEN_DECRYPT);
    EXPECT_EQ(resp.results(2).path(), v1::IN_TOKEN);
  }
}

// `openssl asn1parse` of DER with the values of OCTET STRINGs (the IV and the encrypted
// key) masked; offsets, lengths, OIDs, parameters, versions and names stay.
std::string Skeleton(const std::string& der_path) {
  const std::vector<std::string> argv = {"openssl", "asn1parse", "-inform", "DER", "-in",
                                         der_path};
  CommandResult cr = RunCommand(argv);
  EXPECT_EQ(cr.exit_code, 0) << cr.Describe(argv);
  return std::regex_replace(cr.out, std::regex(R"(\[HEX DUMP\]:[0-9A-F]+)"), "[random]");
}

TEST_F(InTokenCmsTest, InTokenDerIsWhatOpenSslWritesApartFromRandomParts) {
  if (!nss()) GTEST_SKIP() << "SoftHSM2 builds no CMS in the token";
  const ServiceKey& k = Key();
  ASSERT_NE(k.pub, nullptr);
  const Device& d = Dev();
  ASSERT_TRUE(WriteFile(File("dev.pem"), d.cert_pem));
  const std::string password = RandomAscii(21);
  ASSERT_TRUE(WriteFile(File("pw"), password));
  int compared = 0;
  for (v1::OutputFormat f : kCmsFormats) {
    for (v1::ContentCipher c : kCiphers) {
      v1::RewrapRequest req;
      AddItem(&req, "x", k.name, v1::OAEP_SHA256, Seal(k, v1::OAEP_SHA256, password), d,
              Rcp::kCertDer, f)
          ->set_content_cipher(c);
      v1::RewrapResponse resp;
      ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, req, &resp));
      ASSERT_FALSE(resp.results(0).has_error()) << resp.results(0).error().message();
      ASSERT_EQ(resp.results(0).path(), v1::IN_TOKEN);
      ASSERT_TRUE(WriteFile(File("in-token.der"), resp.results(0).ciphertext()));
      std::vector<std::string> enc = {"openssl", "cms", "-encrypt", "-binary",
                                      std::string("-") + (c == v1::AES_256_CBC   ? "aes256"
                                                          : c == v1::AES_128_CBC ? "aes128"
                                                                                 : "des3"),
                                      "-recip", File("dev.pem")};
      if (f == v1::CMS_ENVELOPED) {
        for (const char* o : {"rsa_padding_mode:oaep", "rsa_oaep_md:sha256", "rsa_mgf1_md:sha256"}) {
          enc.insert(enc.end(), {"-keyopt", o});
        }
      }
      enc.insert(enc.end(), {"-in", File("pw"), "-outform", "DER", "-out", File("openssl.der")});
      CommandResult cr = RunCommand(enc);
      ASSERT_EQ(cr.exit_code, 0) << cr.Describe(enc);
      const std::string a = Skeleton(File("in-token.der"));
      const std::string b = Skeleton(File("openssl.der"));
      EXPECT_EQ(a, b) << FormatName(f) << "/" << CipherName(c);
      EXPECT_NE(a.find("[random]"), std::string::npos);
      ++compared;
    }
  }
  // EC devices (key agreement): `openssl cms -encrypt` to the EC certificate.
  for (bool p384 : {false, true}) {
    ASSERT_TRUE(WriteFile(File("ec.pem"), EcDev(p384).cert_pem));
    for (v1::ContentCipher c : {v1::AES_256_CBC, v1::AES_128_CBC}) {
      v1::RewrapRequest req;
      AddItem(&req, "ec", k.name, v1::OAEP_SHA256, Seal(k, v1::OAEP_SHA256, password),
              EcDev(p384), Rcp::kCertDer, v1::CMS_ENVELOPED)
          ->set_content_cipher(c);
      v1::RewrapResponse resp;
      ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, req, &resp));
      ASSERT_FALSE(resp.results(0).has_error()) << resp.results(0).error().message();
      ASSERT_EQ(resp.results(0).path(), v1::IN_TOKEN);
      ASSERT_TRUE(WriteFile(File("in-token.der"), resp.results(0).ciphertext()));
      const std::vector<std::string> enc = {
          "openssl", "cms",  "-encrypt", "-binary", c == v1::AES_256_CBC ? "-aes256" : "-aes128",
          "-recip",  File("ec.pem"), "-in", File("pw"), "-outform", "DER", "-out",
          File("openssl.der")};
      CommandResult cr = RunCommand(enc);
      ASSERT_EQ(cr.exit_code, 0) << cr.Describe(enc);
      // The ephemeral point is a BIT STRING: asn1parse prints no dump for it, only its length.
      EXPECT_EQ(Skeleton(File("in-token.der")), Skeleton(File("openssl.der")))
          << (p384 ? "P-384/" : "P-256/") << CipherName(c);
      ++compared;
    }
  }
  EXPECT_EQ(compared, 10);
}

// require_in_token (the global config key, here as its environment variable): items that
// cannot take IN_TOKEN fail UNSUPPORTED, naming what is missing, instead of falling back.
TEST_F(InTokenCmsTest, RequireInTokenRefusesWhatTheTokenCannotBuild) {
  std::string error;
  RewrapdHarness::Options o;
  o.env = {{"HSMREWRAP_REQUIRE_IN_TOKEN", "true"}};
  auto h = RewrapdHarness::Start(CurrentToken(), &error, o);
  ASSERT_NE(h, nullptr) << error;
  ServiceKey k;
  ASSERT_NO_FATAL_FAILURE(CreateServiceKey(h.get(), "strict", 2048, false, &k));
  const Device& d = Dev();
  const Device ec = MakeEcDevice("ec-device");
  const std::string pw = RandomAscii(12);
  v1::RewrapRequest req;
  AddItem(&req, "cms", k.name, v1::OAEP_SHA256, Seal(k, v1::OAEP_SHA256, pw), d, Rcp::kCertDer,
          v1::CMS_ENVELOPED);
  AddItem(&req, "cms-ec", k.name, v1::OAEP_SHA256, Seal(k, v1::OAEP_SHA256, pw), ec,
          Rcp::kCertDer, v1::CMS_ENVELOPED);
  AddItem(&req, "apple", k.name, v1::OAEP_SHA256, Seal(k, v1::OAEP_SHA256, pw), d, Rcp::kCertDer,
          v1::APPLE_ENCRYPTED_PAYLOAD)
      ->set_pfx(Pkcs12(d.key.get(), d.cert.get(), pw));
  AddItem(&req, "bare-sha1", k.name, v1::OAEP_SHA1, Seal(k, v1::OAEP_SHA1, pw), d, Rcp::kSpkiDer,
          v1::RSA_OAEP_SHA1);
  v1::RewrapResponse resp;
  ASSERT_NO_FATAL_FAILURE(CallRewrap(h.get(), req, &resp));
  auto message = [&resp](int i) { return resp.results(i).error().message(); };
  if (nss()) {
    ExpectRewrapped(resp.results(0), "cms", d, Rcp::kCertDer, v1::CMS_ENVELOPED, pw, k,
                    v1::OAEP_SHA256);
    EXPECT_EQ(resp.results(0).path(), v1::IN_TOKEN);
  } else {
    ExpectItemError(resp.results(0), "cms", v1::ItemError::UNSUPPORTED);
    // SoftHSM2 unwraps OAEP-SHA1 only and wraps with no CBC mode: both sides are missing.
    EXPECT_NE(message(0).find("cannot C_UnwrapKey OAEP_SHA256"), std::string::npos)
        << message(0);
    EXPECT_NE(message(0).find("CKM_AES_CBC_PAD"), std::string::npos) << message(0);
  }
  if (nss()) {
    ExpectRewrapped(resp.results(1), "cms-ec", ec, Rcp::kCertDer, v1::CMS_ENVELOPED, pw, k,
                    v1::OAEP_SHA256);
    EXPECT_EQ(resp.results(1).path(), v1::IN_TOKEN);
  } else {
    ExpectItemError(resp.results(1), "cms-ec", v1::ItemError::UNSUPPORTED);
    EXPECT_NE(message(1).find("CKM_ECDH1_DERIVE"), std::string::npos) << message(1);
  }
  ExpectItemError(resp.results(2), "apple", v1::ItemError::UNSUPPORTED);
  EXPECT_NE(message(2).find("never built in the token"), std::string::npos) << message(2);
  // OAEP-SHA1 in and out: both tokens unwrap and wrap it in the token.
  ExpectRewrapped(resp.results(3), "bare-sha1", d, Rcp::kSpkiDer, v1::RSA_OAEP_SHA1, pw, k,
                  v1::OAEP_SHA1);
  EXPECT_EQ(resp.results(3).path(), v1::IN_TOKEN);
  for (int i = 0; i < 3; ++i) {
    if (resp.results(i).has_error()) {  // (each of the first three fails on some token)
      EXPECT_NE(message(i).find("requires the IN_TOKEN path (require_in_token)"), std::string::npos)
          << message(i);
    }
  }

  // SoftHSM2 with OAEP-SHA1 sealed secrets (which it unwraps): the CMS output is what it
  // cannot build, and the message names the mechanisms.
  if (!nss()) {
    v1::RewrapRequest req2;
    AddItem(&req2, "cms-sha1", k.name, v1::OAEP_SHA1, Seal(k, v1::OAEP_SHA1, pw), d,
            Rcp::kCertDer, v1::CMS_ENVELOPED);
    v1::RewrapResponse resp2;
    ASSERT_NO_FATAL_FAILURE(CallRewrap(h.get(), req2, &resp2));
    ExpectItemError(resp2.results(0), "cms-sha1", v1::ItemError::UNSUPPORTED);
    const std::string m = resp2.results(0).error().message();
    EXPECT_NE(m.find("CKM_AES_CBC_PAD"), std::string::npos) << m;
    EXPECT_EQ(m.find("C_UnwrapKey"), std::string::npos) << m;
    EXPECT_NE(m.find("AES-256-CBC"), std::string::npos) << m;
  }
  EXPECT_EQ(h->Stop(), "");
}

}  // namespace
}  // namespace hsmrewrap::it
