"""Prometheus metrics, the counterparts of SageMaker's multi-model CloudWatch metrics.

Served on MLServer's metrics port (``MLSERVER_METRICS_PORT``, 8082 by default) at
``/metrics``. Created on first use, not at import: MLServer switches
prometheus_client to multiprocess mode at start-up when inference workers are on,
and metrics made before that would not be exported.

| metric | SageMaker counterpart | meaning |
|---|---|---|
| ``mme_model_loading_wait_seconds`` | ModelLoadingWaitTime | time a request waited for its model to be loaded |
| ``mme_model_downloading_seconds`` | ModelDownloadingTime | time to download an artifact |
| ``mme_model_unpacking_seconds`` | | time to unpack it |
| ``mme_model_checking_seconds`` | | time to check a new artifact in an isolated child |
| ``mme_model_loading_seconds`` | ModelLoadingTime | time for the runtime to load it |
| ``mme_model_unloading_seconds`` | ModelUnloadingTime | time to unload a model |
| ``mme_model_cache_hits_total`` / ``_misses_total`` | ModelCacheHit | requests that found their model loaded, or not |
| ``mme_loaded_models`` | LoadedModelCount | models loaded now |
| ``mme_evictions_total{reason}`` | | unloads for ``count``/``memory``, deletions for ``disk`` |
| ``mme_model_reloads_total`` | | loads of a model the budgets unloaded less than ``reload_window`` seconds before: thrash |
| ``mme_downloaded_bytes_total`` | | bytes fetched from the store |
| ``mme_disk_bytes`` | | unpacked artifacts in the cache folder |
| ``mme_memory_bytes`` | | measured memory (PSS) of the server and its workers |
| ``mme_memory_limit_bytes`` | | ``MLSERVER_MME_MEMORY_LIMIT`` in bytes (absent without one) |
| ``mme_load_failures_total{code}`` | | loads that failed, by the error their requests were answered |
| ``mme_model_memory_bytes`` | | measured memory growth of each load (a histogram) |
"""

from prometheus_client import Counter, Gauge, Histogram

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BYTES = tuple(2**n for n in range(10, 36, 2))


class Metrics:
    def __init__(self):
        self.loading_wait = Histogram("mme_model_loading_wait_seconds", "Wait for a model load", buckets=_SECONDS)
        self.downloading = Histogram("mme_model_downloading_seconds", "Artifact download time", buckets=_SECONDS)
        self.unpacking = Histogram("mme_model_unpacking_seconds", "Artifact unpack time", buckets=_SECONDS)
        self.checking = Histogram("mme_model_checking_seconds", "Isolated artifact check time", buckets=_SECONDS)
        self.loading = Histogram("mme_model_loading_seconds", "Runtime load time", buckets=_SECONDS)
        self.unloading = Histogram("mme_model_unloading_seconds", "Model unload time", buckets=_SECONDS)
        self.hits = Counter("mme_model_cache_hits", "Requests whose model was loaded")
        self.misses = Counter("mme_model_cache_misses", "Requests whose model was not loaded")
        self.loaded = Gauge("mme_loaded_models", "Models loaded now")
        self.evictions = Counter("mme_evictions", "Models evicted", ["reason"])
        self.reloads = Counter("mme_model_reloads", "Loads of a model evicted within MLSERVER_MME_RELOAD_WINDOW")
        self.downloaded_bytes = Counter("mme_downloaded_bytes", "Bytes downloaded from the model store")
        self.disk_bytes = Gauge("mme_disk_bytes", "Bytes of unpacked artifacts in the cache folder")
        self.memory_bytes = Gauge("mme_memory_bytes", "Measured memory of the server and its workers")
        self.memory_limit = Gauge("mme_memory_limit_bytes", "MLSERVER_MME_MEMORY_LIMIT in bytes")
        self.load_failures = Counter("mme_load_failures", "Loads that failed, by error code", ["code"])
        self.model_memory = Histogram("mme_model_memory_bytes", "Measured memory growth per load", buckets=_BYTES)


_metrics = None


def metrics() -> Metrics:
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics
