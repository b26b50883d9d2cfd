"""Settings of the multi-model layer.

Read from the environment (``MLSERVER_MME_*``) first, then from
``model_repository_implementation_args`` in MLServer's ``settings.json``, then the
defaults below. Relative paths given in settings.json are taken relative to the
folder that holds it (the one passed to ``mlserver start``).
"""

import logging
import os
import secrets
from typing import Literal, Optional

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .folders import default_cache_dir

ENV_PREFIX = "MLSERVER_MME_"


class MMESettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, protected_namespaces=())

    model_prefix: str = "../examples/models"
    """Where the model archives live: ``s3://bucket/path/``, a folder or a ``file://`` URL."""

    cache_dir: str = Field(default_factory=default_cache_dir)
    """Local folder holding downloaded and unpacked models: the user's own (``$XDG_CACHE_HOME/mlserver-mme``,
    else ``~/.cache/mlserver-mme``), which must belong to the server's user and be writable by no one else."""

    allow_pickle: bool = False
    """Load pickled boosters (pickle runs code on load: only for trusted artifacts)."""

    allowed_runtimes: str = "mlserver_mme.runtimes.xgboost.XGBoostModel"
    """Comma-separated MLServer runtime classes an artifact's own ``model-settings.json`` may name. Only
    this package's XGBoost runtime by default: its model files are checked in an isolated child, while
    other runtimes parse theirs in the server process (add them for artifacts you trust that far)."""

    validation_memory: str = "2GiB"
    """Memory a new artifact's check (load and first predictions, in a child process) may use."""

    validation_seconds: int = 30
    """CPU seconds a new artifact's check may use (it is stopped after twice that in wall time)."""

    check_spares: int = Field(2, ge=0)
    """Check children kept forked, confined and warmed up in advance, per server process (shard): about
    9 MiB of their own each, outside the memory budget. 0: each check forks its own child."""

    max_unpacked_bytes: int = 4 * 1024**3
    """Refuse an archive whose unpacked content is larger than this."""

    max_loaded_models: Optional[int] = None
    """Most models loaded at once (pinned ones not counted); the eviction policy's victims are unloaded."""

    eviction_policy: Literal["lru", "tinylfu"] = "tinylfu"
    """Which model is unloaded when a budget needs room: ``tinylfu`` weighs how often each model was
    requested lately (loaded or not) and what its miss costs (measured load seconds, per byte held when
    memory is short), so a model loaded for a one-off request goes first; ``lru`` unloads the least
    recently used."""

    memory_limit: Optional[str] = None
    """Measured memory of the server and its workers: bytes, ``2GiB``/``500MB``, or ``80%`` of the
    machine's or container's memory. Over it, the eviction policy's victims are unloaded."""

    disk_limit: Optional[str] = None
    """Bytes of unpacked artifacts kept in ``cache_dir`` (same forms as ``memory_limit``, a percentage
    being of the file system's size). Over it, unloaded artifacts are deleted, least recently used first."""

    preload: str = ""
    """Comma-separated target models loaded at start-up and never unloaded."""

    failure_ttl: float = 10.0
    """Seconds a failed fetch or load is remembered and answered again without retrying it."""

    warm_restart: bool = True
    """After a restart, load the models that were loaded before from the cache folder, in the background
    (``hot-set.json`` there records them; nothing is downloaded or unloaded for them)."""

    hot_set_record_seconds: float = Field(10.0, gt=0)
    """How often the loaded models are recorded for a warm restart (when they changed)."""

    reload_window: float = Field(600.0, ge=0)
    """Seconds after the budgets unload a model within which its next load counts as a reload
    (``mme_model_reloads_total``): the sign that the server holds too few models for its traffic."""

    revalidate_after: Optional[float] = None
    """Seconds after which a used model's ETag is checked again; a changed artifact is swapped in."""

    load_wait_timeout: float = 60.0
    """Seconds a request waits for its model to load before ModelNotReadyException (SageMaker: 60)."""

    max_payload_bytes: int = 6 * 1024 * 1024
    """Largest request body of a SageMaker invocation (SageMaker: 6 MB); larger ones are refused unread."""

    max_header_bytes: int = 16 * 1024
    """Largest total size of a request's headers, on the SageMaker and the V2 routes."""

    body_timeout: float = 30.0
    """Seconds a request body may take to arrive in full; a slower one is answered 408 and dropped."""

    sigv4_keys: str = ""
    """``ACCESS_KEY_ID:SECRET`` pairs separated by commas: when set (here or in ``sigv4_keys_file``),
    SageMaker invocations must carry a valid AWS Signature Version 4 made with one of them."""

    sigv4_keys_file: Optional[str] = None
    """A file of such pairs (commas or new lines; ``#`` comments), e.g. a mounted secret."""

    admin_token: Optional[str] = None
    """When set, ``/v2/repository/*`` and the hosting routes (``/models...``) need
    ``Authorization: Bearer <token>``. An empty value, a placeholder (``CHANGE-ME...``, as the Kubernetes base
    ships it) or a value no client can send (white space or control characters, such as a file's final line
    break) keeps those routes closed to everyone."""

    @field_validator("admin_token")
    @classmethod
    def _unusable_token_closes(cls, token: Optional[str]) -> Optional[str]:
        if token is None or (token and token.isprintable() and not any(c.isspace() for c in token)
                             and not token.startswith("CHANGE-ME")):
            return token
        reason = ("is empty" if not token else "is a placeholder" if token.startswith("CHANGE-ME")
                  else "holds white space or control characters")
        logging.getLogger("mlserver.mme").warning(
            "event=admin-token-unusable reason=MLSERVER_MME_ADMIN_TOKEN %s: the management routes stay closed", reason
        )
        return secrets.token_hex(32)  # a token no one knows: closed, never open

    shard_check: Optional[str] = None
    """Set by ``mlserver-mme serve`` for each shard at each start, with ``shard_answer``: a ``/ping`` carrying
    ``X-MME-Shard-Check: <shard_check>`` is answered with ``X-MME-Shard-Answer: <shard_answer>``, which
    HAProxy's health check of this shard expects (``scale_out.haproxy.shard_check``), so that nothing but
    this start's own shard is ever up in its place."""

    shard_answer: Optional[str] = None
    """See ``shard_check``."""

    sagemaker_multi_model: bool = Field(False, validation_alias="SAGEMAKER_MULTI_MODEL")
    """Set by SageMaker (``SAGEMAKER_MULTI_MODEL=true``) when it hosts the container: serve its hosting
    contract (``/models`` routes), see ``hosting.py``."""

    hosting_roots: str = "/opt/ml/models,/opt/ml/model"
    """Comma-separated folders under which hosting-contract ``url`` values must lie."""

    variant_name: str = "AllTraffic"
    """Sent back in ``X-Amzn-Invoked-Production-Variant``."""

    xgboost_nthread: int = 1
    """Threads per XGBoost prediction: 1 suits many small models and small requests."""

    v2_fast_path: bool = True
    """Answer V2 inference of this server's XGBoost models before MLServer's FastAPI stack (REST,
    ``front/v2_fast.py``) and its gRPC converters (``front/v2_fast_grpc.py``), with the same answers;
    off, MLServer answers them all."""

    per_model_metrics_top_k: int = 50
    """Models that get a ``model`` label value of their own in the per-model metrics (the busiest ones,
    see ``model_metrics.py``); requests of the others count under ``model="other"``."""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        # The environment wins over settings.json (passed as init arguments).
        return env_settings, init_settings, dotenv_settings, file_secret_settings


def load_settings(root: Optional[str] = None, **file_args) -> MMESettings:
    """Settings from the environment over settings.json's arguments (paths relative to ``root``)."""
    settings = MMESettings(**file_args)
    if root and "MLSERVER_MME_MODEL_PREFIX" not in os.environ and _is_relative_path(settings.model_prefix):
        settings = settings.model_copy(
            update={"model_prefix": os.path.normpath(os.path.join(os.path.abspath(root), settings.model_prefix))}
        )
    return settings


def _is_relative_path(prefix: str) -> bool:
    return "://" not in prefix and not os.path.isabs(prefix)


def comma_list(text: str) -> list:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: how list settings are written."""
    return [item.strip() for item in text.split(",") if item.strip()]


def preload_targets(settings: MMESettings) -> list:
    return comma_list(settings.preload)

