"""Batches: head-of-line blocking, 5 MB batch latency against an in-process floor, one-row CPU against the HTTP floor.

    .venv/bin/python -m bench batch            # about 4 minutes on 2 cores
    .venv/bin/python -m bench batch --quick    # a smoke run, about a minute
    .venv/bin/python -m bench batch --quick --megabytes 0.5 --durations 1,2,1,2,1,0.5   # smaller still

One ``mlserver start model-settings/`` on loopback (``harness.servers.ours``), the bundled ``Houston_TX.tar.gz``
in moto's S3 (``harness.servers.s3_with_models``), warmed (loaded, one batch answered) before anything is
measured. Clients run on uvloop when it is installed (``harness.loadgen.run``). Progress goes to stderr,
the Markdown report to stdout. Batches are 5 MB bodies of home-value rows (YEAR_BUILT ~ N(1995, 10),
SQUARE_FEET ~ N(3000, 750), bedrooms 2-6, bathrooms 1-3 in halves, LOT_ACRES ~ N(1, 0.25), garage 0-3).

1. Head-of-line blocking: one client posts 5 MB CSV batches back to back while two other connections
   send one-row CSV requests at a fixed rate (``--rate`` in all) and one polls ``GET /ping`` every 50 ms;
   the same without the batch client is the baseline. One-row and ping latencies are counted from each
   request's scheduled send, so a stall also counts against the requests it held back (no coordinated
   omission). Ratios: one-row p99 / batch median and ping p99 / batch median (target <= 0.2 each).
2. Batch latency against a floor, per Content-Type (csv, libsvm, json, npy, recordio-protobuf): the
   server's median over sequential keep-alive requests of one 5 MB body, against the same body read,
   predicted and encoded in this process on C-speed paths (``FLOOR_READERS``), then
   ``Booster.inplace_predict`` (nthread 1, as the server) and ``orjson.dumps`` (target <= 2x).
3. Warm one-row server CPU per request: ``loadgen.closed_loop`` at concurrency 8 against the server's
   ``/invocations`` and against ``bench/harness/echo_server.py`` (uvicorn + Starlette answering a constant);
   server CPU microseconds per request and their ratio (target <= 2.0).
"""

import asyncio
import io
import os
import statistics
import subprocess
import tempfile
import time

import aiohttp
import numpy as np
import orjson
import pandas as pd
import scipy.sparse
from support.artifacts import booster as example_booster  # tests/ is put on the path by bench.harness
from support.recordio_writer import dense_records

from bench.harness import ROOT, loadgen, peers, servers
from bench.harness.report import log
from bench.harness.servers import BODY, BUCKET, PREFIX, http_client, s3_with_models
from bench.harness.stats import percentile

TARGET = "Houston_TX.tar.gz"
BATCH_BYTES = 5_000_000
CSV = "text/csv"
CELL_FORMATS = ["%d", "%d", "%d", "%.1f", "%.2f", "%d"]
TIMEOUT = aiohttp.ClientTimeout(total=120)


# -- bodies ------------------------------------------------------------------------------------------------


def feature_rows(n, seed=7):
    rng = np.random.default_rng(seed)
    return np.column_stack([
        np.round(rng.normal(1995, 10, n)), np.round(rng.normal(3000, 750, n)), rng.integers(2, 7, n),
        rng.integers(2, 7, n) / 2, np.round(rng.normal(1, 0.25, n), 2), rng.integers(0, 4, n),
    ]).astype(np.float64)


def savetxt(rows, formats, delimiter, label=""):
    buffer = io.BytesIO()
    np.savetxt(buffer, rows, fmt=[label + formats[0], *formats[1:]], delimiter=delimiter)
    return buffer.getvalue()


def npy(rows):
    buffer = io.BytesIO()
    np.save(buffer, rows.astype(np.float32))
    return buffer.getvalue()


ENCODERS = {
    CSV: lambda rows: savetxt(rows, CELL_FORMATS, ","),
    "text/libsvm": lambda rows: savetxt(rows, [f"{i}:{f}" for i, f in enumerate(CELL_FORMATS)], " ", label="0 "),
    "application/json": lambda rows: orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY),
    "application/x-npy": npy,
    "application/x-recordio-protobuf": dense_records,
}


