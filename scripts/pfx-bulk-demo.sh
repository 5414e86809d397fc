#!/usr/bin/env bash
# Bulk demo for pfx-import: generates N PFX files (default 1000) from several producers
# (OpenSSL 3 default, OpenSSL -legacy (RC2-40), GnuTLS certtool, and a few from Java keytool
# and NSS pk12util when installed) plus planted bad ones, then runs
#   pfx-import --csv manifest.csv --verify --service HOST:PORT
# against rewrapd and prints how long it took.
#
# Usage: scripts/pfx-bulk-demo.sh [N] [--service HOST:PORT] [--jobs J] [--keep]
#   Without --service a rewrapd is started on 127.0.0.1:0 with a temporary state dir and
#   stopped at the end. Binaries: $PFX_IMPORT and $REWRAPD, else from $BUILD_DIR
#   (default: build). --jobs J is passed to pfx-import (default there: cores).
# Exit status: 0 when every good file was imported and verified and every planted bad one
# failed with its expected reason.
set -euo pipefail

N=1000
SERVICE=""
KEEP=0
JOBS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --service) SERVICE="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --jobs) JOBS=(--jobs "$2"); shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) N="$1"; shift ;;
  esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
PFX_IMPORT="${PFX_IMPORT:-$BUILD_DIR/clients/pfx-import/pfx-import}"
REWRAPD="${REWRAPD:-$BUILD_DIR/service/rewrapd}"
[ -x "$PFX_IMPORT" ] || { echo "pfx-import not found at $PFX_IMPORT (set BUILD_DIR or PFX_IMPORT)" >&2; exit 2; }

WORK="$(mktemp -d /tmp/pfx-bulk-demo.XXXXXX)"
. "$ROOT/tests/support/rewrapd.sh"
cleanup() {
  stop_all_rewrapd
  if [ "$KEEP" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

if [ -z "$SERVICE" ]; then
  [ -x "$REWRAPD" ] || { echo "rewrapd not found at $REWRAPD (set BUILD_DIR or REWRAPD, or pass --service)" >&2; exit 2; }
  mkdir -p "$WORK/state"
  start_rewrapd --out "$WORK/rewrapd.out" --err "$WORK/rewrapd.err" -- \
    --state-dir "$WORK/state" --listen 127.0.0.1:0 || exit 3
  SERVICE=$REWRAPD_ADDR
  echo "started rewrapd on $SERVICE"
fi

mkdir -p "$WORK/pfx" "$WORK/keys"
cd "$WORK"
echo "generating $N PFX files in $WORK/pfx ..."
gen_start=$(date +%s.%N)

# A pool of keys (one per 25 certificates) keeps generation fast; every certificate differs.
KEYS=$(( (N + 24) / 25 ))
seq 0 $((KEYS - 1)) | xargs -P 2 -I{} openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
  -out keys/k{}.pem 2>/dev/null

cat >certtool.tmpl <<'EOF'
cn = "certtool user"
expiration_days = 365
signing_key
encryption_key
EOF

# gen INDEX: one PFX; producer by INDEX % 10: 0-4 openssl default (AES-256, PBKDF2 2048),
# 5-8 openssl -legacy (RC2-40 + 3DES), 9 GnuTLS certtool (PBKDF2 with 600000 iterations, so
# each certtool file costs ~0.2 s per PBKDF run to open; kept to a tenth of the set).
# Writes pfx/INDEX.p12 and prints the manifest row.
gen() {
  local i=$1 key="keys/k$(( $1 % KEYS )).pem" pw="Pw-$1-é"
  local producer=$(( i % 10 ))
  case $producer in [0-4]) producer=0 ;; [5-8]) producer=1 ;; 9) producer=2 ;; esac
  if [ $producer = 2 ] && ! command -v certtool >/dev/null; then producer=0; fi
  case $producer in
    0|1)
      openssl req -x509 -new -key "$key" -subj "/CN=user$i" -days 365 -set_serial "$((i + 1000))" \
        -addext "keyUsage=critical,digitalSignature,keyEncipherment" -out "pfx/$i.crt" 2>/dev/null
      if [ $producer = 1 ]; then legacy=-legacy; else legacy=; fi
      openssl pkcs12 -export $legacy -inkey "$key" -in "pfx/$i.crt" -passout "pass:$pw" -out "pfx/$i.p12"
      ;;
    2)
      sed "s/certtool user/user$i/" certtool.tmpl >"pfx/$i.tmpl"
      echo "serial = $((i + 1000))" >>"pfx/$i.tmpl"
      certtool --generate-self-signed --load-privkey "$key" --template "pfx/$i.tmpl" --outfile "pfx/$i.crt" >/dev/null 2>&1
      certtool --load-privkey "$key" --load-certificate "pfx/$i.crt" --to-p12 --outder --p12-name "user$i" \
        --password "$pw" --outfile "pfx/$i.p12" >/dev/null 2>&1
      ;;
  esac
  rm -f "pfx/$i.crt" "pfx/$i.tmpl"
  printf 'pfx/%s.p12,%s,,user%s@contoso.example,smimeEncryption\n' "$i" "$pw" "$i"
}
export -f gen
export KEYS

