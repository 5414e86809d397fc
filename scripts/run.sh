#!/usr/bin/env bash
# Sets up the machine, builds, and starts rewrapd on its embedded default: a SoftHSM2
# token created (first run) under the state folder, a 2048-bit key named "default",
# serving on 127.0.0.1:50051. Extra arguments go to rewrapd (see: rewrapd --help).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
exec ./build/service/rewrapd "$@"
