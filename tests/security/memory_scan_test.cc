// No plaintext left in rewrapd's memory: seals distinct random passwords to a service key,
// rewraps each one in every output format (CMS_ENVELOPED with each content cipher, to a
// certificate, a bare public key and an EC certificate; CMS_ENVELOPED_PKCS1; the Apple
// payload; every bare RSA format), then reads all of the running rewrapd's writable memory
// (/proc/PID/maps + /proc/PID/mem) and counts the places each password is found, as it
// went in (raw), as UTF-16LE, and in the leak check's hex and base64 forms. 0 is the only
// right answer: every buffer that held a plaintext must have been wiped before it was
// freed (issue 20, point 6: OpenSSL's CMS_final and libplist left every CMS and Apple
// payload plaintext in the heap).
//
// Reading another process's memory needs ptrace rights over it, and rewrapd makes itself
// non-dumpable, so this takes CAP_SYS_PTRACE (root, as in CI); without it the test is
// skipped with the reason. Sanitizer builds skip it too: their allocators and shadow
// memory are not the heap this is about.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <tuple>

#include "tests/integration/it_env.h"
#include "tests/integration/it_util.h"
#include "tests/leakcheck/record.h"
#include "tests/leakcheck/scan.h"

namespace hsmrewrap::it {
namespace {

constexpr int kPasswords = 8;
constexpr size_t kPasswordLen = 24;

// Printable, without the characters an XML plist escapes (&, <, >): the Apple payload's
// plist then carries each password exactly as it went in, so one search finds both.
std::string RandomPassword() {
  static const char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#%()*+,-./:;=?@[]^_{|}~";
  const std::string r = RandomBytes(kPasswordLen);
  std::string s;
  for (unsigned char c : r) s.push_back(kAlphabet[c % (sizeof(kAlphabet) - 1)]);
  return s;
}

std::string Utf16Le(const std::string& s) {
  std::string out;
  for (char c : s) {
    out.push_back(c);
    out.push_back('\0');
  }
  return out;
}

struct Region {
  uint64_t start = 0, end = 0;
  std::string name;  // the path or [heap], [stack], ...; empty for anonymous memory
};

// The process's readable and writable mappings (not [vvar]/[vsyscall]/[vdso]).
std::vector<Region> WritableRegions(pid_t pid) {
  std::vector<Region> out;
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  for (std::string line; std::getline(maps, line);) {
    std::istringstream in(line);
    std::string range, perms, offset, dev, inode, name;
    in >> range >> perms >> offset >> dev >> inode;
    std::getline(in >> std::ws, name);
    if (perms.size() < 2 || perms[0] != 'r' || perms[1] != 'w') continue;
    if (name == "[vvar]" || name == "[vsyscall]" || name == "[vdso]") continue;
    const size_t dash = range.find('-');
    Region r;
    r.start = std::stoull(range.substr(0, dash), nullptr, 16);
    r.end = std::stoull(range.substr(dash + 1), nullptr, 16);
    r.name = name;
    out.push_back(r);
  }
  return out;
}

struct Hit {
  size_t password;
  std::string form;
  uint64_t address;
  std::string region;
};

struct ScanReport {
  std::vector<Hit> hits;
  uint64_t bytes = 0;       // read
  uint64_t unreadable = 0;  // bytes of mappings that could not be read
  size_t regions = 0;
};

// Reads every writable mapping of `pid` through /proc/PID/mem (in chunks that overlap by
// a needle's length) and searches it for every needle. `error` is set when the memory file
// cannot be opened at all.
ScanReport ScanMemory(pid_t pid, const leakcheck::MultiSearch& search,
                      const std::vector<std::pair<size_t, std::string>>& needle_of, size_t longest,
                      std::string* error) {
  ScanReport report;
  const std::string path = "/proc/" + std::to_string(pid) + "/mem";
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *error = "cannot open " + path + ": " + std::strerror(errno);
    return report;
  }
  constexpr uint64_t kChunk = 4 << 20;
  constexpr uint64_t kPage = 4096;
  std::set<std::pair<uint64_t, size_t>> seen;  // (address, needle)
  std::string buf;
  for (const Region& r : WritableRegions(pid)) {
    ++report.regions;
    for (uint64_t at = r.start; at < r.end; at += kChunk) {
      const uint64_t want = std::min<uint64_t>(kChunk + longest, r.end - at);
      buf.assign(want, '\0');
      ssize_t got = ::pread(fd, buf.data(), want, static_cast<off_t>(at));
      if (got != static_cast<ssize_t>(want)) {
        // Page by page: skip what cannot be read (e.g. a mapping that went away).
        for (uint64_t page = 0; page < want; page += kPage) {
          const uint64_t n = std::min(kPage, want - page);
          if (::pread(fd, buf.data() + page, n, static_cast<off_t>(at + page)) !=
              static_cast<ssize_t>(n)) {
            std::memset(buf.data() + page, 0, n);
            if (page < kChunk) report.unreadable += std::min(n, kChunk - page);
          }
        }
        got = static_cast<ssize_t>(want);
      }
      report.bytes += std::min<uint64_t>(kChunk, want);
      search.Search(std::string_view(buf.data(), static_cast<size_t>(got)),
                    [&](size_t id, size_t offset) {
                      if (seen.emplace(at + offset, id).second) {
                        report.hits.push_back({needle_of[id].first, needle_of[id].second,
                                               at + offset, r.name.empty() ? "anonymous" : r.name});
                      }
                    });
    }
  }
  ::close(fd);
  return report;
}

struct Output {
  v1::OutputFormat format;
  v1::ContentCipher cipher;
  const Device* device;
  Rcp rcp;
  bool big = false;  // Apple payload: a 40 KB file in PayloadContent (buffers that must grow)
  std::string Name() const {
    std::string n = FormatName(format);
    if (big) n += " (40 KB PFX)";
    if (IsCms(format) || format == v1::APPLE_ENCRYPTED_PAYLOAD) {
      n += std::string(" ") + v1::ContentCipher_Name(cipher);
      n += device->key && EVP_PKEY_get_base_id(device->key.get()) == EVP_PKEY_EC ? " to EC" : "";
      n += IsCert(rcp) ? " certificate" : " public key";
    }
    return n;
  }
};

// Every password sealed, rewrapped and checked, and the searches of rewrapd's memory.
class MemoryScanTest : public ::testing::Test {
 protected:
  void SetUp() override {
#if defined(HSMREWRAP_SANITIZED)
    const std::string sanitized =
        "sanitizer build (" HSMREWRAP_SANITIZED
        "): its allocator and shadow memory are not the heap this test is about; the plain "
        "build runs it";
    leakcheck::MarkSkipped(sanitized);  // no rewrapd ran: the log leak check expects none
    GTEST_SKIP() << sanitized;
#endif
    std::string error;
    h_ = SharedHarness(&error);
    ASSERT_NE(h_, nullptr) << error;
    // Without ptrace rights over rewrapd (it is not dumpable) its memory cannot be read.
    const std::string path = "/proc/" + std::to_string(h_->pid()) + "/mem";
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      const std::string why = "cannot read rewrapd's memory (" + path + ": " +
                              std::strerror(errno) +
                              "): this test needs CAP_SYS_PTRACE (run it as root, as CI does)";
      leakcheck::MarkSkipped(why);  // nothing sealed: the log leak check expects no secret
      GTEST_SKIP() << why;
    }
    ::close(fd);
    ASSERT_NO_FATAL_FAILURE(CreateServiceKey(h_, "memscan", 2048, false, &key_));
    pfx_ = Pkcs12(rsa_.key.get(), rsa_.cert.get(), "the PFX's own password");
    big_pfx_ = pfx_ + RandomBytes(40000 - pfx_.size());  // PayloadContent is not parsed
  }

