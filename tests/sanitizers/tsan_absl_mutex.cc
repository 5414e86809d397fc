// ThreadSanitizer build only (-DHSMREWRAP_SANITIZE=thread; CMakeLists.txt links this file
// into every executable): tells TSan about absl::Mutex and absl::CondVar.
//
// Why: absl::Mutex::Lock/Unlock/Await... and CondVar::Wait are not inline; they live in
// Debian's uninstrumented libabsl_synchronization.so, which locks with atomics and futex
// system calls that TSan never sees. Without this file every member guarded by an
// absl::Mutex (session pool, supervisor, backend, call runner; and gRPC's own locks, which
// are absl::Mutex too) would be reported as a race. Defining a macro does not help: the
// ABSL_TSAN_MUTEX_* hooks (absl/base/internal/tsan_mutex_interface.h) are already on in
// our translation units (ABSL_HAVE_THREAD_SANITIZER comes from -fsanitize=thread), but
// only the inline constructor uses them; the lock operations that need them were compiled
// into the .so without them. TSan's options cannot fix it either: called_from_lib: and
// ignore_noninstrumented_modules=1 only silence the interceptors that such a library
// calls; the happens-before edge is still missing, and the reports are in our own frames.
//
// How: this file defines the same (mangled) absl::Mutex / CondVar member functions in the
// executable. The executable's definition interposes on the .so's for every caller (our
// code, gRPC, and absl's own cross-calls, which go through the PLT); each one announces
// the operation with the public __tsan_mutex_* annotations, exactly where upstream absl's
// own TSan build puts ABSL_TSAN_MUTEX_* (mutex.cc), and forwards to the real function found
// with dlsym(RTLD_NEXT). Only the outermost interposed call on a thread annotates (absl's
// own calls, e.g. LockWhenWithTimeout -> LockWhenWithDeadline, just forward). Between the
// pre_ and post_ annotations TSan ignores the thread's accesses, so conditions that absl
// evaluates inside Lock/Unlock are not checked (as upstream), never falsely reported.
// Not covered: absl::Notification's lock-free fast path (HasBeenNotified is an inline
// atomic load of a flag the .so stores): Notify/WaitForNotification are annotated below,
// but a thread that only polls HasBeenNotified() gets no happens-before edge. Our
// production code does not use Notification; only unit tests do.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

#ifndef __SANITIZE_THREAD__
#if defined(__has_feature)
#if !__has_feature(thread_sanitizer)
#error "tsan_absl_mutex.cc is for the ThreadSanitizer build only"
#endif
#endif
#endif

