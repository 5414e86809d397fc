// SecretString and SecretBytes keep their bytes where they are wiped.
// Wipes are observed through internal::SetCleanseObserverForTesting, which sees each wiped
// range while it is still allocated; no test reads freed memory.
#include "crypto/secret.h"

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace hsmrewrap::crypto {
namespace {

struct CleanseRecord {
  uintptr_t begin;
  size_t n;
  bool zeros;  // every byte of the range was 0 right after the wipe
};

std::vector<CleanseRecord>* g_records = nullptr;

void RecordCleanse(const void* p, size_t n) {
  if (g_records == nullptr) return;
  const auto* b = static_cast<const unsigned char*>(p);
  const bool zeros = std::all_of(b, b + n, [](unsigned char c) { return c == 0; });
  g_records->push_back({reinterpret_cast<uintptr_t>(p), n, zeros});
}

// Records every Cleanse while it lives.
class CleanseRecorder {
 public:
  CleanseRecorder() {
    g_records = &records_;
    internal::SetCleanseObserverForTesting(&RecordCleanse);
  }
  ~CleanseRecorder() {
    internal::SetCleanseObserverForTesting(nullptr);
    g_records = nullptr;
  }
  CleanseRecorder(const CleanseRecorder&) = delete;
  CleanseRecorder& operator=(const CleanseRecorder&) = delete;

  // True when one recorded wipe covered all of [p, p + n) and left zeros there.
  bool Wiped(const void* p, size_t n) const {
    const auto b = reinterpret_cast<uintptr_t>(p);
    return std::any_of(records_.begin(), records_.end(), [&](const CleanseRecord& r) {
      return r.zeros && r.begin <= b && b + n <= r.begin + r.n;
    });
  }
  void Reset() { records_.clear(); }

 private:
  std::vector<CleanseRecord> records_;
};

// True when `p` points into the bytes of the object `o` itself.
template <typename T>
bool Inside(const void* p, const T& o) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  const auto begin = reinterpret_cast<uintptr_t>(&o);
  return a >= begin && a < begin + sizeof(T);
}

std::string_view View(const SecretString& s) { return std::string_view(s.data(), s.size()); }

TEST(SecretStringTest, ShortSecretIsNotInsideTheObject) {
  // The check can see a small-string buffer: std::string keeps 5 bytes inline.
  const std::string probe("12345");
  ASSERT_TRUE(Inside(probe.data(), probe)) << "expected libstdc++'s small-string optimisation";

  for (size_t n : {1, 5, 8, 15, 16, 31}) {
    const std::string text(n, 'p');
    SCOPED_TRACE(n);
    const SecretString from_view(text);
    const SecretString from_pointer(text.data(), text.size());
    const SecretString from_iterators(text.begin(), text.end());
    SecretString pushed;
    for (char c : text) pushed.push_back(c);
    SecretString assigned;
    assigned.assign(text.data(), text.size());
    SecretString appended;
    appended.append(from_view);
    const SecretString copied(from_view);
    SecretString copy_assigned;
    copy_assigned = from_view;
    SecretString moved_from(text);
    const SecretString moved(std::move(moved_from));
    const std::vector<const SecretString*> all = {&from_view, &from_pointer,  &from_iterators,
                                                  &pushed,    &assigned,      &appended,
                                                  &copied,    &copy_assigned, &moved};
    for (const SecretString* s : all) {
      EXPECT_EQ(View(*s), text);
      EXPECT_FALSE(Inside(s->data(), *s));
    }
  }
}

TEST(SecretStringTest, DestructionWipesTheBuffer) {
  CleanseRecorder recorder;
  const void* p = nullptr;
  {
    const SecretString s("12345");
    p = s.data();
  }
  EXPECT_TRUE(recorder.Wiped(p, 6)) << "the 5 bytes and the terminator";
}

TEST(SecretStringTest, ClearWipesTheBytes) {
  CleanseRecorder recorder;
  SecretString s("12345");
  const void* p = s.data();
  s.clear();
  EXPECT_TRUE(recorder.Wiped(p, 5));
  EXPECT_TRUE(s.empty());
  EXPECT_STREQ(s.c_str(), "");
  s.push_back('x');  // still usable
  EXPECT_EQ(View(s), "x");
}

TEST(SecretStringTest, GrowthWipesTheOldBuffer) {
  CleanseRecorder recorder;
  SecretString s("12345");
  const void* first = s.data();
  while (s.data() == first) s.push_back('6');  // until it reallocates
  EXPECT_TRUE(recorder.Wiped(first, 6));

  recorder.Reset();
  const void* second = s.data();
  const size_t size = s.size();
  s.reserve(s.capacity() + 100);
  ASSERT_NE(s.data(), second);
  EXPECT_TRUE(recorder.Wiped(second, size + 1));

  recorder.Reset();
  const void* third = s.data();
  s.append(SecretString(std::string(4 * s.capacity(), 'a')));
  EXPECT_TRUE(recorder.Wiped(third, size + 1));
}

TEST(SecretStringTest, ShrinkingWipesWhatIsCutOff) {
  CleanseRecorder recorder;
  SecretString s("1234567890");
  s.resize(3);
  EXPECT_EQ(View(s), "123");
  EXPECT_EQ(s.c_str()[3], '\0');
  EXPECT_TRUE(recorder.Wiped(s.data() + 4, 7)) << "\"567890\" and the old terminator";
  s.pop_back();
  EXPECT_EQ(View(s), "12");
  EXPECT_EQ(s.c_str()[2], '\0') << "the popped byte became the terminator";
}

TEST(SecretStringTest, MovingLeavesNoCopyAndAssignmentWipesTheOldValue) {
  CleanseRecorder recorder;
  SecretString a("12345");
  const void* p = a.data();
  SecretString b(std::move(a));
  EXPECT_EQ(b.data(), p) << "the buffer moved";
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move): the moved-from state is the point
  EXPECT_NE(a.data(), p);

  SecretString c("abc");
  const void* q = c.data();
  c = std::move(b);
  EXPECT_EQ(c.data(), p);
  EXPECT_TRUE(b.empty());  // NOLINT(bugprone-use-after-move)
  EXPECT_TRUE(recorder.Wiped(q, 4)) << "the value move assignment replaced";

  SecretString d("xyz");
  const void* r = d.data();
  d = c;
  EXPECT_EQ(View(d), "12345");
  EXPECT_NE(d.data(), c.data()) << "a copy has its own buffer";
  EXPECT_TRUE(recorder.Wiped(r, 4)) << "the value copy assignment replaced";
}

