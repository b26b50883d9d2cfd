"""Plain-HTTP SageMaker invocations, as curl would send them."""

from typing import Optional

import httpx

ONE_ROW = b"1995,3000,3,2,1.0,2\n"


def invoke(server, target: Optional[str], body: bytes = ONE_ROW, path: str = "/invocations", **headers) -> httpx.Response:
    """POST ``body`` as text/csv (unless headers say otherwise) to ``target`` (no header when None)."""
    headers = {"Content-Type": "text/csv", **{name.replace("_", "-"): value for name, value in headers.items()}}
    if target is not None:
        headers["X-Amzn-SageMaker-Target-Model"] = target
    return httpx.post(server.url + path, content=body, headers=headers, timeout=60)
