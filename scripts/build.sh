#!/usr/bin/env bash
# Configures and builds hsm-rewrap into ./build (Release-with-debug-info, Ninja).
# CI=true turns warnings into errors.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
WERROR=OFF
if [ "${CI:-}" = "true" ]; then WERROR=ON; fi
cmake -S . -B "$BUILD_DIR" -G Ninja -DHSMREWRAP_WERROR="$WERROR" ${CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j "${JOBS:-2}"
