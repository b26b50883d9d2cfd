"""Cold and warm latency of one SageMaker invocation, with the server and S3 on loopback.

    python bench/latency.py [--models 20] [--warm 2000]

Starts moto's S3 server and ``mlserver start model-settings/`` (as the tests do),
uploads copies of a bundled example under distinct keys, then times over keep-alive
HTTP: the first request of each model (cold: download, unpack, load, predict) and
repeated requests to one loaded model (warm). Prints a table of milliseconds.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import boto3
import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from artifacts import example_bytes  # noqa: E402
from conftest import BUCKET, CREDENTIALS, PREFIX, _lower, s3_env  # noqa: E402
from mlserver_process import MLServerProcess  # noqa: E402
from s3server import CountingS3Server  # noqa: E402

BODY = b"1995,3000,3,2,1.0,2\n"


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def timed_call(client, target):
    started = time.perf_counter_ns()
    reply = client.post(
        "/invocations", content=BODY, headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target}
    )
    elapsed = (time.perf_counter_ns() - started) / 1e6
    assert reply.status_code == 200, reply.text
    return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--warm", type=int, default=2000)
    args = parser.parse_args()

    s3 = CountingS3Server().start()
    work = tempfile.mkdtemp(prefix="mme-bench-")
    try:
        client = boto3.client("s3", endpoint_url=s3.url, **_lower(CREDENTIALS))
        client.create_bucket(Bucket=BUCKET)
        data = example_bytes("Houston_TX.tar.gz")
        targets = [f"bench/model_{i:03d}.tar.gz" for i in range(args.models)]
        for target in targets:
            client.put_object(Bucket=BUCKET, Key=PREFIX + target, Body=data)
        server = MLServerProcess(
            {**s3_env(s3), "MLSERVER_MME_CACHE_DIR": os.path.join(work, "cache")}, os.path.join(work, "log")
        ).start()
        try:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                cold = [timed_call(http, target) for target in targets]
                for _ in range(100):
                    timed_call(http, targets[0])
                warm = [timed_call(http, targets[0]) for _ in range(args.warm)]
        finally:
            server.stop()
    finally:
        s3.stop()
    print(f"| request | n | p50 ms | p90 ms | p99 ms | mean ms |")
    print(f"|---|---:|---:|---:|---:|---:|")
    for label, values in (("cold (first call of a model)", cold), ("warm (loaded model)", warm)):
        print(
            f"| {label} | {len(values)} | {percentile(values, 50):.2f} | {percentile(values, 90):.2f} "
            f"| {percentile(values, 99):.2f} | {statistics.fmean(values):.2f} |"
        )


if __name__ == "__main__":
    main()
