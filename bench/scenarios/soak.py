"""Soak: mixed traffic for minutes, watching the server's memory, open files and latency.

Six clients at once: warm calls of one model, churn over 12 models with room for 3,
missing targets, unreadable bodies, V2 load/unload of the churned models, and V2
index and inference. Every minute: requests, answers a correct server never gives,
the server's resident memory (RSS) and open files, p50/p99 per kind of call. The
target: after the first (warm-up) minute, RSS grows at most 10 % over the rest,
no unexpected answer, open files flat.

    python -m bench soak --minutes 10 --plot docs/soak.png

``--quick``: 2 samples 5 s apart instead of a minute (``--interval``), for a smoke run.
"""

import asyncio
import threading

from support.mixed_traffic import Tally, bad_body, bad_target, invoke, v2_index, v2_infer, v2_load_unload
from support.mixed_traffic import run as drive

from bench.harness.proc import open_files, rss_bytes
from bench.harness.servers import mme_server, s3_with_models
from bench.harness.stats import percentile

CHURNED = [f"churn/m{i:02d}.tar.gz" for i in range(12)]
WARM = "warm/Houston_TX.tar.gz"


def clients():
    both = [WARM] + CHURNED
    return [invoke([WARM]), invoke(CHURNED), bad_target(), bad_body(both),
            v2_load_unload(CHURNED), lambda http, tally, rng: (v2_index() if rng.random() < 0.2 else v2_infer(both))(http, tally, rng)]


def soak(url: str, pid: int, minutes: int, seed: int, interval: float = 60):
    tally, rows, stop = Tally(), [], threading.Event()

    def sample():
        for minute in range(1, minutes + 1):
            if stop.wait(interval):
                return
            taken = tally.take()
            row = {
                "minute": minute,
                "requests": sum(taken.statuses.values()),
                "unexpected": sum(taken.unexpected().values()),
                "unexpected_kinds": {f"{k}:{s}": n for (k, s), n in taken.unexpected().items()},
                "rss_mib": rss_bytes(pid) / 2**20,
                "open_files": open_files(pid),
                "p50_ms": {kind: percentile(v, 50) * 1e3 for kind, v in taken.latencies.items()},
                "p99_ms": {kind: percentile(v, 99) * 1e3 for kind, v in taken.latencies.items()},
                "statuses": {f"{k}:{s}": n for (k, s), n in taken.statuses.items()},
            }
            rows.append(row)
            print(f"minute {minute}: {row['requests']} requests, {row['unexpected']} unexpected, "
                  f"RSS {row['rss_mib']:.1f} MiB, {row['open_files']} open files, "
                  f"invoke p50/p99 {row['p50_ms'].get('invoke', 0):.1f}/{row['p99_ms'].get('invoke', 0):.1f} ms",
                  flush=True)
        stop.set()

    sampler = threading.Thread(target=sample)
    sampler.start()
    asyncio.run(drive(url, clients(), tally, seed, stop=stop.is_set))
    sampler.join()
    return rows


def plot(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [row["minute"] for row in rows]
    figure, (memory, latency) = plt.subplots(1, 2, figsize=(11, 4))
    memory.plot(minutes, [row["rss_mib"] for row in rows], marker="o", label="RSS (MiB)")
    memory.plot(minutes, [row["open_files"] for row in rows], marker="s", label="open files")
    memory.set_xlabel("minute")
    memory.set_ylim(bottom=0)
    memory.legend()
    memory.set_title("server process")
    for kind in ("invoke", "v2-load", "v2-infer", "bad-target"):
        latency.plot(minutes, [row["p99_ms"].get(kind, float("nan")) for row in rows], marker=".", label=f"{kind} p99")
    latency.plot(minutes, [row["p50_ms"].get("invoke", float("nan")) for row in rows], linestyle="--", label="invoke p50")
    latency.set_yscale("log")
    latency.set_xlabel("minute")
    latency.set_ylabel("ms")
    latency.legend(fontsize="small")
    latency.set_title("latency per minute")
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def add_arguments(parser):
    parser.add_argument("--minutes", type=int, help="samples (default 10; --quick 2)")
    parser.add_argument("--interval", type=float, help="seconds between samples (default 60; --quick 5)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--plot", help="write a PNG plot here (needs matplotlib)")


def run(args) -> dict:
    minutes = args.minutes or (2 if args.quick else 10)
    interval = args.interval or (5 if args.quick else 60)
    with s3_with_models(CHURNED + [WARM]) as s3, mme_server(s3, max_loaded_models=3) as server:
        rows = soak(server.url, server.process.pid, minutes, args.seed, interval)
    warm, last = rows[0], rows[-1]
    growth = (last["rss_mib"] - warm["rss_mib"]) / warm["rss_mib"]
    print(f"\nrequests: {sum(r['requests'] for r in rows)}, unexpected: {sum(r['unexpected'] for r in rows)}")
    print(f"RSS after warm-up {warm['rss_mib']:.1f} MiB -> end {last['rss_mib']:.1f} MiB ({growth:+.1%}; target <= +10%)")
    print(f"open files after warm-up {warm['open_files']} -> end {last['open_files']}")
    print("| minute | requests | unexpected | RSS MiB | open files | invoke p50 ms | invoke p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['minute']} | {row['requests']} | {row['unexpected']} | {row['rss_mib']:.1f} | {row['open_files']} "
              f"| {row['p50_ms'].get('invoke', 0):.2f} | {row['p99_ms'].get('invoke', 0):.2f} |")
    for row in rows:
        if row["unexpected"]:
            print("minute", row["minute"], row["unexpected_kinds"])
    if args.plot:
        plot(rows, args.plot)
        print("plot:", args.plot)
    return {"requests": sum(r["requests"] for r in rows), "unexpected": sum(r["unexpected"] for r in rows),
            "rss_growth": round(growth, 4), "rows": rows}

