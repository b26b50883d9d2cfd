"""V2 REST requests as tritonclient sends them: binary tensors and an empty index body.

MLServer's REST API reads V2 requests as JSON only, while NVIDIA's tritonclient,
the V2 client most people use, sends tensors with the KServe V2 *binary tensor
data* extension by default, and asks for its repository index with no body at
all (every field of that request is optional). This ASGI middleware, placed
before MLServer's app, bridges the two:

- ``POST /v2/repository/index`` with an empty body is passed on as ``{}``.
- ``POST /v2/models/{name}[/versions/{v}]/infer`` with an
  ``Inference-Header-Content-Length: N`` header: the body's first N bytes are
  the JSON request, and each input whose ``parameters.binary_data_size`` is set
  takes that many bytes, in order, from what follows (little-endian values in
  row-major order; ``BYTES`` elements each after a 4-byte length). The request
  is passed on as the JSON request it stands for. ``gzip`` and ``deflate``
  bodies are inflated first. Bodies over ``MLSERVER_MME_MAX_PAYLOAD_BYTES``
  (before and after inflating) are refused with 413, malformed ones with 400,
  both in MLServer's ``{"error": "..."}`` shape. NaN values travel as JSON
  ``null``, which MLServer reads back as NaN; infinities, which JSON cannot
  carry, are refused.
- Outputs asked in binary, by ``parameters.binary_data_output`` on the request
  or ``parameters.binary_data`` on a requested output (which wins), come back
  as raw bytes after the JSON answer, each with ``parameters.binary_data_size``,
  and the answer carries ``Inference-Header-Content-Length``. This holds for
  JSON requests too, as the extension says.

A 503 (a model still loading after the wait, or the store unreachable) carries
``Retry-After: 1``. Every request body MLServer would read (POST, PUT, PATCH) is read here first, up to
``MLSERVER_MME_MAX_PAYLOAD_BYTES`` (413 beyond), and a compressed one is inflated
here within the same bound: MLServer itself reads and inflates bodies without one.
Otherwise, any other request, and the answer to a JSON request that asks for no
binary output, is passed on byte for byte.
"""

import json
import re
import struct
import zlib
from typing import TYPE_CHECKING, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import MMESettings
from ..errors import HeadersTooLarge, InvalidRequest, MMEError, RequestTooLarge, v2_answer
from ..naming import NotATargetPath, target_of
from .asgi import answer_of, headers_too_large, read_body, respond, respond_json
from .offload import BatchPool, is_batch

if TYPE_CHECKING:
    from .v2_fast import FastV2

HEADER_LENGTH = b"inference-header-content-length"
MAX_DIMENSIONS = 64  # numpy's and MLServer's own limit
MAX_OUTPUT_VALUES = 1 << 40  # an answer's shape is the model's, not a caller's: only a sanity bound
BYTES_PER_VALUE = 4  # a binary request may hold at most (body limit / 4) values: ~20 JSON bytes each
INDEX_PATH = "/v2/repository/index"
INFER_PATH = re.compile(r"/v2/models/[^/]+(?:/versions/[^/]+)?/infer")

# V2 datatypes with a fixed size, as numpy reads them from the wire (little-endian).
DTYPES = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_LENGTH = struct.Struct("<I")
_JSON_HEADERS = (b"content-length", b"content-type", b"content-encoding", HEADER_LENGTH)


class MalformedRequest(ValueError):
    """A binary request that cannot be read; the message says why (answered as an InvalidRequest, 400)."""


class BinaryChoice(NamedTuple):
    """Which outputs a request wants in binary: by name, else the request's default."""

    default: bool
    named: Dict[str, bool]

    def wants(self, name: str) -> bool:
        return self.named.get(name, self.default)


# --- requests -------------------------------------------------------------------------------------


