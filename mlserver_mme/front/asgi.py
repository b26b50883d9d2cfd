"""Reading requests and sending responses at the ASGI level, for the routes answered before FastAPI."""

import asyncio
import json
from typing import List, Optional, Tuple

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import BadPayload, BodyTimeout, RequestTooLarge

BODY_SECONDS = 30.0  # MLSERVER_MME_BODY_TIMEOUT's default


def header(headers: dict, name: bytes) -> Optional[str]:
    """A header of ``dict(scope["headers"])`` (lower-case byte names) as text, or None."""
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None


async def read_body(receive: Receive, headers: dict, limit: int, seconds: float = BODY_SECONDS) -> bytes:
    """The request body, refused as soon as it is known to exceed ``limit`` (never read past it),
    or BodyTimeout if it has not all arrived within ``seconds`` (a stalled client holds nothing then)."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    try:
        return await asyncio.wait_for(_read(receive, limit), seconds)
    except asyncio.TimeoutError:
        raise BodyTimeout(f"The request body did not arrive within {seconds:g} s.") from None


def headers_too_large(scope: Scope, limit: int) -> bool:
    return sum(len(name) + len(value) for name, value in scope["headers"]) > limit


async def _read(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadPayload("the client closed the connection before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"The request body is larger than the limit of {limit} bytes.")


async def respond(send: Send, status: int, body: bytes, headers: list) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Send, status: int, payload: dict, headers: Optional[list] = None) -> None:
    await respond(send, status, json.dumps(payload).encode(), [(b"content-type", b"application/json"), *(headers or [])])


async def answer_of(app: ASGIApp, scope: Scope, receive: Receive) -> Tuple[Optional[Message], bytes]:
    """Run the ASGI ``app`` and keep its answer: the start message (None if it sent none) and the body."""
    start: Optional[Message] = None
    chunks: List[bytes] = []

    async def capture(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, capture)
    return start, b"".join(chunks)
