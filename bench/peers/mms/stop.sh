#!/usr/bin/env bash
# Stop the MMS that start.sh started: its launcher (pid in $PEER_ROOT/run/mms.pid) and every process under it
# (the JVM, one backend per model and their workers), by pid; SIGKILL for whatever outlives 10 s of SIGTERM.
set -uo pipefail
PEER_ROOT="${PEER_ROOT:-/tmp/peer-mms}"
RUN="$PEER_ROOT/run"
[ -f "$RUN/mms.pid" ] || { echo "no $RUN/mms.pid: no MMS to stop"; exit 0; }
LAUNCHER="$(cat "$RUN/mms.pid")"

tree() {  # $1 and all its descendants
  echo "$1"
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do tree "$child"; done
}

if kill -0 "$LAUNCHER" 2>/dev/null; then
  PIDS="$(tree "$LAUNCHER" | tr '\n' ' ')"
  kill -TERM $PIDS 2>/dev/null
  for _ in $(seq 40); do
    ALIVE=""
    for pid in $PIDS; do kill -0 "$pid" 2>/dev/null && ALIVE="$ALIVE $pid"; done
    [ -z "$ALIVE" ] && break
    sleep 0.25
  done
  [ -n "$ALIVE" ] && kill -KILL $ALIVE 2>/dev/null
  echo "stopped MMS: $PIDS"
else
  echo "MMS launcher $LAUNCHER is not running"
fi
rm -f "$RUN/mms.pid" "$RUN/tmp/.model_server.pid" "$RUN"/tmp/.mms.sock.*