def json_request(body: bytes, header_length: int, max_values: Optional[int] = None) -> dict:
    """The JSON V2 request that a binary one (JSON header, then tensor bytes) stands for.

    At most ``max_values`` values in all (default: one per 4 bytes of body): one-byte
    values would otherwise grow some twenty times as JSON.
    """
    budget = len(body) // BYTES_PER_VALUE if max_values is None else max_values
    if not 0 < header_length <= len(body):
        raise MalformedRequest(
            f"Inference-Header-Content-Length is {header_length} but the body holds {len(body)} bytes"
        )
    try:
        request = orjson.loads(body[:header_length])
    except orjson.JSONDecodeError:
        raise MalformedRequest("the inference header is not valid JSON") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise MalformedRequest("the inference header must be a JSON object with a list of inputs")
    view, offset = memoryview(body), header_length
    for tensor in request["inputs"]:
        if not isinstance(tensor, dict):
            raise MalformedRequest("each input must be a JSON object")
        parameters = tensor.get("parameters")
        if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
            continue
        size = parameters.pop("binary_data_size")
        if not parameters:
            del tensor["parameters"]
        name = str(tensor.get("name"))[:100]
        if type(size) is not int or size < 0:
            raise MalformedRequest(f"input '{name}': binary_data_size must be a non-negative integer")
        if offset + size > len(body):
            raise MalformedRequest(f"input '{name}': binary_data_size runs past the end of the body")
        if "data" in tensor:
            raise MalformedRequest(f"input '{name}' has both data and binary_data_size")
        tensor["data"] = tensor_values(view[offset : offset + size], tensor.get("datatype"), tensor.get("shape"), name)
        budget -= len(tensor["data"])
        if budget < 0:
            raise MalformedRequest(f"the inputs hold more values than a body of {len(body)} bytes may carry")
        offset += size
    if offset != len(body):
        raise MalformedRequest(f"{len(body) - offset} bytes after the inputs' binary data belong to no input")
    return request


def tensor_values(raw: memoryview, datatype, shape, name: str = "") -> list:
    """A tensor's bytes as the flat list of values a JSON V2 request carries."""
    count = _element_count(shape, name, most=len(raw))  # every value takes a byte at least
    if datatype == "BYTES":
        return [_utf8(element, name) for element in split_bytes(raw, count, name)]
    dtype = DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise MalformedRequest(f"input '{name}': datatype {str(datatype)[:20]!r} cannot be sent as binary data here")
    if len(raw) != count * dtype.itemsize:
        raise MalformedRequest(
            f"input '{name}': {len(raw)} bytes of binary data for {count} {datatype} values "
            f"({count * dtype.itemsize} bytes)"
        )
    values = np.frombuffer(raw, dtype)
    if dtype.kind == "f" and np.isinf(values).any():
        raise MalformedRequest(f"input '{name}': infinite values cannot be passed on as JSON")
    return values.tolist()  # NaN becomes JSON null, which MLServer reads back as NaN


def split_bytes(raw: memoryview, count: int, name: str = "") -> List[bytes]:
    """``count`` BYTES elements, each a 4-byte little-endian length then that many bytes."""
    elements, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise MalformedRequest(f"input '{name}': the binary data holds fewer than {count} BYTES elements")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise MalformedRequest(f"input '{name}': a BYTES element runs past its binary data")
        elements.append(bytes(raw[offset : offset + length]))
        offset += length
    if offset != len(raw):
        raise MalformedRequest(f"input '{name}': the binary data holds more than {count} BYTES elements")
    return elements


def _utf8(element: bytes, name: str) -> str:
    try:
        return element.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedRequest(f"input '{name}': BYTES elements must be UTF-8 text to be passed on as JSON") from None


