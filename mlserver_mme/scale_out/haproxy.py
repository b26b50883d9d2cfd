"""The HAProxy configuration of the front of a sharded server.

Requests are placed on shards by consistent hashing of the model they name, so
each model is loaded on one shard (one download, one load) and stays there:

- SageMaker routes name it in ``X-Amzn-SageMaker-Target-Model``: the key is the
  header's value, whole (``req.fhdr``: a target may hold commas);
- V2 routes (``/v2/models/<name>/...``, ``/v2/repository/models/<name>/...``)
  name it by its V2 name, which HAProxy turns back into the target path with the
  rule of ``naming.py`` read backwards: a final ``~`` stands for no ``.tar.gz``,
  otherwise ``.tar.gz`` is added, and each ``~XX`` escape is the byte ``XX``
  (``~`` is swapped for ``%`` and ``url_dec`` decodes). So ``northeast~2FBoston_MA``
  hashes as ``northeast/Boston_MA.tar.gz``. This is exact for ASCII targets. HTTP
  clients send a header in Latin-1 while V2 names escape UTF-8 bytes, so the two
  routes of a target outside ASCII may reach different shards.

Two backends share the shards and their health checks (``track``) and place keys on
the same ring (same server ids and weights). SageMaker routes may have bounded load
(``hash-balance-factor``, ``MLSERVER_MME_HASH_BALANCE_FACTOR``, off by default): while a
shard holds more than that share of the average number of requests in flight, its
models' requests go to the next shard on the ring, which loads them lazily. V2
routes do not spill: a V2 repository ``load`` or ``unload`` must reach the shard
that serves the model, and V2 calls keep to that one copy.
Requests without a model (``/ping``, the index) go round robin.

Faults: each shard's ``/ping`` is checked every second, with a check value of its
own that only it answers, with another value of its own (``shard_check``,
``MMESettings.shard_check``).
A connection error marks it down at once (3 failed checks a quarter of a second
apart, or one failed connection of a request), a late answer only after 3 checks
of ``CHECK_TIMEOUT_SECONDS`` each: slowness is not death; a request whose connection fails or whose shard closes
without answering is sent again to another shard (``retry-on``, ``redispatch``).
A request is not retried after a timeout: it may still be running.

The metrics port serves HAProxy's own Prometheus exporter on ``/metrics`` and each
shard's MLServer metrics on ``/shards/<i>/metrics``.
"""

import base64
import hashlib
import hmac
import math
import re
import secrets
from typing import Iterable, List, Tuple

from .shards import Shard

HASH_BALANCE_FACTOR = 0
"""A shard takes at most this percentage of the average number of requests in flight per shard; 0, the default,
sets no bound: only a dead shard's models move (a bound moved 13 of 24 models to a second shard, each downloaded
again, under two clients of batches on a busy machine: ``python -m bench shard_pressure``)."""

SHARDS_PER_THREAD = 8
"""HAProxy threads: one per 8 shards. Its threads share the ring and the connection pools: on 2 cores one
thread spent about 40 us of CPU per request, two about 65."""

SERVER_WEIGHT = 100
"""Equal weights; a higher weight puts more points of each shard on the ring, an evener split of the models."""

TARGET_HEADER = "X-Amzn-SageMaker-Target-Model"
CHECK_TIMEOUT_SECONDS = 10
"""How long a health check waits for its answer: 3 late answers in a row (30 s) mark a shard down."""

SHARD_CHECK_KEY = re.compile(r"[A-Za-z0-9]{32,}")  # base64 without "+", "/" or "=": nothing HAProxy parses


def new_shard_check_keys() -> Tuple[str, str]:
    """Two keys made at each start: one makes each shard's check value, the other its answer (``shard_check``)."""
    keys: List[str] = []
    while len(keys) < 2:
        key = base64.b64encode(secrets.token_bytes(24)).decode()
        if SHARD_CHECK_KEY.fullmatch(key):
            keys.append(key)
    return keys[0], keys[1]


def shard_check(keys: Tuple[str, str], shard_name: str) -> Tuple[str, str]:
    """The (check, answer) pair of one shard: HMAC-SHA256 of its name under each key, in base64, as HAProxy's
    ``hmac`` and ``base64`` converters compute them. A process on one shard's port learns that shard's check
    only, which no other shard answers, and no answer."""
    return tuple(  # type: ignore[return-value]
        base64.b64encode(hmac.new(base64.b64decode(key), shard_name.encode(), hashlib.sha256).digest()).decode()
        for key in keys
    )


# The target a V2 path names (naming.py's rule read backwards), as txn.key; txn.name is set when the path is
# a V2 model's. deploy/kubernetes/haproxy.cfg holds these very lines (a test compares them).
V2_KEY_RULES = """\
    http-request set-var(txn.path) path,url_dec
    http-request set-var(txn.name) var(txn.path),field(4,/) if { var(txn.path) -m beg /v2/models/ }
    http-request set-var(txn.name) var(txn.path),field(5,/) if { var(txn.path) -m beg /v2/repository/models/ }
    # V2 name -> target path (naming.py backwards): "~XX" is byte XX; a final "~" means no ".tar.gz"
    http-request set-var(txn.key) var(txn.name),regsub(~$,),regsub(~,%,g),url_dec if { var(txn.name) -m end ~ }
    http-request set-var(txn.key) var(txn.name),regsub(~,%,g),url_dec,concat(.tar.gz) if { var(txn.name) -m found } !{ var(txn.name) -m end ~ }
"""


