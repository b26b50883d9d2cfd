"""The hot set under scans and shifts: the ``tinylfu`` eviction policy against ``lru`` of the same memory, same run.

    python -m bench hot_set [--quick] [--skip-server]

1. Replay, in this process, through the real lifecycle (``ModelLifecycle``: its table, budgets and policy)
   with fake loads: each model has a size (its measured memory) and a load time (virtual seconds, summed,
   never slept); the memory budget holds 10 % of all models' memory, measured as the sum of what is loaded.
   Traces over 2,000 models, Zipf(1.0) requests:
   - ``zipf``: pure Zipf;
   - ``scan``: Zipf with a full scan of every model (in a random order) after each 20,000 requests;
   - ``shift``: the popular set permuted anew every 20,000 requests; the hit ratio of the last 1,000
     requests, averaged over the shifts, is followed until it is back within 2 points of the policy's
     steady ratio (the second halves of the stretches between shifts);
   - ``mixed``: sizes and load times each spread 10x (log-uniform, independent): total load seconds.
   Hit ratios leave out the first 10 % of each trace (the cold start).
2. Scaled down, real servers with real artifacts (moto's S3, ``mlserver start``): a scan trace over
   100 models with ``max_loaded_models`` 10, one server per policy; hit ratios from the servers' own
   ``mme_model_cache_hits_total``/``misses`` counters.
"""

import asyncio
import collections
import math
import random
import time
from types import SimpleNamespace

import numpy as np

from mlserver_mme.config import MMESettings
from mlserver_mme.lifecycle import ModelLifecycle, State
from mlserver_mme.naming import v2_name

POLICIES = ("lru", "tinylfu")
MIB = 1 << 20
# (models, requests, scan every, capacity share, recovery window)
FULL, QUICK = (2000, 100_000, 20_000, 0.10, 1000), (200, 6_000, 2_000, 0.10, 300)
# real servers: (models, max_loaded_models, requests, scan every)
SERVER_FULL, SERVER_QUICK = (100, 10, 3000, 600), (10, 2, 60, 30)


# -- traces ----------------------------------------------------------------------------------------


def zipf_requests(rng, n_models, n_requests, order, s=1.0):
    """``n_requests`` model indices: rank ``k`` (Zipf(``s``)) is model ``order[k]``."""
    weights = 1 / np.arange(1, n_models + 1) ** s
    ranks = rng.choice(n_models, size=n_requests, p=weights / weights.sum())
    return [int(order[rank]) for rank in ranks]


def traces(n_models, n_requests, scan_every, seed=3):
    """The traces by name, where the shifts happen, and which requests of ``scan`` belong to a scan."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_models)
    zipf = zipf_requests(rng, n_models, n_requests, order)
    scan, scanning = [], []
    for start in range(0, n_requests, scan_every):
        scan += zipf[start:start + scan_every]
        scanning += [False] * len(zipf[start:start + scan_every])
        if start + scan_every < n_requests:
            scan += [int(m) for m in rng.permutation(n_models)]
            scanning += [True] * n_models
    shift, shifts = zipf[:scan_every], []
    for start in range(scan_every, n_requests, scan_every):  # a new popular set each scan_every requests
        shifts.append(start)
        shift += zipf_requests(rng, n_models, min(scan_every, n_requests - start), rng.permutation(n_models))
    return {"zipf": zipf, "scan": scan, "shift": shift}, shifts, scanning


def model_costs(n_models, mixed, seed=5):
    """Each model's (bytes, load seconds): 10 MiB and 0.5 s each, or each spread 10x log-uniform."""
    if not mixed:
        return [(10 * MIB, 0.5)] * n_models
    rng = random.Random(seed)
    return [(int(MIB * 10 ** rng.uniform(0, 1)), 0.1 * 10 ** rng.uniform(0, 1)) for _ in range(n_models)]


# -- the in-process replay -------------------------------------------------------------------------


class FakeLoader:
    """The registry loader's part: a load advances the virtual clock by the model's load time."""

    def __init__(self, costs, clock):
        self.costs, self.clock = costs, clock
        self.loads = 0
        self.load_seconds = 0.0

    async def registered(self, name):
        return None

    async def load(self, target, settings):
        size, seconds = self.costs[int(target[1:])]  # target: m<index>
        self.clock.now += seconds
        self.loads += 1
        self.load_seconds += seconds
        return SimpleNamespace(name=target), size

    async def unload(self, entry, reason):
        pass


