"""SageMaker's hosting contract for bring-your-own multi-model containers.

When SageMaker runs the image as a multi-model endpoint (``SAGEMAKER_MULTI_MODEL=true``)
it downloads and unpacks artifacts itself and drives the container with:

| route | answer |
|---|---|
| ``POST /models`` ``{"model_name", "url"}`` | 200 loaded; 409 already loaded; 507 no memory (SageMaker then unloads others); 400 bad request or url; 500 model error |
| ``GET /models?limit=&next_page_token=`` | ``{"models": [{"modelName", "modelUrl"}], "nextPageToken"}`` |
| ``GET /models/{name}`` | ``{"modelName", "modelUrl"}``; 404 if not loaded |
| ``DELETE /models/{name}`` | 200; 404 if not loaded |
| ``POST /models/{name}/invoke`` | the prediction, as ``/invocations`` answers it; 400 bad payload; 406 Accept or 415 Content-Type not supported; 413 too large; 404 not loaded; 500 model or internal error |

``url`` must be a folder under one of ``MLSERVER_MME_HOSTING_ROOTS`` (SageMaker's
``/opt/ml/models`` by default), so ``/proc``, ``/sys`` or ``/dev`` are refused.
Hosted models are never unloaded by the server's own budgets: SageMaker decides.

Every error is answered ``{"message": ...}`` with the model's own status (``errors.hosting_answer``),
never in the runtime's error shape (``/invocations``): SageMaker's front end wraps a
container's error in its own ModelError, ``OriginalStatusCode`` the container's status.
"""

import json
import os
from typing import Any, Awaitable, Callable, Dict, List, Optional
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

from ..errors import HostedModelNotFound, InvalidRequest, MMEError, hosting_answer
from ..lifecycle import ModelLifecycle
from ..lifecycle.entries import Entry
from .asgi import read_body, respond_json

PAGE_SIZE = 100
MAX_LOAD_REQUEST_BYTES = 64 * 1024
MAX_NAME_LENGTH = 1024


class HostingRoutes:
    def __init__(self, lifecycle: ModelLifecycle, roots: List[str], invoke: Callable[..., Awaitable[None]]):
        self.lifecycle = lifecycle
        self.roots = [os.path.realpath(root) for root in roots]
        self.invoke = invoke  # answers POST /models/{name}/invoke

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer a hosting route; False if ``scope`` is not one."""
        path, method = scope["path"], scope["method"]
        if path == "/models":
            if method == "POST":
                await self._load(scope, receive, send)
            elif method == "GET":
                await self._list(scope, send)
            else:
                return False
            return True
        if not path.startswith("/models/"):
            return False
        name = path[len("/models/"):]
        if name.endswith("/invoke") and method == "POST":
            await self.invoke(scope, receive, send, hosted_model=name[: -len("/invoke")])
        elif method == "GET":
            entry = self.lifecycle.hosted.listing().get(name)
            if entry is None:
                await respond_json(send, *hosting_answer(HostedModelNotFound(f"Model '{name}' is not loaded.")))
            else:
                await respond_json(send, 200, {"modelName": name, "modelUrl": _url(entry)})
        elif method == "DELETE":
            try:
                await self.lifecycle.hosted.unload(name)
                await respond_json(send, 200, {"message": f"Model '{name}' unloaded."})
            except HostedModelNotFound as error:
                await respond_json(send, *hosting_answer(error))
        else:
            return False
        return True

    async def _load(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            name = await self._load_request(scope, receive)
        except MMEError as error:
            return await respond_json(send, *hosting_answer(error))
        await respond_json(send, 200, {"message": f"Model '{name}' loaded."})

    async def _load_request(self, scope: Scope, receive: Receive) -> str:
        """Load the model ``POST /models`` names; its name, or an MMEError (AlreadyLoaded, ModelTooLarge...)."""
        request = {key: values[-1] for key, values in parse_qs(scope.get("query_string", b"").decode()).items()}
        body = await read_body(receive, dict(scope["headers"]), MAX_LOAD_REQUEST_BYTES)
        if body.strip():
            try:
                request.update(json.loads(body))
            except (ValueError, TypeError):
                raise InvalidRequest("The body must be JSON: {\"model_name\": ..., \"url\": ...}.") from None
        name, url = request.get("model_name"), request.get("url")
        if not isinstance(name, str) or not name or not isinstance(url, str) or not url:
            raise InvalidRequest("model_name and url are required.")
        if not all(len(text) <= MAX_NAME_LENGTH and text.isprintable() for text in (name, url)):
            # no NUL, control character or lone surrogate reaches a path or a model name
            raise InvalidRequest(f"model_name and url must be printable and at most {MAX_NAME_LENGTH} characters.")
        folder = os.path.realpath(url)
        if not any(os.path.commonpath([folder, root]) == root for root in self.roots):
            raise InvalidRequest(f"url '{url}' is outside the allowed roots {self.roots}.")
        if not os.path.isdir(folder):
            raise InvalidRequest(f"url '{url}' is not a folder.")
        await self.lifecycle.hosted.load(name, folder)
        return name

    async def _list(self, scope: Scope, send: Send) -> None:
        query = {key: values[-1] for key, values in parse_qs(scope.get("query_string", b"").decode()).items()}
        try:
            limit = max(1, min(1000, int(query.get("limit", PAGE_SIZE))))
            start = int(query.get("next_page_token", 0))
        except ValueError:
            error = InvalidRequest("limit and next_page_token must be integers.")
            return await respond_json(send, *hosting_answer(error))
        hosted = sorted(self.lifecycle.hosted.listing().items())
        page = hosted[start : start + limit]
        answer: Dict[str, Any] = {"models": [{"modelName": n, "modelUrl": _url(e)} for n, e in page]}
        if start + limit < len(hosted):
            answer["nextPageToken"] = str(start + limit)
        await respond_json(send, 200, answer)


def _url(entry: Entry) -> Optional[str]:
    """Where a loaded hosted model was loaded from, as SageMaker's listing gives it."""
    assert entry.model is not None and entry.model.settings.parameters is not None  # listed only when READY
    return entry.model.settings.parameters.uri
