"""The SageMaker routes, put in front of MLServer's REST app.

``GET /ping``, ``POST /invocations`` and ``POST /endpoints/{EndpointName}/invocations``
are answered by a plain ASGI middleware placed first in MLServer's app, before
FastAPI's routing and MLServer's middlewares (which every other route still goes
through). The ``X-Amzn-SageMaker-Target-Model`` header names the artifact under
the model prefix; the lifecycle (``lifecycle/``) hands back its loaded model,
the same instance V2 uses. Every failure is answered in SageMaker's error shape
(``x-amzn-ErrorType`` header, JSON body with ``Message``), except on the hosting
contract's invoke route (``hosting.py``), which SageMaker's front end wraps itself.

``wiring.SageMakerRouter`` puts this middleware in place at start-up.
"""

import hmac
import logging
import random
import time
from typing import Optional

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyRequestCodec
from mlserver.errors import MLServerError
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import MMESettings, comma_list
from ..errors import (
    ArtifactNotFound,
    BadPayload,
    BadTargetHeader,
    BrokenModel,
    InvalidRequest,
    MMEError,
    RequestTooLarge,
    Unauthorized,
    describe,
    hosting_answer,
    sagemaker_answer,
)
from ..lifecycle import ModelLifecycle
from ..naming import NotATargetPath, v2_name, validate_target
from ..observability.model_metrics import OTHER, model_metrics
from ..payloads.codecs import Features, decode, encode, negotiate
from ..runtimes.protocol import FeaturePredictor
from .asgi import header, headers_too_large, read_body, respond, respond_json
from .hosting import HostingRoutes
from .offload import BatchPool, is_batch, is_big_answer, is_costly
from .sigv4 import SigV4Verifier, configured_keys

logger = logging.getLogger("mlserver.mme")

MANAGEMENT_PATHS = ("/v2/repository", "/models")
MAX_CUSTOM_ATTRIBUTES = 1024  # SageMaker's limit


