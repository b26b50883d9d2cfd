#!/usr/bin/env bash
# Start Multi Model Server as SageMaker's XGBoost multi-model image runs it, on 127.0.0.1:$PORT; return once
# /ping answers. Stop it with stop.sh.
#
# As the image: no model at start (they are registered later: POST /models?url=<folder>&model_name=<name>),
# model_store=/, one worker per model, a job queue of 100, models preloaded before the workers fork, bodies
# passed undecoded, 6 MB requests at most, a fixed JVM heap sized from the cores, a 32 MB metaspace, the
# toolkit's log4j2 configuration, one OpenMP thread. Unlike it: loopback only, one port for inference and
# management (MGMT_PORT to split them), no execution-parameters plugin.
#
# Env: PEER_ROOT (/tmp/peer-mms, where setup.sh installed), PORT (8080; MMS refuses ephemeral ports),
# MGMT_PORT, WORKERS (1), JOB_QUEUE (100), RESPONSE_TIMEOUT (60 s).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEER_ROOT="${PEER_ROOT:-/tmp/peer-mms}"
PORT="${PORT:-8080}"
MGMT_PORT="${MGMT_PORT:-$PORT}"
VENV="$PEER_ROOT/venv"
RUN="$PEER_ROOT/run"

[ -x "$VENV/bin/multi-model-server" ] || { echo "no $VENV/bin/multi-model-server: run setup.sh" >&2; exit 1; }
if [ -f "$RUN/mms.pid" ] && kill -0 "$(cat "$RUN/mms.pid")" 2>/dev/null; then
  echo "an MMS already runs from $RUN (pid $(cat "$RUN/mms.pid")): stop.sh first" >&2
  exit 1
fi
rm -rf "$RUN/logs"
mkdir -p "$RUN/logs" "$RUN/tmp"
LOG4J="$("$VENV/bin/python" -c 'import os, sagemaker_inference as t; print(os.path.join(os.path.dirname(t.__file__), "etc", "log4j2.xml"))')"

# The image's heap: (cores + a job queue of 2 per core) x the largest body x 1.2, plus 128 MB.
CORES="$(nproc)"
BODY_MB=6
HEAP_MB=$(( (3 * CORES * BODY_MB * 12 + 9) / 10 + 128 ))
cat > "$RUN/config.properties" <<PROPERTIES
vmargs=-XX:-UseLargePages -XX:MaxMetaspaceSize=32M -XX:InitiatingHeapOccupancyPercent=25 -Xms${HEAP_MB}m -Xmx${HEAP_MB}m -XX:MaxDirectMemorySize=${HEAP_MB}m
model_store=/
inference_address=http://127.0.0.1:${PORT}
management_address=http://127.0.0.1:${MGMT_PORT}
default_workers_per_model=${WORKERS:-1}
job_queue_size=${JOB_QUEUE:-100}
default_response_timeout=${RESPONSE_TIMEOUT:-60}
max_request_size=$(( BODY_MB * 1024 * 1024 ))
preload_model=true
decode_input_request=false
default_service_handler=xgb_mme_handler
async_logging=true
PROPERTIES

export SAGEMAKER_MULTI_MODEL=true
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"  # the handler service
export LOG_LOCATION="$RUN/logs" METRICS_LOCATION="$RUN/logs"
# MMS's launcher keeps its pid file in the temporary folder and refuses to start a second server that shares it;
# java.io.tmpdir (worker sockets) follows TEMP.
export TMPDIR="$RUN/tmp" TEMP="$RUN/tmp"

cd "$RUN"
# In the foreground the launcher waits for its JVM, so stopping the launcher's tree stops everything.
setsid "$VENV/bin/multi-model-server" --start --foreground --mms-config "$RUN/config.properties" \
  --model-store / --log-config "$LOG4J" > "$RUN/logs/stdout.log" 2>&1 < /dev/null &
echo $! > "$RUN/mms.pid"

for _ in $(seq 240); do
  if curl -fsS "http://127.0.0.1:$PORT/ping" > /dev/null 2>&1; then
    echo "MMS on http://127.0.0.1:$PORT (management http://127.0.0.1:$MGMT_PORT), pid $(cat "$RUN/mms.pid"), logs in $RUN/logs"
    exit 0
  fi
  if ! kill -0 "$(cat "$RUN/mms.pid")" 2>/dev/null; then
    echo "MMS exited:" >&2
    tail -n 30 "$RUN/logs/stdout.log" >&2
    exit 1
  fi
  sleep 0.5
done
echo "MMS did not answer /ping within 2 minutes; logs in $RUN/logs" >&2
exit 1
