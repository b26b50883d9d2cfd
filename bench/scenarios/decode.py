"""Request decoding and response encoding of ~5 MB bodies: this tree against the last commit.

    python -m bench decode [--runs 5] [--megabytes 5]     # --quick: 1 run of 0.2 MB bodies

Bodies of rows of 6 features like the bundled home-value models (YEAR_BUILT ~ N(1995, 10),
SQUARE_FEET ~ N(3000, 750), bedrooms 2-6, bathrooms 1-3 in halves, LOT_ACRES ~ N(1, 0.25),
garage 0-3; two decimals, as clients usually send) in each request content type, and the
float32 predictions of the CSV body's rows encoded as JSON and CSV. HEAD's payloads/ modules (codecs.py
and what it imports) are loaded from ``git show``; each run times HEAD then this tree, body after body,
and the table gives the median milliseconds (single-threaded, in process).
"""

import importlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from support.recordio_writer import dense_records

from bench.harness import ROOT
from mlserver_mme.payloads import codecs as payloads


def head_payloads():
    """mlserver_mme.payloads.codecs as of the last commit, imported from a temporary package."""
    folder = tempfile.mkdtemp()
    package = os.path.join(folder, "mme_head")
    os.mkdir(package)
    for sub in ("payloads", "runtimes"):
        os.mkdir(os.path.join(package, sub))
    for name in ("__init__.py", "payloads/__init__.py", "runtimes/__init__.py"):
        open(os.path.join(package, name), "w").close()
    payload_modules = subprocess.check_output(
        ["git", "-C", ROOT, "ls-tree", "--name-only", "HEAD", "mlserver_mme/payloads/"], text=True
    ).split()  # codecs.py and every module it imports (one per content type since the split)
    modules = [path[len("mlserver_mme/"):] for path in payload_modules if path.endswith(".py")]
    for name in [*modules, "errors.py", "runtimes/protocol.py"]:
        with open(os.path.join(package, name), "wb") as file:
            file.write(subprocess.check_output(["git", "-C", ROOT, "show", f"HEAD:mlserver_mme/{name}"]))
    sys.path.insert(0, folder)
    return importlib.import_module("mme_head.payloads.codecs")


def home_rows(count: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.column_stack([
        rng.normal(1995, 10, count), rng.normal(3000, 750, count), rng.integers(2, 7, count),
        rng.integers(2, 7, count) / 2, rng.normal(1, 0.25, count), rng.integers(0, 4, count),
    ]).round(2)


def npy(rows):
    buffer = io.BytesIO()
    np.save(buffer, rows)
    return buffer.getvalue()


WRITERS = {
    "text/csv": lambda rows: "".join(",".join(map(repr, row)) + "\n" for row in rows.tolist()).encode(),
    "text/libsvm": lambda rows: "".join(
        "0 " + " ".join(f"{i}:{v!r}" for i, v in enumerate(row)) + "\n" for row in rows.tolist()
    ).encode(),
    "application/json": lambda rows: json.dumps(rows.tolist()).encode(),
    "application/x-npy": npy,
    "application/x-recordio-protobuf": lambda rows: dense_records(rows.astype(np.float32)),
}


def body_of(content_type: str, size: int) -> tuple:
    """A body of about ``size`` bytes, and its number of rows."""
    write = WRITERS[content_type]
    count = size * 1000 // len(write(home_rows(1000)))
    return write(home_rows(count)), count


def seconds(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def add_arguments(parser):
    parser.add_argument("--runs", type=int, help="runs (default 5; --quick 1)")
    parser.add_argument("--megabytes", type=float, help="body size (default 5; --quick 0.2)")


def run(args) -> dict:
    args.runs = args.runs or (1 if args.quick else 5)
    args.megabytes = args.megabytes or (0.2 if args.quick else 5)
    old = head_payloads()
    cases = []  # (what, MB, rows, function of a payloads module)
    for content_type in WRITERS:
        body, count = body_of(content_type, int(args.megabytes * 1e6))
        call = lambda module, b=body, c=content_type: module.decode(b, c)  # noqa: E731
        cases.append((f"decode {content_type}", len(body) / 1e6, count, call))
    predictions = np.random.default_rng(1).normal(300_000, 100_000, cases[0][2]).astype(np.float32)
    for accept in ("application/json", "text/csv"):
        size = len(payloads.encode(predictions, accept)[0]) / 1e6
        call = lambda module, a=accept: module.encode(predictions, a)  # noqa: E731
        cases.append((f"encode {accept}", size, len(predictions), call))
    times = {what: ([], []) for what, *_ in cases}
    for _ in range(args.runs):
        for what, _, _, call in cases:
            times[what][0].append(seconds(call, old))
            times[what][1].append(seconds(call, payloads))
    print("| | MB | rows | HEAD ms | now ms | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    figures = {}
    for what, megabytes, count, _ in cases:
        before, after = (statistics.median(values) * 1e3 for values in times[what])
        print(f"| {what} | {megabytes:.1f} | {count:,} | {before:.1f} | {after:.1f} | {before / after:.1f}x |")
        figures[what] = {"megabytes": round(megabytes, 3), "rows": count, "head_ms": round(before, 3), "now_ms": round(after, 3)}
    return figures

