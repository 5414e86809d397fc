#!/usr/bin/env bash
# rewrap-connector end to end against real rewrapd replicas (embedded SoftHSM2), with
# OpenSSL and Python's plistlib as the independent consumers of every output format.
#
#   connector_test.sh REWRAPD REWRAPCTL CONNECTOR [formats|reseal|replicas ...]
#
# formats : every output format decrypts (CMS to RSA with AES-256/128/3DES and OAEP/PKCS#1
#           key transport, CMS to EC P-256/P-384, bare RSA, Apple payload), error lines,
#           input order, exit code.
# reseal  : --reseal --to KEY rotates userPFXCertificate records; the new seal works.
# replicas: three rewrapd sharing one SoftHSM2 state dir, one SIGKILLed mid-run; every
#           request answered exactly once and correct.
set -euo pipefail

REWRAPD=$1 REWRAPCTL=$2 CONNECTOR=$3
shift 3
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(formats reseal replicas)

HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d /tmp/connector-test.XXXXXX)
# shellcheck source=tests/connector/lib.sh
. "$HERE/lib.sh"
cleanup() { stop_all_rewrapd; [ -n "${KEEP_TMP:-}" ] || rm -rf "$W"; }
trap cleanup EXIT

FAILS=0
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
pass() { echo "ok:   $*"; }

start_replica r1 "$W/state"
A1=$ADDR
"$REWRAPCTL" --target "$A1" keys export-public default --out "$W/svc.pem"
make_devices

# output ID FILE: writes the decoded output of result ID from $W/out.jsonl to FILE
output() {
  python3 - "$W/out.jsonl" "$1" "$2" <<'EOF'
import base64, json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("id") == sys.argv[2]:
        open(sys.argv[3], "wb").write(base64.b64decode(r["output"]) if "output" in r else b"")
        sys.exit(0 if "output" in r else 1)
sys.exit(1)
EOF
}

# expect_plain ID WANT_FILE CMD...: decodes output ID, runs CMD with the DER in $W/o.der
expect_plain() {
  local id=$1 want=$2
  shift 2
  if ! output "$id" "$W/o.der"; then fail "$id: no output ($(grep "\"$id\"" "$W/out.jsonl" | head -c 300))"; return; fi
  if "$@" >"$W/got" 2>"$W/err" && cmp -s "$W/got" "$want"; then
    pass "$id"
  else
    fail "$id: $* did not give the password: $(head -c 300 "$W/err")"
  fi
}

cms_cipher_is() {  # ID CIPHER-NAME-AS-OPENSSL-PRINTS-IT
  output "$1" "$W/o.der"
  if openssl cms -cmsout -print -inform DER -in "$W/o.der" | grep -qi "algorithm: $2"; then
    pass "$1 content cipher $2"
  else
    fail "$1 content cipher is not $2"
  fi
}

