"""Scale-out on one machine: `mlserver-mme serve` with shards behind HAProxy.

    python -m bench cluster [--quick] [--plot docs/scale-out.png] [--json FILE] [--from-json FILE]

About 8 minutes (``--quick``: about 3; ``--sizes``, ``--warm-models`` and ``--placements`` shrink it further); ``--from-json``
reports (and plots) a previous run's figures.

1. The front's cost: server CPU per warm request through HAProxy against the same requests sent
   straight to the shard that holds their model, on one 2-shard server, in alternating windows.
2. Hit ratio, Zipf(1.1) over 1,000 models, one request at a time: 3 shards with room for 100 each
   behind the front, one server with room for 300, and the same 3 shards behind a round-robin HAProxy.
   Measured from the servers' hit and miss counters, each beside an exact LRU simulation of the same
   trace placed where HAProxy sent each request (``X-MME-Shard``). Then the consistent hash again with
   8 clients at once, where bounded load sends some requests to a model's second shard, and with 8
   clients and bounded load off (``MLSERVER_MME_HASH_BALANCE_FACTOR=0``).
3. A hot model: one model at concurrency 1, then driven past one shard's capacity: which shards answer it.
4. Throughput of 1, 2 and ``auto`` shards (warm, 100 models, random target), with server CPU per request,
   in alternating windows, and the projection to 16 cores.

Every server runs on this machine beside the client (``harness/loadgen.py``), so throughput is bounded by the
machine's cores: CPU per request is the figure that carries over. Progress goes to stderr.
"""

import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
from support.mlserver_process import free_port, free_port_block, terminate

from bench.harness import ROOT, loadgen, proc
from bench.harness.report import log, write_json
from bench.harness.servers import BODY, CSV_HEADERS, metrics_sum, s3_env, s3_with_models
from bench.harness.stats import lru_hit_ratio, zipf_trace
from mlserver_mme.scale_out.shards import shard_count

SERVE = os.path.join(os.path.dirname(sys.executable), "mlserver-mme")
# The 16-core x86 figures this is projected against (same client, one-row CSV, concurrency 128).
ONE_PROCESS_16_CORES = 3889
EIGHT_PROCESSES_16_CORES = 17231
ECHO_16_CORES = 19269


def folder(parent: str, name: str) -> str:
    path = os.path.join(parent, name)
    os.makedirs(path)
    return path


class Served:
    """One ``mlserver-mme serve`` process tree on loopback ports (stopped with SIGTERM)."""

    def __init__(self, s3, shards: str, work: str, **settings):
        self.shards = shards
        self.count = shard_count(shards)
        self.http_port, self.metrics_port = free_port(), free_port()
        self.shard_port = free_port_block(3 * self.count)
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.log_path = os.path.join(work, f"serve-{shards}.log")
        self.env = {
            **os.environ, **s3_env(s3),
            "MLSERVER_MME_CACHE_DIR": os.path.join(work, f"cache-{shards}"),
            "MLSERVER_MME_SHARDS": shards,
            "MLSERVER_MME_SHARD_PORT": str(self.shard_port),
            "MLSERVER_HOST": "127.0.0.1",
            "MLSERVER_HTTP_PORT": str(self.http_port),
            "MLSERVER_GRPC_PORT": str(free_port()),
            "MLSERVER_METRICS_PORT": str(self.metrics_port),
            **{f"MLSERVER_MME_{key.upper()}": str(value) for key, value in settings.items()},
        }

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def shard_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.shard_port + 3 * index}"

    def shard_metrics_urls(self):
        if not self.sharded:
            return [f"http://127.0.0.1:{self.metrics_port}/metrics"]
        return [f"http://127.0.0.1:{self.metrics_port}/shards/{i}/metrics" for i in range(self.count)]

    def hits_and_misses(self):
        urls = self.shard_metrics_urls()
        return metrics_sum(urls, "mme_model_cache_hits_total"), metrics_sum(urls, "mme_model_cache_misses_total")

    def __enter__(self) -> "Served":
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([SERVE, "serve", os.path.join(ROOT, "model-settings")], env=self.env,
                                        stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.pid = self.process.pid
        deadline = time.monotonic() + 120
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"serve ({self.shards}) did not start; see {self.log_path}")
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        try:
            if not self.sharded:
                return httpx.get(self.url + "/ping", timeout=1).status_code == 200
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1).text
        except httpx.TransportError:
            return False
        up = [line for line in text.splitlines()
              if line.startswith('haproxy_server_status{proxy="sagemaker"') and 'state="UP"' in line and line.endswith(" 1")]
        return len(up) == self.count

    def __exit__(self, *exc) -> None:
        terminate(self.process, 60)
        self._log.close()


