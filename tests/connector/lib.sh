# Shared helpers for the connector tests and scripts/connector-replicas-demo.sh.
# Needs: REWRAPD, REWRAPCTL, CONNECTOR (paths) and W (a work directory) set by the caller.

# rewrapd at trace level with an audit log under the leak check (tests/leakcheck/leakcheck.sh):
# no-ops unless ctest runs us through collect.sh.
# shellcheck source=tests/support/rewrapd.sh
. "$(dirname "${BASH_SOURCE[0]}")/../support/rewrapd.sh"

# start_replica NAME STATE_DIR: starts rewrapd on a free loopback port; sets ADDR and
# records its pid in $W/NAME.pid (log in $W/NAME.log). stop_all_rewrapd stops them all.
start_replica() {
  start_rewrapd --name "$1" --out "$W/$1.log" -- --state-dir "$2" --listen 127.0.0.1:0 || return 1
  ADDR=$REWRAPD_ADDR
  echo "$REWRAPD_PID" >"$W/$1.pid"
}

# seal PUBKEY_PEM PADDING(oaepSha256|oaepSha384|oaepSha512|oaepSha1|pkcs1) PLAINTEXT_FILE -> base64 on stdout
seal() {
  local pub=$1 padding=$2 file=$3 opts=()
  case "$padding" in
    oaepSha256) opts=(-pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256) ;;
    oaepSha384) opts=(-pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha384 -pkeyopt rsa_mgf1_md:sha384) ;;
    oaepSha512) opts=(-pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha512 -pkeyopt rsa_mgf1_md:sha512) ;;
    oaepSha1) opts=(-pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha1 -pkeyopt rsa_mgf1_md:sha1) ;;
    pkcs1) opts=(-pkeyopt rsa_padding_mode:pkcs1) ;;
  esac
  openssl pkeyutl -encrypt -pubin -inkey "$pub" "${opts[@]}" -in "$file" | base64 -w0
}

# Device identities: $W/dev-rsa.{key,crt}, $W/dev-p256.*, $W/dev-p384.*
# (CA:FALSE: `openssl req -x509` makes CA certificates by default, which rewrapd refuses as
# recipients.)
make_devices() {
  local ee=(-addext basicConstraints=critical,CA:FALSE)
  openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=device-rsa -days 2 "${ee[@]}" \
    -keyout "$W/dev-rsa.key" -out "$W/dev-rsa.crt" 2>/dev/null
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=device-p256 -days 2 \
    "${ee[@]}" -keyout "$W/dev-p256.key" -out "$W/dev-p256.crt" 2>/dev/null
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -subj /CN=device-p384 -days 2 \
    "${ee[@]}" -keyout "$W/dev-p384.key" -out "$W/dev-p384.crt" 2>/dev/null
}

# b64_of_der CERT_PEM -> base64 DER of the certificate
cert_b64() { openssl x509 -in "$1" -outform DER | base64 -w0; }
