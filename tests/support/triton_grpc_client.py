"""tritonclient.grpc's calls on one model, in a process of their own; prints what they gave as JSON.

    python tests/support/triton_grpc_client.py HOST:PORT MODEL_NAME ROWS_JSON

tritonclient.grpc and MLServer register protobuf messages of the same names
(``inference.ServerLiveRequest``, ...) in protobuf's default pool, so the two
cannot be imported into one process: the tests run the client here.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient


def main(address: str, name: str, rows: list) -> dict:
    client = grpcclient.InferenceServerClient(url=address)
    seen = {}
    try:
        seen["index"] = [model.name for model in client.get_model_repository_index().models]
        client.load_model(name)
        seen["ready"] = client.is_model_ready(name)
        seen["metadata_name"] = client.get_model_metadata(name).name
        tensor = grpcclient.InferInput("input-0", [len(rows), len(rows[0])], "FP32")
        tensor.set_data_from_numpy(np.asarray(rows, dtype=np.float32))  # raw bytes: the client's default
        result = client.infer(name, [tensor])
        (output,) = result.get_response().outputs
        seen["predictions"] = result.as_numpy(output.name).ravel().tolist()
        client.unload_model(name)
        seen["ready_after_unload"] = client.is_model_ready(name)
        states = {model.name: model.state for model in client.get_model_repository_index().models}
        seen["state_after_unload"] = states[name]
    finally:
        client.close()
    return seen


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))))
