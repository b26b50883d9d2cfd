#!/usr/bin/env bash
# Prepare the peers of `python -m bench compare`: plain MLServer 1.7 with mlserver-xgboost in its own virtual
# environment (mlserver-xgboost pulls the full xgboost, CUDA libraries included), and SageMaker's multi-model
# stack through bench/peers/mms (its setup.sh; needs Java). MMS_HARNESS names another folder with the same scripts.
set -euo pipefail
PLAIN_MLSERVER_VENV="${PLAIN_MLSERVER_VENV:-/tmp/bench-mlserver}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MMS_HARNESS="${MMS_HARNESS:-$HERE/peers/mms}"
if [ ! -x "$PLAIN_MLSERVER_VENV/bin/mlserver" ]; then
  python3 -m venv "$PLAIN_MLSERVER_VENV"
  "$PLAIN_MLSERVER_VENV/bin/pip" install -q 'mlserver==1.7.1' 'mlserver-xgboost==1.7.1' 'uvloop<0.22'
fi
if command -v java >/dev/null; then
  N_MODELS="${N_MODELS:-1000}" bash "$MMS_HARNESS/setup.sh"
else
  echo "skipping SageMaker's MMS stack: no java" >&2
fi
