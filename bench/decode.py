"""Request decoding and response encoding of ~5 MB bodies: this tree against the last commit.

    python bench/decode.py [--runs 5] [--megabytes 5]

Bodies of rows of 6 features like the bundled home-value models (YEAR_BUILT ~ N(1995, 10),
SQUARE_FEET ~ N(3000, 750), bedrooms 2-6, bathrooms 1-3 in halves, LOT_ACRES ~ N(1, 0.25),
garage 0-3; two decimals, as clients usually send) in each request content type, and the
float32 predictions of the CSV body's rows encoded as JSON and CSV. HEAD's payloads/codecs.py and
recordio.py are loaded from ``git show``; each run times HEAD then this tree, body after body,
and the table gives the median milliseconds (single-threaded, in process).
"""

import argparse
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from support.recordio_writer import dense_records  # noqa: E402

from mlserver_mme.payloads import codecs as payloads  # noqa: E402


def head_payloads():
    """mlserver_mme.payloads.codecs as of the last commit, imported from a temporary package."""
    folder = tempfile.mkdtemp()
    package = os.path.join(folder, "mme_head")
    os.mkdir(package)
    os.mkdir(os.path.join(package, "payloads"))
    for name in ("__init__.py", "payloads/__init__.py"):
        open(os.path.join(package, name), "w").close()
    for name in ("payloads/codecs.py", "payloads/recordio.py", "errors.py"):
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--megabytes", type=float, default=5)
    args = parser.parse_args()
    old = head_payloads()
    cases = []  # (what, MB, rows, function of a payloads module)
    for content_type in WRITERS:
        body, count = body_of(content_type, int(args.megabytes * 1e6))
        run = lambda module, b=body, c=content_type: module.decode(b, c)  # noqa: E731
        cases.append((f"decode {content_type}", len(body) / 1e6, count, run))
    predictions = np.random.default_rng(1).normal(300_000, 100_000, cases[0][2]).astype(np.float32)
    for accept in ("application/json", "text/csv"):
        size = len(payloads.encode(predictions, accept)[0]) / 1e6
        run = lambda module, a=accept: module.encode(predictions, a)  # noqa: E731
        cases.append((f"encode {accept}", size, len(predictions), run))
    times = {what: ([], []) for what, *_ in cases}
    for _ in range(args.runs):
        for what, _, _, run in cases:
            times[what][0].append(seconds(run, old))
            times[what][1].append(seconds(run, payloads))
    print("| | MB | rows | HEAD ms | now ms | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for what, megabytes, count, _ in cases:
        before, after = (statistics.median(values) * 1e3 for values in times[what])
        print(f"| {what} | {megabytes:.1f} | {count:,} | {before:.1f} | {after:.1f} | {before / after:.1f}x |")


if __name__ == "__main__":
    main()
