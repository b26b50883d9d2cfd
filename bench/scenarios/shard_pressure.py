"""Shards under CPU pressure: busy neighbours and 2 MB batches must not make HAProxy move models off live shards.

    python -m bench shard_pressure            # about 1-2 minutes (40 s of pressure)
    python -m bench shard_pressure --quick    # a smoke run, well under a minute (8 s, 2 neighbours, 0.2 MB)

Reproduces the report "three shards, six CPU-bound neighbour processes and a stream of 2 MB CSV batches for
40 s: HAProxy marked shards down 3 times, 15 of 24 targets moved to other shards and were downloaded twice".
Only a dead shard may move its models: a slow one answers its health check late, not never.

One ``mlserver-mme serve`` with 3 shards behind HAProxy (``cluster.Served``), ``--targets`` copies of the
bundled example models in moto's S3 (``harness.servers.s3_with_models``). Each target is warmed once with a
one-row request, and the shard that answers it (``X-MME-Shard``) is its home. Then, for ``--seconds``,
``--neighbours`` plain Python busy loops run beside the server (started and killed here, by PID) while
``--clients`` client threads post ``--batch-mb`` CSV batches over the targets in turn. Figures:

- ``down_transitions``: up-to-down transitions of the shards during the run, from HAProxy's exporter
  (``haproxy_server_check_up_down_total`` of the ``sagemaker`` backend, after minus before); ``down_log_lines``:
  the ``sagemaker/shard-N is DOWN`` lines HAProxy printed in the serve log meanwhile (the same events);
- ``moved_targets``: targets answered at least once by a shard other than their home; split into
  ``moved_home_down`` (HAProxy showed the home shard not up, sampled every 0.5 s, during that request or the
  second before) and ``moved_home_up``: bounded load (``hash-balance-factor``) sends a request to a model's
  next shard while its own holds more than 1.5x the average in flight, which with 2 clients on 3 shards is
  whenever both requests hash to the same shard; ``--balance-factor 0`` turns it off;
- ``extra_downloads``: S3 GETs of the targets beyond the first each (a moved model is downloaded again);
- ``requests``, ``failures`` (non-200 or transport errors), batch latency median and max;
- the machine's load: 1-minute load average at the end and cores busy over the run (``/proc/stat``).
"""

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

import boto3
import httpx
from support.artifacts import example_bytes
from support.s3server import boto3_credentials

from bench.harness import proc
from bench.harness.report import log
from bench.harness.servers import BUCKET, CSV_HEADERS, PREFIX, s3_get_count, s3_with_models
from bench.scenarios.batch import CSV, ENCODERS, feature_rows
from bench.scenarios.cluster import Served, invoke

EXAMPLES = ("Houston_TX.tar.gz", "Chicago_IL.tar.gz", "LosAngeles_CA.tar.gz", "NewYork_NY.tar.gz")
BUSY_LOOP = "while True:\n    pass\n"


def csv_batch(megabytes: float) -> bytes:
    """About ``megabytes`` MB of CSV home-value rows (``batch.feature_rows``)."""
    sample = ENCODERS[CSV](feature_rows(1000))
    return ENCODERS[CSV](feature_rows(max(1, int(megabytes * 1e6 / (len(sample) / 1000)))))


def put_examples(s3, targets) -> None:
    """Each target a copy of one of the bundled example models, in turn."""
    client = boto3.client("s3", endpoint_url=s3.url, **boto3_credentials())
    for i, target in enumerate(targets):
        client.put_object(Bucket=BUCKET, Key=PREFIX + target, Body=example_bytes(EXAMPLES[i % len(EXAMPLES)]))


def check_up_down(served: Served) -> dict:
    """``haproxy_server_check_up_down_total`` of each shard of the ``sagemaker`` backend."""
    text = httpx.get(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=30).text
    found = {}
    for line in text.splitlines():
        if line.startswith('haproxy_server_check_up_down_total{') and 'proxy="sagemaker"' in line:
            server = line.split('server="', 1)[1].split('"', 1)[0]
            found[server] = float(line.rsplit(" ", 1)[1])
    return found


def down_lines(served: Served, offset: int):
    """The ``sagemaker/...`` "is DOWN" lines HAProxy printed in the serve log after byte ``offset``."""
    with open(served.log_path, "rb") as file:
        file.seek(offset)
        text = file.read().decode(errors="replace")
    return [line.strip() for line in text.splitlines() if "is DOWN" in line and "sagemaker/" in line]


