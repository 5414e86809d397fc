#!/usr/bin/env bash
# Sets up the machine, builds, and runs the whole test suite (unit, token, integration on
# SoftHSM2 and NSS softoken, Wycheproof, end to end). Arguments go to ctest
# (e.g. -L unit, -R wycheproof).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure --timeout 900 -j "${TEST_JOBS:-2}" "$@"