def render(shards: Iterable[Shard], host: str, http_port: int, metrics_port: int,
           balance_factor: int = HASH_BALANCE_FACTOR, check_keys: Tuple[str, str] = ("", "")) -> str:
    """HAProxy's configuration; ``check_keys`` are this start's (``new_shard_check_keys``): a shard is up only
    while its ``/ping`` answers its own check value with its own answer (``shard_check``)."""
    check_key, answer_key = check_keys
    if not (SHARD_CHECK_KEY.fullmatch(check_key) and SHARD_CHECK_KEY.fullmatch(answer_key)):
        raise ValueError("the shard check keys must be 32 or more letters and digits")
    shards = list(shards)
    threads = math.ceil(len(shards) / SHARDS_PER_THREAD)
    bounded_load = f"\n    hash-balance-factor {balance_factor}" if balance_factor else ""
    ring = "\n".join(
        f"    server {s.name} 127.0.0.1:{s.http_port} id {s.index + 1} weight {SERVER_WEIGHT}" for s in shards
    )
    tracked = "\n".join(
        f"    server {s.name} 127.0.0.1:{s.http_port} id {s.index + 1} weight {SERVER_WEIGHT} track sagemaker/{s.name}"
        for s in shards
    )
    metrics = "\n".join(f"    server {s.name} 127.0.0.1:{s.metrics_port}" for s in shards)
    metrics_rules = "\n".join(f"    use-server {s.name} if {{ var(txn.shard) -m str {s.index} }}" for s in shards)
    bind_host = "" if host in ("0.0.0.0", "") else host  # empty: every IPv4 address
    return f"""\
# Written by `mlserver-mme serve` at each start (see mlserver_mme/scale_out/haproxy.py); edits are lost.
# No access log: HAProxy runs in the foreground (-db) and prints a shard going down or up on stderr;
# requests, errors, retries and redispatches are counted by the Prometheus exporter.
global
    nbthread {threads}
    # a stopping front finishes its requests in flight, for at most this long
    hard-stop-after 25s

defaults
    mode http
    timeout connect 2s
    timeout client 180s
    # above MLSERVER_MME_LOAD_WAIT_TIMEOUT (60 s): a request may wait that long for its model
    timeout server 180s
    timeout http-request 30s
    timeout http-keep-alive 60s
    timeout queue 60s
    # A slow answer is not a dead shard: a shard starved of CPU by busy neighbours answers its health check late,
    # and moving its models would download and load them twice. A dead one refuses the connection: down at once.
    timeout check {CHECK_TIMEOUT_SECONDS}s
    # A request is sent again (to another shard) when its connection fails or its shard closes without
    # answering. Only a request whole in HAProxy's buffer can be: wait for bodies (up to 16 KiB) first,
    # else a keep-alive client's request on a dying shard is dropped for the client to retry.
    option http-buffer-request
    # Once, on another shard: a request that crashed its shard cannot take down more than two.
    retries 1
    option redispatch 1
    retry-on conn-failure empty-response junk-response
    http-error status 503 content-type application/json hdr x-amzn-ErrorType ServiceUnavailable string '{{"Message": "No model server is available."}}'
    http-error status 502 content-type application/json hdr x-amzn-ErrorType InternalFailure string '{{"Message": "The model server failed to answer."}}'
    http-error status 504 content-type application/json hdr x-amzn-ErrorType ServiceUnavailable string '{{"Message": "The model server did not answer in time."}}'

frontend mme
    bind {bind_host}:{http_port}
    # The model a request names: the V2 name in a V2 path, else the target-model header. The path is
    # decoded first, as the shards' HTTP server decodes it: /v2%2Fmodels/... is a V2 call there too.
{V2_KEY_RULES}    http-request set-var(txn.key) req.fhdr({TARGET_HEADER}) if !{{ var(txn.name) -m found }}
    http-response set-header X-MME-Shard %[srv_name]
    use_backend v2 if {{ var(txn.name) -m found }}
    default_backend sagemaker

backend sagemaker
    balance hash var(txn.key)
    hash-type consistent{bounded_load}
    # Only this start's own shards are ever up: a process that took a shard's port does not know the answer.
    option httpchk
    # Each shard's own values: HMAC-SHA256 of its name under this start's keys (shard_check() computes the same).
    http-check send meth GET uri /ping hdr X-MME-Shard-Check "%[srv_name,hmac(sha256,{check_key}),base64]"
    http-check expect hdr name X-MME-Shard-Answer value-lf "%[srv_name,hmac(sha256,{answer_key}),base64]"
    default-server check inter 1s fastinter 250ms downinter 250ms fall 3 rise 1 observe layer4 error-limit 1 on-error mark-down
{ring}

backend v2
    balance hash var(txn.key)
    hash-type consistent
{tracked}

frontend metrics
    bind {bind_host}:{metrics_port}
    http-request use-service prometheus-exporter if {{ path /metrics }}
    http-request set-var(txn.shard) path,field(3,/) if {{ path_reg ^/shards/[0-9]+/metrics$ }}
    http-request return status 404 unless {{ var(txn.shard) -m str {" ".join(str(s.index) for s in shards)} }}
    default_backend shard-metrics

backend shard-metrics
    http-request set-path /metrics
{metrics_rules}
{metrics}
"""
