"""SIGTERM (how Docker and SageMaker stop a container) drains in-flight requests, then exits."""

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from support.artifacts import tar_bytes
from support.mlserver_process import MLServerProcess


def test_sigterm_drains_the_request_in_flight_and_exits(tmp_path):
    started, gate = tmp_path / "started", tmp_path / "gate"
    models = tmp_path / "models"
    models.mkdir()
    settings = {
        "implementation": "gated.Gated",
        "parameters": {"extra": {"predict_started": str(started), "predict_gate": str(gate)}},
    }
    (models / "slow.tar.gz").write_bytes(tar_bytes({"model-settings.json": json.dumps(settings).encode()}))
    server = MLServerProcess(
        {"MLSERVER_MME_MODEL_PREFIX": str(models), "MLSERVER_MME_CACHE_DIR": str(tmp_path / "cache")},
        str(tmp_path / "log"),
    ).start()
    try:
        with ThreadPoolExecutor(1) as pool:
            reply = pool.submit(
                httpx.post,
                server.url + "/invocations",
                content=b"1,2\n",
                headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": "slow.tar.gz"},
                timeout=60,
            )
            deadline = time.monotonic() + 30
            while not started.exists():
                assert time.monotonic() < deadline, "the request never reached the model"
                time.sleep(0.01)
            server.process.send_signal(signal.SIGTERM)
            # Shutting down: no new connections are taken, while the request stays in flight.
            while True:
                assert time.monotonic() < deadline, "the server kept accepting connections"
                try:
                    httpx.get(server.url + "/ping", timeout=1)
                except httpx.TransportError:
                    break
                time.sleep(0.01)
            assert not reply.done()
            gate.touch()
            assert reply.result(30).json() == [3.0]
        assert server.process.wait(30) == 0
    finally:
        server.stop()
