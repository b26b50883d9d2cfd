"""Cold and warm latency of one SageMaker invocation, with the server and S3 on loopback.

    python -m bench latency [--models 20] [--warm 2000]     # --quick: 3 models, 200 warm requests

Uploads copies of a bundled example under distinct keys, then times over
keep-alive HTTP the first request of each model (cold: download, unpack, load,
predict) and repeated requests to one loaded model (warm). Prints milliseconds.
"""

import statistics

from bench.harness.proc import cpu_seconds
from bench.harness.servers import http_client, mme_server, s3_with_models, timed_call
from bench.harness.stats import percentile


def add_arguments(parser):
    parser.add_argument("--models", type=int, help="cold models (default 20; --quick 3)")
    parser.add_argument("--warm", type=int, help="warm requests (default 2000; --quick 200)")


def run(args) -> dict:
    models = args.models or (3 if args.quick else 20)
    n_warm = args.warm or (200 if args.quick else 2000)
    targets = [f"bench/model_{i:03d}.tar.gz" for i in range(models)]
    with s3_with_models(targets) as s3, mme_server(s3) as server, http_client(server) as http:
        cold = [timed_call(http, target) for target in targets]
        for _ in range(100):
            timed_call(http, targets[0])
        cpu_before = cpu_seconds(server.process.pid)
        warm = [timed_call(http, targets[0]) for _ in range(n_warm)]
        server_cpu_us = (cpu_seconds(server.process.pid) - cpu_before) / n_warm * 1e6
    print("| request | n | p50 ms | p90 ms | p99 ms | mean ms |")
    print("|---|---:|---:|---:|---:|---:|")
    figures: dict = {}
    for key, label, values in (("cold", "cold (first call of a model)", cold), ("warm", "warm (loaded model)", warm)):
        row = {"n": len(values), "p50_ms": percentile(values, 50), "p90_ms": percentile(values, 90),
               "p99_ms": percentile(values, 99), "mean_ms": statistics.fmean(values)}
        figures[key] = {k: round(v, 3) for k, v in row.items()}
        print(f"| {label} | {len(values)} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {row['p99_ms']:.2f} | {row['mean_ms']:.2f} |")
    print(f"\nserver CPU per warm request: {server_cpu_us:.0f} us")
    figures["server_cpu_us_per_warm_request"] = round(server_cpu_us, 1)
    return figures
