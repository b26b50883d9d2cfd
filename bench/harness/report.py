"""Reports: progress lines, the JSON of a run, and the Markdown table, targets and PNG plots of the comparison."""

import importlib.util
import json
import math
import os
import statistics
import sys


def log(message: str) -> None:
    """A progress line, on stderr (the figures go to stdout)."""
    print(message, file=sys.stderr, flush=True)


def write_json(path: str, data) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as file:
        json.dump(data, file, indent=1)
        file.write("\n")


MMS = "SageMaker MMS + Inference Toolkit"
PLAIN = "plain MLServer (mlserver-xgboost)"
OURS = "mlserver-mme /invocations"


def _median(values):
    return statistics.median(values) if values else float("nan")


def _warm(results, system, conc):
    return next((r for r in results["warm"] if r["system"] == system and r["conc"] == conc), None)


def targets(results):
    """Each target of the benchmark with the measured ratio (None where a peer was skipped)."""
    out = []

    def ratio(a, b):
        return a / b if a and b else None

    ours8, mms8, plain8 = _warm(results, OURS, 8), _warm(results, MMS, 8), _warm(results, PLAIN, 8)
    ours1, mms1 = _warm(results, OURS, 1), _warm(results, MMS, 1)
    r = ratio(ours8 and ours8["rps"], mms8 and mms8["rps"])
    out.append(("warm conc 8 throughput vs MMS", ">= 1.25x", r, r is not None and r >= 1.25))
    r = ratio(ours8 and ours8["rps"], plain8 and plain8["rps"])
    out.append(("warm conc 8 throughput vs plain MLServer (defaults)", ">= 2x", r, r is not None and r >= 2))
    r = ratio(ours1 and ours1["p50_ms"], mms1 and mms1["p50_ms"])
    out.append(("warm conc 1 p50 vs MMS", "<= 1x", r, r is not None and r <= 1))
    cold = results["cold"]
    ours_cold = _median([c["total_ms"] for c in cold.get("ours", [])])
    floor = _median(cold.get("floor_ms", []))
    out.append(("cold first request minus the floor (ms)", "<= 25 ms", ours_cold - floor, ours_cold - floor <= 25))
    r = ratio(_median(cold.get("mms_register_to_answer_ms", [])), ours_cold)
    out.append(("cold: MMS register-to-answer / ours", ">= 5x", r, r is not None and r >= 5))
    churn = {c["system"]: c for c in results["churn"]}
    ours_churn, mms_churn = churn.get("mlserver-mme"), churn.get(MMS)
    r = ratio(ours_churn and ours_churn["rps"], mms_churn and mms_churn["rps"])
    out.append(("churn throughput vs MMS, same slots", ">= 10x", r, r is not None and r >= 10))
    exact = results.get("exact_trace")
    if exact:
        gap = (exact["hit_ratio"] - exact["lru_simulation"]) * 100
        out.append((f"hit ratio minus exact LRU simulation, {exact['requests']}-request Zipf trace (pt)", "within +-1",
                    gap, abs(gap) <= 1))
    ours_mem = {int(k): v for k, v in results["density"].get("mlserver-mme", {}).items()}
    mms_mem = {int(k): v for k, v in results["density"].get(MMS, {}).items()}
    common = [level for level in ours_mem if level in mms_mem]
    if common:
        level = max(common)
        r = ratio(ours_mem[level], mms_mem[level])
        out.append((f"memory per loaded model vs MMS ({level} models)", "<= 0.1x", r, r is not None and r <= 0.1))
    return out


