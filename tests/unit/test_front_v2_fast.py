"""The V2 fast paths' reading and writing against MLServer's own codecs and converters, in process.

What a server cannot easily be made to answer (NaN and infinite predictions, float64 predictions, a
model version) is checked here; the end-to-end comparison is tests/e2e/test_front_v2_fast.py.
"""

import numpy as np
import pytest
from mlserver.codecs import NumpyCodec, NumpyRequestCodec
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.converters import ModelInferRequestConverter, ModelInferResponseConverter
from mlserver.rest.responses import Response
from mlserver.types import InferenceRequest

from mlserver_mme.front.v2_fast import answer_body, read_request
from mlserver_mme.front.v2_fast_grpc import infer_response, read_infer_request

PREDICTIONS = [
    np.asarray([387599.1, 48830.99], dtype=np.float32),
    np.asarray([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]], dtype=np.float32),
    np.asarray([1.5, np.nan, -np.inf, np.inf], dtype=np.float32),
    np.asarray([1e300, 2.5, np.nan], dtype=np.float64),
    np.asarray([], dtype=np.float32),
    np.asarray([3, 4], dtype=np.int64),
]


def mlservers_answer(name, version, request_id, predictions) -> bytes:
    """MLServer's REST answer: the runtime's NumpyRequestCodec response, as its FastAPI route writes it."""
    response = NumpyRequestCodec.encode_response(name, predictions, version)
    response.id = request_id
    content = response.model_dump(mode="json", exclude_unset=True, exclude_none=True)
    return Response(content=content).body


@pytest.mark.parametrize("predictions", PREDICTIONS, ids=lambda p: f"{p.dtype}{list(p.shape)}")
@pytest.mark.parametrize("version", [None, "v3"])
def test_answer_is_mlservers(predictions, version):
    assert answer_body("Houston_TX", version, "id-1", predictions) == mlservers_answer(
        "Houston_TX", version, "id-1", predictions
    )


def test_an_answer_of_another_dtype_is_left_to_mlserver():
    assert answer_body("m", None, "i", np.asarray([1.0], dtype=np.float16)) is None