  // Every output format, content cipher and kind of recipient.
  std::vector<Output> Outputs() const {
    std::vector<Output> out;
    for (v1::ContentCipher c : {v1::AES_256_CBC, v1::AES_128_CBC, v1::DES_EDE3_CBC}) {
      out.push_back({v1::CMS_ENVELOPED, c, &rsa_, Rcp::kCertDer});
      out.push_back({v1::CMS_ENVELOPED, c, &rsa_, Rcp::kSpkiDer});
      // EC devices: AES only (3DES is refused for them), no Apple payload (refused too).
      if (c != v1::DES_EDE3_CBC) out.push_back({v1::CMS_ENVELOPED, c, &ec_, Rcp::kCertDer});
      out.push_back({v1::CMS_ENVELOPED_PKCS1, c, &rsa_, Rcp::kCertDer});
      out.push_back({v1::APPLE_ENCRYPTED_PAYLOAD, c, &rsa_, Rcp::kCertDer});
    }
    out.push_back({v1::APPLE_ENCRYPTED_PAYLOAD, v1::AES_256_CBC, &rsa_, Rcp::kCertDer, true});
    for (v1::OutputFormat f : {v1::RSA_OAEP_SHA256, v1::RSA_OAEP_SHA1, v1::RSA_OAEP_SHA384,
                               v1::RSA_OAEP_SHA512, v1::RSA_PKCS1}) {
      out.push_back({f, v1::AES_256_CBC, &rsa_, Rcp::kSpkiDer});
    }
    return out;
  }

