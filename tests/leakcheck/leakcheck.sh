# Shell side of tests/leakcheck/record.h, sourced by the shell tests that start rewrapd.
# On only when ctest runs the test through collect.sh (HSMREWRAP_LEAKCHECK_DIR and
# HSMREWRAP_LEAKCHECK_TEST set); otherwise every function does nothing.

leak_on() { [ -n "${HSMREWRAP_LEAKCHECK_DIR:-}" ] && [ -n "${HSMREWRAP_LEAKCHECK_TEST:-}" ]; }

LEAK_N=0
# leak_args LABEL: sets LEAK_DIR to a new log directory for one rewrapd and LEAK_ARGS to
# the rewrapd flags that log at trace level and write the audit log there (both empty
# when off). Put rewrapd's stderr (and stdout) in $LEAK_DIR too, or leak_keep them.
leak_args() {
  LEAK_DIR="" LEAK_ARGS=()
  leak_on || return 0
  LEAK_N=$((LEAK_N + 1))
  LEAK_DIR=$HSMREWRAP_LEAKCHECK_DIR/$HSMREWRAP_LEAKCHECK_TEST/logs/$$-$LEAK_N-$1
  mkdir -p "$LEAK_DIR"
  LEAK_ARGS=(--log-level trace --audit-log "$LEAK_DIR/audit.jsonl")
}

# leak_keep DIR FILE...: copies the files (those that exist) into DIR, a leak_args
# directory (no-op when DIR is empty).
leak_keep() {
  local dir=$1 f
  shift
  [ -n "$dir" ] || return 0
  for f in "$@"; do [ -f "$f" ] && cp "$f" "$dir/$(basename "$f")"; done
  return 0
}

# leak_secret STRING / leak_secret_file FILE...: records secrets (a file's whole content is
# one secret) that must never appear in a log.
leak_secret() {
  leak_on || return 0
  mkdir -p "$HSMREWRAP_LEAKCHECK_DIR/$HSMREWRAP_LEAKCHECK_TEST"
  printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n' \
    >>"$HSMREWRAP_LEAKCHECK_DIR/$HSMREWRAP_LEAKCHECK_TEST/secrets-$$.hex"
  echo >>"$HSMREWRAP_LEAKCHECK_DIR/$HSMREWRAP_LEAKCHECK_TEST/secrets-$$.hex"
}
leak_secret_file() {
  leak_on || return 0
  local f
  mkdir -p "$HSMREWRAP_LEAKCHECK_DIR/$HSMREWRAP_LEAKCHECK_TEST"
  for f in "$@"; do
    [ -s "$f" ] || continue
    { od -An -v -tx1 <"$f" | tr -d ' \n'; echo; } \
      >>"$HSMREWRAP_LEAKCHECK_DIR/$HSMREWRAP_LEAKCHECK_TEST/secrets-$$.hex"
  done
}
