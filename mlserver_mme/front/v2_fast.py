"""V2 REST inference of this server's XGBoost models, answered before MLServer's FastAPI stack.

MLServer reads a V2 request into pydantic models, decodes it through its codec
registry, and writes the answer back through pydantic and FastAPI: some 400 µs
of a one-row request, four times the prediction's whole cost on the SageMaker
route. ``FastV2.infer`` answers the requests whose answer it knows exactly:
``POST /v2/models/{name}/infer`` of a prefix model that our XGBoost runtime
serves, one numeric input (FP32, FP64, INT*, UINT*), no request parameter but
``content_type: "np"`` and ``binary_data_output``, requested outputs naming
``binary_data`` only. The body is read with orjson (binary tensors were turned
into the same JSON request by ``v2_compat``), predicted through the lifecycle as
SageMaker requests are (lazy load, LRU, in-flight count, per-model metrics, big
requests in the batch pool), and the answer is written as MLServer writes it:
the same bytes (the ``id`` aside when MLServer would make one up), the same
CloudEvents headers, gzip as MLServer's GZip middleware gives it, and errors
in MLServer's ``{"error": ...}`` shape with the same status.

Everything else returns False before anything is loaded or answered, and goes
on to MLServer unchanged: another runtime, a folder or hosted model, a
versioned path, another datatype (BYTES, BOOL, FP16), several inputs, a
parameter or field this module does not know (MLServer's codecs could read it),
a request MLServer would refuse (its error is MLServer's to word), and a model
whose settings name input metadata or a content type. A prediction failing
with anything but this package's own errors is also left to MLServer, which
predicts again and answers its own error.

Not done here: MLServer's own Prometheus series for the request
(``model_infer_request_*`` and the REST middleware's), its response cache (off
by default) and its inference middlewares beyond CloudEvents. These requests
count in the per-model metrics (``mme_model_*``, code = the HTTP status).
"""

import email.message
import math
import time
from typing import Callable, List, NamedTuple, Optional, Tuple

import numpy as np
import orjson
from mlserver.settings import ModelSettings
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import Receive, Scope, Send

from ..errors import ArtifactNotFound, MMEError
from ..lifecycle import ModelLifecycle, State
from ..lifecycle.v2 import V2Gate
from ..naming import v2_name
from ..observability.model_metrics import OTHER, model_metrics
from ..runtimes.xgboost import XGBoostModel
from .asgi import respond
from .offload import BatchPool, is_big_answer, is_costly
from .v2_compat import HEADER_LENGTH, BinaryChoice, binary_answer

# V2 datatypes taken here, as MLServer's NumpyCodec reads them (np.array(data, dtype)).
DTYPES = {
    "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP32": "float32", "FP64": "float64",
}
DATATYPE_OF = {np.dtype(dtype): datatype for datatype, dtype in DTYPES.items()}
NUMPY_DTYPES = {datatype: np.dtype(dtype) for datatype, dtype in DTYPES.items()}
REQUEST_FIELDS = frozenset({"id", "parameters", "inputs", "outputs"})
INPUT_FIELDS = frozenset({"name", "shape", "datatype", "data", "parameters"})
OUTPUT_FIELDS = frozenset({"name", "parameters"})
GZIP_MINIMUM = 500  # Starlette's GZipMiddleware default, which MLServer keeps
CONTENT_TYPE_NP = {"content_type": "np"}
VARY = (b"vary", b"Accept-Encoding")  # what the GZip middleware adds to an answer it could compress


class FastRequest(NamedTuple):
    """What a V2 request the fast path takes asks: its id (None: made up) and its feature rows."""

    id: Optional[str]
    features: np.ndarray


def reads_as_json(scope: Scope) -> bool:
    """Whether MLServer's FastAPI route reads this request's body as JSON: no Content-Type, or
    ``application/json`` or ``application/*+json``, as FastAPI decides (else it refuses the body, 422)."""
    values = [value for name, value in scope["headers"] if name == b"content-type"]
    if len(values) > 1:
        return False  # FastAPI reads the first: left to it
    if not values or not values[0] or values[0] == b"application/json":
        return True
    message = email.message.Message()
    message["content-type"] = values[0].decode("latin-1")
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def read_request(request) -> Optional[FastRequest]:
    """The request as the XGBoost runtime would read it through MLServer, or None to leave it to MLServer."""
    if not isinstance(request, dict) or not request.keys() <= REQUEST_FIELDS:
        return None
    request_id = request.get("id")
    if request_id is not None and not plain_id(request_id):
        return None
    if not _known_parameters(request.get("parameters")):
        return None
    outputs = request.get("outputs")
    if outputs is not None and not (isinstance(outputs, list) and all(map(_plain_output, outputs))):
        return None
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        return None
    tensor = inputs[0]
    if not isinstance(tensor, dict) or tensor.keys() | {"parameters"} != INPUT_FIELDS:
        return None
    shape, data, datatype = tensor["shape"], tensor["data"], tensor["datatype"]
    dtype = NUMPY_DTYPES.get(datatype) if type(datatype) is str else None
    if type(tensor["name"]) is not str or dtype is None or not isinstance(data, list):
        return None
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        return None
    if tensor.get("parameters") not in (None, {}):
        return None
    try:
        features: np.ndarray = np.array(data, dtype).reshape(shape)  # NumpyCodec.decode_input's own reading
    except (TypeError, ValueError, OverflowError):
        return None  # MLServer's to refuse, in its words
    if features.ndim == 1:
        features = features.reshape(1, -1)
    if features.ndim != 2:
        return None
    return FastRequest(request_id, features)


