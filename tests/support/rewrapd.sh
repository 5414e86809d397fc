# Starting and stopping rewrapd from the shell tests and scripts: the shell side of
# tests/support/rewrapd_harness.h. Source it (bash); call the functions in the script's own
# shell, never in $(...), so that the rewrapd they start are its children.
#
# start_rewrapd [--bin PATH] [--name NAME] [--out FILE] [--err FILE] [--dir DIR]
#               [--timeout SECONDS] [--] [REWRAPD ARGS...]
#   Starts PATH (default $REWRAPD) with the arguments in the background, stdout to FILE
#   (--out; default DIR/NAME.out), stderr to --err (default DIR/NAME.err with --dir, else
#   the --out file), stdin from /dev/null, and waits (default 60 s) for its ready line
#   "rewrapd serving on HOST:PORT". Sets REWRAPD_PID, REWRAPD_ADDR (HOST:PORT) and
#   REWRAPD_PORT, and adds the pid to REWRAPD_PIDS. On an exit or the timeout it prints the
#   logs to stderr, stops what it started and returns 1. With the leak check on
#   (tests/leakcheck/leakcheck.sh) rewrapd logs at trace level with an audit log in the
#   collection, the PINs of its --state-dir are recorded, and stop_rewrapd copies its logs
#   there; otherwise nothing is added.
# stop_rewrapd [--signal SIG] [--timeout SECONDS] [PID]
#   Sends SIG (default TERM) to PID (default $REWRAPD_PID), waits for it (default 30 s, then
#   SIGKILL) and returns its exit status as `wait` gives it (0: a clean stop).
# stop_all_rewrapd: SIGTERM to every rewrapd still running, then stop_rewrapd each (for
#   cleanup traps); always returns 0.

# shellcheck source=tests/leakcheck/leakcheck.sh
. "$(dirname "${BASH_SOURCE[0]}")/../leakcheck/leakcheck.sh"

REWRAPD_PID="" REWRAPD_ADDR="" REWRAPD_PORT=""
REWRAPD_PIDS=()
declare -A _REWRAPD_OUT=() _REWRAPD_ERR=() _REWRAPD_LEAK=() _REWRAPD_NAME=()

# _rewrapd_exited PID: true when PID is gone or a zombie (exited, not yet waited for).
_rewrapd_exited() {
  local state
  kill -0 "$1" 2>/dev/null || return 0
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || true
  [ -z "$state" ] || [ "$state" = Z ]
}

_rewrapd_logs() {  # _rewrapd_logs PID: the logs of one rewrapd, to stderr
  local pid=$1
  echo "--- stdout (${_REWRAPD_OUT[$pid]}):" >&2
  cat "${_REWRAPD_OUT[$pid]}" >&2 2>/dev/null || true
  if [ "${_REWRAPD_ERR[$pid]}" != "${_REWRAPD_OUT[$pid]}" ]; then
    echo "--- stderr (${_REWRAPD_ERR[$pid]}):" >&2
    cat "${_REWRAPD_ERR[$pid]}" >&2 2>/dev/null || true
  fi
}

