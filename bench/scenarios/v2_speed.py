"""V2 inference against the SageMaker route on the same server and model: requests per second, side by side.

    python -m bench v2_speed [--duration 3] [--rounds 3] [--concs 1,8,64] [--skip plain] [--without-fast-path]
                                                        # --quick: 1 s, 1 round, concurrency 1 and 8

One server (``mlserver start model-settings/``, a bundled model in moto's S3 on loopback), one
model, one-row requests, closed loops of compiled load generators, each route in turn:

- ``/invocations``: CSV, by ``wrk`` (HTTP/1.1 keep-alive);
- V2 REST ``/v2/models/{name}/infer``: a 1x6 FP32 JSON tensor, by ``wrk``;
- V2 gRPC ``ModelInfer``: the same tensor in ``fp32_contents``, by ``h2load`` (nghttp2's HTTP/2 load
  generator: one connection per client, one stream at a time, the gRPC frame as its body; a gRPC
  error would still be HTTP 200, so one call through grpcio is checked first);
- ``ServerLive`` over gRPC, by ``h2load``: a call that does nothing, the floor of ``grpc.aio``'s own cost
  per call on this machine, which bounds what any ModelInfer can reach;
- plain MLServer 1.7 + mlserver-xgboost's V2 REST on the same model, for reference (its own virtual
  environment, ``bench/setup_peers.sh``; skipped when absent or with ``--skip plain``).

Concurrency c is c connections (``wrk -c c``, ``h2load -c c -m 1``). At each concurrency every route is
warmed up (1 s), then measured in rounds, the routes one after the other in each round, so a
neighbour's load on a shared machine weighs on all of them alike. Prints a Markdown table of the median
req/s per route and concurrency, and the medians of each round's ratios V2 REST / ``/invocations`` and V2 gRPC /
``/invocations`` (the goals: 0.8 and 0.6); then the server's CPU time per request of each route and the
same ratios by CPU (invocations' CPU per request over the route's), which a busy neighbour moves less
than throughput on a shared machine. Needs ``wrk`` and ``h2load`` (Debian: ``apt-get install
wrk nghttp2-client``).
"""

import contextlib
import os
import re
import shutil
import statistics
import struct
import subprocess
import tempfile
from typing import Tuple

import grpc
import numpy as np
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc
from support.artifacts import booster

from bench.harness.peers import Unavailable, plain_mlserver
from bench.harness.proc import tree_cpu
from bench.harness.servers import BODY, mme_server, s3_with_models

TARGET, NAME = "Houston_TX.tar.gz", "Houston_TX"
ROW = [1995.0, 3000.0, 3.0, 2.0, 1.0, 2.0]
V2_BODY = '{"inputs":[{"name":"input-0","shape":[1,6],"datatype":"FP32","data":[1995,3000,3,2,1.0,2]}]}'
FLOOR = "gRPC ServerLive (floor)"
ROUTES = ("/invocations", "V2 REST", "V2 gRPC", FLOOR, "plain MLServer V2 REST")


def add_arguments(parser):
    parser.add_argument("--duration", type=int, help="whole seconds of each measurement (default 3; --quick 1)")
    parser.add_argument("--concs", help="concurrencies, comma-separated (default 1,8,64; --quick 1,8)")
    parser.add_argument("--rounds", type=int, help="rounds of the routes, one after the other (default 3; --quick 1): "
                        "req/s are the rounds' medians, ratios the medians of each round's ratio")
    parser.add_argument("--skip", default="", help="'plain' leaves plain MLServer out")
    parser.add_argument("--without-fast-path", action="store_true",
                        help="our server with MLSERVER_MME_V2_FAST_PATH=false: V2 through MLServer's own path (the before)")


def wrk_script(folder: str, name: str, body: str, headers: dict) -> str:
    path = os.path.join(folder, name + ".lua")
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_string(body)}"]
    lines += [f"wrk.headers[{lua_string(key)}] = {lua_string(value)}" for key, value in headers.items()]
    with open(path, "w") as file:
        file.write("\n".join(lines) + "\n")
    return path


def lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def wrk(url: str, script: str, conc: int, seconds: int) -> Tuple[float, int]:
    """Requests per second and requests answered; raises if any answer was not 2xx or a socket failed."""
    done = subprocess.run(
        ["wrk", f"-t{min(conc, 2)}", f"-c{conc}", f"-d{seconds}s", "-s", script, url],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    )
    if "Non-2xx" in done.stdout or "Socket errors" in done.stdout:
        raise RuntimeError(f"wrk saw failures on {url}:\n{done.stdout}")
    rate = float(re.search(r"Requests/sec:\s*([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]
    return rate, int(re.search(r"(\d+) requests in", done.stdout).group(1))  # type: ignore[union-attr]


def grpc_frame() -> bytes:
    message = infer_request().SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def infer_request() -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="input-0", datatype="FP32", shape=[1, 6], contents=pb.InferTensorContents(fp32_contents=ROW)
    )
    return pb.ModelInferRequest(model_name=NAME, inputs=[tensor])


def h2load(address: str, frame_path: str, conc: int, seconds: int, method: str = "ModelInfer") -> Tuple[float, int]:
    """Requests per second of ``method`` calls and calls answered; raises if any failed at the HTTP level."""
    done = subprocess.run(
        ["h2load", "-D", str(seconds), "-c", str(conc), "-m", "1", "-t", str(min(conc, 2)), "-d", frame_path,
         "-H", "content-type: application/grpc", "-H", "te: trailers",
         f"http://{address}/inference.GRPCInferenceService/{method}"],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    )
    requests = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", done.stdout)
    elapsed = re.search(r"finished in ([\d.]+)(m?s)", done.stdout)
    if requests is None or elapsed is None or requests.group(2) != requests.group(3):
        raise RuntimeError(f"h2load saw failures:\n{done.stdout}")
    seconds_taken = float(elapsed.group(1)) / (1000 if elapsed.group(2) == "ms" else 1)
    return int(requests.group(3)) / seconds_taken, int(requests.group(3))


def check_grpc(address: str, expected: float) -> None:
    """One ModelInfer through grpcio: the answer h2load's calls get is a prediction, not a gRPC error."""
    with grpc.insecure_channel(address) as channel:
        reply = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request(), timeout=60)
    got = np.frombuffer(reply.raw_output_contents[0], np.float32) if reply.raw_output_contents else reply.outputs[0].contents.fp32_contents
    assert abs(float(got[0]) - expected) < 1e-3 * abs(expected), (got, expected)


