"""Shared pieces of the benchmarks: moto's S3 server and an mlserver process on loopback.

They reuse the test suite's helpers (``tests/support/s3server.py``, ``tests/support/mlserver_process.py``).
"""

import collections
import contextlib
import os
import sys
import tempfile
import time

import boto3
import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from support.artifacts import example_bytes  # noqa: E402
from support.mlserver_process import MLServerProcess  # noqa: E402
from support.s3server import BUCKET, PREFIX, CountingS3Server, boto3_credentials, s3_env  # noqa: E402

BODY = b"1995,3000,3,2,1.0,2\n"
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


def timed_call(client, target):
    """Milliseconds for one one-row CSV invocation of ``target``."""
    started = time.perf_counter_ns()
    reply = client.post(
        "/invocations", content=BODY, headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target}
    )
    elapsed = (time.perf_counter_ns() - started) / 1e6
    assert reply.status_code == 200, reply.text
    return elapsed


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def http_client(server):
    return httpx.Client(base_url=server.url, timeout=120)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (less noisy than wall time on a shared box)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lru_hit_ratio(trace, capacity):
    """Hit ratio of an exact LRU cache of ``capacity`` entries over ``trace``."""
    cache, hits = collections.OrderedDict(), 0
    for key in trace:
        if key in cache:
            hits += 1
            cache.move_to_end(key)
        else:
            cache[key] = True
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits / len(trace)
