"""A real ``mlserver start model-settings/`` process on free loopback ports."""

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Iterator, List

import httpx

from .paths import ROOT, RUNTIMES

MLSERVER = os.path.join(os.path.dirname(sys.executable), "mlserver")
TEST_RUNTIMES = ("mlserver_mme.runtimes.xgboost.XGBoostModel", "doubler.Doubler", "gated.Gated")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - count)
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no block of free ports")


def terminate(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM ``process`` (a server drains), then SIGKILL it if it has not exited within ``timeout`` s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class MLServerProcess:
    def __init__(self, env: dict, log_path: str, settings_dir: str = os.path.join(ROOT, "model-settings")):
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.log_path = log_path
        self.env = {
            **os.environ,
            "MLSERVER_HOST": "127.0.0.1",
            "MLSERVER_HTTP_PORT": str(self.http_port),
            "MLSERVER_GRPC_PORT": str(free_port()),
            "MLSERVER_METRICS_PORT": str(free_port()),
            # the tiny custom runtimes used by the tests live in tests/support/runtimes
            "PYTHONPATH": os.pathsep.join(filter(None, [RUNTIMES, os.environ.get("PYTHONPATH")])),
            # ... and is allowed, as an operator allows the runtimes installed beside the server
            "MLSERVER_MME_ALLOWED_RUNTIMES": ",".join(TEST_RUNTIMES),
            **env,
        }
        self.settings_dir = settings_dir
        self.process = None

    def start(self, timeout: float = 60.0) -> "MLServerProcess":
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [MLSERVER, "start", self.settings_dir], env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlserver exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/ping", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"mlserver did not answer /ping within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path, "rb") as file:
            return file.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process:
            terminate(self.process, 15)
            self._log.close()


@contextlib.contextmanager
def servers_started(credentials: dict, endpoint: str, prefix_uri: str, folder) -> Iterator[Callable[..., MLServerProcess]]:
    """``start(**settings)``: a server of the models under ``prefix_uri`` in the S3 store at ``endpoint``, its
    cache and logs in ``folder``, each setting as ``MLSERVER_MME_<NAME>`` (``cache_dir`` too); every server
    started is stopped on exit."""
    env = {
        **credentials,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "MLSERVER_MME_MODEL_PREFIX": prefix_uri,
        "MLSERVER_MME_CACHE_DIR": os.path.join(str(folder), "cache"),
    }
    started: List[MLServerProcess] = []

    def start(**settings) -> MLServerProcess:
        settings_env = {f"MLSERVER_MME_{key.upper()}": str(value) for key, value in settings.items()}
        server = MLServerProcess({**env, **settings_env}, os.path.join(str(folder), f"log{len(started)}")).start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
