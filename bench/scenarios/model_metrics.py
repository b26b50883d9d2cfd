"""Per-request cost of the per-model metrics (``ModelMetrics.record``), in microseconds.

    python -m bench model_metrics [--models 1000] [--top-k 50] [--requests 600000]     # --quick: 20,000 requests

Records requests spread over ``--models`` targets (80% of them to 20 hot ones,
the rest uniform), successes only, in one process, reviews included, and prints
the mean cost per call next to that of the one histogram observation it makes.
"""

import random
import time

from prometheus_client import CollectorRegistry, Histogram

from mlserver_mme.observability.model_metrics import SECONDS, ModelMetrics


def per_call_us(function, calls) -> float:
    started = time.perf_counter()
    function(calls)
    return (time.perf_counter() - started) / len(calls) * 1e6


def add_arguments(parser):
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--requests", type=int, help="calls recorded (default 600,000; --quick 20,000)")
    parser.add_argument("--review-every", type=int, default=300_000, help="calls between reviews")


def run(args) -> dict:
    args.requests = args.requests or (20_000 if args.quick else 600_000)
    rng = random.Random(0)
    targets = [f"tenant/{i:05d}.tar.gz" for i in range(args.models)]
    hot = targets[:20]
    calls = [
        (rng.choice(hot) if rng.random() < 0.8 else rng.choice(targets), "200", 0.0003) for _ in range(args.requests)
    ]

    # The clock counts calls: a review every 300,000 of them, as at 5,000 requests/s with reviews every 60 s.
    clock = iter(range(10**9)).__next__
    metrics = ModelMetrics(args.top_k, review_seconds=args.review_every, registry=CollectorRegistry(), clock=clock)

    def record_all(calls):
        record = metrics.record
        for target, code, seconds in calls:
            record(target, code, seconds)

    histogram = Histogram("h", "h", ["model"], buckets=SECONDS, registry=CollectorRegistry()).labels("m")

    def bare_all(calls):
        for _target, _code, seconds in calls:
            histogram.observe(seconds)

    def loop_only(calls):
        for _target, _code, _seconds in calls:
            pass

    record_all(calls[:10_000])  # warm up
    loop = per_call_us(loop_only, calls)
    record = per_call_us(record_all, calls) - loop
    bare = per_call_us(bare_all, calls) - loop
    print(f"models {args.models}, top_k {args.top_k}, {args.requests} calls")
    print(f"record():                      {record:.2f} us per call")
    print(f"histogram.observe alone:       {bare:.2f} us per call")
    print(f"labelled models at the end: {len(metrics.labelled())}")
    return {"models": args.models, "top_k": args.top_k, "requests": args.requests, "record_us": round(record, 3),
            "histogram_observe_us": round(bare, 3), "labelled_models": len(metrics.labelled())}