BAD=8
GOOD=$(( N - BAD ))
[ "$GOOD" -gt 0 ] || { echo "N must be larger than $BAD" >&2; exit 2; }
echo "pfxPath,password,passwordFile,userPrincipalName,intendedPurpose" >manifest.csv
seq 0 $((GOOD - 1)) | xargs -P 2 -I{} bash -c 'gen {}' >rows.csv

# A few from Java keytool and NSS pk12util (slow to start, so only some), replacing rows.
EXTRA=0
if command -v keytool >/dev/null && [ "$GOOD" -ge 20 ]; then
  for i in 0 1 2 3 4; do
    j=$((i * 3))  # replace some openssl-default rows
    rm -f "pfx/$j.p12"
    # Java refuses non-ASCII PKCS#12 passwords, so these rows get an ASCII one.
    keytool -genkeypair -storetype PKCS12 -keystore "pfx/$j.p12" -storepass "Pw-$j-kt" -keypass "Pw-$j-kt" \
      -alias user -keyalg RSA -keysize 2048 -dname "CN=keytool$j" -validity 365 \
      -ext KeyUsage=digitalSignature,keyEncipherment >/dev/null
    sed -i "s|^pfx/$j.p12,Pw-$j-é,|pfx/$j.p12,Pw-$j-kt,|" rows.csv
    EXTRA=$((EXTRA + 1))
  done
fi
if command -v pk12util >/dev/null && command -v certutil >/dev/null && [ "$GOOD" -ge 40 ]; then
  mkdir -p nssdb
  certutil -N -d sql:nssdb --empty-password
  for i in 0 1 2 3 4; do
    j=$((i * 3 + 30))
    openssl pkcs12 -export -inkey "keys/k$((j % KEYS)).pem" -in <(openssl req -x509 -new -key "keys/k$((j % KEYS)).pem" \
      -subj "/CN=nss$j" -days 365 -set_serial $((j + 500000)) 2>/dev/null) -name "nss$j" -passout pass:seed -out "nss$j.seed.p12"
    pk12util -i "nss$j.seed.p12" -d sql:nssdb -W seed -K '' >/dev/null
    rm -f "pfx/$j.p12"
    pk12util -o "pfx/$j.p12" -n "nss$j" -d sql:nssdb -W "Pw-$j-é" -K '' >/dev/null
    EXTRA=$((EXTRA + 1))
  done
fi
sort -t/ -k2 -n rows.csv >>manifest.csv

# Planted bad ones, one per reason.
k=keys/k0.pem
openssl req -x509 -new -key $k -subj "/CN=bad" -days 30 -addext "keyUsage=critical,digitalSignature" \
  -out bad-sign.crt 2>/dev/null
