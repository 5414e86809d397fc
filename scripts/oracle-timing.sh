#!/usr/bin/env bash
# Timing oracle check (issue 7): starts rewrapd on a fresh embedded SoftHSM2 token, runs
# bench/oracle-timing (Wycheproof OAEP-SHA1 and PKCS#1 v1.5 classes, interleaved one-item
# Rewrap calls, Welch's t per pair of classes) and stops rewrapd.
#
#   scripts/oracle-timing.sh [--samples N]     (default 2000 per class; --samples 200 for CI)
#
# Needs ../shared/vectors/wycheproof (HSMREWRAP_SHARED_DIR overrides ../shared). Exit 3 if
# two failure classes are distinguishable by time.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
SHARED=${HSMREWRAP_SHARED_DIR:-$ROOT/../shared}
SAMPLES=2000
while [ $# -gt 0 ]; do
  case $1 in
    --samples) SAMPLES=$2; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "oracle-timing.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ -d "$SHARED/vectors/wycheproof" ] || { echo "oracle-timing.sh: no Wycheproof vectors in $SHARED/vectors/wycheproof" >&2; exit 2; }
STATE=$(mktemp -d)
. "$ROOT/tests/support/rewrapd.sh"
cleanup() { stop_all_rewrapd; rm -rf "$STATE"; }
trap cleanup EXIT
start_rewrapd --bin "$BUILD_DIR/service/rewrapd" --out "$STATE/out" --err "$STATE/err" --timeout 30 -- \
  --state-dir "$STATE/state" --listen 127.0.0.1:0 --log-level warn || exit 1
ADDR=$REWRAPD_ADDR
echo "rewrapd $ADDR (embedded SoftHSM2), $SAMPLES samples per class, commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo ?)"
"$BUILD_DIR/bench/oracle-timing/oracle-timing" --target "$ADDR" --vectors "$SHARED/vectors/wycheproof" --samples "$SAMPLES"
