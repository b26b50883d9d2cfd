"""Cold and warm latency of one SageMaker invocation, with the server and S3 on loopback.

    python bench/latency.py [--models 20] [--warm 2000]

Uploads copies of a bundled example under distinct keys, then times over
keep-alive HTTP the first request of each model (cold: download, unpack, load,
predict) and repeated requests to one loaded model (warm). Prints milliseconds.
"""

import argparse
import statistics

from common import cpu_seconds, http_client, mme_server, percentile, s3_with_models, timed_call


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--warm", type=int, default=2000)
    args = parser.parse_args()
    targets = [f"bench/model_{i:03d}.tar.gz" for i in range(args.models)]
    with s3_with_models(targets) as s3, mme_server(s3) as server, http_client(server) as http:
        cold = [timed_call(http, target) for target in targets]
        for _ in range(100):
            timed_call(http, targets[0])
        cpu_before = cpu_seconds(server.process.pid)
        warm = [timed_call(http, targets[0]) for _ in range(args.warm)]
        server_cpu_us = (cpu_seconds(server.process.pid) - cpu_before) / args.warm * 1e6
    print("| request | n | p50 ms | p90 ms | p99 ms | mean ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, values in (("cold (first call of a model)", cold), ("warm (loaded model)", warm)):
        print(
            f"| {label} | {len(values)} | {percentile(values, 50):.2f} | {percentile(values, 90):.2f} "
            f"| {percentile(values, 99):.2f} | {statistics.fmean(values):.2f} |"
        )
    print(f"\nserver CPU per warm request: {server_cpu_us:.0f} us")


if __name__ == "__main__":
    main()