def _element_count(shape, name: str, most: int) -> int:
    """The values ``shape`` holds; refused past ``most`` (the product is never built beyond it)."""
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise MalformedRequest(f"input '{name}': shape must be a list of non-negative integers")
    if len(shape) > MAX_DIMENSIONS:
        raise MalformedRequest(f"input '{name}': shape has more than {MAX_DIMENSIONS} dimensions")
    if 0 in shape:
        return 0
    count = 1
    for n in shape:
        count *= n
        if count > most:
            raise MalformedRequest(f"input '{name}': shape holds more values than its {most} bytes of binary data")
    return count


def binary_choice(request: dict) -> Optional[BinaryChoice]:
    """Which outputs a V2 request wants in binary, or None when it wants none."""
    parameters = request.get("parameters")
    default = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    named = {}
    outputs = request.get("outputs")
    for output in outputs if isinstance(outputs, list) else ():
        options = output.get("parameters") if isinstance(output, dict) else None
        if isinstance(options, dict) and isinstance(options.get("binary_data"), bool):
            named[str(output.get("name"))] = options["binary_data"]
    if not default and not any(named.values()):
        return None
    return BinaryChoice(default, named)


def inflated(body: bytes, encoding: bytes, limit: int) -> bytes:
    """A ``gzip`` or ``deflate`` (zlib) body inflated, refused past ``limit`` bytes."""
    encoding = encoding.strip().lower()
    if encoding in (b"", b"identity"):
        return body
    window = {b"gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}.get(encoding)
    if window is None:
        raise MalformedRequest(f"Content-Encoding {encoding.decode('latin-1')[:20]!r} is not supported")
    inflater = zlib.decompressobj(window)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise MalformedRequest("the body is not valid compressed data") from None
    if len(data) > limit:
        raise RequestTooLarge(f"The inflated request body is larger than the limit of {limit} bytes.")
    if not inflater.eof:
        raise MalformedRequest("the compressed body is truncated")
    if inflater.unused_data:
        raise MalformedRequest("bytes follow the compressed body (one gzip or deflate stream is read)")
    return data


# --- answers --------------------------------------------------------------------------------------


def binary_answer(answer: bytes, choice: BinaryChoice) -> Optional[Tuple[bytes, int]]:
    """MLServer's JSON answer with the chosen outputs' values moved after it as raw bytes.

    Returns the new body and the length of its JSON part, or None when no output
    could be moved (the JSON answer then goes out as it is).
    """
    response = orjson.loads(answer)
    outputs = response.get("outputs") if isinstance(response, dict) else None
    parts = []
    for output in outputs if isinstance(outputs, list) else ():
        if not isinstance(output, dict) or not choice.wants(str(output.get("name"))):
            continue
        raw = tensor_bytes(output)
        if raw is None:
            continue  # left in JSON, which V2 clients read as well
        parameters = output.get("parameters")
        if not isinstance(parameters, dict):
            parameters = output["parameters"] = {}
        parameters["binary_data_size"] = len(raw)
        del output["data"]
        parts.append(raw)
    if not parts:
        return None
    header = orjson.dumps(response)
    return header + b"".join(parts), len(header)


def tensor_bytes(output: dict) -> Optional[bytes]:
    """An output's values as the extension's raw bytes, or None if they cannot be (left in JSON)."""
    datatype, data, shape = output.get("datatype"), output.get("data"), output.get("shape")
    if not isinstance(data, list) or not isinstance(shape, list):
        return None
    try:
        count = _element_count(shape, "", most=MAX_OUTPUT_VALUES)
        if datatype == "BYTES":
            elements = np.asarray(data, dtype=object).ravel()
            if elements.size != count:
                return None
            encoded = [element.encode() if isinstance(element, str) else _as_bytes(element) for element in elements]
            return b"".join(_LENGTH.pack(len(element)) + element for element in encoded)
        dtype = DTYPES.get(datatype) if isinstance(datatype, str) else None
        if dtype is None:
            return None
        values = np.asarray(data, dtype=dtype)  # nested lists too; JSON null becomes NaN
    except (MalformedRequest, TypeError, ValueError, OverflowError):
        return None
    return values.tobytes() if values.size == count else None


def _as_bytes(element) -> bytes:
    if not isinstance(element, (bytes, bytearray)):
        raise TypeError("a BYTES output element that is neither text nor bytes")  # left in JSON
    return bytes(element)


# --- the middleware -------------------------------------------------------------------------------


class V2CompatMiddleware:
    """ASGI middleware: binary tensor data and an empty index body for MLServer's V2 REST API."""

    def __init__(self, app: ASGIApp, settings: MMESettings, fast: "Optional[FastV2]" = None):
        self.app = app
        self.fast = fast  # answers the inference requests of our own models it takes (v2_fast.py)
        self.body_limit = settings.max_payload_bytes
        self.header_limit = settings.max_header_bytes
        self.body_seconds = settings.body_timeout
        self.pool = BatchPool()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = _retry_after_on_503(send)
        if headers_too_large(scope, self.header_limit):
            error = HeadersTooLarge(f"The request headers are larger than {self.header_limit} bytes.")
            return await _error(send, error)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        try:
            # MLServer reads whole bodies, and inflates compressed ones, without a bound or a deadline: both here.
            body = await read_body(receive, headers, self.body_limit, self.body_seconds)
            if b"content-encoding" in headers:
                body = inflated(body, headers[b"content-encoding"], self.body_limit)
                scope = _with_body_length(scope, body)
        except MalformedRequest as error:
            return await _error(send, InvalidRequest(f"Invalid request body: {error}"))
        except MMEError as error:
            return await _error(send, error)
        path = scope["path"]
        if path.endswith("/infer") and INFER_PATH.fullmatch(path):
            return await self._infer(scope, headers, body, receive, send)
        if path == INDEX_PATH:
            return await self._index(scope, body, receive, send)
        await self.app(scope, _replaying([body], receive), send)

    async def _index(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """MLServer's repository index, each model named by a target path also given that path.

        MLServer's index items have no field for it; ``target_model`` is added (V2 clients ignore
        fields they do not know). Every field of the index request is optional: no body is an empty request.
        """
        if not body.strip():
            body = b"{}"
            scope = _with_json_body(scope, body, keep_accept_encoding=False)
        else:  # an uncompressed answer to rewrite: MLServer's GZip middleware would otherwise compress it
            scope = {**scope, "headers": [(name, value) for name, value in scope["headers"] if name != b"accept-encoding"]}
        start, answer = await answer_of(self.app, scope, _replaying([body], receive))
        if start is None:
            return
        if start["status"] == 200:
            items = json.loads(answer)
            for item in items:
                try:
                    item["target_model"] = target_of(item["name"])
                except NotATargetPath:
                    pass  # the router, or a model not from the prefix
            answer = json.dumps(items).encode()
        kept = [(name, value) for name, value in start.get("headers", []) if name != b"content-length"]
        await respond(send, start["status"], answer, kept)

    async def _infer(self, scope: Scope, headers: dict, body: bytes, receive: Receive, send: Send) -> None:
        declared = headers.get(HEADER_LENGTH)
        if declared is None:
            return await self._json_infer(scope, body, receive, send)
        try:
            declared = declared.strip()
            if not declared.isdigit() or len(declared) > 19:
                raise MalformedRequest("Inference-Header-Content-Length must be a number of bytes")
            work = self.pool.run if is_batch(body) else _inline
            request = await work(json_request, body, int(declared))
            choice = binary_choice(request)
            target = self.fast.takes(scope, json_body=False) if self.fast is not None else None
            if target is not None and await self.fast.infer(  # type: ignore[union-attr]
                scope, receive, send, target, request, is_batch(body), choice
            ):
                return
            payload = await work(_to_json, request)
        except MalformedRequest as error:
            return await _error(send, InvalidRequest(f"Invalid binary tensor request: {error}"))
        except MMEError as error:
            return await _error(send, error)
        scope = _with_json_body(scope, payload, keep_accept_encoding=choice is None)
        await self._forward(scope, [payload], receive, send, choice)

    async def _json_infer(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """A JSON request, answered by the fast path if it takes it, else passed on untouched (looked at
        only to see whether it wants binary outputs)."""
        choice, request = None, None
        target = self.fast.takes(scope, json_body=True) if self.fast is not None else None
        if target is not None or b'"binary_data' in body:  # a cheap test first: most JSON clients never ask
            try:
                request = await self.pool.run(orjson.loads, body) if is_batch(body) else orjson.loads(body)
            except orjson.JSONDecodeError:
                pass  # MLServer answers it
        if isinstance(request, dict):
            choice = binary_choice(request) if b'"binary_data' in body else None
            if target is not None and await self.fast.infer(  # type: ignore[union-attr]
                scope, receive, send, target, request, is_batch(body), choice
            ):
                return
        if choice is not None:
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"accept-encoding"]}
        await self._forward(scope, [body], receive, send, choice)

    async def _forward(
        self, scope: Scope, chunks: List[bytes], receive: Receive, send: Send, choice: Optional[BinaryChoice]
    ) -> None:
        receive = _replaying(chunks, receive)
        if choice is None:
            return await self.app(scope, receive, send)
        start, body = await answer_of(self.app, scope, receive)
        if start is None:
            return
        converted = None
        if start["status"] == 200:
            work = self.pool.run if is_batch(body) else _inline
            try:
                converted = await work(binary_answer, body, choice)
            except orjson.JSONDecodeError:
                converted = None  # not a V2 answer: sent as it came
        if converted is None:
            kept = [(name, value) for name, value in start.get("headers", []) if name != b"content-length"]
            return await respond(send, start["status"], body, kept)
        content, header_length = converted
        kept = [(name, value) for name, value in start.get("headers", []) if name not in _JSON_HEADERS]
        await respond(
            send,
            200,
            content,
            [
                (b"content-type", b"application/octet-stream"),
                (HEADER_LENGTH, str(header_length).encode()),
                *kept,
            ],
        )


def _to_json(request: dict) -> bytes:
    try:
        return orjson.dumps(request)
    except orjson.JSONEncodeError as error:  # nested deeper than orjson writes (it reads deeper)
        raise MalformedRequest(f"the inference header cannot be passed on: {error}") from None


def _with_body_length(scope: Scope, body: bytes) -> Scope:
    """``scope`` for ``body`` as it is now: inflated, so no Content-Encoding, and its own length."""
    headers = [(name, value) for name, value in scope["headers"] if name not in (b"content-encoding", b"content-length")]
    return {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}


def _with_json_body(scope: Scope, body: bytes, keep_accept_encoding: bool) -> Scope:
    """``scope`` with headers for a JSON body (and no compressed answer when it is to be rewritten)."""
    dropped = _JSON_HEADERS if keep_accept_encoding else (*_JSON_HEADERS, b"accept-encoding")
    headers = [(name, value) for name, value in scope["headers"] if name not in dropped]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return {**scope, "headers": headers}


def _replaying(chunks: List[bytes], receive: Receive) -> Receive:
    """A ``receive`` giving back the body already read, then the client's own messages (a disconnect)."""
    messages = [{"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks]
    messages[-1]["more_body"] = False

    async def replay() -> Message:
        if messages:
            return messages.pop(0)
        return await receive()

    return replay


def _retry_after_on_503(send: Send) -> Send:
    """``send`` adding ``Retry-After: 1`` to a 503 (a model still loading, or the store unreachable)."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 503:
            headers = list(message.get("headers", []))
            if not any(name.lower() == b"retry-after" for name, _ in headers):
                message = {**message, "headers": [*headers, (b"retry-after", b"1")]}
        await send(message)

    return sending


async def _inline(function, *args):
    return function(*args)


async def _error(send: Send, error: MMEError) -> None:
    await respond_json(send, *v2_answer(error))
