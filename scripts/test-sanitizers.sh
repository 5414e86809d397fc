#!/usr/bin/env bash
# Builds the whole project with clang, AddressSanitizer and UndefinedBehaviorSanitizer
# (plus the libFuzzer targets) into ./build-asan and runs the whole test suite there.
# Any sanitizer report fails the test that triggered it. Arguments go to ctest.
# CI runs it after ./scripts/test.sh (.ci/run).
#
# --tsan (first argument): ThreadSanitizer instead, into ./build-tsan (no fuzzers), running
# the integration tests (label `integration`, which every reliability test also has: the
# real rewrapd, its threads and the supervisor against real tokens). Arguments after it go
# to ctest; a selection of your own (-L, -LE, -R, -E, -I) replaces that default one.
# Not run by CI (slow; README.md has the times).
set -euo pipefail
cd "$(dirname "$0")/.."
tsan=false
if [ "${1:-}" = "--tsan" ]; then
  tsan=true
  shift
  SAN_BUILD_DIR=${SAN_BUILD_DIR:-build-tsan}
fi
./scripts/setup.sh
source scripts/sanitizer-env.sh
if $tsan; then
  san_use_tsan
  san_configure_and_build
  cd "$SAN_BUILD_DIR"
  select=(-L integration)
  for a in "$@"; do
    case "$a" in
      -L|-LE|-R|-E|-I|--label-regex*|--label-exclude*|--tests-regex*|--exclude-regex*|--tests-information*) select=() ;;
    esac
  done
  ctest --output-on-failure --timeout 1500 -j "${TEST_JOBS:-2}" "${select[@]}" "$@"
  exit
fi
san_configure_and_build
cd "$SAN_BUILD_DIR"
# Instrumented binaries are slower: generous per-test timeout, same parallelism.
ctest --output-on-failure --timeout 1500 -j "${TEST_JOBS:-2}" "$@"