start_rewrapd() {
  local bin=${REWRAPD:-} name=rewrapd out="" err="" dir="" timeout=60 state="" a i
  while [ $# -gt 0 ]; do
    case $1 in
      --bin) bin=$2; shift 2 ;;
      --name) name=$2; shift 2 ;;
      --out) out=$2; shift 2 ;;
      --err) err=$2; shift 2 ;;
      --dir) dir=$2; shift 2 ;;
      --timeout) timeout=$2; shift 2 ;;
      --) shift; break ;;
      *) break ;;
    esac
  done
  [ -n "$bin" ] || { echo "start_rewrapd: no rewrapd (set REWRAPD or pass --bin)" >&2; return 1; }
  if [ -z "$out" ]; then
    [ -n "$dir" ] || { echo "start_rewrapd: give --out or --dir" >&2; return 1; }
    out=$dir/$name.out
  fi
  if [ -z "$err" ]; then
    if [ -n "$dir" ]; then err=$dir/$name.err; else err=$out; fi
  fi
  for ((i = 1; i <= $#; i++)); do
    a=${!i}
    if [ "$a" = --state-dir ] && [ $i -lt $# ]; then
      local j=$((i + 1))
      state=${!j}
    elif [[ "$a" == --state-dir=* ]]; then
      state=${a#--state-dir=}
    fi
  done
  leak_args "$name"
  local pid
  if [ "$err" = "$out" ]; then
    "$bin" "$@" "${LEAK_ARGS[@]}" </dev/null >"$out" 2>&1 &
  else
    "$bin" "$@" "${LEAK_ARGS[@]}" </dev/null >"$out" 2>"$err" &
  fi
  pid=$!
  REWRAPD_PIDS+=("$pid")
  _REWRAPD_OUT[$pid]=$out _REWRAPD_ERR[$pid]=$err _REWRAPD_LEAK[$pid]=$LEAK_DIR
  _REWRAPD_NAME[$pid]=$name
  local addr="" tries=$((timeout * 10))
  for ((i = 0; i < tries; i++)); do
    addr=$(grep -a -o -m1 'rewrapd serving on [^[:space:]]*' "$out" 2>/dev/null | head -1) || true
    addr=${addr#rewrapd serving on }
    if [ -n "$addr" ]; then
      if [[ "$addr" != *:* || "${addr##*:}" == 0 || -z "${addr##*:}" ]]; then
        echo "start_rewrapd: $name: no usable HOST:PORT in its ready line: $addr" >&2
        _rewrapd_logs "$pid"
        stop_rewrapd "$pid" >/dev/null 2>&1 || true
        return 1
      fi
      REWRAPD_PID=$pid REWRAPD_ADDR=$addr REWRAPD_PORT=${addr##*:}
      [ -n "$state" ] && leak_secret_file "$state/user.pin" "$state/so.pin"
      return 0
    fi
    if _rewrapd_exited "$pid"; then
      local rc=0
      wait "$pid" 2>/dev/null || rc=$?
      echo "start_rewrapd: $name ($bin $*) exited with status $rc before it served:" >&2
      _rewrapd_logs "$pid"
      _rewrapd_forget "$pid"
      return 1
    fi
    sleep 0.1
  done
  echo "start_rewrapd: $name ($bin $*) did not print \"rewrapd serving on HOST:PORT\" within $timeout s:" >&2
  _rewrapd_logs "$pid"
  stop_rewrapd "$pid" >/dev/null 2>&1 || true
  return 1
}

# _rewrapd_forget PID: keeps its logs for the leak check and drops it from the lists.
_rewrapd_forget() {
  local pid=$1 p rest=()
  leak_keep "${_REWRAPD_LEAK[$pid]:-}" "${_REWRAPD_OUT[$pid]:-}" "${_REWRAPD_ERR[$pid]:-}"
  for p in "${REWRAPD_PIDS[@]}"; do [ "$p" = "$pid" ] || rest+=("$p"); done
  REWRAPD_PIDS=("${rest[@]}")
  unset "_REWRAPD_OUT[$pid]" "_REWRAPD_ERR[$pid]" "_REWRAPD_LEAK[$pid]" "_REWRAPD_NAME[$pid]"
  [ "$REWRAPD_PID" = "$pid" ] && REWRAPD_PID=""
  return 0
}

stop_rewrapd() {
  local sig=TERM timeout=30 pid i rc=0
  while [ $# -gt 0 ]; do
    case $1 in
      --signal) sig=$2; shift 2 ;;
      --timeout) timeout=$2; shift 2 ;;
      *) break ;;
    esac
  done
  pid=${1:-$REWRAPD_PID}
  [ -n "$pid" ] || return 0
  kill -s "$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout * 10; i++)); do
    _rewrapd_exited "$pid" && break
    sleep 0.1
  done
  if ! _rewrapd_exited "$pid"; then
    echo "stop_rewrapd: ${_REWRAPD_NAME[$pid]:-rewrapd} ($pid) did not stop within $timeout s of SIG$sig; SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || rc=$?
  _rewrapd_forget "$pid"
  return $rc
}

stop_all_rewrapd() {
  local p
  for p in "${REWRAPD_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${REWRAPD_PIDS[@]}"; do stop_rewrapd "$p" || true; done
  return 0
}
