#!/usr/bin/env bash
# Brings up a hardware-grade PKCS#11 stack from nothing in a temporary directory, runs a
# command with it, and tears it all down again (processes stopped by their pid, the
# directory removed): no fixed ports, nothing left behind.
#
#   tests/support/hw_tokens.sh opencryptoki CMD [ARG...]
#   tests/support/hw_tokens.sh tpm CMD [ARG...]
#   tests/support/hw_tokens.sh check opencryptoki|tpm   # exit 0 if it can run here, else 77
#
# opencryptoki: openCryptoki's software token (swtok, libpkcs11_sw.so) behind pkcsslotd.
#   openCryptoki 3.8.1 has its paths compiled in (/etc/opencryptoki/opencryptoki.conf,
#   /var/lib/opencryptoki/swtok, /run/pkcsslotd.socket, /run/lock/opencryptoki, and the
#   token's shared memory /dev/shm/var.lib.opencryptoki.swtok), so CMD and pkcsslotd run in
#   a private mount and IPC namespace (unshare -m -i -p; needs root, as in CI) where those
#   paths are bind mounts of, or tmpfs over, the temporary directory (and a PID namespace:
#   nothing started there outlives the script). The token in slot 3
#   is left uninitialised: its SO PIN is the default 87654321 (C_InitToken resets it to that
#   every time), so each test makes a fresh token with C_InitToken + C_InitPIN
#   (tests/support/test_token.cc). The daemon needs the `pkcs11` group (made by the
#   opencryptoki package). Exported: HSMREWRAP_OPENCRYPTOKI_SLOT=3.
# tpm: a software TPM 2.0 (swtpm, state in the temporary directory, Unix sockets: no ports)
#   behind the resource manager tpm2-abrmd on a private D-Bus session bus (dbus-daemon
#   --session on a socket in the directory; no system bus), and a tpm2-pkcs11 store made
#   with `tpm2_ptool init` (a primary key in the TPM). tpm2-pkcs11 shows one uninitialised
#   slot: each test makes a fresh token there with C_InitToken + C_InitPIN. Exported:
#   TPM2_PKCS11_STORE, TPM2_PKCS11_TCTI and TPM2TOOLS_TCTI (tabrmd on the private bus),
#   DBUS_SESSION_BUS_ADDRESS, TPM2_PKCS11_LOG_LEVEL=0 (tpm2-pkcs11 logs to stderr
#   otherwise; its errors still come), TSS2_LOG=all+NONE unless set (ESYS's stderr log),
#   HSMREWRAP_TPM_DIR (the directory) and
#   HSMREWRAP_TPM_RESTART_ABRMD (a command that kills and restarts tpm2-abrmd, for the
#   resource-manager-loss tests).
# Exit status: CMD's; 77 when the stack cannot run here (package missing, not root).
set -euo pipefail

OCK_MODULE=/usr/lib/x86_64-linux-gnu/opencryptoki/libopencryptoki.so.0
TPM_MODULE=/usr/lib/x86_64-linux-gnu/libtpm2_pkcs11.so.1
OCK_SLOT=3

usage() {
  sed -n '2,9p' "$0" >&2
  exit 2
}

missing() {  # why KIND cannot run here ("" when it can)
  case "$1" in
    opencryptoki)
      [ -e "$OCK_MODULE" ] || { echo "$OCK_MODULE missing (install libopencryptoki0)"; return; }
      command -v pkcsslotd >/dev/null || { echo "pkcsslotd missing (install opencryptoki)"; return; }
      [ -e /usr/lib/x86_64-linux-gnu/opencryptoki/stdll/libpkcs11_sw.so ] ||
        { echo "openCryptoki's software token missing (install opencryptoki)"; return; }
      getent group pkcs11 >/dev/null || { echo "no pkcs11 group (install opencryptoki)"; return; }
      [ "$(id -u)" -eq 0 ] || { echo "needs root (a private mount namespace)"; return; }
      unshare -m -i -p -f --mount-proc true 2>/dev/null ||
        { echo "unshare -m -i -p is not permitted here"; return; }
      ;;
    tpm)
      [ -e "$TPM_MODULE" ] || { echo "$TPM_MODULE missing (install libtpm2-pkcs11-1)"; return; }
      local c
      for c in swtpm tpm2-abrmd tpm2_ptool dbus-daemon; do
        command -v "$c" >/dev/null || { echo "$c missing (scripts/setup.sh installs it)"; return; }
      done
      ls /usr/lib/x86_64-linux-gnu/libtss2-tcti-tabrmd.so.0 >/dev/null 2>&1 ||
        { echo "libtss2-tcti-tabrmd0 missing"; return; }
      ;;
    *) usage ;;
  esac
}

# Waits up to 10 s for a path to exist.
wait_for() {
  local i
  for i in $(seq 100); do
    [ -e "$1" ] && return 0
    sleep 0.1
  done
  echo "hw_tokens: $1 did not appear" >&2
  return 1
}