class SageMakerMiddleware:
    """ASGI middleware answering SageMaker's runtime routes, passing everything else on.

    It also guards what follows it: the management routes need the admin token
    when one is set.
    """

    def __init__(self, app: ASGIApp, lifecycle: ModelLifecycle, settings: MMESettings):
        self.app = app
        self.lifecycle = lifecycle
        self.settings = settings
        self.variant = settings.variant_name.encode("latin-1")
        keys = configured_keys(settings)
        self.verifier = SigV4Verifier(keys) if keys else None
        self.admin_token = settings.admin_token.encode() if settings.admin_token else None
        self.shard_check = (settings.shard_check or "").encode()  # see MMESettings.shard_check
        self.shard_answer = [(b"x-mme-shard-answer", (settings.shard_answer or "").encode())]
        self.batches = BatchPool()
        self.model_metrics = model_metrics(settings.per_model_metrics_top_k)
        self.hosting = None
        if settings.sagemaker_multi_model:
            self.hosting = HostingRoutes(lifecycle, comma_list(settings.hosting_roots), self.invoke)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            if method == "POST" and (
                path == "/invocations" or (path.startswith("/endpoints/") and path.endswith("/invocations"))
            ):
                return await self.invoke(scope, receive, send)
            if path == "/ping" and method in ("GET", "HEAD"):
                # Healthy while the server runs, loads in progress included.
                return await respond(send, 200, b"", self.shard_answer if self._is_front_check(scope) else [])
            if self.admin_token is not None and path.startswith(MANAGEMENT_PATHS) and not self._is_admin(scope):
                # one answer on every management route, hosting and V2 alike: SageMaker's UnauthorizedException
                error = Unauthorized("This route needs the server's admin bearer token.")
                return await respond_json(send, *sagemaker_answer(error, new_request_id()))
            if self.hosting is not None and await self.hosting(scope, receive, send):
                return
        await self.app(scope, receive, send)

    def _known(self, target: Optional[str]) -> bool:
        """Whether ``target``'s model is the lifecycle's now (loading, loaded or unloading)."""
        return target is not None and self.lifecycle.models.get(v2_name(target)) is not None

    def _is_front_check(self, scope: Scope) -> bool:
        """A health check of this start's own front (``mlserver-mme serve``): it knows the shard check."""
        presented = dict(scope["headers"]).get(b"x-mme-shard-check", b"")
        return bool(self.shard_check) and hmac.compare_digest(presented, self.shard_check)

    def _is_admin(self, scope: Scope) -> bool:
        presented = dict(scope["headers"]).get(b"authorization", b"")
        return self.admin_token is not None and hmac.compare_digest(presented, b"Bearer " + self.admin_token)

    async def invoke(self, scope: Scope, receive: Receive, send: Send, hosted_model: Optional[str] = None) -> None:
        """Answer an invocation: of the target model, or of ``hosted_model`` (hosting contract)."""
        request_id = new_request_id()
        answer = sagemaker_answer if hosted_model is None else hosting_answer
        started = time.perf_counter()
        model, code = hosted_model, "200"  # for the per-model metrics
        found = hosted_model is not None  # a target takes a label value only once its model is found
        try:
            if headers_too_large(scope, self.settings.max_header_bytes):
                raise RequestTooLarge(f"The request headers are larger than {self.settings.max_header_bytes} bytes.")
            headers = dict(scope["headers"])
            body = await read_body(receive, headers, self.settings.max_payload_bytes, self.settings.body_timeout)
            if self.verifier is not None and hosted_model is None:
                # Before anything else: nothing is fetched or loaded for an unsigned request.
                # (SageMaker's own calls of the hosting contract are not signed.)
                self.verifier.verify(
                    scope["method"],
                    scope.get("raw_path", scope["path"].encode()).decode("latin-1"),
                    scope.get("query_string", b"").decode("latin-1"),
                    {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]},
                    body,
                )
            custom_attributes = header(headers, b"x-amzn-sagemaker-custom-attributes")
            if custom_attributes is not None and len(custom_attributes) > MAX_CUSTOM_ATTRIBUTES:
                raise InvalidRequest(
                    f"X-Amzn-SageMaker-Custom-Attributes is longer than {MAX_CUSTOM_ATTRIBUTES} characters."
                )
            if hosted_model is None:
                target = _target(headers)
                model = target
            response_kind = negotiate(header(headers, b"accept"))
            work = self.batches.run if is_batch(body) else _inline
            features = await work(decode, body, header(headers, b"content-type"))
            if hosted_model is None:
                entry = await self.lifecycle.acquire(target)
            else:
                # The hosting contract names the model in the path (SageMaker forwards TargetModel as is).
                entry = self.lifecycle.hosted.acquire(hosted_model)
            found = True
            try:
                direct = entry.model if isinstance(entry.model, FeaturePredictor) else None
                rows = features.shape[0]
                if is_big_answer(rows, direct.values_per_row if direct else 1) or (
                    direct is not None and is_costly(rows, direct.visits_per_row)
                ):
                    work = self.batches.run
                if direct is not None:
                    predictions = await work(direct.predictor(), features)
                else:
                    predictions = await _predict_with_runtime(entry.model, features)
            finally:
                self.lifecycle.release(entry)
            content, content_type = await work(encode, predictions, response_kind)
            await respond(
                send,
                200,
                content,
                [
                    (b"content-type", content_type.encode()),
                    (b"x-amzn-invoked-production-variant", self.variant),
                    (b"x-amzn-requestid", request_id.encode()),
                ],
            )
        except MMEError as error:
            code = error.sagemaker_code
            if isinstance(error, ArtifactNotFound) or not (found or self._known(model)):
                model = OTHER  # made-up names (a bad body fails before the lookup) never take a label value
            await respond_json(send, *answer(error, request_id))
        except Exception:
            code = MMEError.sagemaker_code
            logger.exception("request %s failed", request_id)
            await respond_json(send, *answer(MMEError("An internal error occurred."), request_id))
        finally:
            if model is not None:
                self.model_metrics.record(model, code, time.perf_counter() - started)


def new_request_id() -> str:
    """A UUID-shaped id, as SageMaker's ``x-amzn-RequestId``: not a secret, so without uuid4's system call."""
    digits = f"{random.getrandbits(128):032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


async def _inline(function, *args):
    """``BatchPool.run``'s twin for small requests: the work, right on the loop."""
    return function(*args)


def _target(headers: dict) -> str:
    """The target model a SageMaker request names, valid, or BadTargetHeader."""
    target = header(headers, b"x-amzn-sagemaker-target-model")
    if target is None:
        raise BadTargetHeader(
            "The endpoint is a multi-model endpoint and the request is missing a target model header "
            "(X-Amzn-SageMaker-Target-Model)."
        )
    try:
        validate_target(target)
    except NotATargetPath as error:
        raise BadTargetHeader(f"Invalid target model '{target[:100]}': {error}.") from None
    return target


async def _predict_with_runtime(model: MLModel, features: Features) -> np.ndarray:
    """Any runtime but ours: one dense float tensor in, its first output back."""
    dense = features if isinstance(features, np.ndarray) else features.toarray()
    try:
        response = await model.predict(NumpyRequestCodec.encode_request(dense))
        predictions = np.asarray(NumpyRequestCodec.decode_response(response))
        # V2 outputs carry one value per row as an (n, 1) tensor: answer a list, as for XGBoost
        return predictions.ravel() if predictions.ndim == 2 and predictions.shape[1] == 1 else predictions
    except MMEError:
        raise
    except MLServerError as error:
        status = error.status_code if 400 <= error.status_code < 600 else 500
        raise _model_error(status, str(error)) from None
    except Exception as error:
        raise _model_error(500, describe(error)) from None


def _model_error(status: int, message: str) -> MMEError:
    error = BadPayload(message) if status < 500 else BrokenModel(message)
    error.original_status = status
    return error