def batch_body(encode, pool, size=BATCH_BYTES):
    """(body, rows): as many rows of ``pool`` as make about ``size`` bytes in that encoding."""
    rows = int(size * 1000 / len(encode(pool[:1000])))
    assert rows <= len(pool), "the pool of rows is too small"
    return encode(pool[:rows]), rows


# -- the in-process floor ----------------------------------------------------------------------------------


def read_libsvm(body):
    """``label index:value ...`` rows as CSR: every token parsed by pandas' C reader, rows found with numpy."""
    raw = np.frombuffer(body, np.uint8)
    ends = np.flatnonzero(raw == ord("\n"))
    indptr = np.r_[0, np.searchsorted(np.flatnonzero(raw == ord(":")), ends)]
    tokens = pd.read_csv(io.BytesIO(body.translate(bytes.maketrans(b" :", b"\n\n"))), header=None,
                         dtype=np.float64).to_numpy().ravel()
    keep = np.ones(len(tokens), bool)
    keep[np.arange(len(ends)) + 2 * indptr[:-1]] = False  # each row's label
    pairs = tokens[keep].reshape(-1, 2)
    indices = pairs[:, 0].astype(np.int32)
    return scipy.sparse.csr_matrix((pairs[:, 1].astype(np.float32), indices, indptr),
                                   shape=(len(ends), indices.max() + 1))


def read_recordio(body, columns=6):
    """Dense records of one layout (the SDK's, one row of ``columns`` float32 each): frames of one stride,
    every frame header checked equal, the values sliced from each payload's end with numpy."""
    length = int.from_bytes(body[4:8], "little")
    stride = 8 + length + (-length % 4)
    frames = np.frombuffer(body, np.uint8).reshape(-1, stride)
    if not (frames[:, :8] == frames[0, :8]).all():
        raise ValueError("records of different layouts")
    return np.ascontiguousarray(frames[:, 8 + length - 4 * columns : 8 + length]).view("<f4")


FLOOR_READERS = {
    CSV: lambda body: pd.read_csv(io.BytesIO(body), header=None, dtype=np.float64).to_numpy(),
    "text/libsvm": read_libsvm,
    "application/json": lambda body: np.asarray(orjson.loads(body), dtype=np.float64),
    "application/x-npy": lambda body: np.load(io.BytesIO(body)),
    "application/x-recordio-protobuf": read_recordio,
}


def floor_answer(booster, read, body):
    predictions = booster.inplace_predict(read(body))
    return orjson.dumps(predictions.astype(np.float64), option=orjson.OPT_SERIALIZE_NUMPY)


def repeat_ms(call, n, seconds):
    """Milliseconds of each of up to ``n`` calls (at least one), stopping after ``seconds``; one warm-up call first."""
    call()
    samples, deadline = [], time.perf_counter() + seconds
    while len(samples) < n and (not samples or time.perf_counter() < deadline):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1e3)
    return samples


# -- requests ----------------------------------------------------------------------------------------------


def invocation(url, content_type, body):
    return loadgen.post(url + "/invocations", body, {"Content-Type": content_type, "X-Amzn-SageMaker-Target-Model": TARGET})


def ping(url):
    async def request(session):
        async with session.get(url + "/ping") as reply:
            await reply.read()
            return reply.status == 200

    return request


async def answered(request, session):
    if not await request(session):
        raise RuntimeError("a request was not answered with 200")


def post_sync(http, content_type, body):
    def call():
        reply = http.post("/invocations", content=body,
                          headers={"Content-Type": content_type, "X-Amzn-SageMaker-Target-Model": TARGET})
        if reply.status_code != 200:
            raise RuntimeError(f"{content_type}: {reply.status_code} {reply.text[:200]}")

    return call


# -- 1. head-of-line blocking ------------------------------------------------------------------------------


async def paced(request, interval, offset, deadline):
    """Send ``request`` every ``interval`` s on one connection until ``deadline``; ms from each scheduled send."""
    latencies = []
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        start = time.perf_counter()
        for k in range(int((deadline - start) / interval) + 1):
            due = start + offset + k * interval
            if due >= deadline:
                break
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await answered(request, session)
            latencies.append((time.perf_counter() - due) * 1e3)
    return latencies