TEST(SecretStringTest, BehavesLikeAString) {
  const SecretString empty;
  EXPECT_TRUE(empty.empty());
  EXPECT_EQ(empty.size(), 0u);
  EXPECT_STREQ(empty.c_str(), "");
  EXPECT_EQ(empty.begin(), empty.end());

  const SecretString s("Hello");
  EXPECT_EQ(s.size(), 5u);
  EXPECT_STREQ(s.c_str(), "Hello");
  EXPECT_EQ(s.data(), s.c_str());
  EXPECT_EQ(s[1], 'e');
  EXPECT_EQ(s.back(), 'o');
  EXPECT_EQ(std::string(s.begin(), s.end()), "Hello");
  EXPECT_EQ(s, SecretString("Hello"));
  EXPECT_NE(s, SecretString("Hellp"));
  EXPECT_NE(s, SecretString("Hell"));
  EXPECT_EQ(SecretString(""), empty);

  const SecretString with_nul("a\0b", 3);
  EXPECT_EQ(with_nul.size(), 3u);
  EXPECT_EQ(with_nul.c_str()[3], '\0');

  const std::vector<uint8_t> bytes = {0xC3, 0xA9};
  EXPECT_EQ(View(SecretString(bytes.begin(), bytes.end())), "\xC3\xA9");

  SecretString grown("ab");
  grown.append(grown);  // itself
  EXPECT_EQ(View(grown), "abab");
  grown.append("cd", 2);
  grown.append("", 0);
  EXPECT_EQ(View(grown), "ababcd");
  grown.resize(8);
  EXPECT_EQ(View(grown), std::string_view("ababcd\0\0", 8));
  grown[0] = 'X';
  EXPECT_EQ(grown[0], 'X');
  grown.assign("pq", 2);
  EXPECT_EQ(View(grown), "pq");
  const std::string text = "from a string";
  grown.assign(text.begin(), text.end());
  EXPECT_EQ(View(grown), text);
  grown.reserve(100);
  EXPECT_GE(grown.capacity(), 100u);
  EXPECT_EQ(View(grown), text);
}

// A random sequence of the operations above gives the same text as std::string, and the
// terminator is always in place.
TEST(SecretStringTest, MatchesStdStringOverRandomOperations) {
  std::mt19937 rng(14);
  SecretString s;
  std::string model;
  for (int step = 0; step < 5000; ++step) {
    const char c = static_cast<char>('a' + rng() % 26);
    switch (rng() % 9) {
      case 0:
        s.push_back(c);
        model.push_back(c);
        break;
      case 1:
        if (model.empty()) break;
        s.pop_back();
        model.pop_back();
        break;
      case 2: {
        const std::string t(rng() % 40, c);
        s.append(t.data(), t.size());
        model.append(t);
        break;
      }
      case 3: {
        const size_t n = rng() % 64;
        s.resize(n);
        model.resize(n);
        break;
      }
      case 4:
        if (rng() % 8 != 0) break;
        s.clear();
        model.clear();
        break;
      case 5: {
        const std::string t(rng() % 20, c);
        s.assign(t.data(), t.size());
        model = t;
        break;
      }
      case 6: {
        const SecretString copy(s);
        s = copy;
        break;
      }
      case 7: {
        SecretString moved(std::move(s));
        s = std::move(moved);
        break;
      }
      default:
        s.reserve(rng() % 128);
        break;
    }
    ASSERT_EQ(View(s), model) << "step " << step;
    ASSERT_EQ(s.c_str()[s.size()], '\0') << "step " << step;
  }
}

TEST(SecretBytesTest, GrowthWipesTheOldBuffer) {
  CleanseRecorder recorder;
  SecretBytes b(5, 0x42);
  const void* p = b.data();
  b.resize(b.capacity() + 100);
  ASSERT_NE(b.data(), p);
  EXPECT_TRUE(recorder.Wiped(p, 5));
}

}  // namespace
}  // namespace hsmrewrap::crypto
