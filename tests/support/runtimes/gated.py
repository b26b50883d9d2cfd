"""A test runtime whose load and predict wait for files the test creates.

``parameters.extra``: ``load_started`` (created when load begins), ``load_gate`` (load
waits for this file), ``weight_file`` (then read from the model's folder, a number),
``predict_started`` (created when predict begins), ``predict_gate`` (predict waits for
this file). Answers the sum of each row, times the weight (1 without one).
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
        if extra.get("load_started"):
            open(extra["load_started"], "w").close()
        if extra.get("load_gate"):
            await wait_for_file(extra["load_gate"])
        self.weight = 1.0
        if extra.get("weight_file"):
            with open(os.path.join(self.settings.parameters.uri, extra["weight_file"])) as file:
                self.weight = float(file.read())
        return True

    async def predict(self, payload):
        extra = self.settings.parameters.extra or {}
        if extra.get("predict_gate"):
            open(extra["predict_started"], "w").close()
            await wait_for_file(extra["predict_gate"])
        rows = self.decode_request(payload, default_codec=NumpyRequestCodec)
        return self.encode_response(np.asarray(rows, dtype=np.float64).sum(axis=1) * self.weight, default_codec=NumpyRequestCodec)