REQUESTS = [
    {"inputs": [{"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2.5, None]}]},
    {"inputs": [{"name": "a", "shape": [2, 2], "datatype": "INT16", "data": [[1, 2], [3, 4]]}], "id": "x"},
    {"inputs": [{"name": "a", "shape": [3], "datatype": "UINT64", "data": [1, 2, 3]}], "outputs": [{"name": "o"}]},
    {"inputs": [{"name": "a", "shape": [0, 6], "datatype": "FP64", "data": []}], "parameters": {"content_type": "np"}},
]


@pytest.mark.parametrize("request_", REQUESTS)
def test_request_is_read_as_mlserver_reads_it(request_):
    mine = read_request(request_)
    theirs = NumpyRequestCodec.decode_request(InferenceRequest.model_validate(request_))
    if theirs.ndim == 1:
        theirs = theirs.reshape(1, -1)
    assert mine is not None and mine.id == request_.get("id")
    assert mine.features.dtype == theirs.dtype
    np.testing.assert_array_equal(mine.features, theirs)


@pytest.mark.parametrize(
    "request_",
    [
        {"inputs": [{"name": "a", "shape": [1, 1], "datatype": "FP32", "data": [1]}], "parameters": {"x": 1}},
        {"inputs": [{"name": "a", "shape": [1, 1], "datatype": "FP32", "data": [1], "parameters": {"x": 1}}]},
        {"inputs": [{"name": "a", "shape": [1, 1], "datatype": "BYTES", "data": ["a"]}]},
        {"inputs": [{"name": "a", "shape": [1, 1], "datatype": ["FP32"], "data": [1]}]},
        {"inputs": [{"name": "a", "shape": [1, 1, 1], "datatype": "FP32", "data": [1]}]},
        {"inputs": [{"name": "a", "shape": [2, 1], "datatype": "FP32", "data": [1]}]},
        {"inputs": [{"name": "a", "shape": [1, -1], "datatype": "FP32", "data": [1]}]},
        {"inputs": [{"name": "a", "shape": [1, True], "datatype": "FP32", "data": [1]}]},
        {"inputs": [{"name": "a", "shape": [1, 1], "datatype": "INT8", "data": [300]}]},
        {"inputs": [{"name": "a", "shape": [1, 1], "datatype": "FP32", "data": [1]}], "outputs": [{"name": "o", "parameters": {"classification": 2}}]},
        {"inputs": [{"name": "a", "shape": [1, 1], "datatype": "FP32", "data": [1]}], "id": 3},
        {"inputs": [{"name": "a", "shape": [1, 1], "datatype": "FP32", "data": [1]}], "id": "caf\u00e9"},
        {"inputs": [{"name": "a", "shape": [1, 1], "datatype": "FP32", "data": [1]}], "id": "a\nb"},
        {"inputs": [], "id": "x"},
        [1, 2],
    ],
)
def test_what_falls_through(request_):
    assert read_request(request_) is None


# --- gRPC -----------------------------------------------------------------------------------------


def mlservers_grpc_answer(name, version, request_id, predictions, raw) -> bytes:
    response = NumpyRequestCodec.encode_response(name, predictions, version)
    response.id = request_id
    return ModelInferResponseConverter.from_types(response, use_raw=raw).SerializeToString()


@pytest.mark.parametrize("predictions", [p for p in PREDICTIONS if np.isfinite(p).all()], ids=str)
@pytest.mark.parametrize("raw", [False, True])
def test_grpc_answer_is_mlservers(predictions, raw):
    mine = infer_response("Houston_TX", "2", "id-1", predictions, raw)
    assert mine is not None
    assert mine.SerializeToString() == mlservers_grpc_answer("Houston_TX", "2", "id-1", predictions, raw)


def test_grpc_nan_is_left_to_mlserver():
    assert infer_response("m", None, "", np.asarray([np.nan], dtype=np.float32), False) is None


def grpc_request(datatype, shape, raw=None, **contents):
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="a", datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents)
    )
    request = pb.ModelInferRequest(model_name="m", inputs=[tensor])
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


@pytest.mark.parametrize(
    "request_",
    [
        grpc_request("FP32", [1, 3], fp32_contents=[1, 2.5, 3]),
        grpc_request("FP32", [2, 1], fp64_contents=[1.25, 2]),
        grpc_request("INT16", [2, 2], int_contents=[1, -2, 3, 4]),
        grpc_request("UINT64", [3], uint64_contents=[1, 2, 3]),
        grpc_request("FP64", [2, 2], raw=np.asarray([1.5, 2, 3, 4]).tobytes()),
        grpc_request("INT32", [1, 2], raw=np.asarray([7, 8], dtype=np.int32).tobytes()),
    ],
)
def test_grpc_request_is_read_as_mlserver_reads_it(request_):
    mine = read_infer_request(request_)
    theirs = NumpyCodec.decode_input(ModelInferRequestConverter.to_types(request_).inputs[0])
    if theirs.ndim == 1:
        theirs = theirs.reshape(1, -1)
    assert mine is not None
    np.testing.assert_array_equal(mine[0], theirs)
    assert mine[0].dtype == theirs.dtype
    assert mine[1] == bool(request_.raw_input_contents)


def test_grpc_requests_left_to_mlserver():
    assert read_infer_request(grpc_request("FP32", [1, 2], raw=b"\x00" * 4)) is None  # too few bytes
    assert read_infer_request(grpc_request("BOOL", [1, 1], bool_contents=[True])) is None
    assert read_infer_request(grpc_request("FP32", [1, 1], fp32_contents=[1], fp64_contents=[1])) is None
    versioned = grpc_request("FP32", [1, 1], fp32_contents=[1])
    versioned.model_version = "1"
    assert read_infer_request(versioned) is None
