"""gRPC ``ModelInfer`` of this server's XGBoost models, answered before MLServer's converters and data plane.

MLServer's ``ModelInfer`` turns the protobuf request into its pydantic types, runs
its data plane and the runtime's codecs, and turns the answer back into protobuf.
``FastModelInfer`` answers the calls whose answer it knows exactly, with the same
protobuf message (the same bytes) and the same trailing metadata (CloudEvents
headers), predicting through the lifecycle as the REST fast path does
(``v2_fast.py``): an unversioned call of a prefix model served by our XGBoost
runtime, one numeric input (FP32, FP64, INT*, UINT*) in one ``*_contents`` field
or in ``raw_input_contents``, no parameters on the request or its tensors,
requested outputs without parameters. It returns None for anything else, before
anything is loaded, and MLServer's own handler answers it unchanged (another
runtime, a folder or hosted model, a version, BYTES/BOOL/FP16, parameters, a
request MLServer would refuse, predictions holding NaN, which MLServer's
converter cannot write). Errors are MLServer's: its status for the error, its
message as the details.

``mlserver_internals.shortcut_model_infer`` puts it in front of MLServer's
handler (MLServer's interceptors, its gRPC metrics among them, still run).
"""

import struct
import time
from typing import Callable, List, NoReturn, Optional, Tuple

import grpc
import numpy as np
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.settings import ModelSettings

from ..errors import MMEError
from ..lifecycle import ModelLifecycle
from ..lifecycle.v2 import V2Gate
from ..observability.model_metrics import model_metrics
from ..runtimes.xgboost import XGBoostModel
from .offload import BatchPool, is_big_answer, is_costly
from .v2_fast import DATATYPE_OF, NUMPY_DTYPES, failed_label, plain_id, plain_settings, serves

# Where MLServer's converter writes each datatype's values (``mlserver.grpc.converters._FIELDS``).
CONTENTS = {
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
}
# How MLServer unpacks raw contents (``mlserver.raw``: native struct codes, little-endian on x86 and ARM).
STRUCT_CODES = {
    "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "L", "INT8": "b", "INT16": "h", "INT32": "i",
    "INT64": "l", "FP32": "f", "FP64": "d",
}
MAX_ROWS_INLINE_BYTES = 64 * 1024  # raw contents past this are read in the batch pool (offload.INLINE_MAX_BYTES)


def read_infer_request(request: pb.ModelInferRequest) -> Optional[Tuple[np.ndarray, bool]]:
    """The feature rows a ModelInfer request holds as MLServer would read them, and whether it sent raw
    contents (then the answer's are raw too); None to leave the call to MLServer."""
    if request.model_version or request.parameters or len(request.inputs) != 1 or not plain_id(request.id):
        return None
    if any(output.parameters for output in request.outputs):
        return None
    tensor = request.inputs[0]
    dtype = NUMPY_DTYPES.get(tensor.datatype)
    if dtype is None or tensor.parameters:
        return None
    shape = list(tensor.shape)
    if any(n < 0 for n in shape):
        return None
    fields = tensor.contents.ListFields()
    raw = bool(request.raw_input_contents)
    try:
        if fields:  # MLServer takes the first field set, whatever the datatype says
            if len(fields) != 1 or len(request.raw_input_contents) > 0:
                return None
            features = np.array(list(fields[0][1]), dtype).reshape(shape)
        elif len(request.raw_input_contents) == 1:
            count = int(np.prod(shape))
            data = request.raw_input_contents[0]
            if len(data) != count * struct.calcsize(STRUCT_CODES[tensor.datatype]):
                return None  # MLServer's struct.unpack refuses it
            features = np.frombuffer(data, dtype).reshape(shape).copy()
        else:
            return None
    except (TypeError, ValueError, OverflowError):
        return None
    if features.ndim == 1:
        features = features.reshape(1, -1)
    if features.ndim != 2:
        return None
    return features, raw


