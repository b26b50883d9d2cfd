"""The V2 fast paths against MLServer's own path: corpora of V2 REST and gRPC requests, answered byte for byte alike.

Two servers over the same models: one with the fast path (``front/v2_fast.py``), one with
``MLSERVER_MME_V2_FAST_PATH=false`` (every V2 request through MLServer's FastAPI stack and gRPC
servicer). Each request goes to both; status, headers (but ``date``) and body must be the same bytes,
made-up ids aside (a request naming its id gets it back on both); over gRPC, the status, the details,
the trailing metadata and the serialized answer. The per-model request count on the fast server tells
which requests the fast path answered, so the corpus also pins what falls through to MLServer. The
fast path answers loaded models only: the fixture loads them first (a model's first call, which
loads it, goes through MLServer's path).
"""

import io
import json
import re
import tarfile

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
import xgboost as xgb
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc
from support.artifacts import ROWS
from support.mlserver_process import MLServerProcess
from support.s3server import BUCKET, s3_env
from support.triton import triton_body, triton_input

PREFIX = "v2fast/"
HOUSTON, CLASSES, DOUBLER = "Houston_TX.tar.gz", "multiclass.tar.gz", "custom/doubler.tar.gz"
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FLAT = sum(ROWS, [])
ROW = ROWS[0]


