"""Cold first request of a model against the floor, and the load check's share of it (``check_ms``).

    python -m bench cold_check [--models 40]     # --quick: 4 models

For the code of another checkout (say a worktree of an older commit at /tmp/before), copy this ``bench/``
folder into it and run the runner there, with that checkout first on the path, so the server (started with
the checkout as its working folder) imports the same package:

    cd /tmp/before && PYTHONPATH=/tmp/before /work/main/.venv/bin/python -m bench cold_check

One ``mlserver start model-settings/`` on loopback ports, models in moto's S3 server. For each of N
distinct models, in rounds that alternate the two: the floor (``harness.floors.floor_cold``: the same S3 GET,
unpack, Booster load and predict, done directly in this process) and the server's first request of
the model (one keep-alive POST /invocations: download, unpack, check, load, predict). One more model
warms both up first and is not counted. ``check_ms`` is read from the server's log (absent before the
isolated check existed). Also prints the memory of the server and its child processes (the check's
fork server) once start-up has settled. Prints Markdown.
"""

import os
import re
import statistics
import time

# The server predicts on one thread; so does the floor (xgboost's default, every core, is noisy on 2 cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import mlserver_mme  # noqa: E402
from bench.harness import ROOT  # noqa: E402
from bench.harness.floors import floor_cold  # noqa: E402
from bench.harness.proc import children, command_line, pss_bytes, rss_bytes, tree_rss_bytes  # noqa: E402
from bench.harness.servers import http_client, mme_server, s3_with_models, timed_call  # noqa: E402
from bench.harness.stats import percentile  # noqa: E402

WARM_UP = "cold/warm-up.tar.gz"


def memory_mib(pid):
    """(RSS, PSS) of one process in MiB."""
    return rss_bytes(pid) / 2**20, pss_bytes(pid) / 2**20


def role(pid):
    """What a child of the server is, from its command line."""
    command = command_line(pid)
    for module, name in (("multiprocessing.forkserver", "fork server"), ("multiprocessing.resource_tracker", "resource tracker")):
        if module in command:
            return name
    return command[:60]


def settle(pid, timeout=30.0, poll=0.5):
    """Wait (at most ``timeout`` s) until the RSS of the server's process tree holds still for two polls."""
    readings = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readings.append(tree_rss_bytes(pid) / 2**20)
        if len(readings) >= 3 and max(readings[-3:]) - min(readings[-3:]) < 1.0:
            return
        time.sleep(poll)


def startup_memory(pid):
    """RSS and PSS (MiB) of the server and of each child (the fork server, its resource tracker) once settled."""
    settle(pid)
    parts = [("server", pid)] + [(role(child), child) for child in children(pid)]
    return [(name, *memory_mib(p)) for name, p in parts]


def cold_pairs(s3, server, targets, round_size):
    """Floor and server cold ms of each target, measured in alternating rounds of ``round_size``."""
    floor, cold = {}, {}
    with http_client(server) as http:
        floor_cold(s3.url, [WARM_UP])
        timed_call(http, WARM_UP)
        for start in range(0, len(targets), round_size):
            part = targets[start : start + round_size]
            floor.update(zip(part, floor_cold(s3.url, part)))
            cold.update((target, timed_call(http, target)) for target in part)
    return floor, cold


def check_ms(log, targets):
    """The ``check_ms`` the server logged for each of ``targets`` (none before the isolated check)."""
    found = dict(re.findall(r"event=check model=(\S+) check_ms=([\d.]+)", log))
    return [float(found[target]) for target in targets if target in found]


def warm_checks(log, targets):
    """How many of ``targets``' checks ran in a spare child warmed up in advance (``warm=yes``)."""
    found = dict(re.findall(r"event=check model=(\S+) check_ms=\S+ warm=(\w+)", log))
    return sum(found.get(target) == "yes" for target in targets)


def table(rows):
    lines = ["| ms | n | median | p90 |", "|---|---:|---:|---:|"]
    for label, values in rows:
        if values:
            lines.append(f"| {label} | {len(values)} | {statistics.median(values):.1f} | {percentile(values, 90):.1f} |")
        else:
            lines.append(f"| {label} | 0 | - | - |")
    return "\n".join(lines)


def add_arguments(parser):
    parser.add_argument("--models", type=int, help="cold models (default 40; --quick 4)")
    parser.add_argument("--round", type=int, default=10, help="models per floor/server round")


def run(args) -> dict:
    models = args.models or (4 if args.quick else 40)
    package = os.path.dirname(mlserver_mme.__file__)
    if os.path.dirname(package) != ROOT:
        raise SystemExit(f"mlserver_mme is {package}, not this checkout's ({ROOT}): the server would import another")
    targets = [f"cold/m{i:03d}.tar.gz" for i in range(models)]
    with s3_with_models([WARM_UP, *targets]) as s3, mme_server(s3) as server:
        memory = startup_memory(server.process.pid)
        floor, cold = cold_pairs(s3, server, targets, args.round)
        checks = check_ms(server.log(), targets)
        warm = warm_checks(server.log(), targets)
    print(f"package {package}, {os.cpu_count()} cores\n")
    rows = [
        ("floor (GET + unpack + load + predict in one process)", [floor[t] for t in targets]),
        ("server cold first request", [cold[t] for t in targets]),
        ("server minus floor (same model)", [cold[t] - floor[t] for t in targets]),
        ("check_ms (server log)", checks),
    ]
    print(table(rows))
    print(f"\nchecks in a spare child warmed up in advance: {warm} of {len(checks)}")
    print("after start-up: " + ", ".join(f"{name} RSS {rss:.1f} MiB PSS {pss:.1f} MiB" for name, rss, pss in memory))
    keys = ("floor_ms", "cold_ms", "cold_minus_floor_ms", "check_ms")
    figures: dict = {key: {"n": len(values), "median": round(statistics.median(values), 2) if values else None,
                           "p90": round(percentile(values, 90), 2) if values else None}
                     for key, (_, values) in zip(keys, rows)}
    figures["warm_checks"] = warm
    figures["startup_memory_mib"] = {name: {"rss": round(rss, 1), "pss": round(pss, 1)} for name, rss, pss in memory}
    return figures