kill_pid_file() {  # stops the process whose pid is in $1 (if any) and waits for it
  [ -s "$1" ] || return 0
  local pid
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || return 0
  local i
  for i in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

run_opencryptoki() {
  # Re-run inside a private mount + IPC + PID namespace; everything below lives only there,
  # and every process left in it (pkcsslotd, or whatever CMD started) is killed by the
  # kernel when this script, its PID 1, exits.
  if [ "${HSMREWRAP_OCK_NS:-}" != 1 ]; then
    HSMREWRAP_OCK_NS=1 exec unshare -m -i -p -f --mount-proc --propagation private \
      "$0" opencryptoki "$@"
  fi
  unset HSMREWRAP_OCK_NS
  local dir
  dir=$(mktemp -d "${TMPDIR:-/tmp}/hsmrewrap-ock.XXXXXX")
  # shellcheck disable=SC2064
  trap "kill_pid_file /run/pkcsslotd.pid; rm -rf '$dir'" EXIT
  mkdir -p "$dir/etc" "$dir/lib/swtok/TOK_OBJ"
  printf 'version opencryptoki-3.1\n\nslot %s\n{\nstdll = libpkcs11_sw.so\n}\n' "$OCK_SLOT" \
    >"$dir/etc/opencryptoki.conf"
  chgrp -R pkcs11 "$dir/lib"
  chmod -R 770 "$dir/lib"
  mount --bind "$dir/etc" /etc/opencryptoki
  mount --bind "$dir/lib" /var/lib/opencryptoki
  mount -t tmpfs -o mode=755 tmpfs /run
  mount -t tmpfs -o mode=1777 tmpfs /dev/shm
  mkdir -p /run/lock/opencryptoki
  chgrp pkcs11 /run/lock/opencryptoki
  chmod 770 /run/lock/opencryptoki
  pkcsslotd
  wait_for /run/pkcsslotd.socket
  export HSMREWRAP_OPENCRYPTOKI_SLOT=$OCK_SLOT
  local rc=0
  "$@" || rc=$?
  exit "$rc"
}

run_tpm() {
  local dir
  dir=$(mktemp -d "${TMPDIR:-/tmp}/hsmrewrap-tpm.XXXXXX")
  # shellcheck disable=SC2064
  trap "kill_pid_file '$dir/abrmd.pid'; kill_pid_file '$dir/swtpm.pid'; kill_pid_file '$dir/dbus.pid'; rm -rf '$dir'" EXIT
  mkdir -p "$dir/state" "$dir/store"
  swtpm socket --tpm2 --tpmstate dir="$dir/state" \
    --server type=unixio,path="$dir/tpm.sock" --ctrl type=unixio,path="$dir/tpm.sock.ctrl" \
    --flags not-need-init,startup-clear --daemon --pid file="$dir/swtpm.pid" \
    --log file="$dir/swtpm.log"
  wait_for "$dir/tpm.sock"
  dbus-daemon --session --address="unix:path=$dir/bus" --fork --print-pid=3 3>"$dir/dbus.pid" \
    >/dev/null
  wait_for "$dir/bus"
  export DBUS_SESSION_BUS_ADDRESS="unix:path=$dir/bus"
  local name="com.intel.tss2.Tabrmd.hsmrewrap$$"
  # (Re)starts tpm2-abrmd and waits until it serves.
  cat >"$dir/restart-abrmd.sh" <<EOF
#!/usr/bin/env bash
# Kills tpm2-abrmd (if running) and starts it again; waits until it serves.
set -eu
export DBUS_SESSION_BUS_ADDRESS='$DBUS_SESSION_BUS_ADDRESS'
if [ -s '$dir/abrmd.pid' ]; then kill "\$(cat '$dir/abrmd.pid')" 2>/dev/null || true; fi
sleep "\${1:-0}"
setsid tpm2-abrmd --session --dbus-name=$name --tcti='swtpm:path=$dir/tpm.sock' --allow-root \
  >>'$dir/abrmd.log' 2>&1 </dev/null &
echo \$! >'$dir/abrmd.pid'
for i in \$(seq 100); do
  TPM2TOOLS_TCTI='tabrmd:bus_name=$name,bus_type=session' tpm2_getrandom 1 >/dev/null 2>&1 && exit 0
  sleep 0.1
done
echo "tpm2-abrmd did not start (see $dir/abrmd.log)" >&2
exit 1
EOF
  chmod +x "$dir/restart-abrmd.sh"
  "$dir/restart-abrmd.sh"
  export TPM2TOOLS_TCTI="tabrmd:bus_name=$name,bus_type=session"
  export TPM2_PKCS11_TCTI="$TPM2TOOLS_TCTI"
  export TPM2_PKCS11_STORE="$dir/store"
  export TPM2_PKCS11_LOG_LEVEL=0
  export TSS2_LOG=${TSS2_LOG:-all+NONE}  # ESYS logs every TPM error response on stderr
  tpm2_ptool init --path "$dir/store" >/dev/null
  export HSMREWRAP_TPM_DIR="$dir"
  export HSMREWRAP_TPM_RESTART_ABRMD="$dir/restart-abrmd.sh"
  local rc=0
  "$@" || rc=$?
  exit "$rc"
}

[ $# -ge 1 ] || usage
kind=$1
shift
case "$kind" in
  check)
    [ $# -eq 1 ] || usage
    why=$(missing "$1")
    if [ -n "$why" ]; then
      echo "hw_tokens: $1 cannot run here: $why" >&2
      exit 77
    fi
    exit 0
    ;;
  opencryptoki | tpm)
    [ $# -ge 1 ] || usage
    why=$(missing "$kind")
    if [ -n "$why" ]; then
      echo "hw_tokens: $kind cannot run here: $why" >&2
      exit 77
    fi
    "run_$kind" "$@"
    ;;
  *) usage ;;
esac
