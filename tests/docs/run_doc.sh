#!/usr/bin/env bash
# Runs every ```sh block of a Markdown document, in order, as one script from the
# repository root (like a user pasting them into one terminal), with HOME in a scratch
# folder. Blocks fenced as ```shell are documentation only (root, systemd, Windows, or
# the network) and are not run. Usage: run_doc.sh DOC.md REPO_ROOT
set -uo pipefail
DOC=$1
ROOT=$2
SCRATCH=$(mktemp -d)
SCRIPT=$SCRATCH/doc.sh
{
  echo 'set -eo pipefail'
  echo 'trap '"'"'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null'"'"' EXIT'
  awk '/^```sh[[:space:]]*$/{f=1; next} /^```/{f=0} f' "$DOC"
} >"$SCRIPT"
blocks=$(grep -c '^```sh[[:space:]]*$' "$DOC")
echo "running $blocks sh blocks of $DOC"
cd "$ROOT" && HOME=$SCRATCH/home && mkdir -p "$HOME" && export HOME
bash "$SCRIPT"
rc=$?
rm -rf "$SCRATCH"
if [ $rc -eq 0 ]; then echo "1 passed, 0 failed"; else echo "0 passed, 1 failed (exit $rc)"; fi
exit $rc