namespace {

#define HSMREWRAP_STR2(x) #x
#define HSMREWRAP_STR(x) HSMREWRAP_STR2(x)

// The real function: `tail` is the mangled name after "_ZN[K]4absl<len><inline namespace>",
// e.g. "5Mutex4LockEv" (`is_const`: a const member, _ZNK). Aborts if the library does not
// have it, so an absl upgrade that renames one fails loudly instead of silently.
void* Real(bool is_const, const char* tail) {
  std::string name = is_const ? "_ZNK4absl" : "_ZN4absl";
#if ABSL_OPTION_USE_INLINE_NAMESPACE
  const std::string ns = HSMREWRAP_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  name += std::to_string(ns.size()) + ns;
#endif
  name += tail;
  void* f = dlsym(RTLD_NEXT, name.c_str());
  if (f == nullptr) {
    std::fprintf(stderr, "tsan_absl_mutex: %s not found: %s\n", name.c_str(), dlerror());
    std::abort();
  }
  return f;
}

template <typename F>
F RealAs(const char* tail) {
  return reinterpret_cast<F>(Real(false, tail));
}
template <typename F>
F RealConstAs(const char* tail) {
  return reinterpret_cast<F>(Real(true, tail));
}

// Depth of interposed calls on this thread: only the outermost one annotates.
thread_local int t_depth = 0;
struct Outer {
  const bool outer = t_depth++ == 0;
  ~Outer() { --t_depth; }
};

// Mutexes this thread holds in reader mode (Await and CondVar::Wait must release and
// re-acquire them with the same mode they were taken in; absl offers no query).
constexpr int kMaxReaders = 32;
thread_local const void* t_readers[kMaxReaders];
thread_local int t_nreaders = 0;
void AddReader(const void* m) {
  if (t_nreaders < kMaxReaders) t_readers[t_nreaders++] = m;
}
void RemoveReader(const void* m) {
  for (int i = t_nreaders - 1; i >= 0; --i) {
    if (t_readers[i] == m) {
      t_readers[i] = t_readers[--t_nreaders];
      return;
    }
  }
}
unsigned HeldFlags(const void* m) {
  for (int i = 0; i < t_nreaders; ++i) {
    if (t_readers[i] == m) return __tsan_mutex_read_lock;
  }
  return 0;
}

// Acquire/release around a real call.
template <typename Call>
auto Locking(void* m, unsigned flags, Call call) {
  Outer o;
  if (!o.outer) return call();
  __tsan_mutex_pre_lock(m, flags);
  auto r = call();
  __tsan_mutex_post_lock(m, flags, 0);
  if (flags & __tsan_mutex_read_lock) AddReader(m);
  return r;
}

// Await / CondVar::Wait: the real call releases `m` and holds it again on return.
template <typename Call>
auto Waiting(void* m, Call call) {
  Outer o;
  if (!o.outer) return call();
  const unsigned flags = HeldFlags(m);
  __tsan_mutex_pre_unlock(m, flags);
  auto r = call();
  __tsan_mutex_post_unlock(m, flags);
  __tsan_mutex_pre_lock(m, flags);
  __tsan_mutex_post_lock(m, flags, 0);
  return r;
}

using MuFn = void (*)(absl::Mutex*);
using MuBoolFn = bool (*)(absl::Mutex*);
using MuCondFn = void (*)(absl::Mutex*, const absl::Condition&);
using MuCondBoolFn = bool (*)(absl::Mutex*, const absl::Condition&);
using MuCondDurFn = bool (*)(absl::Mutex*, const absl::Condition&, absl::Duration);
using MuCondTimeFn = bool (*)(absl::Mutex*, const absl::Condition&, absl::Time);
using CvFn = void (*)(absl::CondVar*, absl::Mutex*);
using CvDurFn = bool (*)(absl::CondVar*, absl::Mutex*, absl::Duration);
using CvTimeFn = bool (*)(absl::CondVar*, absl::Mutex*, absl::Time);
using NoteFn = void (*)(absl::Notification*);
using NoteWaitFn = void (*)(const absl::Notification*);
using NoteDurFn = bool (*)(const absl::Notification*, absl::Duration);
using NoteTimeFn = bool (*)(const absl::Notification*, absl::Time);

struct Unit {};  // what the lambdas for void calls return, so Locking/Waiting serve both

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

Mutex::~Mutex() {
  static const auto real = RealAs<MuFn>("5MutexD1Ev");
  if (t_depth == 0) __tsan_mutex_destroy(this, __tsan_mutex_not_static);
  real(this);
}

void Mutex::Lock() {
  static const auto real = RealAs<MuFn>("5Mutex4LockEv");
  Locking(this, 0, [&] {
    real(this);
    return Unit{};
  });
}

void Mutex::ReaderLock() {
  static const auto real = RealAs<MuFn>("5Mutex10ReaderLockEv");
  Locking(this, __tsan_mutex_read_lock, [&] {
    real(this);
    return Unit{};
  });
}

bool Mutex::TryLock() {
  static const auto real = RealAs<MuBoolFn>("5Mutex7TryLockEv");
  Outer o;
  if (!o.outer) return real(this);
  __tsan_mutex_pre_lock(this, __tsan_mutex_try_lock);
  const bool ok = real(this);
  __tsan_mutex_post_lock(this, __tsan_mutex_try_lock | (ok ? 0 : __tsan_mutex_try_lock_failed), 0);
  return ok;
}

bool Mutex::ReaderTryLock() {
  static const auto real = RealAs<MuBoolFn>("5Mutex13ReaderTryLockEv");
  Outer o;
  if (!o.outer) return real(this);
  const unsigned f = __tsan_mutex_read_lock | __tsan_mutex_try_lock;
  __tsan_mutex_pre_lock(this, f);
  const bool ok = real(this);
  __tsan_mutex_post_lock(this, f | (ok ? 0 : __tsan_mutex_try_lock_failed), 0);
  if (ok) AddReader(this);
  return ok;
}

void Mutex::Unlock() {
  static const auto real = RealAs<MuFn>("5Mutex6UnlockEv");
  Outer o;
  if (!o.outer) return real(this);
  __tsan_mutex_pre_unlock(this, 0);
  real(this);
  __tsan_mutex_post_unlock(this, 0);
}

void Mutex::ReaderUnlock() {
  static const auto real = RealAs<MuFn>("5Mutex12ReaderUnlockEv");
  Outer o;
  if (!o.outer) return real(this);
  RemoveReader(this);
  __tsan_mutex_pre_unlock(this, __tsan_mutex_read_lock);
  real(this);
  __tsan_mutex_post_unlock(this, __tsan_mutex_read_lock);
}

void Mutex::LockWhen(const Condition& cond) {
  static const auto real = RealAs<MuCondFn>("5Mutex8LockWhenERKNS0_9ConditionE");
  Locking(this, 0, [&] {
    real(this, cond);
    return Unit{};
  });
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  static const auto real = RealAs<MuCondFn>("5Mutex14ReaderLockWhenERKNS0_9ConditionE");
  Locking(this, __tsan_mutex_read_lock, [&] {
    real(this, cond);
    return Unit{};
  });
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real =
      RealAs<MuCondDurFn>("5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  return Locking(this, 0, [&] { return real(this, cond, timeout); });
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  static const auto real =
      RealAs<MuCondTimeFn>("5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  return Locking(this, 0, [&] { return real(this, cond, deadline); });
}

bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real =
      RealAs<MuCondDurFn>("5Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  return Locking(this, __tsan_mutex_read_lock, [&] { return real(this, cond, timeout); });
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, Time deadline) {
  static const auto real =
      RealAs<MuCondTimeFn>("5Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  return Locking(this, __tsan_mutex_read_lock, [&] { return real(this, cond, deadline); });
}

void Mutex::Await(const Condition& cond) {
  static const auto real = RealAs<MuCondFn>("5Mutex5AwaitERKNS0_9ConditionE");
  Waiting(this, [&] {
    real(this, cond);
    return Unit{};
  });
}

bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  static const auto real =
      RealAs<MuCondDurFn>("5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  return Waiting(this, [&] { return real(this, cond, timeout); });
}

bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  static const auto real =
      RealAs<MuCondTimeFn>("5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  return Waiting(this, [&] { return real(this, cond, deadline); });
}

void CondVar::Wait(Mutex* mu) {
  static const auto real = RealAs<CvFn>("7CondVar4WaitEPNS0_5MutexE");
  Waiting(mu, [&] {
    real(this, mu);
    return Unit{};
  });
}

bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  static const auto real = RealAs<CvDurFn>("7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  return Waiting(mu, [&] { return real(this, mu, timeout); });
}

bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  static const auto real = RealAs<CvTimeFn>("7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  return Waiting(mu, [&] { return real(this, mu, deadline); });
}

// Notification: Notify releases, a wait that returns notified acquires (on the object).
void Notification::Notify() {
  static const auto real = RealAs<NoteFn>("12Notification6NotifyEv");
  __tsan_release(this);
  real(this);
}

void Notification::WaitForNotification() const {
  static const auto real = RealConstAs<NoteWaitFn>("12Notification19WaitForNotificationEv");
  real(this);
  __tsan_acquire(const_cast<Notification*>(this));
}

bool Notification::WaitForNotificationWithTimeout(Duration timeout) const {
  static const auto real =
      RealConstAs<NoteDurFn>("12Notification30WaitForNotificationWithTimeoutENS0_8DurationE");
  const bool notified = real(this, timeout);
  if (notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

bool Notification::WaitForNotificationWithDeadline(Time deadline) const {
  static const auto real =
      RealConstAs<NoteTimeFn>("12Notification31WaitForNotificationWithDeadlineENS0_4TimeE");
  const bool notified = real(this, deadline);
  if (notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

ABSL_NAMESPACE_END
}  // namespace absl
