"""The systems the comparison runs beside ours, each started as its own process tree on loopback and stopped after.

- ``plain_mlserver``: MLServer 1.7 with mlserver-xgboost serving one model statically, default settings
  (its own virtual environment, ``PLAIN_MLSERVER_VENV``, made by ``bench/setup_peers.sh``);
- ``mms``: SageMaker's multi-model stack (Multi Model Server + SageMaker Inference Toolkit, driven as
  SageMaker's XGBoost image drives it) through ``bench/peers/mms/`` (its ``setup.sh``/``start.sh``/``stop.sh``;
  Java needed; ``MMS_HARNESS`` names another folder with the same scripts);
- ``echo``: uvicorn + Starlette answering a constant (``bench/harness/echo_server.py``).
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import httpx

from . import BENCH, HERE
from .servers import System, free_port, process, wait_ready

PLAIN_MLSERVER_VENV = os.environ.get("PLAIN_MLSERVER_VENV", "/tmp/bench-mlserver")
MMS_HARNESS = os.environ.get("MMS_HARNESS", os.path.join(BENCH, "peers", "mms"))
MMS_ROOT = os.environ.get("PEER_ROOT", "/tmp/peer-mms")


class Unavailable(RuntimeError):
    """A system cannot run on this machine; the message says what is missing."""


@contextlib.contextmanager
def plain_mlserver(model_json: bytes, work: str):
    mlserver = os.path.join(PLAIN_MLSERVER_VENV, "bin", "mlserver")
    if not os.path.exists(mlserver):
        raise Unavailable(f"no {mlserver}: run bench/setup_peers.sh")
    folder = tempfile.mkdtemp(dir=work, prefix="plain-")
    model_dir = os.path.join(folder, "house")
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, "model.json"), "wb") as file:
        file.write(model_json)
    with open(os.path.join(model_dir, "model-settings.json"), "w") as file:
        json.dump({"name": "house", "implementation": "mlserver_xgboost.XGBoostModel",
                   "parameters": {"uri": "./model.json"}}, file)
    port = free_port()
    env = {"MLSERVER_HOST": "127.0.0.1", "MLSERVER_HTTP_PORT": str(port), "MLSERVER_GRPC_PORT": str(free_port()),
           "MLSERVER_METRICS_PORT": str(free_port())}
    with process([mlserver, "start", folder], env, folder, os.path.join(work, "plain.log")) as child:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/v2/models/house/ready", child)
        yield System("plain MLServer (mlserver-xgboost)", url, child.pid)


@contextlib.contextmanager
def mms(work: str):
    """SageMaker's stack through ``bench/peers/mms`` (needs Java; its setup.sh is run once if needed)."""
    if shutil.which("java") is None:
        raise Unavailable("no java on this machine: SageMaker's Multi Model Server needs a JRE")
    start = os.path.join(MMS_HARNESS, "start.sh")
    if not os.path.exists(start):
        raise Unavailable(f"no MMS harness at {MMS_HARNESS} (set MMS_HARNESS)")
    if not os.path.exists(os.path.join(MMS_ROOT, "venv", "bin", "multi-model-server")):
        subprocess.run(["bash", os.path.join(MMS_HARNESS, "setup.sh")], check=True,
                       env={**os.environ, "PEER_ROOT": MMS_ROOT, "N_MODELS": "1000"})
    port = free_port(low=True)  # MMS refuses ports in the ephemeral range
    env = {**os.environ, "PEER_ROOT": MMS_ROOT, "PORT": str(port)}
    subprocess.run(["bash", start], check=True, env=env, stdout=subprocess.DEVNULL)
    try:
        with open(os.path.join(MMS_ROOT, "run", "mms.pid")) as file:
            pid = int(file.read())
        yield System("SageMaker MMS + Inference Toolkit", f"http://127.0.0.1:{port}", pid)
    finally:
        subprocess.run(["bash", os.path.join(MMS_HARNESS, "stop.sh")], env=env, stdout=subprocess.DEVNULL)


def mms_model_dir(index: int) -> str:
    return os.path.join(MMS_ROOT, "models", f"model_{index:03d}")


@contextlib.contextmanager
def echo(work: str):
    port = free_port()
    with process([sys.executable, os.path.join(HERE, "echo_server.py"), str(port)], log=os.path.join(work, "echo.log")) as child:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.post(url + "/x", content=b"1", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield System("floor: uvicorn+starlette constant", url, child.pid)