# ---------------------------------------------------------------------------------------
part_formats() {
  echo "== formats"
  printf 'Secret-pw-1' >"$W/pw1"
  leak_secret_file "$W/pw1"
  openssl pkcs12 -export -in "$W/dev-rsa.crt" -inkey "$W/dev-rsa.key" -passout file:"$W/pw1" \
    -out "$W/user.pfx" 2>/dev/null
  local s512 s256 s384 s1
  s512=$(seal "$W/svc.pem" oaepSha512 "$W/pw1")
  s256=$(seal "$W/svc.pem" oaepSha256 "$W/pw1")
  s384=$(seal "$W/svc.pem" oaepSha384 "$W/pw1")
  s1=$(seal "$W/svc.pem" oaepSha1 "$W/pw1")
  local rsa p256 p384 pfx rsapem spki
  rsa=$(cert_b64 "$W/dev-rsa.crt")
  p256=$(cert_b64 "$W/dev-p256.crt")
  p384=$(cert_b64 "$W/dev-p384.crt")
  pfx=$(base64 -w0 "$W/user.pfx")
  rsapem=$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$W/dev-rsa.crt")
  spki=$(openssl x509 -in "$W/dev-rsa.crt" -pubkey -noout | openssl pkey -pubin -outform DER | base64 -w0)
  local bad
  bad=$(head -c 256 /dev/urandom | base64 -w0)
  {
    req() { echo "{\"id\":\"$1\",\"keyName\":\"default\",\"paddingScheme\":\"$2\",\"encryptedPfxPassword\":\"$3\",$4}"; }
    req cms-aes256 oaepSha512 "$s512" "\"deviceCertificate\":\"$rsa\",\"format\":\"cms\""
    req cms-aes128 OaepSha256 "$s256" "\"deviceCertificate\":\"$rsa\",\"format\":\"cms\",\"contentCipher\":\"aes128\""
    req cms-3des OAEPSHA384 "$s384" "\"deviceCertificate\":\"$rsa\",\"format\":\"CMS_ENVELOPED\",\"contentCipher\":\"3des\""
    req cmspkcs1-aes256 oaepSha1 "$s1" "\"deviceCertificate\":\"$rsa\",\"format\":\"cmsPkcs1\""
    req cmspkcs1-3des oaepSha512 "$s512" "\"deviceCertificate\":\"$rsa\",\"format\":\"cmsPkcs1\",\"contentCipher\":\"des-ede3-cbc\""
    req cms-pem oaepSha512 "$s512" "\"deviceCertificate\":$rsapem"
    req cms-spki oaepSha512 "$s512" "\"devicePublicKey\":\"$spki\""
    req cms-p256 oaepSha512 "$s512" "\"deviceCertificate\":\"$p256\",\"format\":\"cms\""
    req cms-p384 oaepSha256 "$s256" "\"deviceCertificate\":\"$p384\",\"format\":\"cms\",\"contentCipher\":\"aes128\""
    req bare-oaep256 oaepSha512 "$s512" "\"deviceCertificate\":\"$rsa\",\"format\":\"rsaOaepSha256\""
    req bare-oaep1 oaepSha512 "$s512" "\"deviceCertificate\":\"$rsa\",\"format\":\"rsaOaepSha1\""
    req bare-oaep384 oaepSha512 "$s512" "\"deviceCertificate\":\"$rsa\",\"format\":\"rsaOaepSha384\""
    req bare-oaep512 oaepSha512 "$s512" "\"deviceCertificate\":\"$rsa\",\"format\":\"rsaOaepSha512\""
    req bare-pkcs1 none "$s512" "\"devicePublicKey\":\"$spki\",\"format\":\"rsaPkcs1\""
    req apple oaepSha512 "$s512" "\"deviceCertificate\":\"$rsa\",\"format\":\"apple\",\"pfx\":\"$pfx\""
    req apple-p256 oaepSha256 "$s256" "\"deviceCertificate\":\"$p256\",\"format\":\"apple\",\"encryptedPfxBlob\":\"$pfx\""
    echo ""
    req bad-ct oaepSha512 "$bad" "\"deviceCertificate\":\"$rsa\""
    req apple-nopfx oaepSha512 "$s512" "\"deviceCertificate\":\"$rsa\",\"format\":\"apple\""
    req apple-spki oaepSha512 "$s512" "\"devicePublicKey\":\"$spki\",\"format\":\"apple\",\"pfx\":\"$pfx\""
    req bad-format oaepSha512 "$s512" "\"deviceCertificate\":\"$rsa\",\"format\":\"zip\""
    echo 'this is not json'
    req no-key oaepSha512 "$s512" "\"deviceCertificate\":\"$rsa\"" | sed 's/"keyName":"default",/"keyName":"nope",/'
  } >"$W/in.jsonl"
  local rc=0
  "$CONNECTOR" --target "$A1" --in "$W/in.jsonl" --out "$W/out.jsonl" --batch 4 --streams 2 \
    2>"$W/conn.err" || rc=$?
  cat "$W/conn.err"
  [ "$rc" = 1 ] && pass "exit code 1 when some requests failed" || fail "exit code $rc, want 1"
  # One line per non-empty input line, in input order.
  local want got
  want=$(grep -c . "$W/in.jsonl")
  got=$(wc -l <"$W/out.jsonl")
  [ "$want" = "$got" ] && pass "$got result lines for $want requests" || fail "$got result lines for $want requests"
  python3 - "$W/in.jsonl" "$W/out.jsonl" <<'EOF' && pass "results in input order" || fail "results not in input order"
import json, sys
ids_in = []
for line in open(sys.argv[1]):
    if not line.strip(): continue
    try: ids_in.append(json.loads(line).get("id"))
    except ValueError: ids_in.append(None)
ids_out = [json.loads(l).get("id") for l in open(sys.argv[2])]
sys.exit(0 if ids_in == ids_out else 1)
EOF

  local K=$W/dev-rsa.key C=$W/dev-rsa.crt
  expect_plain cms-aes256 "$W/pw1" openssl cms -decrypt -inform DER -in "$W/o.der" -inkey "$K" -recip "$C"
  cms_cipher_is cms-aes256 aes-256-cbc
  expect_plain cms-aes128 "$W/pw1" openssl cms -decrypt -inform DER -in "$W/o.der" -inkey "$K" -recip "$C"
  cms_cipher_is cms-aes128 aes-128-cbc
  expect_plain cms-3des "$W/pw1" openssl cms -decrypt -inform DER -in "$W/o.der" -inkey "$K" -recip "$C"
  cms_cipher_is cms-3des des-ede3-cbc
  expect_plain cmspkcs1-aes256 "$W/pw1" openssl cms -decrypt -inform DER -in "$W/o.der" -inkey "$K" -recip "$C"
  output cmspkcs1-aes256 "$W/o.der"
  openssl cms -cmsout -print -inform DER -in "$W/o.der" | grep -q "algorithm: rsaEncryption" \
    && pass "cmspkcs1 key transport rsaEncryption" || fail "cmspkcs1 key transport is not rsaEncryption"
  output cms-aes256 "$W/o.der"
  openssl cms -cmsout -print -inform DER -in "$W/o.der" | grep -q "algorithm: rsaesOaep" \
    && pass "cms key transport RSAES-OAEP" || fail "cms key transport is not RSAES-OAEP"
  expect_plain cmspkcs1-3des "$W/pw1" openssl cms -decrypt -inform DER -in "$W/o.der" -inkey "$K" -recip "$C"
  cms_cipher_is cmspkcs1-3des des-ede3-cbc
  expect_plain cms-pem "$W/pw1" openssl cms -decrypt -inform DER -in "$W/o.der" -inkey "$K" -recip "$C"
  expect_plain cms-spki "$W/pw1" openssl cms -decrypt -inform DER -in "$W/o.der" -inkey "$K"
  expect_plain cms-p256 "$W/pw1" openssl cms -decrypt -inform DER -in "$W/o.der" -inkey "$W/dev-p256.key" -recip "$W/dev-p256.crt"
  expect_plain cms-p384 "$W/pw1" openssl cms -decrypt -inform DER -in "$W/o.der" -inkey "$W/dev-p384.key" -recip "$W/dev-p384.crt"
  expect_plain bare-oaep256 "$W/pw1" openssl pkeyutl -decrypt -inkey "$K" -in "$W/o.der" \
    -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256
  expect_plain bare-oaep1 "$W/pw1" openssl pkeyutl -decrypt -inkey "$K" -in "$W/o.der" \
    -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha1 -pkeyopt rsa_mgf1_md:sha1
  expect_plain bare-oaep384 "$W/pw1" openssl pkeyutl -decrypt -inkey "$K" -in "$W/o.der" \
    -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha384 -pkeyopt rsa_mgf1_md:sha384
  expect_plain bare-oaep512 "$W/pw1" openssl pkeyutl -decrypt -inkey "$K" -in "$W/o.der" \
    -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha512 -pkeyopt rsa_mgf1_md:sha512
  expect_plain bare-pkcs1 "$W/pw1" openssl pkeyutl -decrypt -inkey "$K" -in "$W/o.der" -pkeyopt rsa_padding_mode:pkcs1

  output apple "$W/o.der"
  openssl cms -cmsout -print -inform DER -in "$W/o.der" | grep -q "algorithm: rsaEncryption" \
    && pass "apple key transport rsaEncryption (PKCS#1 v1.5)" || fail "apple key transport is not rsaEncryption"

  # Apple: CMS -> plist (plistlib) -> PFX that opens with the plist's password.
  local id key crt
  for id in apple; do
    key=$W/dev-rsa.key crt=$W/dev-rsa.crt
    if output "$id" "$W/o.der" &&
       openssl cms -decrypt -inform DER -in "$W/o.der" -inkey "$key" -recip "$crt" -out "$W/payload.plist" &&
       python3 - "$W/payload.plist" "$W/user.pfx" "$W/apple.pfx" "$W/apple.pw" <<'EOF' &&
import plistlib, sys
arr = plistlib.load(open(sys.argv[1], "rb"))
assert isinstance(arr, list) and len(arr) == 1, arr
d = arr[0]
assert d["PayloadType"] == "com.apple.security.pkcs12", d
assert d["PayloadVersion"] == 1
for k in ("PayloadUUID", "PayloadIdentifier", "PayloadDisplayName", "Password"):
    assert isinstance(d[k], str) and d[k], k
assert d["PayloadContent"] == open(sys.argv[2], "rb").read(), "PayloadContent is not the PFX"
open(sys.argv[3], "wb").write(d["PayloadContent"])
open(sys.argv[4], "w").write(d["Password"])
EOF
       openssl pkcs12 -in "$W/apple.pfx" -passin file:"$W/apple.pw" -nokeys -out /dev/null 2>"$W/err" &&
       cmp -s "$W/apple.pw" "$W/pw1"; then
      pass "$id: plist parses, PFX opens with its password"
    else
      fail "$id: Apple payload check failed: $(head -c 300 "$W/err" 2>/dev/null)"
    fi
  done

  # Errors are reported per line with a code.
  err_is() {
    local c
    c=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    r=json.loads(l)
    if r.get("id")==sys.argv[2]: print(r.get("error",{}).get("code","OK"), r.get("error",{}).get("message",""))' "$W/out.jsonl" "$1")
    case "$c" in "$2"*) pass "$1 -> $c" ;; *) fail "$1 -> '$c', want $2" ;; esac
  }
  err_is bad-ct DECRYPT_FAILED
  err_is apple-nopfx INVALID_ITEM
  err_is apple-spki INVALID_ITEM
  err_is apple-p256 UNSUPPORTED  # Apple's decoder does not read RFC 5753 key agreement
  err_is bad-format INVALID_ITEM
  err_is no-key KEY_NOT_FOUND
  grep -q '"id":null.*INVALID_ITEM' "$W/out.jsonl" && pass "unparsable line reported" || fail "unparsable line not reported"
  grep -q "failed by code:.*DECRYPT_FAILED=1" "$W/conn.err" && pass "summary counts failures by code" \
    || fail "summary lacks failed-by-code"
}

