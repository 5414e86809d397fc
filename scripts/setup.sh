#!/usr/bin/env bash
# Installs every Debian (bookworm) package hsm-rewrap needs to build, run and test.
# Idempotent and non-interactive; run as root or with sudo available.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config ninja-build
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libssl-dev openssl
  softhsm2 libp11-kit-dev p11-kit p11-kit-modules opensc
  libnss3 libnss3-dev libnss3-tools
  libgtest-dev libgmock-dev googletest
  libabsl-dev nlohmann-json3-dev libyaml-cpp-dev libcli11-dev libspdlog-dev libfmt-dev
  libsystemd-dev libcurl4-openssl-dev libcpp-httplib-dev
  python3 python3-cryptography python3-cryptography-vectors
  gnutls-bin default-jre-headless libplist-utils
  default-jdk-headless libbcpkix-java
  yamllint systemd dpkg-dev curl libplist-dev
  # Hardware-grade tokens (tests/support/hw_tokens.sh): openCryptoki's software token behind
  # pkcsslotd, and a TPM 2.0 (swtpm) behind tpm2-abrmd on a private D-Bus bus with
  # tpm2-pkcs11 and its tpm2_ptool.
  opencryptoki libopencryptoki0
  swtpm swtpm-tools tpm2-tools tpm2-abrmd libtss2-tcti-tabrmd0 libtss2-tcti-swtpm0
  libtpm2-pkcs11-1 libtpm2-pkcs11-tools python3-tpm2-pkcs11-tools dbus dbus-daemon
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup: done"