class FakeRepository:
    def __init__(self):
        self.cache = SimpleNamespace(evict_to_budget=self._nothing, drop_retired=self._nothing,
                                     has_retired=lambda: False)
        self.settings = SimpleNamespace(parameters=SimpleNamespace(extra={}))

    @staticmethod
    async def _nothing(in_use):
        pass

    async def settings_for(self, target):
        return self.settings


def replay(trace, costs, policy, memory_limit, skip):
    """Hits per request (a list of bools), load seconds and loads of ``trace`` through the real lifecycle."""

    async def main():
        settings = MMESettings(model_prefix="/nonexistent", memory_limit=str(memory_limit),
                               eviction_policy=policy, failure_ttl=0)
        clock = SimpleNamespace(now=0.0)
        lifecycle = ModelLifecycle(None, FakeRepository(), settings)
        loader = FakeLoader(costs, clock)
        lifecycle.loader = loader
        lifecycle.clock = lambda: clock.now
        lifecycle.budgets.measure = lambda: sum(entry.memory_bytes for entry in lifecycle.models)
        hits = []
        counted_seconds = 0.0
        for i, model in enumerate(trace):
            target = f"m{model}"
            entry = lifecycle.models.get(v2_name(target))
            hit = entry is not None and entry.state is State.READY
            before = loader.load_seconds
            lifecycle.release(await lifecycle.acquire(target))
            hits.append(hit)
            if i >= skip:
                counted_seconds += loader.load_seconds - before
        return hits, counted_seconds, loader.loads

    return asyncio.run(main())


def ratio(hits, skip):
    counted = hits[skip:]
    return sum(counted) / len(counted)


def best_fixed_set(trace, capacity):
    """The hit ratio of the ``capacity`` models most requested in ``trace``, kept loaded all along: what the best
    set chosen in hindsight gets on a trace whose popularity does not change (a bound for any policy here)."""
    counts = collections.Counter(trace)
    return sum(count for _, count in counts.most_common(capacity)) / len(trace)


