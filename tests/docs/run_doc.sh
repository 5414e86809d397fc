#!/usr/bin/env bash
# Runs every ```sh block of a Markdown document, in order, as one script from the
# repository root (like a user pasting them into one terminal), with HOME in a scratch
# folder. Blocks fenced as ```shell are documentation only (root, systemd, Windows, or
# the network) and are not run. Usage: run_doc.sh DOC.md REPO_ROOT
# TMPDIR is in the scratch folder too, so the docs' `mktemp -d` folders go with it.
# Leak check (tests/leakcheck): when ctest runs this through collect.sh, every rewrapd the
# docs start logs at trace level (HSMREWRAP_LOG_LEVEL, unless a command sets --log-level)
# and writes an audit log (HSMREWRAP_AUDIT_LOG) in the collection; afterwards the
# rewrapd logs the docs wrote (rewrapd*.log|out|err, replica*.log) are collected, and the
# files that hold secrets (user.pin, so.pin, pin, password, pw, *.pw) recorded.
set -uo pipefail
DOC=$1
ROOT=$2
SCRATCH=$(mktemp -d)
. "$(dirname "$0")/../leakcheck/leakcheck.sh"
leak_args docs
if [ -n "$LEAK_DIR" ]; then
  export HSMREWRAP_LOG_LEVEL=trace HSMREWRAP_AUDIT_LOG=$LEAK_DIR/audit.jsonl
fi
SCRIPT=$SCRATCH/doc.sh
{
  echo 'set -eo pipefail'
  # Under set -e a failing command in the trap ends it with that status: `kill` with no job
  # left (every background rewrapd already stopped and reaped) exits 2, which made the whole
  # document fail at random. Nothing in the trap may fail the run.
  echo 'trap '"'"'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true'"'"' EXIT'
  awk '/^```sh[[:space:]]*$/{f=1; next} /^```/{f=0} f' "$DOC"
} >"$SCRIPT"
blocks=$(grep -c '^```sh[[:space:]]*$' "$DOC")
echo "running $blocks sh blocks of $DOC"
cd "$ROOT" && HOME=$SCRATCH/home && mkdir -p "$HOME" "$SCRATCH/tmp" && export HOME TMPDIR=$SCRATCH/tmp
bash "$SCRIPT"
rc=$?
if [ -n "$LEAK_DIR" ]; then
  n=0
  while IFS= read -r -d '' f; do
    n=$((n + 1)); cp "$f" "$LEAK_DIR/$n-$(basename "$f")"
  done < <(find "$SCRATCH" -type f \( -name 'rewrapd*.log' -o -name 'rewrapd*.out' -o -name 'rewrapd*.err' \
                                     -o -name 'replica*.log' \) -print0)
  while IFS= read -r -d '' f; do
    leak_secret_file "$f"
    leak_secret "$(cat "$f")"  # without the trailing newline
  done < <(find "$SCRATCH" -type f \( -name user.pin -o -name so.pin -o -name pin -o -name password -o -name pw \
                                     -o -name '*.pw' \) -print0)
fi
rm -rf "$SCRATCH"
if [ $rc -eq 0 ]; then echo "1 passed, 0 failed"; else echo "0 passed, 1 failed (exit $rc)"; fi
exit $rc