# ---------------------------------------------------------------------------------------
part_reseal() {
  echo "== reseal"
  "$REWRAPCTL" --target "$A1" keys create rotated >/dev/null
  printf 'Rotate-me-%s' 1 >"$W/rpw1"
  printf 'Rotate-me-%s' 2 >"$W/rpw2"
  leak_secret_file "$W/rpw1" "$W/rpw2"
  local rsa
  rsa=$(cert_b64 "$W/dev-rsa.crt")
  python3 - "$W/records.jsonl" "$(seal "$W/svc.pem" oaepSha512 "$W/rpw1")" "$(seal "$W/svc.pem" oaepSha256 "$W/rpw2")" <<'EOF'
import json, sys
def rec(n, ct, padding):
    return {"thumbprint": "%040x" % n, "intendedPurpose": "SmimeEncryption",
            "userPrincipalName": "user%d@contoso.example" % n,
            "startDateTime": "2024-01-01T00:00:00+00:00", "expirationDateTime": "2034-01-01T00:00:00+00:00",
            "providerName": "hsm-rewrap", "keyName": "default", "paddingScheme": padding,
            "encryptedPfxBlob": "MIIB", "encryptedPfxPassword": ct,
            "createdDateTime": "2024-05-01T10:11:12.1234567+00:00",
            "lastModifiedDateTime": "2024-05-01T10:11:12.1234567+00:00"}
with open(sys.argv[1], "w") as f:
    f.write(json.dumps(rec(1, sys.argv[2], "OaepSha512")) + "\n")
    f.write(json.dumps(rec(2, sys.argv[3], "oaepSha256")) + "\n")
EOF
  local rc=0
  "$CONNECTOR" --target "$A1" --reseal --to rotated --to-padding oaepSha384 --in "$W/records.jsonl" \
    --out "$W/resealed.jsonl" 2>"$W/conn.err" || rc=$?
  cat "$W/conn.err"
  [ "$rc" = 0 ] && pass "reseal exit 0" || fail "reseal exit $rc"
  python3 - "$W/records.jsonl" "$W/resealed.jsonl" <<'EOF' && pass "resealed records: keyName, paddingScheme, new seal, other fields kept" || fail "resealed records wrong"
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert len(a) == len(b) == 2, (len(a), len(b))
for x, y in zip(a, b):
    assert list(x.keys()) == list(y.keys()), "property order changed"
    assert y["keyName"] == "rotated" and y["paddingScheme"] == "oaepSha384", y
    assert y["encryptedPfxPassword"] != x["encryptedPfxPassword"]
    for k in x:
        if k not in ("keyName", "paddingScheme", "encryptedPfxPassword"):
            assert x[k] == y[k], k
EOF
  # The new seal: rewrap the resealed records (key `rotated`) to the device and decrypt.
  python3 - "$W/resealed.jsonl" "$rsa" >"$W/in.jsonl" <<'EOF'
import json, sys
for i, l in enumerate(open(sys.argv[1]), 1):
    r = json.loads(l)
    print(json.dumps({"id": "rot%d" % i, "keyName": r["keyName"], "paddingScheme": r["paddingScheme"],
                      "encryptedPfxPassword": r["encryptedPfxPassword"], "deviceCertificate": sys.argv[2]}))
EOF
  "$CONNECTOR" --target "$A1" --in "$W/in.jsonl" --out "$W/out.jsonl" 2>/dev/null || fail "rewrap of resealed records"
  expect_plain rot1 "$W/rpw1" openssl cms -decrypt -inform DER -in "$W/o.der" -inkey "$W/dev-rsa.key" -recip "$W/dev-rsa.crt"
  expect_plain rot2 "$W/rpw2" openssl cms -decrypt -inform DER -in "$W/o.der" -inkey "$W/dev-rsa.key" -recip "$W/dev-rsa.crt"
}

