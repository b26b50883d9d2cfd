"""Requests as tritonclient.http builds them."""

import tritonclient.http as httpclient
from tritonclient.utils import np_to_triton_dtype


def triton_body(inputs, outputs=None, **options):
    """The body and header length tritonclient.http sends for these inputs (None: all JSON)."""
    return httpclient.InferenceServerClient.generate_request_body(inputs, outputs=outputs, **options)


def triton_input(name, array, binary=True):
    tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    return tensor.set_data_from_numpy(array, binary_data=binary)