@contextlib.contextmanager
def round_robin_front(served: Served, work: str):
    """A plain HAProxy sending requests to ``served``'s shards in turn, without affinity (the baseline)."""
    port = free_port()
    servers = "\n".join(f"    server shard-{i} {served.shard_url(i)[7:]}" for i in range(served.count))
    config = os.path.join(work, "round-robin.cfg")
    with open(config, "w") as file:
        file.write(f"""\
defaults
    mode http
    timeout connect 2s
    timeout client 120s
    timeout server 120s
frontend round-robin
    bind 127.0.0.1:{port}
    http-response set-header X-MME-Shard %[srv_name]
    default_backend shards
backend shards
    balance roundrobin
{servers}
""")
    process = subprocess.Popen(["haproxy", "-db", "-f", config], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the round-robin HAProxy did not start"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def invoke(client, url, target):
    reply = client.post(url + "/invocations", content=BODY,
                        headers={**CSV_HEADERS, "X-Amzn-SageMaker-Target-Model": target})
    assert reply.status_code == 200, reply.text
    return reply.headers.get("X-MME-Shard", "one")


# -- 2. hit ratio --------------------------------------------------------------------------------------------

def replay(served: Served, url: str, trace, capacity_per_place: int, conc: int = 1):
    """Send ``trace`` from ``conc`` clients; the measured hit ratio and an LRU simulation of where it went
    (exact one request at a time; with concurrency it shows the placement only)."""
    hits0, misses0 = served.hits_and_misses()
    places = [None] * len(trace)
    indices = iter(range(len(trace)))
    lock = threading.Lock()

    def client_loop():
        with httpx.Client(timeout=120) as client:
            while True:
                with lock:
                    i = next(indices, None)
                if i is None:
                    return
                places[i] = invoke(client, url, f"zipf/m{trace[i]:04d}.tar.gz")

    started = time.perf_counter()
    with ThreadPoolExecutor(conc) as pool:
        for future in [pool.submit(client_loop) for _ in range(conc)]:
            future.result()
    wall = time.perf_counter() - started
    hits1, misses1 = served.hits_and_misses()
    measured = (hits1 - hits0) / ((hits1 - hits0) + (misses1 - misses0))
    by_place = {}
    for key, place in zip(trace, places):
        by_place.setdefault(place, []).append(key)
    simulated = sum(lru_hit_ratio(keys, capacity_per_place) * len(keys) for keys in by_place.values()) / len(trace)
    models_per_place = {place: len(set(keys)) for place, keys in by_place.items()}
    return {"measured": round(measured, 4), "simulated": round(simulated, 4), "seconds": round(wall, 1),
            "requests_per_place": dict(Counter(places)), "models_per_place": models_per_place}


PLACEMENTS = ("hash", "hash-8", "hash-8-unbounded", "one", "round-robin")


def hit_ratios(s3, work, n_models, n_requests, placements=PLACEMENTS):
    trace = zipf_trace(n_models, n_requests)
    rows = {}
    if "hash" in placements:
        with Served(s3, "3", work, max_loaded_models=300, eviction_policy="lru") as served:
            log(f"hit ratio: 3 shards behind the front ({n_requests} requests)")
            rows["3 shards, room for 100 each, consistent hash"] = replay(served, served.url, trace, 100)
    if "hash-8" in placements:
        with Served(s3, "3", folder(work, "concurrent"), max_loaded_models=300, eviction_policy="lru", hash_balance_factor=150) as served:
            log("hit ratio: 3 shards behind the front, 8 clients, bounded load at 150%")
            rows["3 shards, room for 100 each, consistent hash, 8 clients"] = replay(served, served.url, trace, 100, conc=8)
    if "hash-8-unbounded" in placements:
        with Served(s3, "3", folder(work, "unbounded"), max_loaded_models=300, eviction_policy="lru", hash_balance_factor=0) as served:
            log("hit ratio: 3 shards behind the front, 8 clients, bounded load off")
            rows["3 shards, room for 100 each, consistent hash, 8 clients, bounded load off"] = replay(
                served, served.url, trace, 100, conc=8)
    if "one" in placements:
        with Served(s3, "1", work, max_loaded_models=300, eviction_policy="lru") as served:
            log("hit ratio: one server")
            rows["one server, room for 300"] = replay(served, served.url, trace, 300)
    if "round-robin" in placements:
        rr_work = folder(work, "round-robin")
        with Served(s3, "3", rr_work, max_loaded_models=300, eviction_policy="lru") as served, round_robin_front(served, rr_work) as url:
            log("hit ratio: 3 shards behind round robin")
            rows["3 shards, room for 100 each, round robin"] = replay(served, url, trace, 100)
    return rows


# -- 3. hot model ---------------------------------------------------------------------------------------------

def hot_model(s3, work, duration):
    rows = []
    with Served(s3, "3", work) as served:
        with httpx.Client(timeout=120) as client:  # a cold load can take over httpx's default 5 s on a busy box
            home = invoke(client, served.url, "hot.tar.gz")
        for conc in (1, 16):
            shards = Counter()

            async def request(session, shards=shards):
                async with session.post(served.url + "/invocations", data=BODY,
                                        headers={**CSV_HEADERS, "X-Amzn-SageMaker-Target-Model": "hot.tar.gz"}) as reply:
                    await reply.read()
                    shards[reply.headers.get("X-MME-Shard")] += 1
                    return reply.status == 200

            result = loadgen.run(loadgen.closed_loop(request, conc, duration, 0.5, served.pid))
            log(f"hot model, concurrency {conc}: {dict(shards)}")
            rows.append({"conc": conc, "home": home, "rps": round(result.rps), "errors": result.errors,
                         "server_cores": result.server_cores, "by_shard": dict(sorted(shards.items()))})
    return rows


# -- 1 and 4. front cost and throughput ----------------------------------------------------------------------

def warm_request(urls_of_target, targets):
    async def request(session):
        target = random.choice(targets)
        async with session.post(urls_of_target(target) + "/invocations", data=BODY,
                                headers={**CSV_HEADERS, "X-Amzn-SageMaker-Target-Model": target}) as reply:
            await reply.read()
            return reply.status == 200

    return request


def throughput(s3, work, targets, rounds, duration, warmup, conc):
    with contextlib.ExitStack() as stack:
        servers = {shards: stack.enter_context(Served(s3, shards, work)) for shards in ("1", "2", "auto")}
        two = servers["2"]
        home = {}
        with httpx.Client(timeout=60) as client:
            for served in servers.values():
                for target in targets:
                    home.setdefault(served.shards, {})[target] = invoke(client, served.url, target)
        systems = {
            "1 shard (plain `mlserver start`)": (servers["1"], lambda t: servers["1"].url),
            "2 shards through HAProxy": (two, lambda t: two.url),
            "2 shards, each request straight to its shard": (
                two, lambda t: two.shard_url(int(home["2"][t].split("-")[1]))),
            f"auto ({servers['auto'].count}) shards through HAProxy": (servers["auto"], lambda t: servers["auto"].url),
        }
        # Under load, bounded load sends some requests to a model's second shard, which loads it: let those
        # loads happen before measuring.
        for served, url_of in systems.values():
            loadgen.run(loadgen.closed_loop(warm_request(url_of, targets), conc, warmup, 0.0, served.pid))
        pss = {name: proc.tree_pss_bytes(served.pid) for name, (served, _) in systems.items()}
        samples = {name: [] for name in systems}
        for r in range(rounds):
            for name, (served, url_of) in systems.items():
                result = loadgen.run(loadgen.closed_loop(warm_request(url_of, targets), conc, duration, 1.0, served.pid))
                log(f"round {r + 1}: {name}: {result.rps:.0f} req/s, server {result.server_cores} cores")
                samples[name].append(result)
    rows = []
    for name, results in samples.items():
        median = lambda values: statistics.median(values)  # noqa: E731
        rps = median([r.rps for r in results])
        cpu_us = median([r.server_cores / r.rps * 1e6 for r in results])
        rows.append({
            "system": name, "rps": round(rps), "errors": sum(r.errors for r in results),
            "p50_ms": round(median([r.percentile(50) for r in results]), 2),
            "p99_ms": round(median([r.percentile(99) for r in results]), 2),
            "server_cores": round(median([r.server_cores for r in results]), 2),
            "client_cores": round(median([r.client_cores for r in results]), 2),
            "machine_cores": round(median([r.machine_cores for r in results]), 2),
            "server_cpu_us": round(cpu_us), "pss_mib": round(pss[name] / 2**20),
            "rounds": [round(r.rps) for r in results],
        })
    return rows


# -- report --------------------------------------------------------------------------------------------------

def report(results) -> str:
    out = []
    rows = {row["system"]: row for row in results["throughput"]}
    one = next(row for name, row in rows.items() if name.startswith("1 shard"))
    front = rows["2 shards through HAProxy"]
    direct = rows["2 shards, each request straight to its shard"]
    out.append("#### 1. The front's cost (2 shards, warm, 100 models, random target)\n")
    out.append("| path | server CPU per request |\n|---|---:|")
    out.append(f"| straight to the shard holding the model | {direct['server_cpu_us']} µs |")
    out.append(f"| through HAProxy (hash, bounded load, `X-MME-Shard`) | {front['server_cpu_us']} µs |")
    out.append(f"| the front's cost | {front['server_cpu_us'] - direct['server_cpu_us']} µs "
               f"({front['server_cpu_us'] / direct['server_cpu_us']:.2f}x) |\n")

    out.append("#### 2. Hit ratio, Zipf(1.1), one request at a time unless said\n")
    out.append("| placement | hit ratio measured | exact LRU simulation | requests per shard | models per shard |")
    out.append("|---|---:|---:|---|---|")
    hits = results["hit_ratio"]
    for name, row in hits.items():
        per = " / ".join(str(v) for _, v in sorted(row["requests_per_place"].items()))
        models = " / ".join(str(v) for _, v in sorted(row["models_per_place"].items()))
        out.append(f"| {name} | {row['measured']:.4f} | {row['simulated']:.4f} | {per} | {models} |")
    compared = ("3 shards, room for 100 each, consistent hash", "one server, room for 300",
                "3 shards, room for 100 each, round robin")
    if all(key in hits for key in compared):  # every placement ran (see --placements)
        hashed, single, rr = (hits[key]["measured"] for key in compared)
        out.append(f"\nConsistent hash minus one server: {(hashed - single) * 100:+.2f} pt (target: within 2); "
                   f"consistent hash minus round robin: {(hashed - rr) * 100:+.2f} pt (target: at least +15).\n")
    else:
        out.append("")

    out.append("#### 3. A hot model (3 shards)\n")
    out.append("| concurrency | req/s | server cores | answered by | errors |\n|---:|---:|---:|---|---:|")
    for row in results["hot"]:
        by = ", ".join(f"{shard} {count}" for shard, count in row["by_shard"].items())
        out.append(f"| {row['conc']} | {row['rps']} | {row['server_cores']} | {by} (home {row['home']}) | {row['errors']} |")

    out.append(f"\n#### 4. Throughput (warm, 100 models, random target, concurrency {results['conc']}, "
               f"{os.cpu_count()} cores shared with the client)\n")
    out.append("| system | req/s | p50 ms | p99 ms | server CPU per request | CPU server / client / machine | PSS | errors |")
    out.append("|---|---:|---:|---:|---:|---|---:|---:|")
    for row in results["throughput"]:
        cores = " / ".join(f"{row[key]:.2f}" for key in ("server_cores", "client_cores", "machine_cores"))
        out.append(f"| {row['system']} | {row['rps']} | {row['p50_ms']} | {row['p99_ms']} | {row['server_cpu_us']} µs | "
                   f"{cores} | {row['pss_mib']} MiB | {row['errors']} |")
    factor = front["server_cpu_us"] / one["server_cpu_us"]
    projected = 16 * ONE_PROCESS_16_CORES / factor
    out.append(f"\nProjection to 16 cores: one process there serves {ONE_PROCESS_16_CORES} req/s on one core; 16 shards "
               f"behind HAProxy cost {factor:.2f}x its CPU per request, so 16 x {ONE_PROCESS_16_CORES} / {factor:.2f} = "
               f"{projected:,.0f} req/s of server capacity, against {EIGHT_PROCESSES_16_CORES:,} req/s measured there with "
               f"8 processes and {ECHO_16_CORES:,} req/s for a uvicorn echo (where that client tops out).")
    return "\n".join(out)


def plot(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    hits = results["hit_ratio"]
    bars = [("hash\n3 x 100", "3 shards, room for 100 each, consistent hash", "tab:blue"),
            ("one server\n300", "one server, room for 300", "tab:gray"),
            ("round\nrobin\n3 x 100", "3 shards, room for 100 each, round robin", "tab:red"),
            ("hash\n8 clients", "3 shards, room for 100 each, consistent hash, 8 clients", "tab:cyan"),
            ("hash\n8 clients\nno bound", "3 shards, room for 100 each, consistent hash, 8 clients, bounded load off",
             "tab:purple")]
    bars = [bar for bar in bars if bar[1] in hits]  # placements left out with --placements
    values = [hits[key]["measured"] for _, key, _ in bars]
    axes[0].bar([label for label, _, _ in bars], values, color=[color for _, _, color in bars])
    axes[0].set_ylim(0, 1)
    axes[0].set_title("Hit ratio, Zipf(1.1) over 1,000 models")
    axes[0].tick_params(axis="x", labelsize=8)
    for i, value in enumerate(values):
        axes[0].text(i, value + 0.02, f"{value:.3f}", ha="center")
    hot = results["hot"]
    shards = sorted({s for row in hot for s in row["by_shard"]})
    bottom = [0] * len(hot)
    for shard in shards:
        shares = [row["by_shard"].get(shard, 0) / sum(row["by_shard"].values()) for row in hot]
        axes[1].bar([f"concurrency {row['conc']}" for row in hot], shares, bottom=bottom, label=shard)
        bottom = [b + s for b, s in zip(bottom, shares)]
    axes[1].set_title("One hot model: share answered per shard")
    axes[1].set_ylim(0, 1.2)
    axes[1].legend(loc="upper center", ncol=3)
    rows = results["throughput"]
    names = [row["system"].replace(" through HAProxy", "\nvia HAProxy").replace(", each request straight to its shard",
                                                                                   "\nstraight").replace(" (plain `mlserver start`)", "") for row in rows]
    axes[2].bar(names, [row["server_cpu_us"] for row in rows], color="tab:green")
    axes[2].set_title("Server CPU per warm request (µs)")
    axes[2].set_ylim(0, max(row["server_cpu_us"] for row in rows) * 1.3)
    for i, row in enumerate(rows):
        axes[2].text(i, row["server_cpu_us"] + 5, f"{row['server_cpu_us']}\n{row['rps']} req/s", ha="center", fontsize=8)
    axes[2].tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"plot: {path}")


# (Zipf models, Zipf requests, throughput rounds, window s, warm-up s, hot-model s)
FULL, QUICK = (1000, 6000, 2, 4.0, 4.0, 4.0), (300, 1500, 1, 2.0, 2.0, 2.0)


def add_arguments(parser):
    parser.add_argument("--plot", help="write the plots to this PNG")
    parser.add_argument("--json", help="write the figures to this JSON file too")
    parser.add_argument("--from-json", help="measure nothing: report (and plot) the figures of this JSON file")
    parser.add_argument("--sizes", type=lambda text: tuple(float(v) for v in text.split(",")),
                        help="Zipf models,Zipf requests,rounds,window s,warm-up s,hot-model s "
                             f"(default {','.join(map(str, FULL))}; --quick {','.join(map(str, QUICK))})")
    parser.add_argument("--warm-models", type=int, default=100, help="models of the throughput runs")
    parser.add_argument("--placements", type=lambda text: text.split(","), default=list(PLACEMENTS),
                        help=f"hit-ratio placements to run (default all: {','.join(PLACEMENTS)})")


def run(args) -> dict:
    if args.from_json:
        with open(args.from_json) as file:
            results = json.load(file)
        print(report(results))
        if args.plot:
            plot(results, args.plot)
        return results
    n_models, n_requests, rounds, duration, warmup, hot_seconds = args.sizes or (QUICK if args.quick else FULL)
    n_models, n_requests, rounds = int(n_models), int(n_requests), int(rounds)
    conc = 16
    warm_targets = [f"warm/m{i:03d}.tar.gz" for i in range(args.warm_models)]
    targets = warm_targets + ["hot.tar.gz"] + [f"zipf/m{i:04d}.tar.gz" for i in range(n_models)]
    results = {"conc": conc, "date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="mme-cluster-") as work, s3_with_models(targets) as s3:
        started = time.monotonic()
        results["throughput"] = throughput(s3, folder(work, "warm"), warm_targets, rounds, duration, warmup, conc)
        results["hot"] = hot_model(s3, folder(work, "hot"), hot_seconds)
        results["hit_ratio"] = hit_ratios(s3, folder(work, "hits"), n_models, n_requests, args.placements)
        log(f"done in {time.monotonic() - started:.0f} s")
    print(report(results))
    if args.json:
        write_json(args.json, results)
    if args.plot:
        plot(results, args.plot)
    return results
