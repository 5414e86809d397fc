#!/usr/bin/env bash
# Runs every libFuzzer target for a while, seeded from ../shared/vectors.
#   scripts/fuzz.sh [--time SECONDS] [--jobs N] [TARGET...]
# --time   seconds per target (default 60)     --jobs   targets run at once (default 2)
# Targets (tests/fuzz): fuzz_request fuzz_keys fuzz_pfx fuzz_cms fuzz_oaep (default: all).
# Builds ./build-asan (clang + ASan + UBSan + libFuzzer) first. Corpora grow in
# build-asan/fuzz/corpus/<target>; a crash leaves its input in build-asan/fuzz/ and
# fails the run. Prints executions and coverage per target. Exit 0 = no finding.
set -euo pipefail
cd "$(dirname "$0")/.."
TIME=60
JOBS_AT_ONCE=2
TARGETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --time) TIME=$2; shift 2 ;;
    --jobs) JOBS_AT_ONCE=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(fuzz_request fuzz_keys fuzz_pfx fuzz_cms fuzz_oaep)

./scripts/setup.sh
source scripts/sanitizer-env.sh
san_configure_and_build
# Leaks are checked by the sanitizer test run; in the fuzzers a per-input leak check would
# report OpenSSL's and protobuf's one-time global allocations.
export ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0"

FUZZ_DIR="$SAN_BUILD_DIR/fuzz"
VECTORS="$(pwd)/../shared/vectors"
mkdir -p "$FUZZ_DIR/seeds" "$FUZZ_DIR/logs"
if [ -d "$VECTORS/wycheproof" ]; then
  "$SAN_BUILD_DIR/tests/fuzz/fuzz_seeds" "$VECTORS" "$FUZZ_DIR/seeds"
else
  echo "fuzz.sh: $VECTORS not found: fuzzing from empty corpora (seeds come from ../shared/vectors)" >&2
fi
if [ -f "$FUZZ_DIR/seeds/request.key.pem" ]; then
  export HSMREWRAP_FUZZ_KEY="$(pwd)/$FUZZ_DIR/seeds/request.key.pem"
fi

run_one() {
  local t=$1
  mkdir -p "$FUZZ_DIR/corpus/$t" "$FUZZ_DIR/seeds/$t"
  (cd "$FUZZ_DIR" && "../tests/fuzz/$t" -max_total_time="$TIME" -timeout=30 -rss_limit_mb=4096 \
      -print_final_stats=1 -artifact_prefix="$t-" "corpus/$t" "seeds/$t") >"$FUZZ_DIR/logs/$t.log" 2>&1
}

declare -A PID STATUS
running=0
for t in "${TARGETS[@]}"; do
  [ -x "$SAN_BUILD_DIR/tests/fuzz/$t" ] || { echo "fuzz.sh: no target $t" >&2; exit 2; }
  echo "fuzz.sh: $t for ${TIME}s (log $FUZZ_DIR/logs/$t.log)"
  run_one "$t" & PID[$t]=$!
  running=$((running + 1))
  if [ "$running" -ge "$JOBS_AT_ONCE" ]; then wait -n || true; running=$((running - 1)); fi
done
failed=0
for t in "${TARGETS[@]}"; do
  if wait "${PID[$t]}"; then STATUS[$t]=ok; else STATUS[$t]=FINDING; failed=1; fi
done

printf '\n%-14s %12s %10s %8s %8s  %s\n' target executions exec/s cov corpus result
for t in "${TARGETS[@]}"; do
  log="$FUZZ_DIR/logs/$t.log"
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
  corpus=$(find "$FUZZ_DIR/corpus/$t" -type f | wc -l)
  printf '%-14s %12s %10s %8s %8s  %s\n' "$t" "${execs:-0}" "${rate:-0}" "${cov:-0}" "$corpus" "${STATUS[$t]}"
  if [ "${STATUS[$t]}" != ok ]; then
    echo "---- $t: last lines of $log" >&2
    tail -40 "$log" >&2
  fi
done
exit $failed
