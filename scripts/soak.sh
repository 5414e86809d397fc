#!/usr/bin/env bash
# Soak (issue 8): rewrapd on a remote SoftHSM2 token (p11-kit server over a Unix socket,
# p11-kit's client module) behind the fault module, which injects token errors at low rates
# all along; 16 rewrap-connector clients (batch sizes 1..100, 1% of items sealed wrongly on
# purpose) run in rounds for the whole duration; the p11-kit server is SIGKILLed (with its
# per-connection children) and restarted twice. Checked after every round of every client:
# every id answered exactly once, no unknown ids, wrong seals fail DECRYPT_FAILED, all other
# items succeed, a sample of outputs decrypts (OpenSSL, the device key) to the right
# password. Sampled once a second: rewrapd's VmRSS and open sessions (metrics endpoint).
#
#   scripts/soak.sh [--duration SECONDS] [--build DIR] [--keep]
#
# Default 1800 s; CI runs --duration 180. Prints a summary; exit 1 on any violation: lost,
# duplicated, unknown or wrong items, a valid item that failed, memory growing after warm-up
# (> 25% and > 24 MiB between the second and the last quarter), open sessions above the
# pool size, health not NOT_SERVING within 1 s of a kill or not SERVING within 5 s of a
# restart.
set -uo pipefail
cd "$(dirname "$0")/.."
DURATION=1800 BUILD=build KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift ;;
    --build) BUILD=$2; shift ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
REWRAPD=$BUILD/service/rewrapd
CTL=$BUILD/clients/rewrapctl
CONNECTOR=$BUILD/clients/rewrap-connector/rewrap-connector
FAULT=$(realpath "$BUILD/tests/fault_module/libhsmrewrap_fault_pkcs11.so" 2>/dev/null)
CLIENT_MODULE=/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so
for f in "$REWRAPD" "$CTL" "$CONNECTOR" "$FAULT" "$CLIENT_MODULE"; do
  [ -e "$f" ] || { echo "soak.sh: $f is missing (build first; p11-kit-modules for the client module)" >&2; exit 2; }
done
CLIENTS=16 POOL=4 LINES=600

