"""A test runtime whose load and predict wait for files the test creates.

``parameters.extra``: ``load_gate`` (load waits for this file), ``predict_started``
(created when predict begins), ``predict_gate`` (predict waits for this file).
Answers the sum of each row.
"""

import asyncio
import os
import time

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyRequestCodec

DEADLINE_SECONDS = 60


async def wait_for_file(path: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        await asyncio.sleep(0.01)


class Gated(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra or {}
        if extra.get("load_gate"):
            await wait_for_file(extra["load_gate"])
        return True

    async def predict(self, payload):
        extra = self.settings.parameters.extra or {}
        if extra.get("predict_gate"):
            open(extra["predict_started"], "w").close()
            await wait_for_file(extra["predict_gate"])
        rows = self.decode_request(payload, default_codec=NumpyRequestCodec)
        return self.encode_response(np.asarray(rows, dtype=np.float64).sum(axis=1), default_codec=NumpyRequestCodec)
