"""The servers the comparison runs, each started as its own process tree on loopback and stopped after.

- ``ours``: ``mlserver start model-settings/`` of this repository, models in moto's S3 server;
- ``plain_mlserver``: MLServer 1.7 with mlserver-xgboost serving one model statically, default settings
  (its own virtual environment, ``PLAIN_MLSERVER_VENV``, made by ``bench/setup_peers.sh``);
- ``mms``: SageMaker's multi-model stack (Multi Model Server + SageMaker Inference Toolkit, driven as
  SageMaker's XGBoost image drives it), through the reference harness whose folder ``MMS_HARNESS`` names
  (its ``setup.sh``/``start.sh``/``stop.sh``; Java needed);
- ``echo``: uvicorn + Starlette answering a constant (``bench/echo_server.py``).
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PLAIN_MLSERVER_VENV = os.environ.get("PLAIN_MLSERVER_VENV", "/tmp/bench-mlserver")
MMS_HARNESS = os.environ.get("MMS_HARNESS", os.path.join(os.path.dirname(ROOT), "shared", "peers", "mms"))
MMS_ROOT = os.environ.get("PEER_ROOT", "/tmp/peer-mms")


class Unavailable(RuntimeError):
    """A system cannot run on this machine; the message says what is missing."""


@dataclass
class System:
    name: str
    url: str
    pid: int


def free_port(low: bool = False) -> int:
    """A free loopback port; ``low``: one below the ephemeral range (20000-29999)."""
    candidates = range(20000, 30000) if low else [0]
    for candidate in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port")


def wait_ready(url: str, process: Optional[subprocess.Popen], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready within {timeout} s")


@contextlib.contextmanager
def process(command, env=None, cwd=None, log=None):
    log_file = open(log or os.devnull, "wb")
    child = subprocess.Popen(command, env={**os.environ, **(env or {})}, cwd=cwd, stdout=log_file,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        log_file.close()


@contextlib.contextmanager
def ours(s3_url: str, prefix: str, work: str, **settings):
    port = free_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": s3_url, "MLSERVER_MME_MODEL_PREFIX": prefix,
        "MLSERVER_MME_CACHE_DIR": os.path.join(work, f"cache-{port}"),
        "MLSERVER_HOST": "127.0.0.1", "MLSERVER_HTTP_PORT": str(port),
        "MLSERVER_GRPC_PORT": str(free_port()), "MLSERVER_METRICS_PORT": str(free_port()),
        **{f"MLSERVER_MME_{key.upper()}": str(value) for key, value in settings.items()},
    }
    mlserver = os.path.join(os.path.dirname(sys.executable), "mlserver")
    with process([mlserver, "start", os.path.join(ROOT, "model-settings")], env, ROOT,
                 os.path.join(work, f"ours-{port}.log")) as child:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/ping", child)
        system = System("mlserver-mme", url, child.pid)
        system.metrics_url = f"http://127.0.0.1:{env['MLSERVER_METRICS_PORT']}/metrics"
        system.log = os.path.join(work, f"ours-{port}.log")
        yield system


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
    """SageMaker's stack through the reference harness (needs Java and its setup.sh run once)."""
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
