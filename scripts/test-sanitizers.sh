#!/usr/bin/env bash
# Builds the whole project with clang, AddressSanitizer and UndefinedBehaviorSanitizer
# (plus the libFuzzer targets) into ./build-asan and runs the whole test suite there.
# Any sanitizer report fails the test that triggered it. Arguments go to ctest.
# CI runs it after ./scripts/test.sh (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/sanitizer-env.sh
san_configure_and_build
cd "$SAN_BUILD_DIR"
# Instrumented binaries are slower: generous per-test timeout, same parallelism.
ctest --output-on-failure --timeout 1500 -j "${TEST_JOBS:-2}" "$@"