def infer_response(
    model_name: str, model_version: Optional[str], request_id: str, predictions: np.ndarray, raw: bool
) -> Optional[pb.ModelInferResponse]:
    """MLServer's ModelInferResponse for these predictions (``ModelInferResponseConverter.from_types``)."""
    datatype = DATATYPE_OF.get(predictions.dtype)
    if datatype is None or (predictions.dtype.kind == "f" and not np.isfinite(predictions).all()):
        return None  # NaN becomes None in MLServer's answer, which its converter cannot write: MLServer's error
    shape = list(predictions.shape)
    if len(shape) <= 1:
        shape.append(1)
    values = [] if raw else predictions.ravel().tolist()
    output = pb.ModelInferResponse.InferOutputTensor(
        name="output-1", shape=shape, datatype=datatype, contents=pb.InferTensorContents(**{CONTENTS[datatype]: values})
    )
    output.parameters["content_type"].MergeFrom(pb.InferParameter(string_param="np"))
    response = pb.ModelInferResponse(model_name=model_name, outputs=[output])
    if raw:
        count = predictions.size
        response.raw_output_contents.extend([struct.pack(f"{count}{STRUCT_CODES[datatype]}", *predictions.ravel().tolist())])
    if model_version is not None:
        response.model_version = model_version
    response.id = request_id
    response.parameters["content_type"].MergeFrom(pb.InferParameter(string_param="np"))
    return response


class FastModelInfer:
    """``shortcut(request, context)``: the answer of a ModelInfer call it takes, else None."""

    def __init__(
        self,
        lifecycle: ModelLifecycle,
        gate: V2Gate,
        top_k: int,
        cloud_events: Callable[[ModelSettings, str], List[Tuple[bytes, bytes]]],
        status_of: Callable[[MMEError], grpc.StatusCode],
        log_error: Callable[[MMEError], None],
        batches: BatchPool,
    ):
        self.lifecycle = lifecycle
        self.gate = gate
        self.cloud_events = cloud_events
        self.status_of = status_of  # MLServer's gRPC status for an error
        self.log_error = log_error  # as MLServer's handler logs it
        self.batches = batches  # big requests' work, off the event loop
        self.model_metrics = model_metrics(top_k)

    async def __call__(self, request: pb.ModelInferRequest, context) -> Optional[pb.ModelInferResponse]:
        target = self.gate.target(request.model_name) if not request.model_version else None
        if target is None:
            return None
        big = sum(len(data) for data in request.raw_input_contents) > MAX_ROWS_INLINE_BYTES
        parsed = await self.batches.run(read_infer_request, request) if big else read_infer_request(request)
        if parsed is None:
            return None
        features, raw = parsed
        started = time.perf_counter()
        if not serves(self.lifecycle, target):
            return None  # not loaded yet (MLServer's path loads it, counted once) or not ours
        try:
            entry = await self.lifecycle.acquire(target)
        except MMEError as error:  # unloaded meanwhile, and its load failed
            await self._abort(context, error, failed_label(self.lifecycle, target, error), started)
        try:
            model = entry.model
            if type(model) is not XGBoostModel or not plain_settings(model):
                return None  # overwritten by another runtime's artifact while unloaded: rare, counted twice
            rows = features.shape[0]
            offload = big or is_big_answer(rows, model.values_per_row) or is_costly(rows, model.visits_per_row)
            version = model.settings.parameters.version if model.settings.parameters else None
            predictor = model.predictor()
            try:
                predictions = await self.batches.run(predictor, features) if offload else predictor(features)
            except MMEError as error:
                await self._abort(context, error, target, started)
            except Exception:
                return None  # MLServer predicts again and answers its own error
            arguments = (model.name, version, request.id, predictions, raw)
            response = await self.batches.run(infer_response, *arguments) if offload else infer_response(*arguments)
            if response is None:
                return None
        finally:
            self.lifecycle.release(entry)
        metadata = self.cloud_events(model.settings, request.id)
        if metadata:
            context.set_trailing_metadata(tuple((name.decode(), value.decode()) for name, value in metadata))
        self.model_metrics.record(target, "OK", time.perf_counter() - started)
        return response

    async def _abort(self, context, error: MMEError, model: str, started: float) -> NoReturn:
        """MLServer's answer to its error: logged, then the call aborted with its status and message."""
        status = self.status_of(error)
        self.model_metrics.record(model, status.name, time.perf_counter() - started)
        self.log_error(error)
        await context.abort(code=status, details=str(error))
        raise AssertionError("context.abort returned")  # it raises
