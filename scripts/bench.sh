#!/usr/bin/env bash
# The throughput benchmark of issue 6: the no-gRPC baseline and rewrapd under rewrap-load,
# same token, key, padding and device encryption, on this machine; every figure printed
# next to its target with the ratio.
#
#   scripts/bench.sh [--quick] [--out DIR] [--skip-memory] [--skip-delay] [--skip-scaling]
#   scripts/bench.sh --mode in-token-cms [--quick] [--out DIR]
#   scripts/bench.sh --mode multi-token [--quick] [--out DIR]
#
# --mode in-token-cms: on NSS softoken (which builds CMS in the token), CMS_ENVELOPED to
# RSA-2048 device certificates built IN_TOKEN against the same requests built on the host
# (rewrapd --no-in-token-cms: TOKEN_DECRYPT), alternating runs, side by side (about 3 min;
# --quick about 1).
#
# --mode multi-token: several tokens behind one rewrapd (config tokens:), each a SoftHSM2
# token behind its own copy of the fault module with a latency added to every token
# operation (a network HSM stand-in), the same RSA-2048 key imported into each: 1, 2 and 4
# tokens of 8 sessions each, with 2 ms per operation (the issue's figure) and with 20 ms (where
# one token is far from this machine's CPU limit), side by side with the ratio to one token
# and the CPU rewrapd and the load client used (about 4 min; --quick about 1.5).
#
# --quick finishes in about 2-3 minutes (short runs, fewer points); the default takes about
# 25 minutes (the memory run alone is 10 minutes). Binaries come from $BUILD_DIR (default
# ./build; build with scripts/build.sh). Results (JSON, HTML, summary.md) go to --out
# (default a new folder under /tmp).
#
# Everything runs on this machine, load client included. On a shared machine the figures
# move with whatever else runs: the script prints the load average before and after.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=$(cd "${BUILD_DIR:-$ROOT/build}" 2>/dev/null && pwd) || { echo "bench.sh: no build folder: build first (scripts/build.sh)" >&2; exit 2; }
QUICK=0 OUT="" DO_MEM=1 DO_DELAY=1 DO_SCALING=1 MODE=all ARGS="$*"
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --out) OUT=$2; shift ;;
    --skip-memory) DO_MEM=0 ;;
    --skip-delay) DO_DELAY=0 ;;
    --skip-scaling) DO_SCALING=0 ;;
    --mode) MODE=$2; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
REWRAPD=$BUILD_DIR/service/rewrapd
CTL=$BUILD_DIR/clients/rewrapctl
LOAD=$BUILD_DIR/clients/rewrap-load/rewrap-load
BASE=$BUILD_DIR/bench/rewrap-baseline/rewrap-baseline
DELAY_MOD=$BUILD_DIR/tests/fault_module/libhsmrewrap_fault_pkcs11.so
for b in "$REWRAPD" "$CTL" "$LOAD" "$BASE"; do
  [ -x "$b" ] || { echo "bench.sh: $b is missing: build first (scripts/build.sh, or BUILD_DIR=...)" >&2; exit 2; }
done
[ -f "$DELAY_MOD" ] || DO_DELAY=0

if [ $QUICK -eq 1 ]; then
  DUR=5; MEM_DUR=10; DELAY_DUR=3; SCALE_DUR=3; POOLS="1 8 64"; BATCHES="1 16 256"; DEVICES=4
else
  DUR=30; MEM_DUR=600; DELAY_DUR=15; SCALE_DUR=15; POOLS="1 2 4 8 16 32 64"; BATCHES="1 8 64 256 1000"; DEVICES=16
fi
CORES=$(nproc)
PADDING=OAEP_SHA1 FORMAT=CMS_ENVELOPED DEVICE_BITS=2048
WORK=$(mktemp -d /tmp/hsmrewrap-bench.XXXXXX)
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
STATE=$WORK/state
. "$ROOT/tests/support/rewrapd.sh"
cleanup() { stop_all_rewrapd; rm -rf "$STATE" "$WORK/delay-state"; }
trap cleanup EXIT

jget() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {"j": j}))' "$1" "$2"; }
calc() { python3 -c "print($1)"; }
SUMMARY=$OUT/summary.md
: >"$SUMMARY"
say() { echo "$*"; echo "$*" >>"$SUMMARY"; }

