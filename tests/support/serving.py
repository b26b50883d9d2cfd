"""Calls and checks against a running server, shared by the end-to-end tests."""

import json
import time

import httpx

from .artifacts import tar_bytes
from .clients import invoke

CSV = b"1995,3000,3,2,1.0,2\n"
LEAKS = ("Traceback", "Stack trace", "[bt]", ".cc:", "/workspace/", "site-packages")


def call(server, target, body=CSV):
    return invoke(server, target, body)


def states(server) -> dict:
    reply = httpx.post(server.url + "/v2/repository/index", json={})
    return {item["name"]: item["state"] for item in reply.json() if item["name"] != "sagemaker~router"}


def loaded(server) -> set:
    return {name for name, state in states(server).items() if state == "READY"}


def wait_until(condition, timeout=30.0, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"{message} not met within {timeout} s")


def gated_artifact(**extra) -> bytes:
    settings = {"implementation": "gated.Gated", "parameters": {"extra": extra}}
    return tar_bytes({"model-settings.json": json.dumps(settings).encode()})


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def metrics_text(server) -> str:
    return httpx.get(f"http://127.0.0.1:{server.env['MLSERVER_METRICS_PORT']}/metrics").text


def model_error(reply, original_status: int, reason: str) -> str:
    assert reply.status_code == 424, reply.text
    assert reply.headers["x-amzn-errortype"] == "ModelError"
    body = reply.json()
    assert body["OriginalStatusCode"] == original_status
    assert reason in body["OriginalMessage"], body["OriginalMessage"]
    for leak in LEAKS:
        assert leak not in reply.text
    return body["OriginalMessage"]
