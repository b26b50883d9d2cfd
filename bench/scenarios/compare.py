"""This server side by side with SageMaker's multi-model stack, plain MLServer and the floors.

    bash bench/setup_peers.sh         # once: plain MLServer's venv, SageMaker's MMS stack (needs Java)
    python -m bench compare           # about 15 minutes; --quick for a 3-minute smoke run; --skip mms,plain

Every system runs on this machine in the same run, with the same model (a bundled home-value regressor)
and the same closed-loop client (``harness/loadgen.py``: keep-alive, warm-up excluded, client/server/machine CPU).
Writes ``results.md``, ``results.json`` and PNG plots to ``bench/results/`` (``--results``).

Scenarios: warm one model (1-row CSV, default Accept) at concurrency 1, 8, 32; warm with 100 loaded models
and a random target; cold first requests broken into download / unpack / load / first answer against the
floor (the same S3 GET, unpack, Booster load and predict in one process); churn over 1,000 models with room
for 100 under Zipf(1.1); memory (PSS) per loaded model at 10, 100 and 1,000 models.
"""

import asyncio
import collections
import contextlib
import datetime
import io
import json
import os
import platform
import random
import re
import statistics
import tarfile
import tempfile
import time

import httpx
import numpy as np
import xgboost as xgb

from bench.harness import RESULTS, loadgen, peers, proc, report, servers
from bench.harness.floors import ROW, booster_of, floor_cold
from bench.harness.loadgen import run as drive
from bench.harness.servers import BODY, BUCKET, CSV_HEADERS, MODEL, metric, s3_with_models
from bench.harness.stats import lru_hit_ratio, zipf_sampler

V2_BODY = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 6], "datatype": "FP32", "data": ROW}]}).encode()
V2_HEADERS = {"Content-Type": "application/json"}
PREFIX = servers.PREFIX

def sagemaker_request(url, target):
    return loadgen.post(url + "/invocations", BODY, {**CSV_HEADERS, "X-Amzn-SageMaker-Target-Model": target})


def random_target(url, targets):
    async def request(session):
        headers = {**CSV_HEADERS, "X-Amzn-SageMaker-Target-Model": random.choice(targets)}
        async with session.post(url + "/invocations", data=BODY, headers=headers) as reply:
            await reply.read()
            return reply.status == 200

    return request


def row(system, scenario, result, **extra):
    return {"system": system, "scenario": scenario, "conc": result.conc, "rps": round(result.rps, 1),
            "p50_ms": round(result.percentile(50), 3), "p99_ms": round(result.percentile(99), 3),
            "errors": result.errors, "client_cores": result.client_cores, "server_cores": result.server_cores,
            "machine_cores": result.machine_cores, **extra}


def warm(name, pid, make_request, concs, args, results, latencies=None):
    for conc in concs:
        result = drive(loadgen.closed_loop(make_request, conc, args.duration, args.warmup, pid))
        results["warm"].append(row(name, "warm, one model", result))
        if latencies is not None and conc == 8:
            latencies[name] = result.latencies_ms
        print(f"  {name} conc {conc}: {result.rps:.0f} req/s, p50 {result.percentile(50):.2f} ms")


# -- floors ------------------------------------------------------------------------------------------------


def floor_inprocess(results):
    booster = booster_of(tarfile.open(fileobj=io.BytesIO(MODEL)).extractfile("xgboost-model").read())
    booster.set_param({"nthread": 1})
    from mlserver_mme.payloads.codecs import decode, encode

    def timed(function, n=3000):
        for _ in range(200):
            function()
        samples = []
        for _ in range(n):
            started = time.perf_counter_ns()
            function()
            samples.append((time.perf_counter_ns() - started) / 1e3)
        return round(statistics.median(samples), 1)

    features = np.array([ROW], dtype=np.float32)
    results["floor"] = {
        "inplace_predict_us": timed(lambda: booster.inplace_predict(features)),
        "csv_decode_predict_json_us": timed(lambda: encode(booster.inplace_predict(decode(BODY, "text/csv")), "application/json")),
    }
    print(f"  in-process floor: {results['floor']}")


# -- our server --------------------------------------------------------------------------------------------


def cold_breakdown(system, targets):
    rows = []
    with httpx.Client(base_url=system.url, timeout=120) as http:
        for target in targets:
            started = time.perf_counter()
            reply = http.post("/invocations", content=BODY, headers={**CSV_HEADERS, "X-Amzn-SageMaker-Target-Model": target})
            assert reply.status_code == 200, reply.text
            rows.append({"target": target, "total_ms": (time.perf_counter() - started) * 1e3})
    with open(system.log) as file:
        log = file.read()
    for entry in rows:
        download = re.search(rf"event=download model={re.escape(entry['target'])} .*download_ms=([\d.]+) unpack_ms=([\d.]+)", log)
        load = re.search(rf"event=load model={re.escape(entry['target'])} .*load_ms=([\d.]+)", log)
        entry["download_ms"], entry["unpack_ms"] = float(download.group(1)), float(download.group(2))
        entry["load_ms"] = float(load.group(1))
        entry["answer_ms"] = entry["total_ms"] - entry["download_ms"] - entry["unpack_ms"] - entry["load_ms"]
    return rows


