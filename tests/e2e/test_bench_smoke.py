"""A smoke run of every benchmark scenario through the runner: ``python -m bench NAME --quick`` at the smallest
sizes, in a process of its own from the repository's root, peers that need installing skipped.

Each run must exit with 0 and write ``NAME.json`` holding the runner's keys and the scenario's figures, numbers
where figures are numbers. Figures are not checked (the machine is shared and noisy): this only keeps the suite
runnable. The selected runs go two at a time, the longest first (``cluster`` alone takes about as long as all
the others together): about three minutes on 2 cores.
"""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# scenario: (options after --quick, top-level figures expected, dotted paths of figures that must be numbers)
SMOKE = {
    "latency": (["--models", "2", "--warm", "20"], {"cold", "warm", "server_cpu_us_per_warm_request"},
                ["cold.p50_ms", "warm.p99_ms", "server_cpu_us_per_warm_request"]),
    "cache": (["--sizes", "10,30,20,20,4"],
              {"single_flight_downloads", "parallel_loads_ratio", "zipf_hit_ratio", "zipf_lru_simulation", "cycles_rss_end_mib"},
              ["single_flight_downloads", "parallel_loads_ms", "warm_p99_storm_ms", "zipf_hit_ratio", "cycles_per_second"]),
    "hot_set": (["--sizes", "100,3000,1000,0.1,200", "--server-sizes", "8,2,40,20"],
                {"zipf", "scan", "shift", "mixed", "server_scan"},
                ["zipf.lru.hit_ratio", "zipf.tinylfu.hit_ratio", "scan.tinylfu.zipf_requests_hit_ratio",
                 "shift.tinylfu.recovery_requests", "mixed.lru.load_seconds", "server_scan.tinylfu.hit_ratio"]),
    "cold_check": (["--models", "2", "--round", "2"], {"floor_ms", "cold_ms", "cold_minus_floor_ms", "check_ms", "warm_checks"},
                   ["floor_ms.median", "cold_ms.median", "warm_checks", "startup_memory_mib.server.rss"]),
    "cold_v2": (["--rounds", "1"], {"SageMaker /invocations", "V2 REST infer", "V2 gRPC ModelInfer"},
                ["SageMaker /invocations.median_ms", "V2 gRPC ModelInfer.mean_ms"]),
    "storm": (["--requests", "30"], {"during", "statuses", "afterwards"},
              ["during.invokes", "during.failed_invokes", "during.v2_5xx"]),
    "model_metrics": (["--models", "100", "--requests", "5000"], {"record_us", "histogram_observe_us", "labelled_models"},
                      ["record_us", "histogram_observe_us", "labelled_models"]),
    "decode": (["--runs", "1", "--megabytes", "0.05"], {"decode text/csv", "encode application/json"},
               ["decode text/csv.head_ms", "decode text/csv.now_ms", "encode text/csv.rows"]),
    "soak": (["--minutes", "1", "--interval", "2"], {"requests", "unexpected", "rss_growth", "rows"},
             ["requests", "unexpected", "rss_growth"]),
    "batch": (["--megabytes", "0.2", "--durations", "0.5,1,1,1,0.5,0.2"],
              {"head_of_line", "batch_median_ms", "floor", "one_row_cpu"},
              ["batch_median_ms", "head_of_line.with.one_row_p99_ms", "floor.text/csv.server_median_ms", "one_row_cpu.ours_cpu_us"]),
    "shard_pressure": (["--seconds", "8", "--neighbours", "2", "--batch-mb", "0.2"],
                       {"down_transitions", "moved_targets", "extra_downloads", "requests", "failures", "seconds", "neighbours"},
                       ["down_transitions", "moved_targets", "extra_downloads", "requests", "failures", "seconds", "neighbours"]),
    "warm_restart": (["--models", "6", "--seconds", "3", "--before", "40"], {"without", "warm", "cold_ratio"},
                     ["without.cold_first_requests", "warm.cold_first_requests", "warm.s3_gets_after_restart", "cold_ratio"]),
    "cluster": (["--sizes", "20,40,1,0.5,0.5,0.5", "--warm-models", "3", "--placements", "hash,round-robin"],
                {"throughput", "hot", "hit_ratio", "conc"}, ["conc", "cores"]),
    "v2_speed": (["--skip", "plain", "--concs", "1,8"], {"rps", "ratios", "skipped"},
                 ["rps.V2 REST.8", "rps.V2 gRPC.8", "ratios.V2 REST / invocations.8", "ratios.V2 gRPC / invocations.1"]),
    "compare": (["--skip", "mms,plain", "--duration", "0.5", "--warmup", "0.2", "--concs", "1,8", "--cold-models", "2",
                 "--churn-models", "10", "--slots", "3", "--churn-duration", "1.5", "--exact-requests", "30",
                 "--density", "2,3", "--warm-models", "3"],
                {"meta", "warm", "warm_n", "cold", "churn", "density", "floor", "exact_trace", "skipped"},
                ["floor.inplace_predict_us", "exact_trace.hit_ratio", "exact_trace.lru_simulation"]),
}


# Longest first: with two at a time, ``cluster`` runs beside all the others.
ORDER = ["cluster", "compare", "cache", "hot_set", "batch", "shard_pressure", "cold_check", "cold_v2", "warm_restart", "soak",
         "storm", "v2_speed", "latency", "decode", "model_metrics"]


def smoke_run(name, folder):
    options = SMOKE[name][0]
    if name == "compare":
        options = [*options, "--results", str(folder / "compare")]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run([sys.executable, "-m", "bench", name, "--quick", "--results-dir", str(folder), *options],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """The run of each selected scenario (all started, two at a time, when the first test asks) and its folder."""
    selected = {item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_scenario_smoke" and hasattr(item, "callspec")}
    folders = {name: tmp_path_factory.mktemp(f"bench-{name}") for name in ORDER if name in selected}
    with ThreadPoolExecutor(2) as pool:
        yield {name: (pool.submit(smoke_run, name, folder), folder) for name, folder in folders.items()}


def lookup(figures, path):
    """The figure at ``path``: keys joined by dots (none of the keys named here holds a dot)."""
    value = figures
    for key in path.split("."):
        assert isinstance(value, dict) and key in value, f"{path}: no {key!r} in {sorted(value)[:10]}"
        value = value[key]
    return value


def test_every_scenario_has_a_smoke_run():
    listed = subprocess.run([sys.executable, "-m", "bench", "--list"], cwd=ROOT, capture_output=True, text=True, check=True)
    names = {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
    assert names == set(SMOKE) == set(ORDER)


@pytest.mark.parametrize("name", ORDER)
def test_scenario_smoke(name, runs):
    if name == "v2_speed" and not (shutil.which("wrk") and shutil.which("h2load")):
        pytest.skip("v2_speed needs wrk and h2load (apt-get install wrk nghttp2-client)")
    future, folder = runs[name]
    _, keys, numbers = SMOKE[name]
    done = future.result()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "|" in done.stdout or ":" in done.stdout  # it printed its report
    with open(folder / f"{name}.json") as file:
        written = json.load(file)
    assert {"scenario", "date", "quick", "seconds", "args", "figures"} <= set(written)
    assert written["scenario"] == name and written["quick"] is True
    figures = written["figures"]
    assert keys <= set(figures), sorted(figures)
    for path in numbers:
        value = lookup(figures, path)
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{path}: {value!r}"
        assert math.isfinite(value), f"{path}: {value!r}"