def write_comparison(results, latencies, folder):
    """``results.md`` and ``comparison.png`` of the comparison's results in ``folder``."""
    lines = [f"# mlserver-mme benchmark, {results['meta']['date']}", "",
             f"Machine: {results['meta']['machine']}; Python {results['meta']['python']}, "
             f"xgboost {results['meta']['xgboost']}. One run, every system side by side; 1-row CSV, default Accept.", ""]
    lines += ["## Targets", "", "| target | goal | measured | met |", "|---|---|---:|---|"]
    for name, goal, value, met in targets(results):
        shown = "skipped" if value is None else f"{value:.3g}"
        lines.append(f"| {name} | {goal} | {shown} | {'yes' if met else 'no'} |")
    lines += ["", "## Warm", "", "| system | scenario | conc | req/s | p50 ms | p99 ms | errors | CPU client / server / machine |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in results["warm"] + results["warm_n"] + results["churn"]:
        extra = f" (hit ratio {r['hit_ratio']}" + (f", LRU simulation {r['lru_simulation']})" if "lru_simulation" in r else ")") if "hit_ratio" in r else ""
        lines.append(f"| {r['system']} | {r['scenario']}{extra} | {r['conc']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                     f"| {r['errors']} | {r['client_cores']} / {r['server_cores']} / {r['machine_cores']} |")
    floor = results.get("floor", {})
    lines += ["", f"In-process floor: `Booster.inplace_predict` on one row {floor.get('inplace_predict_us')} µs; "
              f"CSV decode + predict + JSON encode {floor.get('csv_decode_predict_json_us')} µs.", ""]
    cold = results["cold"]
    if cold.get("ours"):
        parts = ["download_ms", "unpack_ms", "load_ms", "answer_ms", "total_ms"]
        lines += ["## Cold first request (median ms)", "", "| system | download | unpack | load | first answer | total |", "|---|---:|---:|---:|---:|---:|"]
        lines.append("| mlserver-mme | " + " | ".join(f"{_median([c[p] for c in cold['ours']]):.1f}" for p in parts) + " |")
        lines.append(f"| floor: S3 GET + unpack + load + predict in one process | | | | | {_median(cold['floor_ms']):.1f} |")
        if cold.get("mms_register_to_answer_ms"):
            lines.append(f"| {MMS}: register to first answer (no download) | | | | | {_median(cold['mms_register_to_answer_ms']):.1f} |")
    counts = sorted({int(k) for levels in results["density"].values() for k in levels})
    lines += ["", "## Memory per loaded model (PSS, MiB)", "", "| system | " + " | ".join(f"{k} models" for k in counts) + " |",
              "|---|" + "---:|" * len(counts)]
    for system, levels in results["density"].items():
        levels = {int(k): v for k, v in levels.items()}
        lines.append(f"| {system} | " + " | ".join(str(levels.get(k, "-")) for k in counts) + " |")
    for system, why in results.get("skipped", {}).items():
        lines.append(f"\nSkipped {system}: {why}")
    with open(os.path.join(folder, "results.md"), "w") as file:
        file.write("\n".join(lines) + "\n")
    if importlib.util.find_spec("matplotlib") is None:  # the test extra has no plotting: the bench extra does
        log("comparison.png not drawn: matplotlib is missing (pip install '.[bench]')")
        return
    _plots(results, latencies, folder)


def _plots(results, latencies, folder):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    for system, values in latencies.items():
        ordered = sorted(values)
        ax.plot(ordered, [i / len(ordered) for i in range(len(ordered))], label=system)
    ax.set(title="Latency distribution, warm, concurrency 8", xlabel="ms", ylabel="fraction of requests", xscale="log")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    for system in dict.fromkeys(r["system"] for r in results["warm"]):
        points = [(r["conc"], r["rps"]) for r in results["warm"] if r["system"] == system]
        ax.plot(*zip(*points), marker="o", label=system)
    ax.set(title="Throughput by concurrency, warm, one model", xlabel="concurrency", ylabel="req/s", xscale="log")
    ax.legend(fontsize=7)
    ax = axes[1][0]
    cold = results["cold"]
    bars = []
    if cold.get("ours"):
        bars.append(("mlserver-mme", [_median([c[p] for c in cold["ours"]]) for p in ("download_ms", "unpack_ms", "load_ms", "answer_ms")]))
        bars.append(("floor (one process)", [0, 0, 0, _median(cold["floor_ms"])]))
    if cold.get("mms_register_to_answer_ms"):
        bars.append(("MMS register+answer", [0, 0, _median(cold["mms_register_to_answer_ms"]), 0]))
    bottom = [0.0] * len(bars)
    for i, label in enumerate(("download", "unpack", "load", "first answer / total")):
        heights = [b[1][i] for b in bars]
        ax.bar([b[0] for b in bars], heights, bottom=bottom, label=label)
        bottom = [x + h for x, h in zip(bottom, heights)]
    ax.set(title="Cold first request (median)", ylabel="ms")
    ax.legend(fontsize=7)
    ax = axes[1][1]
    for system, windows in results["churn_windows"].items():
        ax.plot(range(1, len(windows) + 1), [w if not math.isnan(w) else None for w in windows], label=system)
    ax.set(title="Churn hit ratio over time (1 s windows)", xlabel="s", ylabel="hit ratio", ylim=(0, 1))
    ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(os.path.join(folder, "comparison.png"), dpi=90)
