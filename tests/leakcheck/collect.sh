#!/usr/bin/env bash
# Runs a ctest entry with the leak-check collection on: collect.sh ROOT TEST CMD [ARGS...]
# marks ROOT/TEST/ran (so no_secrets_in_logs knows this test ran and must have left logs
# and secrets), exports HSMREWRAP_LEAKCHECK_DIR=ROOT and HSMREWRAP_LEAKCHECK_TEST=TEST for
# tests/leakcheck/record.h and leakcheck.sh, and execs CMD.
set -eu
root=$1 test=$2
shift 2
mkdir -p "$root/$test"
echo "$$" >"$root/$test/ran"
export HSMREWRAP_LEAKCHECK_DIR=$root HSMREWRAP_LEAKCHECK_TEST=$test
exec "$@"