serve() {  # serve LOGNAME [args...]: rewrapd on a free port (start_rewrapd), logs in $WORK/LOGNAME.*
  local log=$1; shift
  start_rewrapd --name "$log" --dir "$WORK" -- --listen 127.0.0.1:0 "$@" || { echo "bench.sh: rewrapd did not start" >&2; exit 1; }
}
load() {  # load NAME [rewrap-load args...]: JSON in $OUT/NAME.json
  local name=$1; shift
  "$LOAD" --target "$REWRAPD_ADDR" --padding $PADDING --format $FORMAT --device-bits $DEVICE_BITS \
    --devices $DEVICES --server-pid "$REWRAPD_PID" --json "$OUT/$name.json" -q "$@" || echo "bench.sh: rewrap-load $name exited $? (errors: see $OUT/$name.json)" >&2
}
baseline() {  # baseline NAME [args...]: JSON in $OUT/NAME.json
  local name=$1; shift
  "$BASE" --state-dir "$STATE" --padding $PADDING --format $FORMAT --device-bits $DEVICE_BITS --devices $DEVICES \
    --json "$OUT/$name.json" "$@" 2>>"$WORK/baseline.err" >/dev/null
}
row() {  # row FIGURE MEASURED TARGET RATIO VERDICT
  say "$(printf '| %-66s | %18s | %-31s | %5s | %-3s |' "$1" "$2" "$3" "$4" "$5")"
}

# --- In-token CMS against host-built CMS on NSS softoken (--mode in-token-cms).
if [ "$MODE" = in-token-cms ]; then
  NSS_MOD=/usr/lib/x86_64-linux-gnu/libsoftokn3.so
  [ -f "$NSS_MOD" ] && command -v certutil >/dev/null || { echo "bench.sh: needs libnss3 and certutil (libnss3-tools)" >&2; exit 2; }
  NSSDB=$WORK/nssdb
  # NSS softoken decrypts the private key from its SQL database with PBKDF2 on every use
  # (~30 ms at the default iteration count on this machine): that would measure the
  # database's key protection, not the rewrap. One iteration, as the tests use.
  export NSS_MAX_MP_PBE_ITERATION_COUNT=${NSS_MAX_MP_PBE_ITERATION_COUNT:-1}
  mkdir -p "$NSSDB" && printf 'bench-nss-pin' >"$NSSDB/pin" && chmod 600 "$NSSDB/pin"
  certutil -N -d "sql:$NSSDB" -f "$NSSDB/pin"
  nss() {  # nss LOGNAME [args...]: rewrapd on the NSS database
    serve "$@" --module "$NSS_MOD" --token "NSS Certificate DB" --pin-file "$NSSDB/pin" \
      --init-args "configdir='sql:$NSSDB' certPrefix='' keyPrefix='' secmod='secmod.db' flags=" \
      --state-dir "$WORK/nss-state"
  }
  say "## in-token CMS vs host-built CMS on NSS softoken, $(date -u +%Y-%m-%dT%H:%MZ)"
  say ""
  say "- command: \`scripts/bench.sh${ARGS:+ $ARGS}\` at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); runs of ${DUR} s, alternating (in-token, host, in-token, host)"
  say "- machine: $CORES cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  say "- service key RSA-2048 on NSS softoken $(dpkg-query -W -f='${Version}' libnss3 2>/dev/null), OAEP_SHA256 sealed, CMS_ENVELOPED (AES-256-CBC, OAEP-SHA256) to 2048-bit device certificates, batch 64, 2 streams x depth 4, every output decrypted and checked (--verify-all); NSS_MAX_MP_PBE_ITERATION_COUNT=$NSS_MAX_MP_PBE_ITERATION_COUNT"
  say ""
  nss nsskey
  "$CTL" --target "$REWRAPD_ADDR" --timeout 120 keys create default >/dev/null
  # NSS softoken keeps key metadata in the process only: every run re-reads the key.
  stop_rewrapd
  say "| run | path | items/s | server CPU us/item | item p50 ms | item p99 ms | errors | verified |"
  say "|---|---|---|---|---|---|---|---|"
  for round in 1 2; do
    for side in in-token host; do
      if [ $side = in-token ]; then nss cms-$side$round; else nss cms-$side$round --no-in-token-cms; fi
      PADDING=OAEP_SHA256 load cms-$side$round --batch 64 --streams 2 --depth 4 --duration $DUR --verify-all
      stop_rewrapd
      f=$OUT/cms-$side$round.json
      say "| $side $round | $(jget "$f" '" ".join(k + "=" + str(v) for k, v in j["paths"].items())') | $(jget "$f" 'round(j["items_per_s"])') | $(jget "$f" 'round(j["server"]["cpu_us_per_item"])') | $(jget "$f" 'round(j["latency"]["item"]["p50_ms"], 1)') | $(jget "$f" 'round(j["latency"]["item"]["p99_ms"], 1)') | $(jget "$f" 'j["error_items"]') | $(jget "$f" 'j["verified"]') |"
    done
  done
  IN=$(calc "($(jget "$OUT/cms-in-token1.json" 'j["items_per_s"]') + $(jget "$OUT/cms-in-token2.json" 'j["items_per_s"]')) / 2")
  HOST=$(calc "($(jget "$OUT/cms-host1.json" 'j["items_per_s"]') + $(jget "$OUT/cms-host2.json" 'j["items_per_s"]')) / 2")
  say ""
  say "In-token CMS / host-built CMS, mean of two runs each: $(printf %.0f "$IN") / $(printf %.0f "$HOST") items/s = $(calc "round($IN / $HOST, 2)")."
  say "Load average after: $(cut -d' ' -f1-3 /proc/loadavg). Reports: $OUT (*.json)."
  exit 0