  // A new password, distinct from every other, sealed to the service key (and recorded for
  // the log leak check by RsaEncrypt).
  size_t NewPassword() {
    std::string pw;
    do {
      pw = RandomPassword();
    } while (!distinct_.insert(pw).second);
    passwords_.push_back(pw);
    sealed_.push_back(Seal(key_, v1::OAEP_SHA256, pw));
    return passwords_.size() - 1;
  }

  // Rewraps each (password, output) in one batch and checks every result decrypts to it.
  void Rewrap(const std::vector<std::pair<size_t, Output>>& items) {
    v1::RewrapRequest req;
    for (size_t i = 0; i < items.size(); ++i) {
      const auto& [p, o] = items[i];
      v1::RewrapItem* item =
          AddItem(&req, "p" + std::to_string(p) + "-" + std::to_string(i), key_.name,
                  v1::OAEP_SHA256, sealed_[p], *o.device, o.rcp, o.format);
      item->set_content_cipher(o.cipher);
      if (o.format == v1::APPLE_ENCRYPTED_PAYLOAD) item->set_pfx(o.big ? big_pfx_ : pfx_);
    }
    v1::RewrapResponse resp;
    ASSERT_NO_FATAL_FAILURE(CallRewrap(h_, req, &resp));
    for (int i = 0; i < resp.results_size(); ++i) {
      const auto& r = resp.results(i);
      const auto& [p, o] = items[static_cast<size_t>(i)];
      ASSERT_FALSE(r.has_error()) << r.id() << " (" << o.Name() << "): " << r.error().message();
      if (o.format == v1::APPLE_ENCRYPTED_PAYLOAD) {
        const CmsResult c = CmsDecrypt(o.device->key.get(), o.device->cert.get(), r.ciphertext());
        ASSERT_TRUE(c.ok) << r.id() << ": " << c.error;
        EXPECT_NE(
            c.plaintext.find("<key>Password</key>\n\t\t<string>" + passwords_[p] + "</string>"),
            std::string::npos)
            << r.id();
        continue;
      }
      std::string why;
      auto plain = DecryptOutput(*o.device, o.format, IsCert(o.rcp), r.ciphertext(), &why);
      ASSERT_TRUE(plain.has_value()) << r.id() << ": " << why;
      EXPECT_EQ(*plain, passwords_[p]) << r.id();
    }
  }

  // Searches rewrapd's writable memory for every password so far: as it went in, as
  // UTF-16LE, and in the leak check's hex and base64 forms.
  ScanReport Scan() {
    leakcheck::MultiSearch search;
    needle_of_.clear();
    size_t longest = 0;
    for (size_t p = 0; p < passwords_.size(); ++p) {
      auto forms = leakcheck::Encodings(passwords_[p]);
      forms.emplace_back("utf16le", Utf16Le(passwords_[p]));
      for (const auto& [name, bytes] : forms) {
        EXPECT_TRUE(search.Add(bytes, needle_of_.size()));
        needle_of_.emplace_back(p, name);
        longest = std::max(longest, bytes.size());
      }
    }
    std::string error;
    ScanReport scan = ScanMemory(h_->pid(), search, needle_of_, longest, &error);
    EXPECT_TRUE(error.empty()) << error;
    EXPECT_GT(scan.bytes, 1u << 20) << "read next to nothing: the scan is broken";
    return scan;
  }

