"""Benchmarks of the model cache lifecycle, each reported as a ratio measured in the same run.

    python -m bench cache [--quick]

1. single flight: 64 concurrent cold requests for one model, against one cold request;
2. parallel loads: 8 distinct cold models at once, against the same 8 one after another;
3. warm latency while a storm of cold loads runs, against warm latency alone;
4. Zipf(1.1) trace over 1,000 models with room for 100: hit ratio against an exact LRU
   simulation of the same trace, and throughput;
5. 10,000 load/unload cycles: resident memory of the server at the start and the end.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from bench.harness.proc import rss_bytes
from bench.harness.servers import (
    http_client,
    metric,
    mme_server,
    s3_get_count,
    s3_with_models,
    server_metrics_url,
    timed_call,
)
from bench.harness.stats import lru_hit_ratio, percentile, zipf_trace

# Sizes: (Zipf models, Zipf requests, load/unload cycles, warm requests, storm models)
FULL, QUICK = (1000, 10000, 10000, 2000, 400), (200, 1000, 500, 300, 100)


def at_once(server, targets):
    """Wall milliseconds for one request per target, all sent together (connections made first)."""
    clients = [http_client(server) for _ in targets]
    for client in clients:
        client.get("/ping")
    barrier = threading.Barrier(len(targets) + 1)

    def send(pair):
        client, target = pair
        barrier.wait()
        timed_call(client, target)

    with ThreadPoolExecutor(len(targets)) as pool:
        futures = [pool.submit(send, pair) for pair in zip(clients, targets, strict=True)]
        barrier.wait()
        started = time.perf_counter()
        for future in futures:
            future.result()
        wall = (time.perf_counter() - started) * 1e3
    for client in clients:
        client.close()
    return wall


def single_flight(s3, server):
    with http_client(server) as http:
        one = timed_call(http, "sf/alone.tar.gz")
    wall = at_once(server, ["sf/shared.tar.gz"] * 64)
    downloads = s3_get_count(s3, "sf/shared.tar.gz")
    return [
        ("64 concurrent cold requests, one model: downloads", f"{downloads}", "must be 1",
         {"single_flight_downloads": downloads}),
        ("64 concurrent cold: wall time / one cold request", f"{wall:.1f} ms / {one:.1f} ms", f"{wall / one:.2f}x",
         {"single_flight_wall_ms": round(wall, 2), "one_cold_ms": round(one, 2), "single_flight_ratio": round(wall / one, 3)}),
    ]


def parallel_loads(server):
    with http_client(server) as http:
        started = time.perf_counter()
        for i in range(8):
            timed_call(http, f"seq/m{i}.tar.gz")
        sequential = (time.perf_counter() - started) * 1e3
    parallel = at_once(server, [f"par/m{i}.tar.gz" for i in range(8)])
    return [("8 distinct cold models: at once / one after another", f"{parallel:.1f} ms / {sequential:.1f} ms",
             f"{parallel / sequential:.2f}x", {"parallel_loads_ms": round(parallel, 2),
                                               "sequential_loads_ms": round(sequential, 2),
                                               "parallel_loads_ratio": round(parallel / sequential, 3)})]


def warm_under_storm(server, n_warm, storm_models):
    with http_client(server) as http:
        for _ in range(50):
            timed_call(http, "warm/w.tar.gz")
        alone = [timed_call(http, "warm/w.tar.gz") for _ in range(n_warm)]
        stop = threading.Event()

        def storm(worker):
            with http_client(server) as client:
                for i in range(worker, storm_models, 4):
                    if stop.is_set():
                        return
                    timed_call(client, f"storm/m{i:04d}.tar.gz")

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(storm, w) for w in range(4)]
            time.sleep(0.2)  # let the storm start before measuring
            stormy = [timed_call(http, "warm/w.tar.gz") for _ in range(n_warm)]
            stop.set()
            for future in futures:
                future.result()
    p50a, p99a, p50s, p99s = (percentile(alone, 50), percentile(alone, 99), percentile(stormy, 50),
                              percentile(stormy, 99))
    return [
        ("warm p50 during a cold-load storm / alone", f"{p50s:.2f} ms / {p50a:.2f} ms", f"{p50s / p50a:.2f}x",
         {"warm_p50_alone_ms": round(p50a, 3), "warm_p50_storm_ms": round(p50s, 3)}),
        ("warm p99 during a cold-load storm / alone", f"{p99s:.2f} ms / {p99a:.2f} ms", f"{p99s / p99a:.2f}x",
         {"warm_p99_alone_ms": round(p99a, 3), "warm_p99_storm_ms": round(p99s, 3)}),
    ]


def churn(server, n_models, n_requests):
    trace = zipf_trace(n_models, n_requests)
    url = server_metrics_url(server)
    hits0, misses0 = metric(url, "mme_model_cache_hits_total"), metric(url, "mme_model_cache_misses_total")
    with http_client(server) as http:
        started = time.perf_counter()
        latencies = [timed_call(http, f"zipf/m{key:04d}.tar.gz") for key in trace]
        wall = time.perf_counter() - started
    hits = metric(url, "mme_model_cache_hits_total") - hits0
    misses = metric(url, "mme_model_cache_misses_total") - misses0
    measured = hits / (hits + misses)
    expected = lru_hit_ratio(trace, 100)
    return [
        (f"Zipf(1.1) over {n_models} models, room for 100: hit ratio measured / exact LRU",
         f"{measured:.4f} / {expected:.4f}", f"{(measured - expected) * 100:+.2f} pt",
         {"zipf_hit_ratio": round(measured, 4), "zipf_lru_simulation": round(expected, 4)}),
        (f"Zipf(1.1) churn throughput (conc 1, {n_requests} requests)", f"{n_requests / wall:.0f} req/s",
         f"p50 {percentile(latencies, 50):.2f} ms, p99 {percentile(latencies, 99):.2f} ms",
         {"zipf_rps": round(n_requests / wall, 1), "zipf_p50_ms": round(percentile(latencies, 50), 3),
          "zipf_p99_ms": round(percentile(latencies, 99), 3)}),
    ]


def load_unload_cycles(server, cycles):
    pid = server.process.pid
    with http_client(server) as http:
        for i in range(200):  # warm-up: allocator and caches reach their steady state
            timed_call(http, f"cycle/{'ab'[i % 2]}.tar.gz")
        start = rss_bytes(pid)
        started = time.perf_counter()
        for i in range(cycles):
            timed_call(http, f"cycle/{'ab'[i % 2]}.tar.gz")
        wall = time.perf_counter() - started
        end = rss_bytes(pid)
    return [(f"{cycles} load/unload cycles: RSS end / start", f"{end / 2**20:.1f} MiB / {start / 2**20:.1f} MiB",
             f"{end / start:.3f}x ({cycles / wall:.0f} cycles/s)",
             {"cycles_rss_start_mib": round(start / 2**20, 1), "cycles_rss_end_mib": round(end / 2**20, 1),
              "cycles_per_second": round(cycles / wall, 1)})]


def add_arguments(parser):
    parser.add_argument("--sizes", type=lambda text: tuple(int(v) for v in text.split(",")),
                        help="Zipf models,Zipf requests,load/unload cycles,warm requests,storm models "
                             f"(default {','.join(map(str, FULL))}; --quick {','.join(map(str, QUICK))})")


def run(args) -> dict:
    n_zipf_models, n_zipf_requests, n_cycles, n_warm, n_storm = args.sizes or (QUICK if args.quick else FULL)
    targets = (["sf/alone.tar.gz", "sf/shared.tar.gz", "warm/w.tar.gz", "cycle/a.tar.gz", "cycle/b.tar.gz"]
               + [f"seq/m{i}.tar.gz" for i in range(8)] + [f"par/m{i}.tar.gz" for i in range(8)]
               + [f"storm/m{i:04d}.tar.gz" for i in range(n_storm)]
               + [f"zipf/m{i:04d}.tar.gz" for i in range(n_zipf_models)])
    rows = []
    with s3_with_models(targets) as s3:
        with mme_server(s3) as server:
            rows += single_flight(s3, server)
            rows += parallel_loads(server)
            rows += warm_under_storm(server, n_warm, n_storm)
        with mme_server(s3, max_loaded_models=100, eviction_policy="lru") as server:
            rows += churn(server, n_zipf_models, n_zipf_requests)
        with mme_server(s3, max_loaded_models=1) as server:
            rows += load_unload_cycles(server, n_cycles)
    print("| scenario | measured | ratio |")
    print("|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row[:3]) + " |")
    return {key: value for row in rows for key, value in row[3].items()}