fi

# --- Several tokens behind one rewrapd (--mode multi-token).
if [ "$MODE" = multi-token ]; then
  [ -f "$DELAY_MOD" ] || { echo "bench.sh: needs the fault module ($DELAY_MOD): build the tests" >&2; exit 2; }
  MT=$WORK/mt
  mkdir -p "$MT/tokens"
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$MT/tokens" >"$MT/softhsm2.conf"
  export SOFTHSM2_CONF=$MT/softhsm2.conf
  printf 'bench-multi-pin' >"$MT/pin" && chmod 600 "$MT/pin"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$MT/key.pem" 2>/dev/null
  for t in 1 2 3 4; do
    softhsm2-util --init-token --free --label "unit-$t" --pin bench-multi-pin --so-pin bench-multi-so >/dev/null
    # A module instance per token: a copy of the fault module over a copy of SoftHSM2.
    mkdir -p "$MT/t$t"
    cp "$DELAY_MOD" "$MT/t$t/fault.so"
    cp /usr/lib/softhsm/libsofthsm2.so "$MT/t$t/libsofthsm2.so"
  done
  faults() {  # faults MICROSECONDS: the latency of every token
    for t in 1 2 3 4; do
      printf 'module %s\ndelay C_Decrypt,C_UnwrapKey,C_WrapKey %s\n' "$MT/t$t/libsofthsm2.so" "$1" >"$MT/t$t/fault.so.conf"
    done
  }
  config() {  # config N: rewrapd.yaml with tokens 1..N, 8 sessions each
    local f=$MT/rewrapd-$1.yaml t
    echo "tokens:" >"$f"
    for t in $(seq 1 "$1"); do
      printf '  - name: unit-%s\n    module: %s\n    token: unit-%s\n    pin_file: %s\n    pool_size: 8\n' \
        "$t" "$MT/t$t/fault.so" "$t" "$MT/pin" >>"$f"
    done
    echo "$f"
  }
  faults 0
  serve mt-import --config "$(config 4)" --state-dir "$MT/state"
  "$CTL" --target "$REWRAPD_ADDR" --timeout 120 keys import default --pkcs8 "$MT/key.pem" >/dev/null ||
    { echo "bench.sh: importing the key into the 4 tokens failed" >&2; exit 1; }
  stop_rewrapd
  MDUR=$([ $QUICK -eq 1 ] && echo 5 || echo 15)
  say "## several tokens behind one rewrapd, $(date -u +%Y-%m-%dT%H:%MZ)"
  say ""
  say "- command: \`scripts/bench.sh${ARGS:+ $ARGS}\` at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); runs of ${MDUR} s"
  say "- machine: $CORES cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  say "- each token: SoftHSM2 $(dpkg-query -W -f='${Version}' softhsm2 2>/dev/null) behind a copy of the fault module adding the latency to C_Decrypt/C_UnwrapKey/C_WrapKey, 8 sessions; the same RSA-2048 key in every token (ImportKey); $PADDING sealed (TOKEN_DECRYPT), $FORMAT to ${DEVICE_BITS}-bit device certificates, batch 64, 8 streams x depth 4; load client on the same machine"
  say ""
  say "| latency/op | tokens | items/s | ratio to 1 token | target | rewrapd CPU us/item | machine CPU busy | items per token | errors |"
  say "|---|---|---|---|---|---|---|---|---|"
  for delay in 2000 20000; do
    faults $delay
    one=""
    for n in 1 2 4; do
      serve mt-$delay-$n --config "$(config "$n")" --state-dir "$MT/state"
      busy0=$(awk '/^cpu /{print $2+$3+$4+$6+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat)
      load mt-$delay-$n --batch 64 --streams 8 --depth 4 --duration "$MDUR"
      busy1=$(awk '/^cpu /{print $2+$3+$4+$6+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat)
      stop_rewrapd
      f=$OUT/mt-$delay-$n.json
      ips=$(jget "$f" 'j["items_per_s"]')
      [ -n "$one" ] || one=$ips
      ratio=$(calc "round($ips / $one, 2)")
      target=$([ "$n" = 1 ] && echo "-" || ([ "$n" = 2 ] && echo ">= 1.8" || echo ">= 3.4"))
      busy=$(python3 -c "a=[float(x) for x in '$busy0'.split()]; b=[float(x) for x in '$busy1'.split()]; print(f'{100*(b[0]-a[0])/(b[1]-a[1]):.0f}%')")
      say "| $((delay / 1000)) ms | $n | $(printf %.0f "$ips") | $ratio | $target | $(jget "$f" 'round(j["server"]["cpu_us_per_item"])') | $busy | $(jget "$f" '" ".join(k + "=" + str(v) for k, v in sorted(j.get("tokens", {}).items()))') | $(jget "$f" 'j["error_items"]') |"
    done
  done
  say ""
  say "Load average after: $(cut -d' ' -f1-3 /proc/loadavg). Reports: $OUT (*.json)."
  exit 0
fi

say "## rewrap benchmark, $(date -u +%Y-%m-%dT%H:%MZ)"
say ""
say "- command: \`scripts/bench.sh${ARGS:+ $ARGS}\` at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) (runs of ${DUR} s$([ $DO_MEM -eq 1 ] && echo "; memory run ${MEM_DUR} s"))"
say "- machine: $CORES cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
say "- service key RSA-2048 on SoftHSM2 $(dpkg-query -W -f='${Version}' softhsm2 2>/dev/null), $PADDING (native: TOKEN_DECRYPT), $FORMAT to ${DEVICE_BITS}-bit device certificates; rewrapd defaults: $("$REWRAPD" --check-config --state-dir "$STATE" | sed -n "s/^session pool: *//p"); load client on the same machine"
say ""

# --- 0. A fresh token: rewrapd's first run creates it and the 2048-bit key `default`.
serve init --state-dir "$STATE"
if [ $DO_SCALING -eq 1 ]; then
  "$CTL" --target "$REWRAPD_ADDR" --timeout 120 keys create k3072 --bits 3072 >/dev/null
  "$CTL" --target "$REWRAPD_ADDR" --timeout 120 keys create k4096 --bits 4096 >/dev/null
fi
stop_rewrapd

# --- 1./2. Baseline (no gRPC, as many threads as cores) and rewrapd under rewrap-load,
# alternately: every service run is bracketed by baseline runs (rewrapd idles meanwhile)
# and compared with their mean, so a change in the machine's load hits both sides.
serve serve --state-dir "$STATE"
baseline base_a --duration $DUR
load b64 --batch 64 --streams 2 --depth 4 --duration $DUR
baseline base_b --duration $DUR
load b1 --batch 1 --streams 8 --depth 8 --duration $DUR
baseline base_c --duration $DUR
BA=$(jget "$OUT/base_a.json" 'j["items_per_s"]') BB=$(jget "$OUT/base_b.json" 'j["items_per_s"]') BC=$(jget "$OUT/base_c.json" 'j["items_per_s"]')
BASE_RATE=$(calc "($BA + $BB + $BC) / 3")
BASE_CPU=$(calc "($(jget "$OUT/base_a.json" 'j["cpu_us_per_item"]') + $(jget "$OUT/base_b.json" 'j["cpu_us_per_item"]') + $(jget "$OUT/base_c.json" 'j["cpu_us_per_item"]')) / 3")
B64=$(jget "$OUT/b64.json" 'j["items_per_s"]')
B1=$(jget "$OUT/b1.json" 'j["items_per_s"]')
# One thread: the token's own time per operation (plus the host's CMS work).
baseline base1 --duration $((DUR / 2 > 3 ? DUR / 2 : 3)) --threads 1
TOKEN_MS=$(calc "1000.0 / $(jget "$OUT/base1.json" 'j["items_per_s"]')")
# The maximum rate: the lower of the batch-64 run and the baseline (on a shared machine a
# service run can land in a quiet moment; 80% of that would not be 80% for long).
RATE80=$(calc "round(0.8 * min($B64, $BASE_RATE))")
load p99 --batch 64 --streams 4 --rate "$RATE80" --duration $DUR
P50=$(jget "$OUT/p99.json" 'j["latency"]["item"]["p50_ms"]')
P99=$(jget "$OUT/p99.json" 'j["latency"]["item"]["p99_ms"]')
if [ $DO_MEM -eq 1 ]; then
  # 1,000 items in flight: 2 streams x 4 batches x 125 items.
  load mem --batch 125 --streams 2 --depth 4 --duration $MEM_DUR --html "$OUT/mem.html"
fi
stop_rewrapd

say "| figure | measured | target | ratio | ok |"
say "|---|---|---|---|---|"
verdict() { python3 -c "print('yes' if $1 else 'NO')"; }
row "baseline, $CORES threads (items/s; runs before/between/after)" "$(printf '%.0f/%.0f/%.0f' "$BA" "$BB" "$BC")" "-" "-" "-"
R=$(calc "round($B64 / (($BA + $BB) / 2), 2)")
row "service, batch 64 (items/s) vs the runs around it" "$(printf %.0f "$B64")" ">= 0.90 x baseline" "$R" "$(verdict "$R >= 0.90")"
R=$(calc "round($B1 / (($BB + $BC) / 2), 2)")
row "service, batch 1 (items/s) vs the runs around it" "$(printf %.0f "$B1")" ">= 0.70 x baseline" "$R" "$(verdict "$R >= 0.70")"
for f in b64 b1; do
  C=$(jget "$OUT/$f.json" 'j["server"]["cpu_us_per_item"] + j["client_cpu"]["seconds"] * 1e6 / j["items"]')
  R=$(calc "round($BASE_CPU / $C, 2)")
  row "CPU per item, ${f#b}-item batches: baseline / (server + client)" "$(printf '%.0f / %.0f us' "$BASE_CPU" "$C")" "(throughput ratio if CPU-bound)" "$R" "-"
done
R=$(calc "round($P99 / $P50, 2)")
row "p99 / p50 at 80% of max ($RATE80 items/s, batch 64)" "$(printf '%.0f / %.0f ms' "$P99" "$P50")" "p99 <= 3 x p50" "$R" "$(verdict "$R <= 3")"
if [ $DO_MEM -eq 1 ]; then
  MEMMAX=$(jget "$OUT/mem.json" 'round(j["server"]["rss_kib_max"] / 1024, 1)')
  # Flat: RSS at the end vs RSS after the first 10% of the run.
  MEMEARLY=$(jget "$OUT/mem.json" 'round([s for s in j["server"]["series"] if s["t_s"] >= 0.1 * j["elapsed_s"]][0]["rss_kib"] / 1024, 1)')
  MEMLAST=$(jget "$OUT/mem.json" 'round(j["server"]["rss_kib_last"] / 1024, 1)')
  row "rewrapd RSS max, 1,000 in flight, ${MEM_DUR} s (MiB)" "$MEMMAX" "<= 64 MiB" "$(calc "round($MEMMAX / 64, 2)")" "$(verdict "$MEMMAX <= 64")"
  row "rewrapd RSS at 10% -> end of run (MiB)" "$MEMEARLY -> $MEMLAST" "flat" "$(calc "round($MEMLAST / $MEMEARLY, 2)")" "$(verdict "$MEMLAST <= 1.1 * $MEMEARLY")"
fi
say ""
say "Errors: batch 64 $(jget "$OUT/b64.json" 'j["error_items"]'), batch 1 $(jget "$OUT/b1.json" 'j["error_items"]'), p99 run $(jget "$OUT/p99.json" 'j["error_items"]'); verified outputs $(jget "$OUT/b64.json" 'j["verified"]') (batch 64), mismatches $(jget "$OUT/b64.json" 'j["mismatches"]')."
say ""

# --- 3. Network-HSM stand-in: 2 ms added to each token operation, pool 1..64.
if [ $DO_DELAY -eq 1 ]; then
  say "### With 2 ms added per token operation (fault module delay), pool size 1..64"
  # The fault module (tests/fault_module) with only a latency rule: a network HSM stand-in.
  echo 'delay C_Decrypt,C_UnwrapKey,C_WrapKey 2000' >"$WORK/delay.conf"
  say ""
  say "Token time per operation without delay (baseline, 1 thread): $(printf %.2f "$TOKEN_MS") ms; target = 0.8 x min(pool / (2 ms + token time), baseline)."
  say ""
  say "| pool | items/s | target | ratio to target | ok |"
  say "|---|---|---|---|---|"
  for pool in $POOLS; do
    streams=$((pool / 4 > 2 ? pool / 4 : 2))
    SOFTHSM2_CONF=$STATE/softhsm2.conf HSMREWRAP_FAULT_CONFIG=$WORK/delay.conf HSMREWRAP_FAULT_MODULE=/usr/lib/softhsm/libsofthsm2.so \
      serve delay$pool --module "$DELAY_MOD" --token hsm-rewrap --pin-file "$STATE/user.pin" \
      --allow-host-unpadding --state-dir "$WORK/delay-state" --pool-size "$pool"
    load delay$pool --batch 64 --streams $streams --depth 4 --duration $DELAY_DUR
    stop_rewrapd
    got=$(jget "$OUT/delay$pool.json" 'j["items_per_s"]')
    target=$(calc "round(0.8 * min($pool / ((2.0 + $TOKEN_MS) / 1000.0), $BASE_RATE))")
    r=$(calc "round($got / $target, 2)")
    say "| $pool | $(printf %.0f "$got") | $target | $r | $(verdict "$r >= 1.0") |"
  done
  say ""
fi

# --- 4. Scaling: key size (baseline and service, batch 64) and batch size (RSA-2048).
if [ $DO_SCALING -eq 1 ]; then
  say "### Scaling with the service key size (batch 64, ${SCALE_DUR} s runs)"
  say ""
  say "| key | baseline items/s | service items/s | ratio | baseline CPU us/item | service CPU us/item (server + client) |"
  say "|---|---|---|---|---|---|"
  serve scale --state-dir "$STATE"
  for k in default:2048 k3072:3072 k4096:4096; do
    name=${k%%:*} bits=${k##*:}
    baseline base_k$bits --key-name "$name" --duration $SCALE_DUR
    load key$bits --key-name "$name" --batch 64 --streams 2 --depth 4 --duration $SCALE_DUR
    b=$(jget "$OUT/base_k$bits.json" 'j["items_per_s"]') s=$(jget "$OUT/key$bits.json" 'j["items_per_s"]')
    say "| RSA-$bits | $(printf %.0f "$b") | $(printf %.0f "$s") | $(calc "round($s / $b, 2)") | $(jget "$OUT/base_k$bits.json" 'round(j["cpu_us_per_item"])') | $(jget "$OUT/key$bits.json" 'round(j["server"]["cpu_us_per_item"] + j["client_cpu"]["seconds"] * 1e6 / j["items"])') |"
  done
  stop_rewrapd
  say ""
  say "### Scaling with the batch size (RSA-2048, closed loop, ${SCALE_DUR} s runs)"
  say ""
  say "| batch | streams x depth | items/s | batches/s | server CPU us/item | client CPU us/item | item p50 ms | item p99 ms |"
  say "|---|---|---|---|---|---|---|---|"
  serve batches --state-dir "$STATE"
  for b in $BATCHES; do
    if [ "$b" -le 8 ]; then sd="8 8"; else sd="2 4"; fi
    set -- $sd
    load batch$b --batch "$b" --streams "$1" --depth "$2" --duration $SCALE_DUR --passwords $((b > 2048 ? b : 2048))
    f=$OUT/batch$b.json
    say "| $b | $1 x $2 | $(jget "$f" 'round(j["items_per_s"])') | $(jget "$f" 'round(j["batches_per_s"], 1)') | $(jget "$f" 'round(j["server"]["cpu_us_per_item"])') | $(jget "$f" 'round(j["client_cpu"]["seconds"] * 1e6 / j["items"])') | $(jget "$f" 'round(j["latency"]["item"]["p50_ms"], 1)') | $(jget "$f" 'round(j["latency"]["item"]["p99_ms"], 1)') |"
  done
  stop_rewrapd
  say ""
fi
say "Load average after: $(cut -d' ' -f1-3 /proc/loadavg). Reports: $OUT (*.json; mem.html has the charts)."
