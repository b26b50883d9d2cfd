"""Reading requests and sending responses at the ASGI level, for the routes answered before FastAPI."""

import json
from typing import Optional

from .errors import BadPayload, RequestTooLarge


def header(headers: dict, name: bytes) -> Optional[str]:
    """A header of ``dict(scope["headers"])`` (lower-case byte names) as text, or None."""
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None


async def read_body(receive, headers: dict, limit: int) -> bytes:
    """The request body, refused as soon as it is known to exceed ``limit`` (never read past it)."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
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


async def respond(send, status: int, body: bytes, headers: list) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def respond_json(send, status: int, payload: dict, headers: Optional[list] = None) -> None:
    await respond(send, status, json.dumps(payload).encode(), [(b"content-type", b"application/json"), *(headers or [])])
