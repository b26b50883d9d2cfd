"""The SageMaker routes, served by a model that MLServer loads at start-up.

``GET /ping``, ``POST /invocations`` and ``POST /endpoints/{EndpointName}/invocations``
(any name, even one holding an encoded ``/``) take SageMaker runtime requests: the
``X-Amzn-SageMaker-Target-Model`` header names the artifact under the model
prefix, and the lifecycle (``lifecycle.py``) hands back its loaded model, the same
instance V2 uses. Every failure is answered in SageMaker's error shape
(``x-amzn-ErrorType`` header, JSON body with ``Message``).

The router must run in the main process (``parallel_workers: 0`` in its
model-settings.json): its handlers need the request and the registry.
"""

import json
import logging
import uuid

import numpy as np
import scipy.sparse
from fastapi import Request
from fastapi.responses import Response
from mlserver import MLModel
from mlserver.codecs import NumpyRequestCodec
from mlserver.errors import MLServerError
from mlserver.handlers import custom_handler

from . import mlserver_internals
from .errors import BadPayload, BrokenModel, InvalidTarget, MMEError
from .lifecycle import ModelLifecycle
from .naming import InvalidTargetModel, validate_target
from .payloads import Features, decode, encode, negotiate
from .repository import serving_repository
from .runtimes.xgboost import XGBoostModel

logger = logging.getLogger("mlserver.mme")

TARGET_MODEL = "x-amzn-sagemaker-target-model"


class SageMakerRouter(MLModel):
    async def load(self) -> bool:
        mlserver_internals.check()
        repository = serving_repository()
        self._variant = repository.settings.variant_name
        self._lifecycle = ModelLifecycle(mlserver_internals.loading_registry(), repository, repository.settings)
        repository.lifecycle = self._lifecycle
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
            headers = request.headers
            target = headers.get(TARGET_MODEL)
            if target is None:
                raise InvalidTarget(
                    "The endpoint is a multi-model endpoint and the request is missing a target model header "
                    "(X-Amzn-SageMaker-Target-Model)."
                )
            try:
                validate_target(target)
            except InvalidTargetModel as error:
                raise InvalidTarget(f"Invalid target model '{target[:100]}': {error}.") from None
            response_kind = negotiate(headers.get("accept"))
            features = decode(await request.body(), headers.get("content-type"))
            entry = await self._lifecycle.acquire(target)
            try:
                predictions = await _predict(entry.model, features)
            finally:
                self._lifecycle.release(entry)
            content, content_type = encode(predictions, response_kind)
            return Response(
                content,
                headers={
                    # set as is: starlette would add "; charset=utf-8" to text/csv
                    "Content-Type": content_type,
                    "X-Amzn-Invoked-Production-Variant": self._variant,
                    "x-amzn-RequestId": request_id,
                },
            )
        except MMEError as error:
            return error_response(error, request_id)
        except Exception:
            logger.exception("request %s failed", request_id)
            return error_response(MMEError("An internal error occurred."), request_id)


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
        raise _model_error(500, f"{type(error).__name__}: {error}") from None


def _model_error(status: int, message: str) -> MMEError:
    error = BadPayload(message) if status < 500 else BrokenModel(message)
    error.original_status = status
    return error


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
