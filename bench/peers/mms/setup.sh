#!/usr/bin/env bash
# SageMaker's multi-model stack for `python -m bench compare`: a virtual environment under $PEER_ROOT
# (default /tmp/peer-mms) with Multi Model Server, the SageMaker Inference Toolkit and the XGBoost of
# SageMaker's built-in 1.7-1 algorithm, then N_MODELS synthetic home-value models (make_models.py).
# MMS's frontend is Java: a JRE must be on the PATH.
#
#   N_MODELS=1000 bash bench/peers/mms/setup.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEER_ROOT="${PEER_ROOT:-/tmp/peer-mms}"
N_MODELS="${N_MODELS:-100}"
PYTHON="${PYTHON:-python3}"
# The last MMS release and the newest toolkit (SageMaker's image pins older ones on Java 8); xgboost 1.7
# reads the legacy binary model files SageMaker's XGBoost 1.7-1 writes.
MMS_VERSION="${MMS_VERSION:-1.1.11}"
TOOLKIT_VERSION="${TOOLKIT_VERSION:-1.10.1}"
XGBOOST_VERSION="${XGBOOST_VERSION:-1.7.6}"

if ! command -v java >/dev/null; then
  echo "no java: Multi Model Server's frontend needs a JRE (e.g. openjdk-17-jre-headless)" >&2
  exit 1
fi
mkdir -p "$PEER_ROOT"
[ -x "$PEER_ROOT/venv/bin/python" ] || "$PYTHON" -m venv "$PEER_ROOT/venv"
"$PEER_ROOT/venv/bin/python" -m pip install -q --disable-pip-version-check \
  "multi-model-server==$MMS_VERSION" "sagemaker-inference==$TOOLKIT_VERSION" "xgboost==$XGBOOST_VERSION" \
  "numpy<2" "scipy<1.14"
"$PEER_ROOT/venv/bin/python" "$HERE/make_models.py" --root "$PEER_ROOT" --count "$N_MODELS"
echo "MMS peer ready in $PEER_ROOT"