def churn_ours(system, n_models, slots, args):
    draw = zipf_sampler(n_models)
    trace, windows = [], []
    last = [metric(system.metrics_url, "mme_model_cache_hits_total"), metric(system.metrics_url, "mme_model_cache_misses_total")]

    async def request(session):
        key = draw()
        trace.append(key)
        headers = {**CSV_HEADERS, "X-Amzn-SageMaker-Target-Model": f"zipf/m{key:04d}.tar.gz"}
        async with session.post(system.url + "/invocations", data=BODY, headers=headers) as reply:
            await reply.read()
            return reply.status == 200

    def tick():
        hits, misses = metric(system.metrics_url, "mme_model_cache_hits_total"), metric(system.metrics_url, "mme_model_cache_misses_total")
        done = (hits - last[0]) + (misses - last[1])
        windows.append((hits - last[0]) / done if done else float("nan"))
        last[:] = [hits, misses]

    hits0, misses0 = metric(system.metrics_url, "mme_model_cache_hits_total"), metric(system.metrics_url, "mme_model_cache_misses_total")
    result = drive(loadgen.closed_loop(request, 8, args.churn_duration, 0.0, system.pid, on_tick=tick))
    hits = metric(system.metrics_url, "mme_model_cache_hits_total") - hits0
    misses = metric(system.metrics_url, "mme_model_cache_misses_total") - misses0
    return result, hits / (hits + misses), lru_hit_ratio(trace, slots), windows


def exact_trace_ours(system, n_models, slots, n_requests):
    """Hit ratio of a sequential Zipf trace (concurrency 1) against an exact LRU simulation of it.

    At higher concurrency a request arriving while its model loads is a miss for the server (it waits)
    but a hit for a sequential simulation, so the exact comparison is made one request at a time.
    """
    draw = zipf_sampler(n_models, seed=29)
    trace = [draw() for _ in range(n_requests)]
    hits0, misses0 = metric(system.metrics_url, "mme_model_cache_hits_total"), metric(system.metrics_url, "mme_model_cache_misses_total")
    with httpx.Client(base_url=system.url, timeout=120) as http:
        for key in trace:
            http.post("/invocations", content=BODY,
                      headers={**CSV_HEADERS, "X-Amzn-SageMaker-Target-Model": f"zipf/m{key:04d}.tar.gz"})
    hits = metric(system.metrics_url, "mme_model_cache_hits_total") - hits0
    misses = metric(system.metrics_url, "mme_model_cache_misses_total") - misses0
    return round(hits / (hits + misses), 4), round(lru_hit_ratio(trace, slots), 4)


def density_ours(system, levels):
    measured = {}
    baseline = proc.tree_pss_bytes(system.pid)
    loaded = 0
    with httpx.Client(base_url=system.url, timeout=120) as http:
        for level in levels:
            while loaded < level:
                reply = http.post("/invocations", content=BODY,
                                  headers={**CSV_HEADERS, "X-Amzn-SageMaker-Target-Model": f"zipf/m{loaded:04d}.tar.gz"})
                assert reply.status_code == 200
                loaded += 1
            measured[level] = round((proc.tree_pss_bytes(system.pid) - baseline) / level / 2**20, 3)
    return measured


# -- SageMaker's MMS stack ---------------------------------------------------------------------------------


class MMSAgent:
    """What SageMaker's MME agent does in front of the container: register on demand, unregister the
    least recently used idle model when the slots are full."""

    def __init__(self, url, slots):
        self.url, self.slots = url, slots
        self.registered = collections.OrderedDict()
        self.in_flight = collections.Counter()
        self.locks = collections.defaultdict(asyncio.Lock)
        self.hits = self.misses = 0

    async def acquire(self, session, index):
        name = f"model_{index:03d}"
        if name in self.registered:
            self.hits += 1
        else:
            self.misses += 1
            async with self.locks[name]:
                if name not in self.registered:
                    while len(self.registered) >= self.slots:
                        victim = next((n for n in self.registered if self.in_flight[n] == 0), None)
                        if victim is None:
                            break
                        del self.registered[victim]
                        async with session.delete(f"{self.url}/models/{victim}") as reply:
                            await reply.read()
                    async with session.post(f"{self.url}/models", params={"url": peers.mms_model_dir(index), "model_name": name}) as reply:
                        await reply.read()
                    self.registered[name] = True
        self.registered.move_to_end(name)
        self.in_flight[name] += 1
        return name