def shards_up(served: Served) -> set:
    """The shards of the ``sagemaker`` backend HAProxy holds up now (``haproxy_server_status``)."""
    text = httpx.get(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=30).text
    return {line.split('server="', 1)[1].split('"', 1)[0] for line in text.splitlines()
            if line.startswith('haproxy_server_status{proxy="sagemaker"') and 'state="UP"' in line and line.endswith(" 1")}


@contextlib.contextmanager
def down_sampler(served: Served, interval: float = 0.5):
    """Samples, every ``interval`` s, of the shards not up: a list of (monotonic time, set of shards down)."""
    samples, stop = [], threading.Event()
    everyone = {f"shard-{i}" for i in range(served.count)}

    def sample():
        while not stop.is_set():
            try:
                samples.append((time.monotonic(), everyone - shards_up(served)))
            except httpx.HTTPError:
                pass
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(35)


def home_was_down(samples, shard, began, ended) -> bool:
    """Whether a sample from just before ``began`` to ``ended`` saw ``shard`` down."""
    return any(shard in down for at, down in samples if began - 1.0 <= at <= ended)


@contextlib.contextmanager
def neighbours(count: int):
    """``count`` CPU-bound Python processes, each in a session of its own; killed (by PID) on the way out."""
    started = []
    try:
        for _ in range(count):
            started.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True))
        yield [child.pid for child in started]
    finally:
        for child in started:
            if child.poll() is None:
                child.kill()
            child.wait(10)


def stream(url, targets, body, seconds, clients):
    """``clients`` threads posting ``body`` over ``targets`` in turn for ``seconds``: (target, shard, status, ms,
    monotonic start, monotonic end) of each request."""
    answers, lock = [], threading.Lock()
    turn = iter(range(10**9))
    end = time.monotonic() + seconds

    def client_loop():
        with httpx.Client(timeout=httpx.Timeout(240, connect=10)) as client:
            while time.monotonic() < end:
                with lock:
                    target = targets[next(turn) % len(targets)]
                started, began = time.perf_counter(), time.monotonic()
                try:
                    reply = client.post(url + "/invocations", content=body,
                                        headers={**CSV_HEADERS, "X-Amzn-SageMaker-Target-Model": target})
                    shard, status = reply.headers.get("X-MME-Shard"), reply.status_code
                except httpx.HTTPError as error:
                    shard, status = None, type(error).__name__
                with lock:
                    answers.append((target, shard, status, (time.perf_counter() - started) * 1e3, began, time.monotonic()))

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def report(figures) -> str:
    out = [f"### Shards under CPU pressure ({figures['shards']} shards, {figures['targets']} targets, "
           f"{figures['neighbours']} busy neighbours, {figures['batch_mb']} MB CSV batches, "
           f"{figures['clients']} clients, {figures['seconds']} s, {figures['cores']} cores)\n",
           "| figure | measured | goal |", "|---|---:|---:|",
           f"| shard up-to-down transitions (HAProxy exporter; log lines) | {figures['down_transitions']} "
           f"({figures['down_log_lines']}) | 0 |",
           f"| targets answered by a shard other than their warm-up shard | {figures['moved_targets']} of "
           f"{figures['targets']} | 0 |",
           f"| of them, moved while their home shard was seen down / up (bounded load) | "
           f"{figures['moved_home_down']} / {figures['moved_home_up']} | |",
           f"| S3 downloads beyond the first, all targets | {figures['extra_downloads']} | 0 |",
           f"| batch requests / failures | {figures['requests']} / {figures['failures']} | - / 0 |",
           f"| batch latency median / max | {figures['batch_median_ms']:.0f} / {figures['batch_max_ms']:.0f} ms | |",
           f"| machine: cores busy over the run; load average (1 min) at the end | {figures['machine_cores']:.2f}; "
           f"{figures['load_1min']:.1f} | |"]
    if figures["moved"]:
        out.append("\nMoved: " + ", ".join(f"{t} ({home} -> {', '.join(others)})"
                                           for t, (home, others) in sorted(figures["moved"].items())))
    if figures["down_events"]:
        out.append("\nHAProxy: " + "; ".join(figures["down_events"][:10]))
    if figures["failure_kinds"]:
        out.append("\nFailures: " + ", ".join(f"{k} x{v}" for k, v in figures["failure_kinds"].items()))
    return "\n".join(out)