def plain_id(request_id) -> bool:
    """An id that travels in headers (CloudEvents) as it is: printable ASCII; MLServer answers any other."""
    return type(request_id) is str and request_id.isascii() and request_id.isprintable()


def _known_parameters(parameters) -> bool:
    if parameters is None:
        return True
    if not isinstance(parameters, dict) or not parameters.keys() <= {"binary_data_output", "content_type"}:
        return False
    return parameters.get("content_type", "np") == "np" and type(parameters.get("binary_data_output", True)) is bool


def _plain_output(output) -> bool:
    if not isinstance(output, dict) or "name" not in output or not output.keys() <= OUTPUT_FIELDS:
        return False
    options = output.get("parameters")
    if options is None:
        return type(output["name"]) is str
    return (
        type(output["name"]) is str
        and isinstance(options, dict)
        and options.keys() <= {"binary_data"}
        and type(options.get("binary_data", True)) is bool
    )


def answer_body(model_name: str, model_version: Optional[str], request_id: str, predictions: np.ndarray) -> Optional[bytes]:
    """MLServer's JSON answer (NumpyRequestCodec through pydantic and orjson), or None for a dtype it is not."""
    datatype = DATATYPE_OF.get(predictions.dtype)
    if datatype is None:
        return None
    shape = list(predictions.shape)
    if len(shape) <= 1:
        shape.append(1)  # MLServer's inject_batch_dimension
    data = predictions.ravel().tolist()
    if predictions.dtype.kind == "f" and not _finite(data, predictions):
        data = [value if value == value and abs(value) != float("inf") else None for value in data]
    response: dict = {"model_name": model_name}
    if model_version is not None:
        response["model_version"] = model_version
    response["id"] = request_id
    response["parameters"] = CONTENT_TYPE_NP
    response["outputs"] = [
        {"name": "output-1", "shape": shape, "datatype": datatype, "parameters": CONTENT_TYPE_NP, "data": data}
    ]
    return orjson.dumps(response)


def _finite(values: list, predictions: np.ndarray) -> bool:
    """No NaN nor infinity among the predictions (which MLServer's answer writes as null)."""
    if predictions.dtype == np.float32:  # a million float32 values cannot sum past float64's range
        return math.isfinite(sum(values))
    return bool(np.isfinite(predictions).all())


