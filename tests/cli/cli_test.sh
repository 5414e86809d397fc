#!/usr/bin/env bash
# Command-line contract of rewrapd and rewrapctl, run as a user would: the embedded
# default on a fresh state folder, key administration with rewrapctl, exit codes.
# Usage: cli_test.sh REWRAPD REWRAPCTL
set -uo pipefail
REWRAPD=$1
CTL=$2
WORK=$(mktemp -d)
fails=0
passes=0
# rewrapd at trace level with an audit log under the leak check: its logs and PINs are collected.
. "$(dirname "$0")/../support/rewrapd.sh"
cleanup() {
  stop_all_rewrapd
  rm -rf "$WORK"
}
trap cleanup EXIT

check() {  # check NAME EXPECTED ACTUAL
  if [ "$2" == "$3" ]; then passes=$((passes + 1)); else echo "FAIL: $1: expected [$2], got [$3]"; fails=$((fails + 1)); fi
}
contains() {  # contains NAME NEEDLE HAYSTACK
  if [[ "$3" == *"$2"* ]]; then passes=$((passes + 1)); else echo "FAIL: $1: [$2] not in: $3"; fails=$((fails + 1)); fi
}

# --- flags and exit codes that need no token
"$REWRAPD" --version >"$WORK/v"; check "rewrapd --version exit" 0 $?
contains "rewrapd --version text" "rewrapd " "$(cat "$WORK/v")"
"$REWRAPD" --help >"$WORK/h"; check "rewrapd --help exit" 0 $?
for flag in --config --state-dir --listen --module --init-args --token --pin-file --allow-host-unpadding --version --help; do
  contains "rewrapd --help lists $flag" "$flag" "$(cat "$WORK/h")"
done
"$REWRAPD" --no-such-flag 2>/dev/null; check "rewrapd bad flag exit" 2 $?
printf 'listne: 1\n' >"$WORK/bad.yaml"
err=$("$REWRAPD" --config "$WORK/bad.yaml" --check-config 2>&1); check "bad config exit" 2 $?
contains "bad config names the key" "unknown configuration key 'listne'" "$err"
# A value of the wrong type is a configuration error: exit 2 naming the key, never an
# abort (exit 134) or another signal. A list under limits: used to throw past the loader
# and abort rewrapd; tests/unit/service/config_test.cc walks every key and type.
bad_config() {  # bad_config NAME NEEDLE YAML
  printf '%s' "$3" >"$WORK/bad.yaml"
  err=$("$REWRAPD" --config "$WORK/bad.yaml" --check-config 2>&1); local rc=$?
  check "$1: exit 2, not a signal" 2 $rc
  contains "$1: names the key and type" "$2" "$err"
}
bad_config "list under limits" "limits.max_batch_items: expected a non-negative integer, got a list" \
  $'limits:\n  max_batch_items: [1, 2]\n'
bad_config "mapping under limits" "limits.max_inflight_items: expected a non-negative integer, got a mapping" \
  $'limits:\n  max_inflight_items: {a: 1}\n'
bad_config "limits not a mapping" "limits: expected a mapping" $'limits: [1]\n'
bad_config "list for a string" "listen: expected a string, got a list" $'listen: [127.0.0.1:1]\n'
bad_config "empty value" "tls_cert: expected a string, got an empty value" $'tls_cert:\n'
bad_config "mapping for a number" "pool_size: expected a non-negative integer, got a mapping" $'pool_size: {a: 1}\n'
bad_config "wrong boolean" "insecure: expected true or false, got 'maybe'" $'insecure: maybe\n'
bad_config "list key" "a key must be a name, got a list" $'? [a, b]\n: 1\n'
bad_config "key given twice" "'workers' is given twice (also on line 1)" $'workers: 2\nworkers: 3\n'
bad_config "top level a list" "the top level must be a mapping" $'- listen: 127.0.0.1:1\n'
printf '# every line commented out\n# pool_size: 4\n' >"$WORK/commented.yaml"
"$REWRAPD" --config "$WORK/commented.yaml" --check-config >/dev/null 2>&1
check "a comments-only config sets nothing (exit 0)" 0 $?
printf 'module: /usr/lib/softhsm/libsofthsm2.so\ntoken: x\npool_size: 3\n' >"$WORK/ok.yaml"
out=$("$REWRAPD" --config "$WORK/ok.yaml" --check-config); check "check-config exit" 0 $?
contains "check-config shows the pool" "session pool:         3 sessions, " "$out"
contains "check-config denies host unpadding for a real module" "host unpadding:       denied" "$out"

# --- the embedded default: first run creates token, PINs and key
start_rewrapd --out "$WORK/out" --err "$WORK/err" --timeout 30 -- \
  --state-dir "$WORK/state" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 || exit 1
ADDR=$REWRAPD_ADDR
contains "banner gives a client command" "--target $ADDR keys list" "$(cat "$WORK/out")"
check "user.pin mode" 600 "$(stat -c %a "$WORK/state/user.pin")"
check "so.pin mode" 600 "$(stat -c %a "$WORK/state/so.pin")"
check "state dir mode" 700 "$(stat -c %a "$WORK/state")"
contains "host unpadding is announced" "HOST UNPADDING IS ALLOWED" "$(cat "$WORK/err")"
"$CTL" --target "$ADDR" health >/dev/null; check "health SERVING exit" 0 $?
json=$("$CTL" --target "$ADDR" -o json keys list); check "keys list exit" 0 $?
check "default key exists, 2048 bits" "default 2048 True" "$(python3 -c 'import json,sys; k=json.loads(sys.argv[1]); print(k[0]["name"], k[0]["bits"], k[0]["enabled"])' "$json")"
check "SoftHSM OAEP-SHA256 path" "HOST_UNPADDING" "$(python3 -c 'import json,sys; print(" ".join(json.loads(sys.argv[1])[0]["paths"]["OAEP_SHA256"]))' "$json")"

