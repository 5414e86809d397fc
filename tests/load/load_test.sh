#!/usr/bin/env bash
# rewrap-load against a rewrapd it starts (embedded SoftHSM2 token in a temporary folder):
# closed loop (CMS, certificates), open loop (bare RSA-OAEP-SHA1, public keys) and a
# multi-address target, each for a few seconds with --verify-all and --json. Asserts zero
# errors, zero mismatches, items > 0, every item verified, and the report files' shape.
# No timing assertions. Usage: load_test.sh REWRAPD REWRAP_LOAD
set -uo pipefail
REWRAPD=$1
LOAD=$2
WORK=$(mktemp -d)
fails=0
# Leak check: rewrapd at trace level with an audit log; its logs, the PINs and every
# password rewrap-load seals (--passwords-out) are collected.
. "$(dirname "$0")/../support/rewrapd.sh"
cleanup() {
  stop_all_rewrapd
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

start_rewrapd --out "$WORK/out" --err "$WORK/err" -- \
  --state-dir "$WORK/state" --listen 127.0.0.1:0 --pool-size 2 || exit 1
PID=$REWRAPD_PID ADDR=$REWRAPD_ADDR
# leak_passwords FILE: records the passwords rewrap-load wrote with --passwords-out (hex lines).
leak_passwords() {
  leak_on || return 0
  [ -s "$1" ] || { fail "rewrap-load wrote no --passwords-out file"; return 0; }
  cat "$1" >>"$HSMREWRAP_LEAKCHECK_DIR/$HSMREWRAP_LEAKCHECK_TEST/secrets-$$.hex"
}

# --help names every flag of the command-line contract.
help=$("$LOAD" --help) || fail "--help exit code"
for flag in --target --key-name --padding --format --device-bits --batch --streams --rate --duration \
            --items --verify-all --json --html --help; do
  [[ "$help" == *"$flag"* ]] || fail "--help does not list $flag"
done

check_json() {  # check_json NAME FILE
  python3 - "$1" "$2" <<'PY' || fails=$((fails + 1))
import json, sys
name, path = sys.argv[1], sys.argv[2]
j = json.load(open(path))
problems = []
if j["items"] <= 0: problems.append("items is %r" % j["items"])
if j["errors"]: problems.append("errors %r" % j["errors"])
if j["error_items"] != 0: problems.append("error_items %r" % j["error_items"])
if j["mismatches"] != 0: problems.append("mismatches %r" % j["mismatches"])
if j["config"]["verify_all"] and j["verified"] != j["items"]:
    problems.append("verified %r of %r items" % (j["verified"], j["items"]))
for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"):
    if k not in j["latency"]["item"] or k not in j["latency"]["batch"]: problems.append("latency lacks " + k)
for k in ("items_per_s", "batches_per_s", "client_cpu", "items_per_second", "latency_histogram"):
    if k not in j: problems.append("report lacks " + k)
if problems:
    print("FAIL: %s: %s" % (name, "; ".join(problems)))
    sys.exit(1)
print("ok: %s: %d items, %.0f items/s, p99 %.1f ms" % (name, j["items"], j["items_per_s"], j["latency"]["item"]["p99_ms"]))
PY
}

# 1. Closed loop, CMS to device certificates, OAEP-SHA1 (TOKEN_DECRYPT), HTML report too.
"$LOAD" --target "$ADDR" --padding oaep-sha1 --format CMS_ENVELOPED --device-bits 2048 --devices 4 \
  --passwords 256 --batch 16 --streams 2 --duration 3 --verify-all --server-pid "$PID" \
  --json "$WORK/closed.json" --html "$WORK/closed.html" -q --passwords-out "$WORK/pw1"
rc=$?
leak_passwords "$WORK/pw1"
[ $rc -eq 0 ] || fail "closed loop exit code $rc"
check_json closed "$WORK/closed.json"
html=$(cat "$WORK/closed.html")
[[ "$html" == *"<svg"* ]] || fail "HTML report has no inline SVG"
[[ "$html" == *"<script"* || "$html" == *"http://"[a-z]*".css"* ]] && fail "HTML report is not self-contained"
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if j["server"]["rss_kib_max"] > 0 else 1)' \
  "$WORK/closed.json" || fail "no server RSS with --server-pid"

# 2. Open loop at a modest rate, bare RSA-OAEP-SHA1 (IN_TOKEN on SoftHSM), SPKI recipients,
#    SHA-256 sealed (HOST_UNPADDING).
"$LOAD" --target "$ADDR" --padding OAEP_SHA256 --format RSA_OAEP_SHA1 --recipient public-key --devices 3 \
  --passwords 64 --batch 4 --streams 2 --rate 100 --duration 3 --verify-all --json "$WORK/open.json" -q \
  --passwords-out "$WORK/pw2"
rc=$?
leak_passwords "$WORK/pw2"
[ $rc -eq 0 ] || fail "open loop exit code $rc"
check_json open "$WORK/open.json"

# 3. An item count instead of a duration, over two addresses (round robin).
"$LOAD" --target "$ADDR,$ADDR" --padding oaep-sha1 --batch 8 --items 200 --verify-all --json "$WORK/items.json" -q \
  --passwords-out "$WORK/pw3"
rc=$?
leak_passwords "$WORK/pw3"
[ $rc -eq 0 ] || fail "--items exit code $rc"
check_json items "$WORK/items.json"
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if j["items"] == 200 else 1)' \
  "$WORK/items.json" || fail "--items 200 did not run 200 items"

# 4. A usage error exits 2.
"$LOAD" --target "$ADDR" --padding NOPE -q 2>/dev/null
rc=$?
[ $rc -eq 2 ] || fail "bad --padding exit code $rc (want 2)"

stop_rewrapd
if [ $fails -ne 0 ]; then echo "$fails failure(s)"; tail -20 "$WORK/err"; exit 1; fi
echo "all rewrap-load checks passed"