async def back_to_back(request, deadline, limit=10_000):
    """Send ``request`` on one connection, each as soon as the last is answered, until ``deadline``; ms each."""
    latencies = []
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        for _ in range(limit):
            if time.perf_counter() >= deadline:
                break
            started = time.perf_counter()
            await answered(request, session)
            latencies.append((time.perf_counter() - started) * 1e3)
    return latencies


async def head_of_line(url, batch, rate, seconds):
    """Batch, one-row and ping latencies (ms) over ``seconds`` with (``batch`` a body) or without a batch client."""
    deadline = time.perf_counter() + seconds
    interval = 2 / rate  # two one-row connections, staggered by half an interval
    batches = back_to_back(invocation(url, CSV, batch), deadline) if batch else asyncio.sleep(0, [])  # no batches
    one_row = [paced(invocation(url, CSV, BODY), interval, i * interval / 2, deadline) for i in range(2)]
    batch_ms, *rows_ms, ping_ms = await asyncio.gather(batches, *one_row, paced(ping(url), 0.05, 0.0, deadline))
    return {"batch": batch_ms, "one_row": rows_ms[0] + rows_ms[1], "ping": ping_ms}


# -- 3. one-row server CPU ---------------------------------------------------------------------------------


def one_row_cpu(system, args):
    """(req/s, server CPU microseconds per request) of one-row CSV requests at concurrency 8."""
    request = invocation(system.url, CSV, BODY)
    result = loadgen.run(loadgen.closed_loop(request, 8, args.cpu_seconds, args.warmup, system.pid))
    if result.errors:
        raise RuntimeError(f"{system.name}: {result.errors} failed requests")
    return result.rps, result.server_cores / result.rps * 1e6


# -- the run and its report --------------------------------------------------------------------------------


def code_version():
    described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    return described.stdout.strip() or "unknown"


