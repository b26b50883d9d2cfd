"""Cold first calls over V2 REST and gRPC next to the SageMaker route's.

Each round takes three models not loaded yet and calls one of them over each route,
one after the other (the route that goes first rotates); the time of that first call
(download, unpack, check, load, predict) is reported per route.

    python bench/cold_v2.py --rounds 20
"""

import argparse
import os
import statistics
import sys
import time

import grpc
import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import BODY, mme_server, percentile, s3_with_models  # noqa: E402
from mlserver.grpc import dataplane_pb2 as pb  # noqa: E402
from mlserver.grpc import dataplane_pb2_grpc  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    names = [f"cold{i:03d}" for i in range(args.rounds * len(ROUTES) + 1)]
    timings = {route: [] for route in ROUTES}
    with s3_with_models([f"{name}.tar.gz" for name in names]) as s3, mme_server(s3) as server:
        with httpx.Client(base_url=server.url, timeout=60) as http, \
                grpc.insecure_channel(f"127.0.0.1:{server.env['MLSERVER_GRPC_PORT']}") as channel:
            stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
            sagemaker(server, http, stub, names.pop())  # warm up the fork server and the connections
            routes = list(ROUTES.items())
            for round in range(args.rounds):
                order = routes[round % len(routes):] + routes[: round % len(routes)]
                for route, call in order:
                    started = time.perf_counter()
                    call(server, http, stub, names.pop())
                    timings[route].append((time.perf_counter() - started) * 1e3)
    print(f"cold first call, {args.rounds} models per route (ms)")
    print("| route | median | p90 | mean |")
    print("|---|---|---|---|")
    for route, values in timings.items():
        print(f"| {route} | {statistics.median(values):.1f} | {percentile(values, 90):.1f} | {statistics.mean(values):.1f} |")


if __name__ == "__main__":
    main()
