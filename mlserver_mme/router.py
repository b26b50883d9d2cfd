"""The SageMaker routes, served by a model that MLServer loads at start-up.

``GET /ping``, ``POST /invocations`` and ``POST /endpoints/{EndpointName}/invocations``
take SageMaker runtime requests: the ``X-Amzn-SageMaker-Target-Model`` header names
the artifact under the model prefix. A model already in MLServer's registry answers
at once (the same instance V2 uses); otherwise it is fetched, unpacked and loaded
once, however many requests ask for it meanwhile. Every failure is answered in
SageMaker's error shape (``x-amzn-ErrorType`` header, JSON body with ``Message``).

The router must run in the main process (``parallel_workers: 0`` in its
model-settings.json): its handlers need the request and the registry.
"""

import asyncio
import json
import logging
import time
import uuid
from typing import Dict, Optional

import numpy as np
import scipy.sparse
from fastapi import Request
from fastapi.responses import Response
from mlserver import MLModel
from mlserver.codecs import NumpyRequestCodec
from mlserver.errors import MLServerError, ModelNotFound
from mlserver.handlers import custom_handler

from . import mlserver_internals
from .errors import BadPayload, BrokenModel, InvalidTarget, MMEError, ModelNotReady
from .naming import InvalidTargetModel, v2_name, validate_target
from .payloads import Features, decode, encode, negotiate
from .repository import MMERepository
from .runtimes.xgboost import XGBoostModel

logger = logging.getLogger("mlserver.mme")

TARGET_MODEL = "x-amzn-sagemaker-target-model"


class SageMakerRouter(MLModel):
    async def load(self) -> bool:
        mlserver_internals.check()
        self._registry = None
        self._repository: Optional[MMERepository] = None
        self._loads: Dict[str, asyncio.Future] = {}
        return True

    @custom_handler(rest_path="/ping", rest_method="GET")
    async def ping(self, request: Request) -> Response:
        # Healthy while the server runs, loads in progress included.
        return Response(status_code=200)

    @custom_handler(rest_path="/invocations")
    async def invocations(self, request: Request) -> Response:
        return await self._invoke(request)

    @custom_handler(rest_path="/endpoints/{EndpointName:path}/invocations")
    async def endpoint_invocations(self, request: Request) -> Response:
        return await self._invoke(request)

    async def _invoke(self, request: Request) -> Response:
        request_id = str(uuid.uuid4())
        try:
            self._attach(request)
            target = request.headers.get(TARGET_MODEL)
            if target is None:
                raise InvalidTarget(
                    "The endpoint is a multi-model endpoint and the request is missing a target model header "
                    "(X-Amzn-SageMaker-Target-Model)."
                )
            try:
                validate_target(target)
            except InvalidTargetModel as error:
                raise InvalidTarget(f"Invalid target model '{target[:100]}': {error}.") from None
            response_kind = negotiate(request.headers.get("accept"))
            body = await request.body()
            model = await self._loaded_model(target)
            features = decode(body, request.headers.get("content-type"))
            predictions = await _predict(model, features)
            content, content_type = encode(predictions, response_kind)
            return Response(
                content,
                headers={
                    # set as is: starlette would add "; charset=utf-8" to text/csv
                    "Content-Type": content_type,
                    "X-Amzn-Invoked-Production-Variant": self._repository.settings.variant_name,
                    "x-amzn-RequestId": request_id,
                },
            )
        except MMEError as error:
            return error_response(error, request_id)
        except Exception:
            logger.exception("request %s failed", request_id)
            return error_response(MMEError("An internal error occurred."), request_id)

    def _attach(self, request: Request) -> None:
        if self._registry is not None:
            return
        registry, handlers = mlserver_internals.registry_handles(request.app)
        if not isinstance(handlers._repository, MMERepository):
            raise MMEError(
                "settings.json must set model_repository_implementation to mlserver_mme.repository.MMERepository"
            )
        self._registry, self._repository = registry, handlers._repository

    async def _loaded_model(self, target: str) -> MLModel:
        """The ready model for ``target``, loading it (once) if needed."""
        name = v2_name(target)
        deadline = time.monotonic() + self._repository.settings.load_wait_timeout
        while True:
            try:
                model = await self._registry.get_model(name)
            except ModelNotFound:
                model = None
            if model is not None and model.ready:
                return model
            flight = self._loads.get(name)
            if flight is None and model is None:
                flight = asyncio.ensure_future(self._load(target, name))
                self._loads[name] = flight
                flight.add_done_callback(lambda _: self._loads.pop(name, None))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ModelNotReady(f"Model '{target}' is still loading; retry shortly.")
            if flight is None:
                # Loading through the V2 repository API: look again shortly.
                await asyncio.sleep(min(0.01, remaining))
                continue
            try:
                await asyncio.wait_for(asyncio.shield(flight), remaining)
            except asyncio.TimeoutError:
                raise ModelNotReady(f"Model '{target}' is still loading; retry shortly.") from None

    async def _load(self, target: str, name: str) -> None:
        settings = await self._repository.settings_for(target)
        started = time.perf_counter()
        try:
            # MLServer imports the runtime and calls its load(): any failure there is the model's
            await self._registry.load(settings)
        except MMEError:
            raise
        except Exception as error:
            raise BrokenModel(f"The model '{target}' failed to load: {_describe(error)}") from None
        logger.info("model %s: loaded as '%s' in %.1f ms", target, name, (time.perf_counter() - started) * 1e3)


async def _predict(model: MLModel, features: Features) -> np.ndarray:
    if isinstance(model, XGBoostModel):
        return model.predict_features(features)
    # Any other runtime: one dense float tensor in, its first output back.
    if scipy.sparse.issparse(features):
        features = features.toarray()
    try:
        response = await model.predict(NumpyRequestCodec.encode_request(features))
        predictions = np.asarray(NumpyRequestCodec.decode_response(response))
        # V2 outputs carry one value per row as an (n, 1) tensor: answer a list, as for XGBoost
        return predictions.ravel() if predictions.ndim == 2 and predictions.shape[1] == 1 else predictions
    except MMEError:
        raise
    except MLServerError as error:
        status = error.status_code if 400 <= error.status_code < 600 else 500
        raise _model_error(status, str(error)) from None
    except Exception as error:
        raise _model_error(500, _describe(error)) from None


def _model_error(status: int, message: str) -> MMEError:
    error = BadPayload(message) if status < 500 else BrokenModel(message)
    error.original_status = status
    return error


def _describe(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1]}" if text else type(error).__name__


def error_response(error: MMEError, request_id: str) -> Response:
    """An error as SageMaker's runtime sends it, so boto3 and the AWS CLI show its code."""
    body = {"ErrorCode": error.sagemaker_code, "Message": error.message}
    if error.original_status is not None:
        side = "client" if error.original_status < 500 else "server"
        body = {
            "ErrorCode": f"{side.upper()}_ERROR_FROM_MODEL",
            "Message": f"Received {side} error ({error.original_status}) from primary with message "
            f'"{error.message}". See the server log for more information.',
            "OriginalStatusCode": error.original_status,
            "OriginalMessage": error.message,
            "LogStreamArn": "",
        }
    return Response(
        json.dumps(body).encode(),
        status_code=error.sagemaker_status,
        media_type="application/json",
        headers={"x-amzn-ErrorType": error.sagemaker_code, "x-amzn-RequestId": request_id},
    )
