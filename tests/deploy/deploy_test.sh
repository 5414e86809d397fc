#!/usr/bin/env bash
# Checks what can be checked of the deployment files here: the systemd unit with
# systemd-analyze verify, the YAML with yamllint, and the .deb built by CPack, unpacked
# into a scratch root, whose rewrapd runs --version and --check-config.
# Usage: deploy_test.sh SOURCE_DIR BUILD_DIR
set -uo pipefail
SRC=$1
BUILD=$2
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fails=0
passes=0
ok() { passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }

# 1. systemd unit (ExecStart must name an existing binary for verify: point it at the build).
if command -v systemd-analyze >/dev/null; then
  sed "s|/usr/bin/rewrapd|$BUILD/service/rewrapd|" "$SRC/deploy/systemd/rewrapd.service" >"$WORK/rewrapd.service"
  if out=$(systemd-analyze verify "$WORK/rewrapd.service" 2>&1); then ok; else bad "systemd-analyze verify: $out"; fi
  grep -q '^Type=notify' "$SRC/deploy/systemd/rewrapd.service" && ok || bad "unit is not Type=notify"
  grep -q '^LoadCredential=pin:' "$SRC/deploy/systemd/rewrapd.service" && ok || bad "unit has no PIN credential"
else
  echo "SKIP: systemd-analyze not installed"
fi

# 2. YAML
if command -v yamllint >/dev/null; then
  if out=$(cd "$SRC" && yamllint -s deploy/ 2>&1); then ok; else bad "yamllint: $out"; fi
else
  bad "yamllint not installed (scripts/setup.sh installs it)"
fi

# 3. The .deb
if out=$(cd "$BUILD" && cpack -G DEB -B "$WORK/pkg" 2>&1); then ok; else bad "cpack: $out"; fi
deb=$(ls "$WORK"/pkg/hsm-rewrap_*.deb 2>/dev/null | head -1)
if [ -n "$deb" ]; then
  info=$(dpkg-deb -I "$deb")
  [[ "$info" == *"Depends:"*"libgrpc++"* ]] && ok || bad "package Depends lacks the gRPC runtime: $info"
  [[ "$info" == *"postinst"* ]] && ok || bad "package has no postinst"
  dpkg-deb -x "$deb" "$WORK/root"
  for f in usr/bin/rewrapd usr/bin/rewrapctl usr/lib/systemd/system/rewrapd.service usr/lib/sysusers.d/hsm-rewrap.conf \
           usr/share/doc/hsm-rewrap/rewrapd.yaml usr/share/doc/hsm-rewrap/rewrapd.example.yaml; do
    [ -e "$WORK/root/$f" ] && ok || bad "package lacks /$f"
  done
  v=$("$WORK/root/usr/bin/rewrapd" --version) && [[ "$v" == rewrapd* ]] && ok || bad "packaged rewrapd --version: $v"
  c=$("$WORK/root/usr/bin/rewrapd" --config "$WORK/root/usr/share/doc/hsm-rewrap/rewrapd.yaml" --state-dir "$WORK/state" --check-config 2>&1) \
    && [[ "$c" == *"configuration is valid"* ]] && ok || bad "packaged rewrapd --check-config: $c"
  c=$("$WORK/root/usr/bin/rewrapd" --config "$WORK/root/usr/share/doc/hsm-rewrap/rewrapd.example.yaml" --check-config 2>&1) \
    && ok || bad "example config does not check: $c"
else
  bad "no .deb was built"
fi

# 4. cmake --install into a prefix
if out=$(cmake --install "$BUILD" --prefix "$WORK/prefix" 2>&1) && [ -x "$WORK/prefix/bin/rewrapd" ]; then ok; else bad "cmake --install: $out"; fi

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
