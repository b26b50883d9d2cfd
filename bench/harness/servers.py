"""Our side of the benchmarks on loopback: moto's S3 server holding copies of a bundled model, and this
repository's ``mlserver start model-settings/`` (the test suite's ``MLServerProcess``, or ``ours``: a process
tree of its own with its metrics URL and log), timed one-row invocations and Prometheus counters.

They reuse the test suite's helpers (``tests/support/s3server.py``, ``tests/support/mlserver_process.py``).
"""

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

import boto3
import httpx
from support.artifacts import example_bytes
from support.mlserver_process import MLServerProcess
from support.s3server import BUCKET, PREFIX, CountingS3Server, boto3_credentials, s3_env

from . import ROOT

BODY = b"1995,3000,3,2,1.0,2\n"
CSV_HEADERS = {"Content-Type": "text/csv"}
MODEL = example_bytes("Houston_TX.tar.gz")


@contextlib.contextmanager
def s3_with_models(targets):
    """Moto's S3 server holding a copy of a bundled model under each target."""
    s3 = CountingS3Server().start()
    try:
        client = boto3.client("s3", endpoint_url=s3.url, **boto3_credentials())
        client.create_bucket(Bucket=BUCKET)
        for target in targets:
            client.put_object(Bucket=BUCKET, Key=PREFIX + target, Body=MODEL)
        yield s3
    finally:
        s3.stop()


@contextlib.contextmanager
def mme_server(s3, **settings):
    """``mlserver start model-settings/`` through the test suite's ``MLServerProcess``."""
    work = tempfile.mkdtemp(prefix="mme-bench-")
    env = {
        **s3_env(s3),
        "MLSERVER_MME_CACHE_DIR": os.path.join(work, "cache"),
        **{f"MLSERVER_MME_{key.upper()}": str(value) for key, value in settings.items()},
    }
    server = MLServerProcess(env, os.path.join(work, "log")).start()
    try:
        yield server
    finally:
        server.stop()


def s3_get_count(s3, target):
    return s3.count("GET", f"/{BUCKET}/{PREFIX}{target}")


def http_client(server):
    return httpx.Client(base_url=server.url, timeout=120)


def timed_call(client, target):
    """Milliseconds for one one-row CSV invocation of ``target``."""
    started = time.perf_counter_ns()
    reply = client.post("/invocations", content=BODY, headers={**CSV_HEADERS, "X-Amzn-SageMaker-Target-Model": target})
    elapsed = (time.perf_counter_ns() - started) / 1e6
    assert reply.status_code == 200, reply.text
    return elapsed


def metric(url: str, name: str) -> float:
    """The value of the unlabelled series ``name`` at the Prometheus endpoint ``url`` (0 when absent)."""
    for line in httpx.get(url).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def metrics_sum(urls, name: str) -> float:
    """The sum of every series of ``name``, labelled or not, over the Prometheus endpoints ``urls``."""
    total = 0.0
    for url in urls:
        for line in httpx.get(url, timeout=10).text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def server_metrics_url(server) -> str:
    """The metrics endpoint of an ``MLServerProcess``."""
    return f"http://127.0.0.1:{server.env['MLSERVER_METRICS_PORT']}/metrics"


# -- process trees of their own (``ours`` and the peers) -----------------------------------------------------


@dataclass
class System:
    name: str
    url: str
    pid: int
    metrics_url: str = ""
    log: str = ""


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
    """``command`` in a session of its own, its output to ``log``; terminated (then killed) on the way out."""
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
    """``mlserver start model-settings/`` of this repository, models under ``prefix`` in the S3 server at ``s3_url``."""
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
    log = os.path.join(work, f"ours-{port}.log")
    with process([mlserver, "start", os.path.join(ROOT, "model-settings")], env, ROOT, log) as child:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/ping", child)
        yield System("mlserver-mme", url, child.pid,
                     metrics_url=f"http://127.0.0.1:{env['MLSERVER_METRICS_PORT']}/metrics", log=log)