def shift_curve(hits, shifts, length, window):
    """The hit ratio of the ``window`` requests before each point after a shift (every window/10), averaged over the shifts."""
    ends = range(window, length + 1, window // 10)
    return [(end, sum(sum(hits[at + end - window:at + end]) for at in shifts) / (window * len(shifts))) for end in ends]


def recovery(curve, steady):
    """Requests after a shift until the averaged windowed hit ratio is within 2 points of ``steady``."""
    for end, value in curve:
        if value >= steady - 0.02:
            return end
    return None


def in_process(n_models, n_requests, scan_every, share, window):
    named, shifts, scanning = traces(n_models, n_requests, scan_every)
    plain, mixed = model_costs(n_models, False), model_costs(n_models, True)
    runs = {"zipf": (named["zipf"], plain), "scan": (named["scan"], plain), "shift": (named["shift"], plain),
            "mixed": (named["zipf"], mixed)}
    figures: dict = {}
    for trace_name, (trace, costs) in runs.items():
        limit = int(share * sum(size for size, _ in costs))
        skip = len(trace) // 10
        figures[trace_name] = {}
        for policy in POLICIES:
            started = time.perf_counter()
            hits, seconds, loads = replay(trace, costs, policy, limit, skip)
            result = {"hit_ratio": round(ratio(hits, skip), 4), "load_seconds": round(seconds, 1), "loads": loads,
                      "replay_seconds": round(time.perf_counter() - started, 1)}
            if trace_name == "scan":  # the Zipf requests only: what the scans did to the hot set
                kept = [hit for hit, scanned in zip(hits[skip:], scanning[skip:], strict=True) if not scanned]
                result["zipf_requests_hit_ratio"] = round(sum(kept) / len(kept), 4)
            if trace_name == "shift":  # steady: the second half of the requests between two shifts
                steady = sum(sum(hits[at + scan_every // 2:at + scan_every]) for at in shifts) / (
                    len(shifts) * (scan_every - scan_every // 2))
                result["steady_hit_ratio"] = round(steady, 4)
                curve = shift_curve(hits, shifts, scan_every // 2, window)
                back = recovery(curve, steady)
                result["recovery_requests"] = back if back is not None else -1
                result["after_shift"] = {str(end): round(value, 4) for end, value in curve if end % (window // 2) == 0}
            figures[trace_name][policy] = result
            print(f"  {trace_name} {policy}: {result}", flush=True)
    figures["shifts"] = len(shifts)
    capacity = int(share * n_models)  # the uniform sizes of the zipf, scan and shift traces
    for trace_name in ("zipf", "scan"):
        trace = named[trace_name]
        figures[trace_name]["best_fixed_set"] = round(best_fixed_set(trace[len(trace) // 10:], capacity), 4)
    return figures


# -- real servers ------------------------------------------------------------------------------------


def on_servers(n_models, slots, n_requests, scan_every):
    from bench.harness.servers import http_client, metric, mme_server, s3_with_models, server_metrics_url, timed_call

    rng = np.random.default_rng(11)
    order = rng.permutation(n_models)
    zipf = zipf_requests(rng, n_models, n_requests, order)
    trace = []
    for start in range(0, n_requests, scan_every):
        trace += zipf[start:start + scan_every] + [int(m) for m in rng.permutation(n_models)]
    targets = [f"hot/m{i:04d}.tar.gz" for i in range(n_models)]
    figures = {"requests": len(trace)}
    with s3_with_models(targets) as s3:
        for policy in POLICIES:
            with mme_server(s3, max_loaded_models=slots, eviction_policy=policy) as server:
                url = server_metrics_url(server)
                hits0, misses0 = metric(url, "mme_model_cache_hits_total"), metric(url, "mme_model_cache_misses_total")
                started = time.perf_counter()
                with http_client(server) as http:
                    for key in trace:
                        timed_call(http, targets[key])
                wall = time.perf_counter() - started
                hits = metric(url, "mme_model_cache_hits_total") - hits0
                misses = metric(url, "mme_model_cache_misses_total") - misses0
                figures[policy] = {"hit_ratio": round(hits / (hits + misses), 4), "misses": int(misses),
                                   "wall_seconds": round(wall, 1)}
                print(f"  server {policy}: {figures[policy]}", flush=True)
    return figures


# -- report ------------------------------------------------------------------------------------------


def pt(value):
    return f"{value * 100:+.1f} pt"


def add_arguments(parser):
    parser.add_argument("--sizes", type=lambda text: tuple(float(v) for v in text.split(",")),
                        help="models,requests,scan every,capacity share,recovery window "
                             f"(default {','.join(map(str, FULL))}; --quick {','.join(map(str, QUICK))})")
    parser.add_argument("--server-sizes", type=lambda text: tuple(int(v) for v in text.split(",")),
                        help="real servers: models,max_loaded_models,requests,scan every "
                             f"(default {','.join(map(str, SERVER_FULL))}; --quick {','.join(map(str, SERVER_QUICK))})")
    parser.add_argument("--skip-server", action="store_true", help="the in-process replay only")


def run(args) -> dict:
    sizes = args.sizes or (QUICK if args.quick else FULL)
    n_models, n_requests, scan_every, window = int(sizes[0]), int(sizes[1]), int(sizes[2]), int(sizes[4])
    share = sizes[3]
    print(f"In-process replay: {n_models} models, memory for {share:.0%} of them, {n_requests} Zipf(1.0) requests",
          flush=True)
    figures = in_process(n_models, n_requests, scan_every, share, window)
    z, s, sh, m = (figures[name] for name in ("zipf", "scan", "shift", "mixed"))
    rows = [
        ("pure Zipf: hit ratio", z["lru"]["hit_ratio"], z["tinylfu"]["hit_ratio"],
         pt(z["tinylfu"]["hit_ratio"] - z["lru"]["hit_ratio"]), ">= LRU - 1 pt",
         z["tinylfu"]["hit_ratio"] >= z["lru"]["hit_ratio"] - 0.01),
        (f"(a) scan of all every {scan_every}: hit ratio", s["lru"]["hit_ratio"], s["tinylfu"]["hit_ratio"],
         pt(s["tinylfu"]["hit_ratio"] - s["lru"]["hit_ratio"]), ">= LRU + 10 pt",
         s["tinylfu"]["hit_ratio"] >= s["lru"]["hit_ratio"] + 0.10),
        ("(a) scan: hit ratio of the Zipf requests alone", s["lru"]["zipf_requests_hit_ratio"],
         s["tinylfu"]["zipf_requests_hit_ratio"],
         pt(s["tinylfu"]["zipf_requests_hit_ratio"] - s["lru"]["zipf_requests_hit_ratio"]), "", None),
        ("(b) shift: hit ratio", sh["lru"]["hit_ratio"], sh["tinylfu"]["hit_ratio"],
         pt(sh["tinylfu"]["hit_ratio"] - sh["lru"]["hit_ratio"]), "", None),
        ("(b) shift: steady hit ratio (second half between shifts)", sh["lru"]["steady_hit_ratio"], sh["tinylfu"]["steady_hit_ratio"],
         pt(sh["tinylfu"]["steady_hit_ratio"] - sh["lru"]["steady_hit_ratio"]), "", None),
        (f"(b) shift: requests until the last {window} are within 2 pt of steady (mean of {figures['shifts']} shifts)",
         sh["lru"]["recovery_requests"], sh["tinylfu"]["recovery_requests"], "", "<= 2000",
         0 <= sh["tinylfu"]["recovery_requests"] <= 2000),
        ("(c) sizes and load times spread 10x: hit ratio", m["lru"]["hit_ratio"], m["tinylfu"]["hit_ratio"],
         pt(m["tinylfu"]["hit_ratio"] - m["lru"]["hit_ratio"]), "", None),
        ("(c) sizes and load times spread 10x: load seconds", m["lru"]["load_seconds"], m["tinylfu"]["load_seconds"],
         f"{(m['tinylfu']['load_seconds'] / m['lru']['load_seconds'] - 1) * 100:+.1f} %", "<= LRU - 20 %",
         m["tinylfu"]["load_seconds"] <= 0.8 * m["lru"]["load_seconds"]),
    ]
    if not args.skip_server:
        server_sizes = args.server_sizes or (SERVER_QUICK if args.quick else SERVER_FULL)
        print(f"Real servers: {server_sizes[0]} models, max_loaded_models {server_sizes[1]}, "
              f"{server_sizes[2]} Zipf(1.0) requests and a scan every {server_sizes[3]}", flush=True)
        servers = on_servers(*server_sizes)
        figures["server_scan"] = servers
        rows.append((f"real servers, scan trace ({servers['requests']} requests): hit ratio",
                     servers["lru"]["hit_ratio"], servers["tinylfu"]["hit_ratio"],
                     pt(servers["tinylfu"]["hit_ratio"] - servers["lru"]["hit_ratio"]), "", None))
    print()
    print("| trace | lru | tinylfu | difference | goal | met |")
    print("|---|---|---|---|---|---|")
    for name, lru, ours, difference, goal, met in rows:
        print(f"| {name} | {lru} | {ours} | {difference} | {goal} | {'' if met is None else 'yes' if met else 'no'} |")
    print(f"\nA bound: the {int(share * n_models)} most requested models kept loaded all along (chosen in hindsight) hit "
          f"{z['best_fixed_set']} of the pure Zipf requests and {s['best_fixed_set']} of the scan trace's, "
          f"LRU {pt(s['best_fixed_set'] - s['lru']['hit_ratio'])} on the scan trace.")
    figures["goals_met"] = {row[0]: row[5] for row in rows if row[5] is not None}
    figures["zipf_hit_ratio_difference"] = round(z["tinylfu"]["hit_ratio"] - z["lru"]["hit_ratio"], 4)
    figures["scan_hit_ratio_difference"] = round(s["tinylfu"]["hit_ratio"] - s["lru"]["hit_ratio"], 4)
    figures["mixed_load_seconds_ratio"] = round(m["tinylfu"]["load_seconds"] / m["lru"]["load_seconds"], 4)
    if math.isnan(figures["mixed_load_seconds_ratio"]):
        figures["mixed_load_seconds_ratio"] = 0.0
    return figures