def multiclass_model() -> bytes:
    """Three classes over six features: answers of several values a row."""
    rng = np.random.default_rng(7)
    features = rng.normal(size=(60, 6)).astype(np.float32)
    booster = xgb.train(
        {"objective": "multi:softprob", "num_class": 3, "max_depth": 2},
        xgb.DMatrix(features, label=np.arange(60) % 3),
        num_boost_round=3,
    )
    data = bytes(booster.save_raw("json"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        member = tarfile.TarInfo("xgboost-model")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pair(s3, artifacts, tmp_path_factory):
    """(fast, plain): the same models, the fast path on and off."""
    for target in (HOUSTON, DOUBLER):
        s3.client.put_object(Bucket=BUCKET, Key=PREFIX + target, Body=artifacts[target])
    s3.client.put_object(Bucket=BUCKET, Key=PREFIX + CLASSES, Body=multiclass_model())
    servers = []
    try:
        for name, on in (("fast", "true"), ("plain", "false")):
            work = tmp_path_factory.mktemp(name)
            env = {**s3_env(s3, PREFIX), "MLSERVER_MME_CACHE_DIR": str(work / "cache"), "MLSERVER_MME_V2_FAST_PATH": on}
            servers.append(MLServerProcess(env, str(work / "mlserver.log")).start())
        for server in servers:  # the fast path answers loaded models: the first call of each loads it
            for model in ("Houston_TX", "multiclass"):
                reply = httpx.post(f"{server.url}/v2/models/{model}/infer", content=request(tensor("FP32", ROW, [1, 6])))
                assert reply.status_code == 200, reply.text
        yield servers
    finally:
        for server in servers:
            server.stop()


def tensor(datatype, values, shape, name="input-0", **extra):
    return {"name": name, "shape": shape, "datatype": datatype, "data": values, **extra}


def request(*inputs, **fields):
    return json.dumps({**fields, "inputs": list(inputs)}).encode()


def binary(arrays, outputs=None, **options):
    """A tritonclient.http body with its headers."""
    body, header_length = triton_body([triton_input(f"input-{i}", a) for i, a in enumerate(arrays)], outputs, **options)
    headers = {"Content-Type": "application/octet-stream"}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    return body, headers


def binary_output(name, binary_data=True):
    return httpclient.InferRequestedOutput(name, binary_data=binary_data)


SMALL = [1, 2, 3, 4, 5, 6]
BIG_ROWS = np.tile(np.asarray(ROWS, dtype=np.float32), (1000, 1))  # 64 KiB and more: the batch pool

# (case, model path, body, extra headers, answered by the fast path)
CORPUS = [
    ("fp32 one row", "Houston_TX", request(tensor("FP32", ROW, [1, 6])), {}, True),
    ("fp64 rows, own id", "Houston_TX", request(tensor("FP64", FLAT, [len(ROWS), 6]), id="mine"), {}, True),
    ("int32", "Houston_TX", request(tensor("INT32", SMALL, [1, 6]), id="a"), {}, True),
    ("empty id", "Houston_TX", request(tensor("FP32", ROW, [1, 6]), id=""), {}, True),
    ("int64 rows", "Houston_TX", request(tensor("INT64", SMALL * 3, [3, 6])), {}, True),
    ("int8", "Houston_TX", request(tensor("INT8", SMALL, [1, 6])), {}, True),
    ("int16", "Houston_TX", request(tensor("INT16", SMALL, [1, 6])), {}, True),
    ("uint8", "Houston_TX", request(tensor("UINT8", SMALL, [1, 6])), {}, True),
    ("uint16", "Houston_TX", request(tensor("UINT16", SMALL, [1, 6])), {}, True),
    ("uint32", "Houston_TX", request(tensor("UINT32", SMALL, [1, 6])), {}, True),
    ("uint64", "Houston_TX", request(tensor("UINT64", SMALL, [1, 6])), {}, True),
    ("flat shape", "Houston_TX", request(tensor("FP32", ROW, [6])), {}, True),
    ("nested data", "Houston_TX", request(tensor("FP32", ROWS[:2], [2, 6])), {}, True),
    ("missing values", "Houston_TX", request(tensor("FP32", [None, 3000, None, 2, 1.0, None], [1, 6])), {}, True),
    ("no rows", "Houston_TX", request(tensor("FP32", [], [0, 6])), {}, True),
    ("named output", "Houston_TX", request(tensor("FP32", ROW, [1, 6]), outputs=[{"name": "output-1"}]), {}, True),
    ("unknown output", "Houston_TX", request(tensor("FP32", ROW, [1, 6]), outputs=[{"name": "predict"}]), {}, True),
    (
        "binary_data_output",
        "Houston_TX",
        request(tensor("FP32", FLAT, [len(ROWS), 6]), parameters={"binary_data_output": True}),
        {},
        True,
    ),
    (
        "binary output by name",
        "Houston_TX",
        request(tensor("FP64", ROW, [1, 6]), outputs=[{"name": "output-1", "parameters": {"binary_data": True}}]),
        {},
        True,
    ),
    (
        "binary for another name",
        "Houston_TX",
        request(tensor("FP64", ROW, [1, 6]), outputs=[{"name": "other", "parameters": {"binary_data": True}}]),
        {},
        True,
    ),
    ("content_type np", "Houston_TX", request(tensor("FP32", ROW, [1, 6]), parameters={"content_type": "np"}), {}, True),
    ("input parameters empty", "Houston_TX", request(tensor("FP32", ROW, [1, 6], parameters={})), {}, True),
    ("multiclass", "multiclass", request(tensor("FP32", SMALL * 4, [4, 6])), {}, True),
    ("multiclass binary", "multiclass", request(tensor("FP64", SMALL * 2, [2, 6]), parameters={"binary_data_output": True}), {}, True),
    ("too few features", "Houston_TX", request(tensor("FP32", ROW[:5], [1, 5])), {}, True),
    ("no such model", "nope", request(tensor("FP32", ROW, [1, 6])), {}, False),
    ("a long made-up name", "x" * 600, request(tensor("FP32", ROW, [1, 6])), {"Accept-Encoding": "gzip"}, False),
    ("gzip, a small answer", "Houston_TX", request(tensor("FP32", ROW, [1, 6])), {"Accept-Encoding": "gzip"}, True),
    ("gzip, a big answer", "Houston_TX", request(tensor("FP32", FLAT * 20, [len(ROWS) * 20, 6])), {"Accept-Encoding": "gzip"}, True),
    ("binary fp32", "Houston_TX", *binary([np.asarray(ROWS, dtype=np.float32)]), True),
    ("binary fp64, binary out", "Houston_TX", *binary([np.asarray(ROWS, dtype=np.float64)], [binary_output("output-1")]), True),
    ("binary int64", "Houston_TX", *binary([np.asarray([SMALL, SMALL], dtype=np.int64)]), True),
    ("binary big", "Houston_TX", *binary([BIG_ROWS], [binary_output("output-1")]), True),
    ("binary big, json out", "Houston_TX", *binary([BIG_ROWS]), True),
    ("no content type", "Houston_TX", request(tensor("FP32", ROW, [1, 6])), {"Content-Type": None}, True),
    ("json with a charset", "Houston_TX", request(tensor("FP32", ROW, [1, 6])), {"Content-Type": "application/json; charset=utf-8"}, True),
    ("a +json type", "Houston_TX", request(tensor("FP32", ROW, [1, 6])), {"Content-Type": "application/vnd.v2+json"}, True),
    # what falls through to MLServer
    ("text/plain", "Houston_TX", request(tensor("FP32", ROW, [1, 6])), {"Content-Type": "text/plain"}, False),
    ("a form", "Houston_TX", request(tensor("FP32", ROW, [1, 6])), {"Content-Type": "application/x-www-form-urlencoded"}, False),
    ("an unknown parameter", "Houston_TX", request(tensor("FP32", ROW, [1, 6]), parameters={"foo": 1}), {}, False),
    ("another content type", "Houston_TX", request(tensor("FP32", ROW, [1, 6]), parameters={"content_type": "pd"}), {}, False),
    ("an unknown field", "Houston_TX", request(tensor("FP32", ROW, [1, 6]), extra=1), {}, False),
    ("input content type", "Houston_TX", request(tensor("FP32", ROW, [1, 6], parameters={"content_type": "np"})), {}, False),
    ("bytes", "Houston_TX", request(tensor("BYTES", ["a", "b"], [2])), {}, False),
    ("bool", "Houston_TX", request(tensor("BOOL", [True] * 6, [1, 6])), {}, False),
    ("fp16", "Houston_TX", request(tensor("FP16", ROW, [1, 6])), {}, False),
    ("two inputs", "Houston_TX", request(tensor("FP32", ROW, [1, 6]), tensor("FP32", ROW, [1, 6], name="b")), {}, False),
    ("shape and data disagree", "Houston_TX", request(tensor("FP32", ROW, [2, 6])), {}, False),
    ("three dimensions", "Houston_TX", request(tensor("FP32", ROW, [1, 1, 6])), {}, False),
    ("out of range int8", "Houston_TX", request(tensor("INT8", ROW, [1, 6])), {}, False),
    ("numeric id", "Houston_TX", request(tensor("FP32", ROW, [1, 6]), id=5), {}, False),
    ("non-ASCII id", "Houston_TX", request(tensor("FP32", ROW, [1, 6]), id="caf\u00e9"), {}, False),
    ("not json", "Houston_TX", b"{not json", {}, False),
    ("another runtime", "custom~2Fdoubler", request(tensor("FP32", ROW, [1, 6])), {}, False),
    ("a version", "Houston_TX/versions/1", request(tensor("FP32", ROW, [1, 6])), {}, False),
    ("binary bytes", "Houston_TX", *binary([np.asarray([b"a", b"bc"], dtype=object)]), False),
]


def fast_answers(server) -> float:
    """Requests the per-model metrics counted: the fast path's (MLServer's path counts none)."""
    text = httpx.get(f"http://127.0.0.1:{server.env['MLSERVER_METRICS_PORT']}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("mme_model_request_seconds_count"))


def answer(server, path, body, headers, method="POST"):
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity", **headers}
    headers = {name: value for name, value in headers.items() if value is not None}
    url = f"{server.url}/v2/models/{path}/infer"
    reply = httpx.request(method, url, content=body, headers=headers, timeout=60)
    kept = [(name, UUID.sub(b"ID", value.encode())) for name, value in reply.headers.items() if name != "date"]
    if reply.headers.get("content-encoding") == "gzip":
        kept = [(name, value) for name, value in kept if name != "content-length"]  # gzip's header holds a time
    return reply.status_code, kept, UUID.sub(b"ID", reply.content)


@pytest.mark.parametrize("case, path, body, headers, fast", CORPUS, ids=[case[0] for case in CORPUS])
def test_same_answer_as_mlservers_path(pair, case, path, body, headers, fast):
    fast_server, plain_server = pair
    before = fast_answers(fast_server)
    mine = answer(fast_server, path, body, headers)
    assert fast_answers(fast_server) - before == (1 if fast else 0)
    theirs = answer(plain_server, path, body, headers)
    assert mine == theirs
    assert fast_answers(plain_server) == 0


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_other_methods_fall_through(pair, method):
    fast_server, plain_server = pair
    body = request(tensor("FP32", ROW, [1, 6]))
    before = fast_answers(fast_server)
    mine = answer(fast_server, "Houston_TX", body, {}, method)
    assert mine[0] == 405
    assert fast_answers(fast_server) == before
    assert mine == answer(plain_server, "Houston_TX", body, {}, method)


def test_gzip_answer_is_compressed_alike(pair):
    """A big answer to a client taking gzip: compressed on both, to the same bytes once inflated."""
    body = request(tensor("FP32", FLAT * 20, [len(ROWS) * 20, 6]))
    replies = [
        httpx.post(f"{server.url}/v2/models/Houston_TX/infer", content=body, headers={"Accept-Encoding": "gzip"})
        for server in pair
    ]
    for reply in replies:
        assert reply.status_code == 200
        assert reply.headers["content-encoding"] == "gzip"
    raw = [UUID.sub(b"ID", reply.content) for reply in replies]
    assert raw[0] == raw[1]
    assert json.loads(raw[0])["outputs"][0]["shape"] == [len(ROWS) * 20, 1]


def mme_requests(server) -> float:
    """Requests the lifecycle counted: hits and misses."""
    text = httpx.get(f"http://127.0.0.1:{server.env['MLSERVER_METRICS_PORT']}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(("mme_model_cache_hits_total ", "mme_model_cache_misses_total ")))


def test_requests_left_to_mlserver_are_counted_once(pair):
    """Another runtime's model, cold then warm: each request counts once in the lifecycle, on both servers."""
    body = request(tensor("FP32", ROW, [1, 6]))
    for server in pair:
        before = mme_requests(server)
        for _ in range(5):
            assert httpx.post(f"{server.url}/v2/models/custom~2Fdoubler/infer", content=body).status_code == 200
        assert mme_requests(server) - before == 5


def test_with_cors_every_v2_rest_request_goes_through_mlservers_app(s3, pair, tmp_path):
    """MLServer's CORS (and tracing) middlewares are not the fast path's to stand in for: it stays off for REST."""
    env = {**s3_env(s3, PREFIX), "MLSERVER_MME_CACHE_DIR": str(tmp_path / "cache"),
           "MLSERVER_CORS_SETTINGS": json.dumps({"allow_origins": ["*"]})}
    server = MLServerProcess(env, str(tmp_path / "mlserver.log")).start()
    try:
        for _ in range(2):  # cold, then warm
            reply = httpx.post(f"{server.url}/v2/models/Houston_TX/infer", content=request(tensor("FP32", ROW, [1, 6])),
                               headers={"Origin": "https://example.com"})
            assert reply.status_code == 200, reply.text
            assert reply.headers["access-control-allow-origin"] == "*"
        assert fast_answers(server) == 0
        assert "event=v2-fast-path-rest-off reason=CORSMiddleware" in server.log()
    finally:
        server.stop()


def test_own_id_comes_back_unchanged(pair):
    fast_server, _ = pair
    body = request(tensor("FP32", ROW, [1, 6]), id="request-7")
    reply = httpx.post(f"{fast_server.url}/v2/models/Houston_TX/infer", content=body)
    assert reply.status_code == 200
    assert reply.json()["id"] == "request-7"
    assert reply.headers["ce-id"] == "request-7"


# --- gRPC ModelInfer ------------------------------------------------------------------------------

def grpc_tensor(datatype, shape, name="input-0", **contents):
    return pb.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents)
    )


def raw_request(model, array, datatype, **fields):
    tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype=datatype, shape=list(array.shape))
    return pb.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[array.tobytes()], **fields)


