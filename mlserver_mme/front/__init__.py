"""The HTTP and gRPC front: the start-up wiring (``wiring``), SageMaker's routes (``sagemaker``), the hosting
contract (``hosting``), MLServer's V2 routes made safe and the index given target paths (``v2_compat``,
``grpc_guard``), request signing (``sigv4``), ASGI helpers (``asgi``) and the choice between answering inline
and in a batch thread (``offload``)."""