def mms_register(url, indices):
    times = []
    with httpx.Client(timeout=120) as http:
        for index in indices:
            name = f"model_{index:03d}"
            started = time.perf_counter()
            reply = http.post(f"{url}/models", params={"url": peers.mms_model_dir(index), "model_name": name})
            assert reply.status_code == 200, reply.text
            registered = time.perf_counter()
            answer = http.post(f"{url}/models/{name}/invoke", content=BODY, headers=CSV_HEADERS)
            assert answer.status_code == 200, answer.text
            times.append(((registered - started) * 1e3, (time.perf_counter() - started) * 1e3))
    return times


def run_mms(args, results, latencies):
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(tempfile.TemporaryDirectory())
        system = stack.enter_context(peers.mms(work))
        name = system.name
        base_pss = proc.tree_pss_bytes(system.pid)
        cold = mms_register(system.url, range(0, args.cold_models))
        results["cold"]["mms_register_to_answer_ms"] = [round(t[1], 1) for t in cold]
        results["density"][name] = {args.cold_models: round((proc.tree_pss_bytes(system.pid) - base_pss) / args.cold_models / 2**20, 1)}
        url = f"{system.url}/models/model_000/invoke"
        warm(name, system.pid, loadgen.post(url, BODY, CSV_HEADERS), args.concs, args, results, latencies)
        mms_register(system.url, range(args.cold_models, 100))
        results["density"][name][100] = round((proc.tree_pss_bytes(system.pid) - base_pss) / 100 / 2**20, 1)

        async def random_model(session):
            target = f"{system.url}/models/model_{random.randrange(100):03d}/invoke"
            async with session.post(target, data=BODY, headers=CSV_HEADERS) as reply:
                await reply.read()
                return reply.status == 200

        result = drive(loadgen.closed_loop(random_model, 8, args.duration, args.warmup, system.pid))
        results["warm_n"].append(row(name, "warm, 100 models, random target", result))
    with contextlib.ExitStack() as stack:  # churn on a fresh MMS
        work = stack.enter_context(tempfile.TemporaryDirectory())
        system = stack.enter_context(peers.mms(work))
        agent = MMSAgent(system.url, args.slots)
        draw = zipf_sampler(args.churn_models)
        windows, last = [], [0, 0]

        async def request(session):
            model = await agent.acquire(session, draw())
            try:
                async with session.post(f"{system.url}/models/{model}/invoke", data=BODY, headers=CSV_HEADERS) as reply:
                    await reply.read()
                    return reply.status == 200
            finally:
                agent.in_flight[model] -= 1

        def tick():
            done = (agent.hits - last[0]) + (agent.misses - last[1])
            windows.append((agent.hits - last[0]) / done if done else float("nan"))
            last[:] = [agent.hits, agent.misses]

        result = drive(loadgen.closed_loop(request, 8, args.churn_duration, 0.0, system.pid, on_tick=tick))
        results["churn"].append(row(system.name, f"churn, {args.churn_models} models, room for {args.slots}", result,
                                    hit_ratio=round(agent.hits / max(1, agent.hits + agent.misses), 4)))
        results["churn_windows"][system.name] = windows


# -- the run -----------------------------------------------------------------------------------------------


def add_arguments(parser):
    parser.add_argument("--results", default=RESULTS, help="where results.md, results.json and the plots go")
    parser.add_argument("--skip", default="", help="comma-separated: mms, plain")
    sizes = parser.add_argument_group("sizes (defaults: the full run's, or --quick's)")
    sizes.add_argument("--duration", type=float, help="measured seconds per warm row (12; --quick 3)")
    sizes.add_argument("--warmup", type=float, help="warm-up seconds per warm row (2; --quick 1)")
    sizes.add_argument("--concs", type=lambda text: [int(v) for v in text.split(",")], default=[1, 8, 32])
    sizes.add_argument("--cold-models", type=int, help="(20; --quick 10)")
    sizes.add_argument("--churn-models", type=int, help="(1000; --quick 300)")
    sizes.add_argument("--slots", type=int, help="room for models in the churn (100; --quick 30)")
    sizes.add_argument("--churn-duration", type=float, help="(30; --quick 10)")
    sizes.add_argument("--exact-requests", type=int, help="(5000; --quick 1000)")
    sizes.add_argument("--warm-models", type=int, default=100, help="loaded models of the random-target row (100)")
    sizes.add_argument("--density", type=lambda text: [int(v) for v in text.split(",")],
                       help="loaded models at which memory is read (10,100,1000; --quick 10,100)")