def infer(model, *inputs, **fields):
    return pb.ModelInferRequest(model_name=model, inputs=list(inputs), **fields)


ROWS32 = np.asarray(ROWS, dtype=np.float32)
GRPC_CORPUS = [
    ("fp32 one row", infer("Houston_TX", grpc_tensor("FP32", [1, 6], fp32_contents=ROW)), True),
    ("fp64 rows, own id", infer("Houston_TX", grpc_tensor("FP64", [len(ROWS), 6], fp64_contents=FLAT), id="mine"), True),
    ("int32", infer("Houston_TX", grpc_tensor("INT32", [1, 6], int_contents=SMALL)), True),
    ("int64", infer("Houston_TX", grpc_tensor("INT64", [2, 6], int64_contents=SMALL * 2)), True),
    ("uint8", infer("Houston_TX", grpc_tensor("UINT8", [1, 6], uint_contents=SMALL)), True),
    ("uint64", infer("Houston_TX", grpc_tensor("UINT64", [1, 6], uint64_contents=SMALL)), True),
    ("flat shape", infer("Houston_TX", grpc_tensor("FP32", [6], fp32_contents=ROW)), True),
    ("values in another field", infer("Houston_TX", grpc_tensor("FP32", [1, 6], fp64_contents=ROW)), True),
    ("named output", infer("Houston_TX", grpc_tensor("FP32", [1, 6], fp32_contents=ROW),
                           outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="whatever")]), True),
    ("raw fp32", raw_request("Houston_TX", ROWS32, "FP32"), True),
    ("raw fp64", raw_request("Houston_TX", ROWS32.astype(np.float64), "FP64", id="r"), True),
    ("raw int64", raw_request("Houston_TX", np.asarray([SMALL, SMALL], dtype=np.int64), "INT64"), True),
    ("raw big", raw_request("Houston_TX", np.tile(ROWS32, (1000, 1)), "FP32"), True),
    ("multiclass", infer("multiclass", grpc_tensor("FP32", [4, 6], fp32_contents=SMALL * 4)), True),
    ("multiclass raw", raw_request("multiclass", np.asarray([SMALL, SMALL], dtype=np.float32), "FP32"), True),
    ("too few features", infer("Houston_TX", grpc_tensor("FP32", [1, 5], fp32_contents=ROW[:5])), True),
    ("no such model", infer("nope", grpc_tensor("FP32", [1, 6], fp32_contents=ROW)), False),
    # what falls through to MLServer
    ("request parameters", infer("Houston_TX", grpc_tensor("FP32", [1, 6], fp32_contents=ROW),
                                 parameters={"content_type": pb.InferParameter(string_param="np")}), False),
    ("bytes", infer("Houston_TX", grpc_tensor("BYTES", [1], bytes_contents=[b"a"])), False),
    ("bool", infer("Houston_TX", grpc_tensor("BOOL", [1, 6], bool_contents=[True] * 6)), False),
    ("two inputs", infer("Houston_TX", grpc_tensor("FP32", [1, 6], fp32_contents=ROW),
                         grpc_tensor("FP32", [1, 6], name="b", fp32_contents=ROW)), False),
    ("shape and data disagree", infer("Houston_TX", grpc_tensor("FP32", [2, 6], fp32_contents=ROW)), False),
    ("a version", infer("Houston_TX", grpc_tensor("FP32", [1, 6], fp32_contents=ROW), model_version="1"), False),
    ("another runtime", infer("custom~2Fdoubler", grpc_tensor("FP32", [1, 6], fp32_contents=ROW)), False),
]


def grpc_answer(server, request):
    with grpc.insecure_channel(f"127.0.0.1:{server.env['MLSERVER_GRPC_PORT']}") as channel:
        stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            reply, call = stub.ModelInfer.with_call(request, timeout=60)
        except grpc.RpcError as error:
            return error.code(), error.details(), None
    metadata = [(key, UUID.sub(b"ID", value.encode()).decode()) for key, value in call.trailing_metadata()]
    return grpc.StatusCode.OK, metadata, UUID.sub(b"ID", reply.SerializeToString(deterministic=True))


@pytest.mark.parametrize("case, request_, fast", GRPC_CORPUS, ids=[case[0] for case in GRPC_CORPUS])
def test_same_grpc_answer_as_mlservers_path(pair, case, request_, fast):
    fast_server, plain_server = pair
    before = fast_answers(fast_server)
    mine = grpc_answer(fast_server, request_)
    assert fast_answers(fast_server) - before == (1 if fast else 0)
    assert mine == grpc_answer(plain_server, request_)
    assert fast_answers(plain_server) == 0
