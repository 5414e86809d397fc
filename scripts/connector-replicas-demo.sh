#!/usr/bin/env bash
# Demo: 100,000 requests through three rewrapd replicas sharing one SoftHSM2 token, one
# replica SIGKILLed midway; then every request must be answered exactly once, and a random
# sample of >= 1,000 outputs must decrypt (OpenSSL, the device keys) to the sealed password.
#
#   scripts/connector-replicas-demo.sh [BUILD_DIR] [LINES] [SAMPLE]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${1:-$ROOT/build}
N=${2:-100000}
SAMPLE=${3:-1000}
REWRAPD=$B/service/rewrapd REWRAPCTL=$B/clients/rewrapctl CONNECTOR=$B/clients/rewrap-connector/rewrap-connector
W=$(mktemp -d /tmp/connector-demo.XXXXXX)
. "$ROOT/tests/connector/lib.sh"
trap 'stop_all_rewrapd; [ -n "${KEEP_TMP:-}" ] || rm -rf "$W"' EXIT

start_replica r1 "$W/state"; A1=$ADDR    # creates the token and the key `default`
start_replica r2 "$W/state"; A2=$ADDR
start_replica r3 "$W/state"; A3=$ADDR
echo "replicas: r1 $A1, r2 $A2, r3 $A3 (one SoftHSM2 token in $W/state)"
"$REWRAPCTL" --target "$A1" keys export-public default --out "$W/svc.pem" >/dev/null
make_devices
t0=$(date +%s.%N)
python3 "$ROOT/tests/connector/gen_requests.py" --pub "$W/svc.pem" \
  --certs "$W/dev-rsa.crt,$W/dev-p256.crt,$W/dev-p384.crt" --passwords 6 --lines "$N" \
  --out "$W/requests.jsonl" --secrets "$W/secrets.json"
echo "generated $N requests ($(du -h "$W/requests.jsonl" | cut -f1)) in $(echo "$(date +%s.%N) - $t0" | bc) s"

CMD=("$CONNECTOR" --target "$A1,$A2,$A3" --in "$W/requests.jsonl" --out "$W/results.jsonl"
     --batch 100 --streams 6 --deadline 30 --no-progress)
echo "command: ${CMD[*]}"
"${CMD[@]}" 2>"$W/connector.err" &
CPID=$!
while [ "$(wc -l <"$W/results.jsonl" 2>/dev/null || echo 0)" -lt $((N / 2)) ] && kill -0 $CPID 2>/dev/null; do
  sleep 0.2
done
kill -9 "$(cat "$W/r2.pid")"
echo "SIGKILLed replica r2 ($A2) at $(wc -l <"$W/results.jsonl") of $N results"
rc=0
wait $CPID || rc=$?
cat "$W/connector.err"
echo "connector exit code: $rc"
python3 "$ROOT/tests/connector/check_results.py" --requests "$W/requests.jsonl" --results "$W/results.jsonl" \
  --secrets "$W/secrets.json" \
  --keys "$W/dev-rsa.crt=$W/dev-rsa.key,$W/dev-p256.crt=$W/dev-p256.key,$W/dev-p384.crt=$W/dev-p384.key" \
  --sample "$SAMPLE"
[ "$rc" = 0 ] && echo "demo: PASS" || { echo "demo: FAIL"; exit 1; }
