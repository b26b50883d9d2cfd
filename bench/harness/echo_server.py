"""The HTTP floor: uvicorn + Starlette answering every POST with a constant JSON list.

    python bench/harness/echo_server.py PORT
"""

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route


async def constant(request):
    await request.body()
    return Response(b"[387599.09375]", media_type="application/json")


app = Starlette(routes=[Route("/{path:path}", constant, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
