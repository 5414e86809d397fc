# Sourced by scripts/test-sanitizers.sh and scripts/fuzz.sh: the sanitizer build's folder,
# its CMake options and the runtime options every instrumented process inherits.
SAN_BUILD_DIR=${SAN_BUILD_DIR:-build-asan}
SAN_CMAKE_ARGS=(-DHSMREWRAP_SANITIZE=address,undefined -DHSMREWRAP_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo)
_supp="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/sanitizers"
# detect_leaks: our code must not leak; known leaks of uninstrumented system libraries that
# we load (SoftHSM2, NSS softoken, gRPC's globals) are listed, with reasons, in lsan.supp.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=0:strict_string_checks=1:allocator_may_return_null=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export LSAN_OPTIONS="suppressions=$_supp/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$_supp/ubsan.supp${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

san_configure_and_build() {
  local werror=OFF
  if [ "${CI:-}" = "true" ]; then werror=ON; fi
  CC=clang CXX=clang++ cmake -S . -B "$SAN_BUILD_DIR" -G Ninja -DHSMREWRAP_WERROR="$werror" \
    "${SAN_CMAKE_ARGS[@]}" ${CMAKE_ARGS:-} >/dev/null
  cmake --build "$SAN_BUILD_DIR" -j "${JOBS:-2}"
}

# scripts/test-sanitizers.sh --tsan: ThreadSanitizer instead (its folder, ./build-tsan
# unless SAN_BUILD_DIR is set, is chosen by that script before sourcing this file). No
# fuzzers. absl::Mutex is made visible to TSan by tests/sanitizers/tsan_absl_mutex.cc;
# tsan.supp lists, with reasons, what is ignored inside uninstrumented third-party libraries.
san_use_tsan() {
  SAN_CMAKE_ARGS=(-DHSMREWRAP_SANITIZE=thread -DCMAKE_BUILD_TYPE=RelWithDebInfo)
  export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$_supp/tsan.supp${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
}