  RewrapdHarness* h_ = nullptr;
  ServiceKey key_;
  const Device rsa_ = MakeDevice(2048, "memscan-rsa");
  const Device ec_ = MakeEcDevice("memscan-ec");
  std::string pfx_, big_pfx_;
  std::vector<std::string> passwords_, sealed_;
  std::set<std::string> distinct_;
  std::vector<std::pair<size_t, std::string>> needle_of_;
};

std::string Describe(const ScanReport& scan, const std::vector<std::string>& owner) {
  std::map<std::string, int> per_owner, per_form, per_region;
  for (const Hit& hit : scan.hits) {
    per_owner[owner[hit.password]]++;
    per_form[hit.form]++;
    per_region[hit.region]++;
  }
  std::ostringstream o;
  for (const auto& [w, n] : per_owner)
    o << "  " << n << " of a password rewrapped as " << w << "\n";
  for (const auto& [f, n] : per_form) o << "  " << n << " as " << f << "\n";
  for (const auto& [r, n] : per_region) o << "  " << n << " in " << r << "\n";
  for (size_t i = 0; i < scan.hits.size() && i < 10; ++i) {
    o << "  password #" << scan.hits[i].password << " as " << scan.hits[i].form << " at 0x"
      << std::hex << scan.hits[i].address << std::dec << " (" << scan.hits[i].region << ")\n";
  }
  return o.str();
}

// 1. One password per output, each rewrapped alone and followed by a scan (a later item
//    could reuse, and so overwrite, an unwiped buffer: scanning right after each one shows
//    which outputs leave their plaintext). 2. kPasswords passwords, each in every output,
//    in one batch, then one more scan for every password of the run. 0 occurrences.
TEST_F(MemoryScanTest, NoPlaintextLeftAfterEveryOutputFormat) {
  const std::vector<Output> outputs = Outputs();
  std::vector<std::string> owner;  // per password: the outputs it went through
  std::set<std::tuple<size_t, std::string, uint64_t>> found;  // password, form, address
  std::ostringstream leaks;
  // The occurrences a scan finds that no earlier scan found.
  auto news = [&found](ScanReport scan) {
    std::vector<Hit> fresh;
    for (const Hit& hit : scan.hits) {
      if (found.emplace(hit.password, hit.form, hit.address).second) fresh.push_back(hit);
    }
    scan.hits = std::move(fresh);
    return scan;
  };
  for (const Output& o : outputs) {
    const size_t p = NewPassword();
    owner.push_back(o.Name());
    ASSERT_NO_FATAL_FAILURE(Rewrap({{p, o}}));
    const ScanReport scan = news(Scan());
    if (!scan.hits.empty()) leaks << "after " << o.Name() << ":\n" << Describe(scan, owner);
  }
  std::vector<std::pair<size_t, Output>> all;
  for (int i = 0; i < kPasswords; ++i) {
    const size_t p = NewPassword();
    owner.push_back("every output");
    for (const Output& o : outputs) all.emplace_back(p, o);
  }
  ASSERT_NO_FATAL_FAILURE(Rewrap(all));
  const ScanReport scan = news(Scan());
  if (!scan.hits.empty())
    leaks << "after all " << all.size() << " items:\n" << Describe(scan, owner);
  const size_t total = found.size();
  printf(
      "[memscan] %zu outputs one by one, then %zu items (%d passwords x %zu outputs); last "
      "scan: %.1f MiB in %zu writable mappings of rewrapd (pid %d, %llu bytes unreadable); "
      "%zu distinct occurrences of the %zu passwords found in all scans\n",
      outputs.size(), all.size(), kPasswords, outputs.size(),
      static_cast<double>(scan.bytes) / (1 << 20), scan.regions, static_cast<int>(h_->pid()),
      static_cast<unsigned long long>(scan.unreadable), total, passwords_.size());
  EXPECT_EQ(total, 0u) << "plaintext left in rewrapd's memory:\n" << leaks.str();
}

}  // namespace
}  // namespace hsmrewrap::it
