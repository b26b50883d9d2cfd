"""Cold first calls over V2 REST and gRPC next to the SageMaker route's.

Each round takes three models not loaded yet and calls one of them over each route,
one after the other (the route that goes first rotates); the time of that first call
(download, unpack, check, load, predict) is reported per route.

    python -m bench cold_v2 --rounds 20     # --quick: 2 rounds
"""

import statistics
import time

import grpc
import httpx
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc

from bench.harness.servers import BODY, mme_server, s3_with_models
from bench.harness.stats import percentile

ROW = [1995, 3000, 3, 2, 1.0, 2]


def sagemaker(server, http, grpc_stub, name):
    reply = http.post("/invocations", content=BODY,
                      headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": f"{name}.tar.gz"})
    assert reply.status_code == 200, reply.text


def rest(server, http, grpc_stub, name):
    payload = {"inputs": [{"name": "input-0", "shape": [1, 6], "datatype": "FP32", "data": ROW}]}
    reply = http.post(f"/v2/models/{name}/infer", json=payload)
    assert reply.status_code == 200, reply.text


def grpc_call(server, http, grpc_stub, name):
    grpc_stub.ModelInfer(pb.ModelInferRequest(
        model_name=name,
        inputs=[pb.ModelInferRequest.InferInputTensor(
            name="input-0", datatype="FP32", shape=[1, 6], contents=pb.InferTensorContents(fp32_contents=ROW))],
    ), timeout=60)


ROUTES = {"SageMaker /invocations": sagemaker, "V2 REST infer": rest, "V2 gRPC ModelInfer": grpc_call}


def add_arguments(parser):
    parser.add_argument("--rounds", type=int, help="models per route (default 20; --quick 2)")


def run(args) -> dict:
    rounds = args.rounds or (2 if args.quick else 20)
    names = [f"cold{i:03d}" for i in range(rounds * len(ROUTES) + 1)]
    timings: dict = {route: [] for route in ROUTES}
    with s3_with_models([f"{name}.tar.gz" for name in names]) as s3, mme_server(s3) as server:
        with httpx.Client(base_url=server.url, timeout=60) as http, \
                grpc.insecure_channel(f"127.0.0.1:{server.env['MLSERVER_GRPC_PORT']}") as channel:
            stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
            sagemaker(server, http, stub, names.pop())  # warm up the fork server and the connections
            routes = list(ROUTES.items())
            for index in range(rounds):
                order = routes[index % len(routes):] + routes[: index % len(routes)]
                for route, call in order:
                    started = time.perf_counter()
                    call(server, http, stub, names.pop())
                    timings[route].append((time.perf_counter() - started) * 1e3)
    print(f"cold first call, {rounds} models per route (ms)")
    print("| route | median | p90 | mean |")
    print("|---|---|---|---|")
    for route, values in timings.items():
        print(f"| {route} | {statistics.median(values):.1f} | {percentile(values, 90):.1f} | {statistics.mean(values):.1f} |")
    return {route: {"n": len(values), "median_ms": round(statistics.median(values), 2),
                    "p90_ms": round(percentile(values, 90), 2), "mean_ms": round(statistics.mean(values), 2)}
            for route, values in timings.items()}
