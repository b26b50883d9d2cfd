"""A tiny MLServer runtime for the tests: returns twice the sum of each row."""

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyRequestCodec


class Doubler(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload):
        rows = self.decode_request(payload, default_codec=NumpyRequestCodec)
        return self.encode_response(2 * np.asarray(rows, dtype=np.float64).sum(axis=1), default_codec=NumpyRequestCodec)