openssl pkcs12 -export -inkey $k -in bad-sign.crt -passout pass:bad -out pfx/bad-keyusage.p12
openssl req -x509 -new -key $k -subj "/CN=ok" -days 30 -out bad-ok.crt 2>/dev/null
openssl pkcs12 -export -inkey $k -in bad-ok.crt -passout pass:right -out pfx/bad-wrongpw.p12
openssl pkcs12 -export -nokeys -in bad-ok.crt -passout pass:bad -out pfx/bad-nokey.p12
openssl pkcs12 -export -inkey $k -in bad-ok.crt -passout pass:bad -out pfx/bad-full.p12
head -c 600 pfx/bad-full.p12 >pfx/bad-truncated.p12
echo "this is not a PFX" >pfx/bad-garbage.p12
printf 'pfx/bad-toolong.p12' >/dev/null
LONGPW=$(printf 'x%.0s' $(seq 130))
openssl pkcs12 -export -inkey $k -in bad-ok.crt -passout "pass:$LONGPW" -out pfx/bad-toolong.p12
if command -v certtool >/dev/null; then
  printf 'cn = "expired"\nactivation_date = "2019-01-01 00:00:00 UTC"\nexpiration_date = "2020-01-01 00:00:00 UTC"\nencryption_key\n' >exp.tmpl
  certtool --generate-self-signed --load-privkey $k --template exp.tmpl --outfile bad-exp.crt >/dev/null 2>&1
  openssl pkcs12 -export -inkey $k -in bad-exp.crt -passout pass:bad -out pfx/bad-expired.p12
  EXPIRED_ROW="pfx/bad-expired.p12,bad,,bad-expired@contoso.example,smimeEncryption"
else
  EXPIRED_ROW="pfx/bad-missing.p12,bad,,bad-missing@contoso.example,smimeEncryption"
fi
cat >>manifest.csv <<EOF
pfx/bad-keyusage.p12,bad,,bad-keyusage@contoso.example,smimeEncryption
pfx/bad-wrongpw.p12,wrong,,bad-wrongpw@contoso.example,smimeEncryption
pfx/bad-nokey.p12,bad,,bad-nokey@contoso.example,smimeEncryption
pfx/bad-truncated.p12,bad,,bad-truncated@contoso.example,smimeEncryption
pfx/bad-garbage.p12,bad,,bad-garbage@contoso.example,smimeEncryption
pfx/bad-toolong.p12,$LONGPW,,bad-toolong@contoso.example,smimeEncryption
$EXPIRED_ROW
pfx/bad-missing-file.p12,bad,,bad-missing@contoso.example,smimeEncryption
EOF
gen_end=$(date +%s.%N)
printf 'generated %d good PFX (%d from keytool/pk12util) and %d bad ones in %.1f s\n' "$GOOD" "$EXTRA" "$BAD" \
  "$(echo "$gen_end - $gen_start" | bc)"

CMD=("$PFX_IMPORT" --service "$SERVICE" --csv "$WORK/manifest.csv" --verify "${JOBS[@]}" --out "$WORK/records.jsonl")
echo "running: ${CMD[*]}"
start=$(date +%s.%N)
set +e
"${CMD[@]}" 2>"$WORK/import.err"
rc=$?
set -e
end=$(date +%s.%N)
grep -v '^\[' "$WORK/import.err" | grep -v $'^\r' | tail -n 30 || true
records=$(wc -l <"$WORK/records.jsonl" 2>/dev/null || echo 0)
printf 'pfx-import: exit %d, %d records for %d rows, %.1f s\n' "$rc" "$records" "$N" "$(echo "$end - $start" | bc)"

ok=1
[ "$rc" = 1 ] || { echo "expected exit 1 (planted bad rows)"; ok=0; }
[ "$records" = "$GOOD" ] || { echo "expected $GOOD records"; ok=0; }
grep -q "verified through the service: $GOOD" "$WORK/import.err" || { echo "not every record verified"; ok=0; }
grep -q "$GOOD imported, 0 skipped, $BAD failed" "$WORK/import.err" || { echo "unexpected summary"; ok=0; }
[ $ok = 1 ] && echo "OK: every good file imported and verified, every planted bad one refused"
[ $ok = 1 ]