def run(args) -> dict:
    def size(value, quick, full):
        return value if value is not None else (quick if args.quick else full)

    args.duration, args.warmup = size(args.duration, 3, 12), size(args.warmup, 1, 2)
    args.cold_models = size(args.cold_models, 10, 20)
    args.churn_models, args.slots = size(args.churn_models, 300, 1000), size(args.slots, 30, 100)
    args.churn_duration = size(args.churn_duration, 10, 30)
    args.exact_requests = size(args.exact_requests, 1000, 5000)
    density_levels = size(args.density, [10, 100], [10, 100, 1000])
    skip = set(filter(None, args.skip.split(",")))
    os.makedirs(args.results, exist_ok=True)
    results = {"meta": {"date": datetime.date.today().isoformat(), "machine": f"{os.cpu_count()} cores, "
                        f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB, {platform.platform()}",
                        "python": platform.python_version(), "xgboost": xgb.__version__, "quick": args.quick},
               "warm": [], "warm_n": [], "cold": {}, "churn": [], "churn_windows": {}, "density": {}, "skipped": {}}
    latencies = {}
    print("floors")
    floor_inprocess(results)
    cold_targets = [f"cold/m{i:02d}.tar.gz" for i in range(args.cold_models)]
    warm_targets = [f"warmn/m{i:03d}.tar.gz" for i in range(args.warm_models)]
    targets = ["warm/house.tar.gz", *cold_targets, *warm_targets] + [f"zipf/m{i:04d}.tar.gz" for i in range(max(args.churn_models, density_levels[-1]))]
    with s3_with_models(targets) as s3, tempfile.TemporaryDirectory() as work:
        prefix = f"s3://{BUCKET}/{PREFIX}"
        with peers.echo(work) as system:
            warm(system.name, system.pid, loadgen.post(system.url + "/invocations", BODY, CSV_HEADERS), args.concs, args, results, latencies)
        print("mlserver-mme")
        with servers.ours(s3.url, prefix, work) as system:
            results["cold"]["ours"] = cold_breakdown(system, cold_targets)
            results["cold"]["floor_ms"] = [round(t, 1) for t in floor_cold(s3.url, cold_targets)]
            warm(system.name + " /invocations", system.pid, sagemaker_request(system.url, "warm/house.tar.gz"), args.concs, args, results, latencies)
            warm(system.name + " V2 infer", system.pid, loadgen.post(system.url + "/v2/models/warm~2Fhouse/infer", V2_BODY, V2_HEADERS), args.concs, args, results, latencies)
            with httpx.Client(base_url=system.url, timeout=120) as http:
                for target in warm_targets:
                    http.post("/invocations", content=BODY, headers={**CSV_HEADERS, "X-Amzn-SageMaker-Target-Model": target})
            result = drive(loadgen.closed_loop(random_target(system.url, warm_targets), 8, args.duration, args.warmup, system.pid))
            results["warm_n"].append(row(system.name, f"warm, {args.warm_models} models, random target", result))
        with servers.ours(s3.url, prefix, work) as system:
            results["density"][system.name] = density_ours(system, density_levels)
        with servers.ours(s3.url, prefix, work, max_loaded_models=args.slots, eviction_policy="lru") as system:
            result, measured, expected, windows = churn_ours(system, args.churn_models, args.slots, args)
            results["churn"].append(row(system.name, f"churn, {args.churn_models} models, room for {args.slots}", result,
                                        hit_ratio=round(measured, 4), lru_simulation=round(expected, 4)))
            results["churn_windows"][system.name] = windows
        with servers.ours(s3.url, prefix, work, max_loaded_models=args.slots, eviction_policy="lru") as system:
            measured, expected = exact_trace_ours(system, args.churn_models, args.slots, args.exact_requests)
            results["exact_trace"] = {"requests": args.exact_requests, "hit_ratio": measured, "lru_simulation": expected}
        if "plain" not in skip:
            print("plain MLServer")
            booster = booster_of(tarfile.open(fileobj=io.BytesIO(MODEL)).extractfile("xgboost-model").read())
            try:
                with peers.plain_mlserver(bytes(booster.save_raw("json")), work) as system:
                    warm(system.name, system.pid, loadgen.post(system.url + "/v2/models/house/infer", V2_BODY, V2_HEADERS), args.concs, args, results, latencies)
            except peers.Unavailable as why:
                results["skipped"]["plain MLServer"] = str(why)
        if "mms" not in skip:
            print("SageMaker MMS")
            try:
                run_mms(args, results, latencies)
            except Exception as why:  # a peer failing must not lose the other systems' figures
                results["skipped"]["SageMaker MMS"] = f"{type(why).__name__}: {why}"
                print(f"  skipped: {why}")
    with open(os.path.join(args.results, "results.json"), "w") as file:
        json.dump(results, file, indent=1)
    report.write_comparison(results, latencies, args.results)
    with open(os.path.join(args.results, "results.md")) as file:
        print(file.read())
    return results