def run(args) -> dict:
    for tool in ("wrk", "h2load"):
        if shutil.which(tool) is None:
            raise SystemExit(f"no {tool}: apt-get install wrk nghttp2-client")
    seconds = args.duration or (1 if args.quick else 3)
    concs = [int(c) for c in (args.concs or ("1,8" if args.quick else "1,8,64")).split(",")]
    work = tempfile.mkdtemp(prefix="bench-v2-speed-")
    model = booster()
    expected = float(model.inplace_predict(np.asarray([ROW], np.float32))[0])
    n_rounds = args.rounds or (1 if args.quick else 3)
    rps: dict = {route: {} for route in ROUTES}
    cpu_us: dict = {route: {} for route in ROUTES}
    ratios: dict = {"V2 REST / invocations": {}, "V2 gRPC / invocations": {}}
    cpu_ratios: dict = {key: {} for key in ratios}
    invocations = wrk_script(work, "invocations", BODY.decode(),
                             {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": TARGET})
    v2 = wrk_script(work, "v2", V2_BODY, {"Content-Type": "application/json"})
    frame = os.path.join(work, "model_infer.bin")
    with open(frame, "wb") as file:
        file.write(grpc_frame())
    empty = os.path.join(work, "server_live.bin")
    with open(empty, "wb") as file:
        file.write(b"\x00" + struct.pack(">I", 0))  # an empty ServerLiveRequest
    settings = {"v2_fast_path": "false"} if args.without_fast_path else {}
    with s3_with_models([TARGET]) as s3, mme_server(s3, **settings) as server:
        address = f"127.0.0.1:{server.env['MLSERVER_GRPC_PORT']}"
        check_grpc(address, expected)  # loads the model too
        runs = {
            "/invocations": lambda conc, seconds: wrk(server.url + "/invocations", invocations, conc, seconds),
            "V2 REST": lambda conc, seconds: wrk(f"{server.url}/v2/models/{NAME}/infer", v2, conc, seconds),
            "V2 gRPC": lambda conc, seconds: h2load(address, frame, conc, seconds),
            FLOOR: lambda conc, seconds: h2load(address, empty, conc, seconds, "ServerLive"),
        }
        pid = server.process.pid

        def timed(measure, conc: int) -> Tuple[float, float]:
            """req/s, and the server's CPU microseconds per request (what neighbours on the machine touch least)."""
            before = tree_cpu(pid)
            rate, answered = measure(conc, seconds)
            return rate, (tree_cpu(pid) - before) / max(answered, 1) * 1e6

        for conc in concs:
            for measure in runs.values() if not args.quick else ():
                measure(conc, 1)  # warm-up at this concurrency, not counted (none in a smoke run)
            rounds = [{route: timed(measure, conc) for route, measure in runs.items()} for _ in range(n_rounds)]
            for route in runs:
                rps[route][conc] = statistics.median(one[route][0] for one in rounds)
                cpu_us[route][conc] = statistics.median(one[route][1] for one in rounds)
            for key, route in (("V2 REST / invocations", "V2 REST"), ("V2 gRPC / invocations", "V2 gRPC")):
                ratios[key][conc] = round(statistics.median(one[route][0] / one["/invocations"][0] for one in rounds), 3)
                cpu_ratios[key][conc] = round(
                    statistics.median(one["/invocations"][1] / max(one[route][1], 1e-9) for one in rounds), 3
                )
    skipped = []
    if "plain" in args.skip.split(","):
        skipped.append("plain MLServer: --skip plain")
    else:
        with contextlib.ExitStack() as stack:
            try:
                plain = stack.enter_context(plain_mlserver(bytes(model.save_raw("json")), work))
            except Unavailable as error:
                skipped.append(f"plain MLServer: {error}")
            else:
                url = plain.url + "/v2/models/house/infer"
                for conc in concs:
                    wrk(url, v2, conc, 1)
                    rps["plain MLServer V2 REST"][conc] = wrk(url, v2, conc, seconds)[0]
    figures = report(rps, ratios, concs)
    figures.update(report_cpu(cpu_us, cpu_ratios, concs))
    figures["rounds"] = n_rounds
    figures["skipped"] = skipped
    figures["seconds_per_run"] = seconds
    figures["v2_fast_path"] = not args.without_fast_path
    return figures


def report(rps: dict, ratios: dict, concs: list) -> dict:
    print("| route (one-row requests, one model) | generator | " + " | ".join(f"c={c} req/s" for c in concs) + " |")
    print("|---|---|" + "---:|" * len(concs))
    generators = {"/invocations": "wrk", "V2 REST": "wrk", "V2 gRPC": "h2load", FLOOR: "h2load",
                  "plain MLServer V2 REST": "wrk"}
    for route in ROUTES:
        if rps[route]:
            cells = " | ".join(f"{rps[route][c]:,.0f}" for c in concs)
            print(f"| {route} | {generators[route]} | {cells} |")
    for key in ratios:
        cells = " | ".join(f"{ratios[key][c]:.2f}" for c in concs)
        print(f"| **{key}** | | {cells} |")
    print("\ngoals: V2 REST / invocations >= 0.8, V2 gRPC / invocations >= 0.6")
    return {
        "rps": {route: {str(c): round(v, 1) for c, v in values.items()} for route, values in rps.items()},
        "ratios": {key: {str(c): v for c, v in values.items()} for key, values in ratios.items()},
    }


def report_cpu(cpu_us: dict, cpu_ratios: dict, concs: list) -> dict:
    """The server's CPU per request: the same comparison, as a dedicated machine would see it."""
    print("\n| route | " + " | ".join(f"c={c} server CPU us/request" for c in concs) + " |")
    print("|---|" + "---:|" * len(concs))
    for route, values in cpu_us.items():
        if values:
            print(f"| {route} | " + " | ".join(f"{values[c]:.0f}" for c in concs) + " |")
    for key, values in cpu_ratios.items():
        print(f"| **{key}, by CPU** | " + " | ".join(f"{values[c]:.2f}" for c in concs) + " |")
    return {
        "cpu_us_per_request": {route: {str(c): round(v, 1) for c, v in values.items()} for route, values in cpu_us.items() if values},
        "cpu_ratios": {key: {str(c): v for c, v in values.items()} for key, values in cpu_ratios.items()},
    }