def head_of_line_table(runs, batch_rows, rate):
    lines = [f"## 1. Head-of-line blocking (one-row CSV at {rate:g} req/s on 2 connections, /ping every 50 ms)\n",
             "| run | batches | batch median ms | one-row n | one-row p50 ms | one-row p99 ms | ping p99 ms "
             "| one-row p99 / batch median | ping p99 / batch median |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    batch_median = statistics.median(runs["with"]["batch"])
    for label, key in (("baseline: no batch client", "without"), (f"one client streaming 5 MB CSV ({batch_rows} rows)", "with")):
        batch, one_row, ping_ms = runs[key]["batch"], runs[key]["one_row"], runs[key]["ping"]
        one_row_p99, ping_p99 = percentile(one_row, 99), percentile(ping_ms, 99)
        batches = f"{len(batch)} | {statistics.median(batch):.1f}" if batch else "0 | -"
        ratios = f"{one_row_p99 / batch_median:.3f} | {ping_p99 / batch_median:.3f}" if batch else "- | -"
        lines.append(f"| {label} | {batches} | {len(one_row)} | {percentile(one_row, 50):.2f} | {one_row_p99:.2f} "
                     f"| {ping_p99:.2f} | {ratios} |")
    lines.append("\nTargets: both ratios <= 0.2. One-row and ping latencies count from each request's scheduled send.")
    return "\n".join(lines)


def floor_table(rows):
    lines = ["## 2. 5 MB batch: server against the in-process floor\n",
             "| Content-Type | bytes | rows | n | server median ms | floor median ms | server / floor |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, size, count, server_ms, floor_ms in rows:
        lines.append(f"| {kind} | {size} | {count} | {len(server_ms)} | {statistics.median(server_ms):.1f} "
                     f"| {statistics.median(floor_ms):.1f} | {statistics.median(server_ms) / statistics.median(floor_ms):.2f} |")
    lines.append("\nTarget: <= 2x. Floor: read (pandas.read_csv; pandas + numpy libsvm reader; orjson.loads + "
                 "np.asarray; np.load; numpy frombuffer over same-layout records), Booster.inplace_predict "
                 "(nthread 1), orjson.dumps of the float64 predictions.")
    return "\n".join(lines)


def cpu_table(ours, echo):
    lines = ["## 3. Warm one-row CSV, closed loop at concurrency 8: server CPU per request\n",
             "| server | req/s | server CPU us / request |", "|---|---:|---:|",
             f"| mlserver-mme /invocations | {ours[0]:.0f} | {ours[1]:.0f} |",
             f"| floor: uvicorn+starlette constant | {echo[0]:.0f} | {echo[1]:.0f} |",
             f"\nRatio: {ours[1] / echo[1]:.2f} (target <= 2.0)."]
    return "\n".join(lines)


# (baseline s, batch s, repeats, repeat s, CPU s, warm-up s)
FULL, QUICK = (20, 45, 25, 25, 10, 2), (3, 8, 3, 10, 3, 1)


def add_arguments(parser):
    parser.add_argument("--rate", type=float, default=200.0, help="one-row requests per second, both connections")
    parser.add_argument("--megabytes", type=float, default=BATCH_BYTES / 1e6, help="size of a batch body")
    parser.add_argument("--durations", type=lambda text: tuple(float(v) for v in text.split(",")),
                        help="baseline s,batch s,repeats,repeat s,CPU s,warm-up s "
                             f"(default {','.join(map(str, FULL))}; --quick {','.join(map(str, QUICK))})")


def run(args) -> dict:
    durations = args.durations or (QUICK if args.quick else FULL)
    args.baseline_seconds, args.batch_seconds, repeats, args.repeat_seconds, args.cpu_seconds, args.warmup = durations
    args.repeats = int(repeats)

    log(f"making the {args.megabytes:g} MB bodies")
    pool = feature_rows(240_000)
    bodies = {kind: batch_body(encode, pool, int(args.megabytes * 1e6)) for kind, encode in ENCODERS.items()}
    booster = example_booster(TARGET)
    booster.set_param({"nthread": 1})
    with s3_with_models([TARGET]) as s3, tempfile.TemporaryDirectory() as work:
        with servers.ours(s3.url, f"s3://{BUCKET}/{PREFIX}", work) as server, http_client(server) as http:
            post_sync(http, CSV, BODY)()  # loads the model
            post_sync(http, CSV, bodies[CSV][0])()
            log("1. head-of-line blocking")
            hol = {"without": loadgen.run(head_of_line(server.url, None, args.rate, args.baseline_seconds)),
                   "with": loadgen.run(head_of_line(server.url, bodies[CSV][0], args.rate, args.batch_seconds))}
            floor_rows = []
            for kind, (body, count) in bodies.items():
                log(f"2. {kind}")
                server_ms = repeat_ms(post_sync(http, kind, body), args.repeats, args.repeat_seconds)
                floor_ms = repeat_ms(lambda kind=kind, body=body: floor_answer(booster, FLOOR_READERS[kind], body),
                                     args.repeats, args.repeat_seconds)
                floor_rows.append((kind, len(body), count, server_ms, floor_ms))
            log("3. one-row CPU: mlserver-mme")
            ours = one_row_cpu(server, args)
        log("3. one-row CPU: echo floor")
        with peers.echo(work) as echo:
            floor = one_row_cpu(echo, args)
    print(f"# Batches ({'quick' if args.quick else 'full'} run; code {code_version()}; {os.cpu_count()} cores)\n")
    print(head_of_line_table(hol, bodies[CSV][1], args.rate), floor_table(floor_rows), cpu_table(ours, floor), sep="\n\n")
    batch_median = statistics.median(hol["with"]["batch"])
    return {
        "head_of_line": {key: {"batches": len(runs["batch"]), "one_row_n": len(runs["one_row"]),
                               "one_row_p50_ms": round(percentile(runs["one_row"], 50), 3),
                               "one_row_p99_ms": round(percentile(runs["one_row"], 99), 3),
                               "ping_p99_ms": round(percentile(runs["ping"], 99), 3)} for key, runs in hol.items()},
        "batch_median_ms": round(batch_median, 2),
        "floor": {kind: {"bytes": size, "rows": count, "server_median_ms": round(statistics.median(server_ms), 2),
                         "floor_median_ms": round(statistics.median(floor_ms), 2)}
                  for kind, size, count, server_ms, floor_ms in floor_rows},
        "one_row_cpu": {"ours_rps": round(ours[0], 1), "ours_cpu_us": round(ours[1], 1),
                        "echo_rps": round(floor[0], 1), "echo_cpu_us": round(floor[1], 1)},
    }