def add_arguments(parser):
    parser.add_argument("--seconds", type=float, help="seconds of pressure (default 40; --quick 8)")
    parser.add_argument("--neighbours", type=int, help="CPU-bound neighbour processes (default 6; --quick 2)")
    parser.add_argument("--batch-mb", type=float, help="MB of CSV per batch request (default 2; --quick 0.2)")
    parser.add_argument("--targets", type=int, default=24, help="targets, copies of the bundled example models")
    parser.add_argument("--clients", type=int, default=2, help="client threads posting batches")
    parser.add_argument("--balance-factor", type=int,
                        help="MLSERVER_MME_HASH_BALANCE_FACTOR (default: the server's; 0 turns bounded load off)")


def run(args) -> dict:
    seconds = args.seconds or (8.0 if args.quick else 40.0)
    n_neighbours = args.neighbours if args.neighbours is not None else (2 if args.quick else 6)
    batch_mb = args.batch_mb or (0.2 if args.quick else 2.0)
    targets = [f"pressure/m{i:02d}.tar.gz" for i in range(args.targets)]
    body = csv_batch(batch_mb)
    settings = {} if args.balance_factor is None else {"hash_balance_factor": args.balance_factor}
    with tempfile.TemporaryDirectory(prefix="mme-pressure-") as work, s3_with_models([]) as s3:
        put_examples(s3, targets)
        with Served(s3, "3", work, **settings) as served:
            log(f"serve up ({served.count} shards); warming {len(targets)} targets")
            with httpx.Client(timeout=120) as client:
                home = {target: invoke(client, served.url, target) for target in targets}
            log(f"homes: {dict(Counter(home.values()))}")
            gets_warm = {target: s3_get_count(s3, target) for target in targets}
            checks0 = check_up_down(served)
            log_offset = os.path.getsize(served.log_path)
            busy0, started = proc.machine_busy(), time.monotonic()
            with neighbours(n_neighbours) as pids, down_sampler(served) as samples:
                log(f"{len(pids)} neighbours {pids}; {len(body) / 1e6:.2f} MB batches from {args.clients} clients "
                    f"for {seconds:.0f} s")
                answers = stream(served.url, targets, body, seconds, args.clients)
                wall = time.monotonic() - started
                busy1, load_1min = proc.machine_busy(), os.getloadavg()[0]
            checks1 = check_up_down(served)
            events = down_lines(served, log_offset)
            gets = {target: s3_get_count(s3, target) for target in targets}
    moved, moved_home_down = {}, set()
    for target, shard, _, _, began, ended in answers:
        if shard and shard != home[target]:
            moved.setdefault(target, (home[target], set()))[1].add(shard)
            if home_was_down(samples, home[target], began, ended):
                moved_home_down.add(target)
    failures = Counter(str(status) for _, _, status, *_ in answers if status != 200)
    latencies = [ms for _, _, status, ms, *_ in answers if status == 200]
    figures = {
        "shards": 3, "targets": len(targets), "neighbours": n_neighbours, "batch_mb": batch_mb,
        "batch_bytes": len(body), "clients": args.clients, "seconds": round(seconds, 1), "cores": os.cpu_count(),
        "down_transitions": int(sum(checks1.values()) - sum(checks0.values())),
        "down_transitions_by_shard": {s: int(checks1[s] - checks0.get(s, 0)) for s in sorted(checks1)},
        "down_log_lines": len(events), "down_events": events,
        "moved_targets": len(moved),
        "moved_home_down": len(moved_home_down), "moved_home_up": len(set(moved) - moved_home_down),
        "down_samples": sum(1 for _, down in samples if down), "samples": len(samples),
        "moved": {t: (h, sorted(others)) for t, (h, others) in moved.items()},
        "extra_downloads": sum(max(0, n - 1) for n in gets.values()),
        "warm_downloads": sum(gets_warm.values()),
        "requests": len(answers), "failures": sum(failures.values()), "failure_kinds": dict(failures),
        "batch_median_ms": round(statistics.median(latencies), 1) if latencies else 0.0,
        "batch_max_ms": round(max(latencies), 1) if latencies else 0.0,
        "wall_seconds": round(wall, 1),
        "machine_cores": round((busy1 - busy0) / wall, 2), "load_1min": round(load_1min, 2),
        "requests_by_shard": dict(sorted(Counter(str(answer[1]) for answer in answers).items())),
    }
    print(report(figures))
    return figures
