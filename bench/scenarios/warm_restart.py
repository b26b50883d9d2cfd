"""The first minute after a restart: requests that find their model not loaded, with and without warm restarts.

    python -m bench warm_restart [--quick] [--models 48] [--seconds 60]

Each mode runs on its own cache folder against the same moto S3 server: a server takes a Zipf(1.0)
trace over ``--models`` models (all fit its ``max_loaded_models``), records its loaded models, and is
stopped; a second server starts on the same cache folder (``MLSERVER_MME_WARM_RESTART`` false, as
before warm restarts, then true) and takes the same Zipf traffic from 2 clients for ``--seconds``.
Reported per mode: cold first requests (``mme_model_cache_misses_total`` after the restart), S3 GETs
and HEADs after the restart, and the latency of each model's first request. Goal: warm restarts
leave at most 20% of the cold first requests, with no GET for a model on disk.
"""

import json
import os
import random
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from support.s3server import BUCKET

from bench.harness.servers import (
    BODY,
    CSV_HEADERS,
    PREFIX,
    http_client,
    metric,
    mme_server,
    s3_with_models,
    server_metrics_url,
)
from bench.harness.stats import percentile

CLIENTS = 2
RECORD_SECONDS = 1.0


def add_arguments(parser):
    parser.add_argument("--models", type=int, default=48, help="models under the prefix (all fit the server)")
    parser.add_argument("--seconds", type=float, default=60.0, help="traffic after the restart")
    parser.add_argument("--before", type=int, default=600, help="requests before the restart")


def zipf_picker(models: int, seed: int):
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) for rank in range(models)]
    order = list(range(models))
    rng.shuffle(order)  # popularity is not alphabetical

    def pick() -> int:
        return order[rng.choices(range(models), weights)[0]]

    return pick


def wait_for_record(path: str, models: int, timeout: float = 30.0) -> None:
    """Until the server's record of its loaded models holds ``models`` of them (it is written every second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as file:
                if len(json.load(file)["models"]) == models:
                    return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{path} did not record {models} models within {timeout} s")


def target(index: int) -> str:
    return f"warm/m{index:03d}.tar.gz"


def s3_counts(s3, targets, method: str) -> int:
    return sum(s3.count(method, f"/{BUCKET}/{PREFIX}{t}") for t in targets)


def one_mode(s3, targets, warm: bool, args) -> dict:
    cache = tempfile.mkdtemp(prefix="mme-bench-warm-")
    settings = {
        "cache_dir": os.path.join(cache, "cache"),
        "max_loaded_models": len(targets) + 16,
        "hot_set_record_seconds": RECORD_SECONDS,
    }
    pick = zipf_picker(len(targets), seed=3)
    with mme_server(s3, warm_restart="true", **settings) as first, http_client(first) as http:
        for _ in range(args.before):
            reply = http.post("/invocations", content=BODY,
                              headers={**CSV_HEADERS, "X-Amzn-SageMaker-Target-Model": targets[pick()]})
            assert reply.status_code == 200, reply.text
        loaded_before = metric(server_metrics_url(first), "mme_loaded_models")
        wait_for_record(os.path.join(settings["cache_dir"], "hot-set.json"), int(loaded_before))
    gets, heads = s3_counts(s3, targets, "GET"), s3_counts(s3, targets, "HEAD")

    lock = threading.Lock()
    first_latency = {}  # model -> ms of its first request after the restart
    sent = [0]
    with mme_server(s3, warm_restart="true" if warm else "false", **settings) as second:
        restarted = time.monotonic()
        deadline = restarted + args.seconds
        picks = [zipf_picker(len(targets), seed=100 + client) for client in range(CLIENTS)]

        def client(index: int) -> None:
            with http_client(second) as http:
                while time.monotonic() < deadline:
                    model = targets[picks[index]()]
                    started = time.perf_counter()
                    reply = http.post("/invocations", content=BODY,
                                      headers={**CSV_HEADERS, "X-Amzn-SageMaker-Target-Model": model})
                    elapsed = (time.perf_counter() - started) * 1e3
                    assert reply.status_code == 200, reply.text
                    with lock:
                        sent[0] += 1
                        first_latency.setdefault(model, elapsed)

        with ThreadPoolExecutor(CLIENTS) as pool:
            for future in [pool.submit(client, i) for i in range(CLIENTS)]:
                future.result()
        url = server_metrics_url(second)
        misses, hits = metric(url, "mme_model_cache_misses_total"), metric(url, "mme_model_cache_hits_total")
        warm_loads = second.log().count("event=warm-load model=")
    firsts = list(first_latency.values())
    return {
        "loaded_before_restart": int(loaded_before),
        "requests": sent[0],
        "cold_first_requests": int(misses),
        "hits": int(hits),
        "warm_loads": warm_loads,
        "models_requested": len(first_latency),
        "s3_gets_after_restart": s3_counts(s3, targets, "GET") - gets,
        "s3_heads_after_restart": s3_counts(s3, targets, "HEAD") - heads,
        "first_request_p50_ms": round(percentile(firsts, 50), 2),
        "first_request_p99_ms": round(percentile(firsts, 99), 2),
    }


def run(args) -> dict:
    if args.quick:
        args.models, args.seconds, args.before = min(args.models, 12), min(args.seconds, 6.0), min(args.before, 120)
    targets = [target(i) for i in range(args.models)]
    with s3_with_models(targets) as s3:
        today = one_mode(s3, targets, warm=False, args=args)
        warm = one_mode(s3, targets, warm=True, args=args)
    ratio = warm["cold_first_requests"] / today["cold_first_requests"] if today["cold_first_requests"] else 0.0
    print(f"\n### The first {args.seconds:g} s after a restart ({args.models} models, Zipf(1.0), {CLIENTS} clients)\n")
    print("| | no warm restart | warm restart |")
    print("|---|---:|---:|")
    for key in today:
        print(f"| {key.replace('_', ' ')} | {today[key]} | {warm[key]} |")
    print(f"\ncold first requests, warm / without: **{ratio:.2f}** (goal: at most 0.20, and no GET after the restart)")
    return {"without": today, "warm": warm, "cold_ratio": round(ratio, 3)}