class FastV2:
    """Answers the V2 inference requests it takes (``infer``), for ``V2CompatMiddleware``."""

    def __init__(
        self,
        lifecycle: ModelLifecycle,
        gate: V2Gate,
        top_k: int,
        cloud_events: Callable[[ModelSettings, str], List[Tuple[bytes, bytes]]],
        gzip: bool,
        new_id: Callable[[], str],
        batches: BatchPool,
    ):
        self.lifecycle = lifecycle
        self.gate = gate
        self.cloud_events = cloud_events  # (model settings, request id) -> the answer's CloudEvents headers
        self.gzip = gzip  # MLServer's app compresses answers (its GZip middleware)
        self.new_id = new_id
        self.batches = batches  # big requests' work, off the event loop
        self.model_metrics = model_metrics(top_k)

    def takes(self, scope: Scope, json_body: bool) -> Optional[str]:
        """The target of a POST to an unversioned infer path, if a prefix model's (else MLServer's).

        ``json_body``: the body is the client's JSON (not one ``v2_compat`` made of a binary request,
        which MLServer is given as ``application/json``), so its Content-Type decides as FastAPI's does.
        """
        if scope["method"] != "POST" or (json_body and not reads_as_json(scope)):
            return None  # MLServer's 405, or its 422
        name = scope["path"][len("/v2/models/") : -len("/infer")]
        return None if "/" in name else self.gate.target(name)

    async def infer(
        self, scope: Scope, receive: Receive, send: Send, target: str, request: dict, big: bool,
        choice: Optional[BinaryChoice],
    ) -> bool:
        """Answer ``request`` if the fast path takes it (True), else leave everything as it was (False)."""
        # small requests are read, predicted and written right here: a thread hop costs more (offload.py)
        parsed = await self.batches.run(read_request, request) if big else read_request(request)
        if parsed is None:
            return False
        started = time.perf_counter()
        if not serves(self.lifecycle, target):
            return False  # not loaded yet (MLServer's path loads it, counted once) or not ours
        try:
            entry = await self.lifecycle.acquire(target)
        except MMEError as error:  # unloaded meanwhile, and its load failed
            label = failed_label(self.lifecycle, target, error)
            self.model_metrics.record(label, str(error.status_code), time.perf_counter() - started)
            await self._answer(scope, receive, send, error.status_code, *_error(error))
            return True
        try:
            model = entry.model
            if type(model) is not XGBoostModel or not plain_settings(model):
                return False  # overwritten by another runtime's artifact while unloaded: rare, counted twice
            features = parsed.features
            rows = features.shape[0]
            offload = big or is_big_answer(rows, model.values_per_row) or is_costly(rows, model.visits_per_row)
            request_id = parsed.id if parsed.id is not None else self.new_id()
            version = model.settings.parameters.version if model.settings.parameters else None
            predictor = model.predictor()
            try:
                predictions = await self.batches.run(predictor, features) if offload else predictor(features)
            except MMEError as error:
                self.model_metrics.record(target, str(error.status_code), time.perf_counter() - started)
                await self._answer(scope, receive, send, error.status_code, *_error(error))
                return True
            except Exception:
                return False  # MLServer predicts again and answers its own error
            if offload:
                body = await self.batches.run(answer_body, model.name, version, request_id, predictions)
            else:
                body = answer_body(model.name, version, request_id, predictions)
            if body is None:
                return False
        finally:
            self.lifecycle.release(entry)
        headers = [(b"content-type", b"application/json"), *self.cloud_events(model.settings, request_id)]
        compressible = self.gzip and len(body) >= GZIP_MINIMUM  # MLServer's GZip middleware answers it
        if choice is not None:  # the conversion MLServer's answers take in V2CompatMiddleware (gzip not asked)
            if compressible:
                headers.append(VARY)
            converted = await self.batches.run(binary_answer, body, choice) if offload else binary_answer(body, choice)
            if converted is not None:
                body, header_length = converted
                headers = [
                    (b"content-type", b"application/octet-stream"),
                    (HEADER_LENGTH, str(header_length).encode()),
                    *headers[1:],
                ]
            await respond(send, 200, body, headers)
        else:
            await self._answer(scope, receive, send, 200, body, headers)
        self.model_metrics.record(target, "200", time.perf_counter() - started)
        return True

    async def _answer(self, scope: Scope, receive: Receive, send: Send, status: int, body: bytes, headers: list) -> None:
        """An answer as MLServer's app sends it: through Starlette's GZip middleware when the app has it and
        the body is long enough (``Vary``, and compressed when the client takes gzip), errors included."""
        if not (self.gzip and len(body) >= GZIP_MINIMUM):
            await respond(send, status, body, headers)
            return

        async def answer(scope: Scope, receive: Receive, send: Send) -> None:
            await respond(send, status, body, headers)

        await GZipMiddleware(answer, minimum_size=GZIP_MINIMUM)(scope, receive, send)


def serves(lifecycle: ModelLifecycle, target: str) -> bool:
    """Whether ``target``'s model is loaded and ours, so the fast path answers it (REST and gRPC alike).

    A model not loaded yet goes to MLServer's path, which loads it through the lifecycle: the fast path
    never loads a model it may then hand over, which would count the request twice.
    """
    entry = lifecycle.models.get(v2_name(target))
    return (
        entry is not None
        and entry.state is State.READY
        and type(entry.model) is XGBoostModel
        and plain_settings(entry.model)
    )


def failed_label(lifecycle: ModelLifecycle, target: str, error: MMEError) -> str:
    """The per-model metrics' label of a request whose model failed to load: made-up names never take a label
    value of their own (as on the SageMaker route)."""
    known = not isinstance(error, ArtifactNotFound) and lifecycle.models.get(v2_name(target)) is not None
    return target if known else OTHER


def plain_settings(model: XGBoostModel) -> bool:
    """No input metadata nor content type in the model's settings: MLServer's codecs read it as NumPy."""
    settings = model.settings
    parameters = settings.parameters
    return not settings.inputs and (parameters is None or parameters.content_type in (None, "np"))


def _error(error: MMEError) -> Tuple[bytes, list]:
    """MLServer's error answer (its exception handler: ``{"error": str}`` by orjson), its body and headers."""
    return orjson.dumps({"error": str(error)}), [(b"content-type", b"application/json")]

