"""Request count, errors by code and latency per model, for the busiest models only.

A label value per model would let a thousand models (or callers naming
thousands of targets) make thousands of series. Here at most ``top_k`` models
hold a ``model`` label value of their own, their target path; every other
request counts under ``model="other"``, so the label never has more than
``top_k + 1`` values.

| metric | labels | meaning |
|---|---|---|
| ``mme_model_request_seconds`` | ``model`` | request time (a histogram); its ``_count`` is the request count |
| ``mme_model_errors_total`` | ``model``, ``code`` | requests answered with an error, by the error's code |

Who holds a slot: the first ``top_k`` models requested take the free slots at
once, so a server with fewer models than that labels every one of them. Then,
every ``review_seconds``, the models with the most recent traffic are compared
with the slot holders: a model takes the slot of the least busy holder if it had
at least twice its traffic (the margin keeps two similar models from trading a
slot back and forth). The series of a model losing its slot are removed, so
Prometheus sees them end; its later requests count under ``other``. Recent
traffic is halved at each review, so old traffic fades, and at most
``max(1024, 8 * top_k)`` models are tracked (the least busy are forgotten
first), so names cannot grow memory without bound either. (With MLServer's
multiprocess metrics, on when ``parallel_workers`` is set server-wide, removed
series stay in its files: the bound is then the number of models that ever held
a slot.)

``record()`` runs once per request on the event loop: a few dictionary
look-ups and one histogram observation, plus a counter increment for an error:
about 1 µs, 0.7 of it prometheus_client's observation (``bench/model_metrics.py``
measures it). A review sorts the tracked models once: about 1 ms for
``top_k`` 50.
"""

import heapq
import time
from operator import itemgetter
from typing import Any, Callable, Dict, Set

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

OTHER = "other"  # also the code label of codes beyond MAX_CODES; a model named "other" never gets a slot
SUCCESS = frozenset({"200", "OK"})  # an HTTP or a gRPC success

# Warm requests take a fraction of a millisecond, cold ones seconds.
SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
REVIEW_SECONDS = 60.0
MARGIN = 2  # a model takes a slot from one with at most 1/MARGIN of its recent traffic
MAX_CODES = 32  # codes come from this package, never from callers; a bound all the same


class _Series:
    """The labelled children of one ``model`` label value, made once (``labels()`` costs ~0.8 µs)."""

    __slots__ = ("model", "observe", "errors")

    def __init__(self, metrics: "ModelMetrics", model: str):
        self.model = model
        self.observe = metrics.latency.labels(model).observe
        self.errors: Dict[str, Any] = {}


class ModelMetrics:
    def __init__(
        self,
        top_k: int,
        review_seconds: float = REVIEW_SECONDS,
        registry: CollectorRegistry = REGISTRY,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.top_k = max(0, top_k)
        self.latency = Histogram(
            "mme_model_request_seconds", "Request time by model", ["model"], buckets=SECONDS, registry=registry
        )
        self.errors = Counter(
            "mme_model_errors", "Requests answered with an error, by model and code", ["model", "code"],
            registry=registry,
        )
        self._slots: Dict[str, _Series] = {}
        self._other = _Series(self, OTHER)
        self._recent: Dict[str, int] = {}
        self._max_tracked = max(1024, 8 * self.top_k)
        self._codes: Set[str] = set()
        self._review_seconds = review_seconds
        self._clock = clock
        self._next_review = clock() + review_seconds

    def record(self, target: str, code: str, seconds: float) -> None:
        """Count one finished request of ``target``: ``code`` is ``"200"`` (or gRPC's ``"OK"``) or the error's code."""
        recent = self._recent
        recent[target] = recent.get(target, 0) + 1
        series = self._slots.get(target) or self._placed(target)
        series.observe(seconds)
        if code not in SUCCESS:
            self._error(series, code)
        if self._clock() >= self._next_review:
            self.review()

    def labelled(self) -> set:
        """The models that have a label value of their own now."""
        return set(self._slots)

    def review(self) -> None:
        """Give slots to the busiest models of late; then let recent traffic fade."""
        self._next_review = self._clock() + self._review_seconds
        recent, slots = self._recent, self._slots
        hottest = heapq.nlargest(self.top_k, recent.items(), key=itemgetter(1))
        candidates = [(target, count) for target, count in hottest if target not in slots and target != OTHER]
        while candidates and len(slots) < self.top_k:
            self._open(candidates.pop(0)[0])
        # The busiest candidates against the idlest holders, each list walked once.
        idlest = sorted(slots, key=lambda held: recent.get(held, 0))
        for (target, count), held in zip(candidates, idlest):
            if count < MARGIN * recent.get(held, 0):
                break
            self._close(held)
            self._open(target)
        self._recent = {target: count >> 1 for target, count in recent.items() if count > 1}

    def _placed(self, target: str) -> _Series:
        """The series for a target without a slot: a free slot if one is left, else ``other``."""
        if len(self._slots) < self.top_k and target != OTHER:
            return self._open(target)
        if len(self._recent) > self._max_tracked:
            self._forget()
        return self._other

    def _open(self, target: str) -> _Series:
        series = self._slots[target] = _Series(self, target)
        return series

    def _close(self, target: str) -> None:
        series = self._slots.pop(target)
        for code in {self._code_label(code) for code in series.errors}:
            self.errors.remove(target, code)
        self.latency.remove(target)

    def _error(self, series: _Series, code: str) -> None:
        counter = series.errors.get(code)
        if counter is None:
            if code not in self._codes and len(self._codes) < MAX_CODES:
                self._codes.add(code)
            counter = series.errors[code] = self.errors.labels(series.model, self._code_label(code))
        counter.inc()

    def _code_label(self, code: str) -> str:
        return code if code in self._codes else OTHER

    def _forget(self) -> None:
        """Keep the busier half of the tracked models (slot holders' counts included)."""
        keep = heapq.nlargest(self._max_tracked // 2, self._recent.items(), key=itemgetter(1))
        self._recent = dict(keep)


_model_metrics = None


def model_metrics(top_k: int) -> ModelMetrics:
    """The process's per-model metrics, made on first use (not at import: see ``metrics.py``)."""
    global _model_metrics
    if _model_metrics is None:
        _model_metrics = ModelMetrics(top_k)
    return _model_metrics
