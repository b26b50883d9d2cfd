"""Cold first request of a model against the floor, and the load check's share of it (``check_ms``).

    python bench/cold_check.py [--models 40]

For the code of another checkout, run its copy of this script with that checkout first on the path,
so the server (started with the checkout as its working folder) imports the same package:

    PYTHONPATH=/tmp/before .venv/bin/python /tmp/before/bench/cold_check.py

One ``mlserver start model-settings/`` on loopback ports, models in moto's S3 server. For each of N
distinct models, in rounds that alternate the two: the floor (``compare.floor_cold``: the same S3 GET,
unpack, Booster load and predict, done directly in this process) and the server's first request of
the model (one keep-alive POST /invocations: download, unpack, check, load, predict). One more model
warms both up first and is not counted. ``check_ms`` is read from the server's log (absent before the
isolated check existed). Also prints the memory of the server and its child processes (the check's
fork server) once start-up has settled. Prints Markdown.
"""

import argparse
import os
import re
import statistics
import time

# The server predicts on one thread; so does the floor (xgboost's default, every core, is noisy on 2 cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from common import ROOT, http_client, mme_server, percentile, s3_with_models, timed_call
from compare import floor_cold
from loadgen import tree_pids

import mlserver_mme  # noqa: E402

WARM_UP = "cold/warm-up.tar.gz"


def children(pid):
    """Direct children of ``pid``, whichever of its threads started them."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as file:
                found += [int(child) for child in file.read().split()]
        except OSError:  # the thread ended
            pass
    return found


def memory_mib(pid):
    """(RSS, PSS) of one process in MiB."""
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        pss = next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    return rss / 1024, pss / 1024


def tree_rss_mib(pid):
    """RSS of ``pid`` and its descendants in MiB."""
    total = 0.0
    for member in tree_pids(pid):
        try:
            total += memory_mib(member)[0]
        except OSError:  # it ended meanwhile
            pass
    return total


def role(pid):
    """What a child of the server is, from its command line."""
    with open(f"/proc/{pid}/cmdline", "rb") as file:
        command = file.read().replace(b"\0", b" ").decode(errors="replace")
    for module, name in (("multiprocessing.forkserver", "fork server"), ("multiprocessing.resource_tracker", "resource tracker")):
        if module in command:
            return name
    return command[:60]


def settle(pid, timeout=30.0, poll=0.5):
    """Wait (at most ``timeout`` s) until the RSS of the server's process tree holds still for two polls."""
    readings = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readings.append(tree_rss_mib(pid))
        if len(readings) >= 3 and max(readings[-3:]) - min(readings[-3:]) < 1.0:
            return
        time.sleep(poll)


def startup_memory(pid):
    """RSS and PSS of the server and of each child (the fork server, its resource tracker) once settled."""
    settle(pid)
    parts = [("server", pid)] + [(role(child), child) for child in children(pid)]
    return ", ".join(f"{name} RSS {rss:.1f} MiB PSS {pss:.1f} MiB" for name, (rss, pss) in
                     ((name, memory_mib(p)) for name, p in parts))


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=40)
    parser.add_argument("--round", type=int, default=10, help="models per floor/server round")
    args = parser.parse_args()
    package = os.path.dirname(mlserver_mme.__file__)
    if os.path.dirname(package) != ROOT:
        raise SystemExit(f"mlserver_mme is {package}, not this checkout's ({ROOT}): the server would import another")
    targets = [f"cold/m{i:03d}.tar.gz" for i in range(args.models)]
    with s3_with_models([WARM_UP, *targets]) as s3, mme_server(s3) as server:
        memory = startup_memory(server.process.pid)
        floor, cold = cold_pairs(s3, server, targets, args.round)
        checks = check_ms(server.log(), targets)
        warm = warm_checks(server.log(), targets)
    print(f"package {package}, {os.cpu_count()} cores\n")
    print(table([
        ("floor (GET + unpack + load + predict in one process)", [floor[t] for t in targets]),
        ("server cold first request", [cold[t] for t in targets]),
        ("server minus floor (same model)", [cold[t] - floor[t] for t in targets]),
        ("check_ms (server log)", checks),
    ]))
    print(f"\nchecks in a spare child warmed up in advance: {warm} of {len(checks)}")
    print(f"after start-up: {memory}")


if __name__ == "__main__":
    main()