# self-test and metrics
out=$("$CTL" --target "$ADDR" selftest); check "selftest exit" 0 $?
contains "selftest passes on the default key" "default" "$out"
"$CTL" --target "$ADDR" selftest nope >/dev/null 2>&1; check "selftest of an unknown key exits 1" 1 $?
MADDR=$(sed -n 's/.*metrics on http:\/\/\([^/]*\)\/metrics.*/\1/p' "$WORK/err")
metrics=$(curl -sf "http://$MADDR/metrics"); check "metrics endpoint answers" 0 $?
contains "metrics: build info" 'hsmrewrap_build_info{version=' "$metrics"
healthz=$(curl -s -o /dev/null -w '%{http_code} ' "http://$MADDR/healthz"; curl -s "http://$MADDR/healthz")
contains "metrics server /healthz: 200" "200 " "$healthz"
contains "metrics server /healthz: JSON status" '"status":"SERVING"' "$healthz"
contains "metrics server /healthz: tokens section" '"tokens":[{' "$healthz"
contains "metrics server /healthz: the token is up" '"name":"hsm-rewrap","reconnects":0,"state":"up","up":true' "$healthz"
contains "metrics: self-test result" 'hsmrewrap_selftest_ok{key="default"} 1' "$metrics"
contains "metrics: PKCS#11 calls" 'hsmrewrap_pkcs11_calls_total{function="C_Decrypt",result="ok"}' "$metrics"
contains "metrics: sessions" 'hsmrewrap_sessions{state="pool_size"}' "$metrics"

# keys create / export-public in three forms that agree
"$CTL" --target "$ADDR" keys create k3072 --bits 3072 >/dev/null; check "create exit" 0 $?
"$CTL" --target "$ADDR" keys create k3072 >/dev/null 2>"$WORK/e"; check "duplicate create exit" 1 $?
contains "duplicate create says why" "already exists" "$(cat "$WORK/e")"
"$CTL" --target "$ADDR" keys create 'bad name!' >/dev/null 2>&1; check "bad name exit" 1 $?
"$CTL" --target "$ADDR" keys export-public k3072 --out "$WORK/k.pem" 2>/dev/null; check "export pem exit" 0 $?
"$CTL" --target "$ADDR" keys export-public k3072 --format der --out "$WORK/k.der" 2>/dev/null
"$CTL" --target "$ADDR" keys export-public k3072 --format cng --out "$WORK/k.blob" 2>/dev/null
check "pem and der are the same key" "$(openssl pkey -pubin -in "$WORK/k.pem" -outform DER | sha256sum)" "$(sha256sum <"$WORK/k.der")"
check "cng blob size for 3072/e=65537" 411 "$(stat -c %s "$WORK/k.blob")"
check "cng blob magic" "52534131" "$(head -c 4 "$WORK/k.blob" | od -An -tx1 | tr -d ' \n')"
check "cng modulus = pem modulus" \
  "$(openssl rsa -pubin -in "$WORK/k.pem" -noout -modulus | cut -d= -f2 | tr 'A-F' 'a-f')" \
  "$(tail -c 384 "$WORK/k.blob" | od -An -tx1 | tr -d ' \n')"

# import: a PKCS#8 file made by openssl
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/imp.pem" 2>/dev/null
"$CTL" --target "$ADDR" keys import imported --pkcs8 "$WORK/imp.pem" >/dev/null; check "import exit" 0 $?
"$CTL" --target "$ADDR" keys export-public imported --out "$WORK/imp.pub" 2>/dev/null
check "imported public key matches" "$(openssl pkey -in "$WORK/imp.pem" -pubout)" "$(cat "$WORK/imp.pub")"

# disable / enable, and a rewrap through the disabled key is refused (seen in list)
"$CTL" --target "$ADDR" keys disable k3072 >/dev/null; check "disable exit" 0 $?
check "disabled in list" "False" "$(python3 -c 'import json,sys; print([k for k in json.loads(sys.argv[1]) if k["name"]=="k3072"][0]["enabled"])' "$("$CTL" --target "$ADDR" -o json keys list)")"
"$CTL" --target "$ADDR" keys enable k3072 >/dev/null; check "enable exit" 0 $?
"$CTL" --target "$ADDR" keys export-public nope >/dev/null 2>&1; check "unknown key exit" 1 $?

# --- a second run reuses the token, its PINs and keys
stop_rewrapd; check "clean stop exit" 0 $?
pin_before=$(sha256sum <"$WORK/state/user.pin")
start_rewrapd --out "$WORK/out" --err "$WORK/err" --timeout 30 -- \
  --state-dir "$WORK/state" --listen 127.0.0.1:0 || exit 1
ADDR=$REWRAPD_ADDR
check "PIN file kept" "$pin_before" "$(sha256sum <"$WORK/state/user.pin")"
check "keys kept across restarts" "default imported k3072" \
  "$(python3 -c 'import json,sys; print(" ".join(sorted(k["name"] for k in json.loads(sys.argv[1]))))' "$("$CTL" --target "$ADDR" -o json keys list)")"
stop_rewrapd
"$CTL" --target "$ADDR" --timeout 2 health >/dev/null 2>&1; check "health of a stopped service exits 3" 3 $?
"$CTL" --target "$ADDR" 2>/dev/null; check "rewrapctl without subcommand exits 2" 2 $?

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