W=$(mktemp -d /tmp/hsmrewrap-soak.XXXXXX)
RD_PID="" SRV_PID=""
. tests/support/rewrapd.sh  # (the working directory is the repository root)
cleanup() {
  stop_all_rewrapd
  [ -n "$SRV_PID" ] && kill -KILL -- "-$SRV_PID" 2>/dev/null
  jobs -p | xargs -r kill 2>/dev/null
  if [ $KEEP -eq 1 ]; then echo "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
now() { date +%s.%N; }
elapsed() { python3 -c "print('%.3f' % ($(now) - $1))"; }

# --- The token, served by p11-kit server.
mkdir -p "$W/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$W/tokens" >"$W/softhsm2.conf"
export SOFTHSM2_CONF=$W/softhsm2.conf
softhsm2-util --init-token --free --label soak --pin soak-user-pin --so-pin soak-so-pin >/dev/null || exit 2
printf 'soak-user-pin' >"$W/pin"; chmod 600 "$W/pin"
SOCK=$W/p11.sock
start_server() {
  rm -f "$SOCK"
  setsid p11-kit server -f -n "$SOCK" --provider /usr/lib/softhsm/libsofthsm2.so "pkcs11:token=soak" \
    >>"$W/server.log" 2>&1 &
  SRV_PID=$!
  for _ in $(seq 100); do [ -S "$SOCK" ] && return 0; sleep 0.05; done
  echo "soak.sh: p11-kit server did not start" >&2; return 1
}
start_server || exit 2

: >"$W/faults.conf"  # no faults while the key is made (written before the clients start)
HSMREWRAP_FAULT_CONFIG=$W/faults.conf HSMREWRAP_FAULT_MODULE=$CLIENT_MODULE \
  P11_KIT_SERVER_ADDRESS=unix:path=$SOCK \
  start_rewrapd --out "$W/rewrapd.out" --err "$W/rewrapd.log" -- \
  --module "$FAULT" --token soak --pin-file "$W/pin" --listen 127.0.0.1:0 --state-dir "$W/state" \
  --pool-size $POOL --allow-host-unpadding --metrics-listen 127.0.0.1:0 --log-format text \
  --selftest-interval 0 --reconnect-backoff-max 1000 || { echo "soak.sh: rewrapd did not start"; exit 2; }
RD_PID=$REWRAPD_PID ADDR=$REWRAPD_ADDR
METRICS=$(grep -o 'metrics on http://[^/]*' "$W/rewrapd.log" | sed 's#metrics on http://##')
"$CTL" --target "$ADDR" keys create soak >/dev/null || { echo "soak.sh: keys create failed"; exit 2; }
"$CTL" --target "$ADDR" keys export-public soak --out "$W/svc.pem" >/dev/null || exit 2

# --- Requests: per client its own file, with 1% of the seals replaced by random bytes.
openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=soak-device -days 2 \
  -addext basicConstraints=critical,CA:FALSE -keyout "$W/dev.key" -out "$W/dev.crt" 2>/dev/null
for c in $(seq 1 $CLIENTS); do
  python3 tests/connector/gen_requests.py --pub "$W/svc.pem" --key-name soak --certs "$W/dev.crt" \
    --passwords 4 --lines $LINES --out "$W/req$c.raw" --secrets "$W/secrets$c.json" || exit 2
  python3 - "$W/req$c.raw" "$W/req$c.jsonl" "$W/invalid$c" "$c" <<'PY' || exit 2
import base64, json, os, random, sys
src, dst, inv, c = sys.argv[1:]
rng = random.Random(int(c))
with open(src) as f, open(dst, "w") as o, open(inv, "w") as bad:
    for line in f:
        r = json.loads(line)
        r["id"] = "c%s-%s" % (c, r["id"])
        if rng.random() < 0.01:
            r["encryptedPfxPassword"] = base64.b64encode(os.urandom(256)).decode()
            bad.write(r["id"] + "\n")
        o.write(json.dumps(r, separators=(",", ":")) + "\n")
PY
done

# --- Faults at low rates for the whole run (token errors on single operations; each fails
# its item UNAVAILABLE, which the connector retries). No CKR_GENERAL_ERROR on C_Decrypt /
# C_UnwrapKey: there it means "bad padding" on SoftHSM2 (TOKENS.md) and is DECRYPT_FAILED.
cat >"$W/faults.tmp" <<'EOF'
fail C_Decrypt,C_UnwrapKey CKR_DEVICE_ERROR rate=0.002
fail C_Decrypt CKR_SESSION_HANDLE_INVALID rate=0.001
fail C_UnwrapKey CKR_SESSION_CLOSED rate=0.001 forward
fail C_WrapKey CKR_GENERAL_ERROR rate=0.001
fail C_OpenSession CKR_SESSION_COUNT rate=0.01
EOF
mv "$W/faults.tmp" "$W/faults.conf"


# --- Clients: rounds until the end time; each round checked.
END=$(python3 -c "import time; print(time.time() + $DURATION)")
client() {
  local c=$1 round=0 batch=$(( (c * 37) % 100 + 1 ))
  [ "$c" -eq 1 ] && batch=1
  [ "$c" -eq 2 ] && batch=100
  while python3 -c "import time,sys; sys.exit(0 if time.time() < $END else 1)"; do
    round=$((round + 1))
    local out=$W/out$c-$round.jsonl
    "$CONNECTOR" --target "$ADDR" --in "$W/req$c.jsonl" --out "$out" --batch $batch --streams 1 --inflight 2 \
      --max-attempts 100 --no-progress 2>"$W/conn$c-$round.log"
    python3 tests/connector/check_results.py --requests "$W/req$c.jsonl" --results "$out" \
      --secrets "$W/secrets$c.json" --keys "$W/dev.crt=$W/dev.key" --sample 10 --seed $round \
      --invalid "$W/invalid$c" --summary-json "$W/check$c-$round.json" >"$W/check$c-$round.log" 2>&1
    rm -f "$out"
  done
}
CLIENT_PIDS=()
for c in $(seq 1 $CLIENTS); do client "$c" & CLIENT_PIDS+=($!); done

# --- Sampler: RSS and open sessions once a second.
sampler() {
  while kill -0 $RD_PID 2>/dev/null; do
    local t rss open
    t=$(date +%s)
    rss=$(awk '/VmRSS/ {print $2}' /proc/$RD_PID/status 2>/dev/null)
    open=$(curl -s --max-time 2 "http://$METRICS/metrics" | awk '/^hsmrewrap_sessions\{state="open"\}/ {print $2}')
    echo "$t ${rss:-0} ${open:--1}" >>"$W/samples"
    sleep 1
  done
}
sampler &
SAMPLER=$!

health() { "$CTL" --target "$ADDR" health 2>/dev/null; }
# --- Chaos: kill and restore the remote token twice (at 30% and 65% of the run).
START=$(now)
RECOVERIES=()
VIOLATIONS=()
for frac in 0.30 0.65; do
  python3 -c "import time; time.sleep(max(0, $START + $DURATION * $frac - time.time()))"
  kill -KILL -- "-$SRV_PID"; wait "$SRV_PID" 2>/dev/null
  t0=$(now)
  down=""
  for _ in $(seq 200); do
    [ "$(health)" != SERVING ] && { down=$(elapsed "$t0"); break; }
    sleep 0.02
  done
  sleep 3
  start_server || VIOLATIONS+=("server restart failed")
  t1=$(now)
  up=""
  for _ in $(seq 500); do
    [ "$(health)" = SERVING ] && { up=$(elapsed "$t1"); break; }
    sleep 0.02
  done
  RECOVERIES+=("kill at ${frac}: NOT_SERVING after ${down:-never} s; restarted after 3 s; SERVING after ${up:-never} s")
  python3 -c "import sys; sys.exit(0 if '$down' and float('$down') < 1.0 else 1)" || VIOLATIONS+=("NOT_SERVING not within 1 s of a kill (${down:-never})")
  python3 -c "import sys; sys.exit(0 if '$up' and float('$up') < 5.0 else 1)" || VIOLATIONS+=("SERVING not within 5 s of a restart (${up:-never})")
done

wait "${CLIENT_PIDS[@]}" 2>/dev/null
kill $SAMPLER 2>/dev/null; wait $SAMPLER 2>/dev/null
RECONNECTS=$(curl -s "http://$METRICS/metrics" | awk '/^hsmrewrap_token_reconnects_total/ {print $2}')
DISCARDED=$(curl -s "http://$METRICS/metrics" | awk '/^hsmrewrap_sessions\{state="discarded_total"\}/ {print $2}')
INJECTED=$(curl -s "http://$METRICS/metrics" | awk '/^hsmrewrap_pkcs11_calls_total\{.*result="error"\}/ {s += $2} END {print s + 0}')

python3 - "$W" "$POOL" "$DURATION" "${RECONNECTS:-0}" "${DISCARDED:-0}" "$INJECTED" <<'PY' "${RECOVERIES[@]}" "--" "${VIOLATIONS[@]}"
import glob, json, sys
w, pool, duration, reconnects, discarded, injected = sys.argv[1:7]
rest = sys.argv[7:]
sep = rest.index("--")
recoveries, violations = rest[:sep], rest[sep + 1:]
pool = int(pool)
tot = dict(rounds=0, items=0, invalid=0, lost=0, duplicated=0, unknown=0, failed=0, sampled=0, wrong=0)
codes = set()
for f in glob.glob(w + "/check*.json"):
    j = json.load(open(f))
    tot["rounds"] += 1
    tot["items"] += j["requests"]
    tot["invalid"] += j["invalid"]
    tot["lost"] += j["missing"]
    tot["duplicated"] += j["duplicated"]
    tot["unknown"] += j["unknown"]
    tot["failed"] += j["failed"]
    tot["sampled"] += j["sampled"]
    tot["wrong"] += j["wrong"]
    codes.update(j["failed_codes"])
samples = [tuple(map(float, l.split())) for l in open(w + "/samples") if len(l.split()) == 3]
rss = [s[1] / 1024 for s in samples]
opens = [s[2] for s in samples if s[2] >= 0]
n = len(rss)
q2 = rss[n // 4: n // 2] or rss
q4 = rss[3 * n // 4:] or rss
peak = max(rss) if rss else 0
growth = (max(q4) - max(q2)) if rss else 0
max_open = max(opens) if opens else -1
if tot["rounds"] == 0: violations.append("no client round completed")
for k in ("lost", "duplicated", "unknown", "wrong"):
    if tot[k]: violations.append("%d %s items" % (tot[k], k))
if tot["failed"]: violations.append("%d items failed that should not have (%s)" % (tot["failed"], ",".join(sorted(codes))))
if growth > max(24, 0.25 * max(q2 or [1])): violations.append("memory grew %.1f MiB after warm-up" % growth)
if max_open > pool: violations.append("open sessions %d above the pool size %d" % (max_open, pool))
if float(reconnects) < 2: violations.append("only %s reconnects counted" % reconnects)
print("=== soak summary (%s s, 16 clients, batches 1..100, 1%% invalid, pool %d) ===" % (duration, pool))
print("rounds: %d  items: %d (invalid on purpose: %d)" % (tot["rounds"], tot["items"], tot["invalid"]))
print("lost: %d  duplicated: %d  unknown ids: %d  wrong: %d (of %d outputs decrypted with OpenSSL)  failed valid items: %d"
      % (tot["lost"], tot["duplicated"], tot["unknown"], tot["wrong"], tot["sampled"], tot["failed"]))
print("PKCS#11 errors (injected + token loss): %s  sessions discarded: %s  reconnects: %s" % (injected, discarded, reconnects))
for r in recoveries: print("recovery: " + r)
print("rewrapd VmRSS: peak %.1f MiB; max of 2nd quarter %.1f MiB, of last quarter %.1f MiB (growth %.1f MiB)"
      % (peak, max(q2) if q2 else 0, max(q4) if q4 else 0, growth))
print("open sessions: max %d (pool size %d), %d samples" % (max_open, pool, len(samples)))
if violations:
    print("VIOLATIONS:")
    for v in violations: print("  - " + v)
    sys.exit(1)
print("result: OK")
PY