# ---------------------------------------------------------------------------------------
part_replicas() {
  echo "== replicas"
  local n=${REPLICA_TEST_ITEMS:-3000}
  start_replica r2 "$W/state"
  local A2=$ADDR
  start_replica r3 "$W/state"
  local A3=$ADDR
  python3 "$HERE/gen_requests.py" --pub "$W/svc.pem" --certs "$W/dev-rsa.crt,$W/dev-p256.crt" \
    --passwords 4 --lines "$n" --out "$W/many.jsonl" --secrets "$W/secrets.json"
  local rc=0
  "$CONNECTOR" --target "$A1,$A2,$A3" --in "$W/many.jsonl" --out "$W/many.out" --batch 25 --streams 6 \
    --deadline 20 --no-progress 2>"$W/conn.err" &
  local cpid=$!
  # SIGKILL replica 2 once a quarter of the results are out.
  local i
  for i in $(seq 1 600); do
    [ "$(wc -l <"$W/many.out" 2>/dev/null || echo 0)" -ge $((n / 4)) ] && break
    kill -0 "$cpid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$(cat "$W/r2.pid")" && echo "killed replica r2 ($A2) at $(wc -l <"$W/many.out") results"
  wait "$cpid" || rc=$?
  cat "$W/conn.err"
  [ "$rc" = 0 ] && pass "replicas: exit 0" || fail "replicas: exit $rc"
  grep -Eq "[1-9][0-9]* stream failures" "$W/conn.err" && pass "a stream failure was seen and retried" \
    || fail "no stream failure seen: was the replica killed mid-run?"
  python3 "$HERE/check_results.py" --requests "$W/many.jsonl" --results "$W/many.out" \
    --secrets "$W/secrets.json" --keys "$W/dev-rsa.crt=$W/dev-rsa.key,$W/dev-p256.crt=$W/dev-p256.key" \
    --sample "${REPLICA_TEST_SAMPLE:-300}" && pass "replicas: every request answered once; sample decrypts" \
    || fail "replicas: results check failed"
}

for p in "${PARTS[@]}"; do "part_$p"; done
echo "== $FAILS failure(s)"
[ "$FAILS" = 0 ]
