"""Remembering recent evictions, to count reloads: a model loaded again soon after the budgets unloaded it.

Reloads are the cost of holding too few models for the traffic (thrash). They are counted in
``mme_model_reloads_total`` and logged (``event=reload``); the Kubernetes autoscaler can add
servers on their rate (docs/lifecycle.md, Scaling on reloads).
"""

import collections
import logging
import time

from ..observability.metrics import metrics

logger = logging.getLogger("mlserver.mme")

MAX_REMEMBERED = 100_000  # names; the oldest are forgotten first (about 100 bytes each)


class EvictionMemory:
    def __init__(self, window: float):
        self.window = window  # seconds an eviction is remembered
        self._evicted: "collections.OrderedDict[str, float]" = collections.OrderedDict()  # name -> when, oldest first

    def remember(self, name: str) -> None:
        """The budgets unloaded ``name`` now."""
        self._evicted.pop(name, None)
        self._evicted[name] = time.monotonic()
        while len(self._evicted) > MAX_REMEMBERED:
            self._evicted.popitem(last=False)

    def count_reload(self, name: str, target: str) -> None:
        """A load of ``name`` starts: a reload if the budgets unloaded it within the window."""
        evicted_at = self._evicted.pop(name, None)
        self._forget_older_than(time.monotonic() - self.window)
        if evicted_at is None:
            return
        ago = time.monotonic() - evicted_at
        if ago <= self.window:
            metrics().reloads.inc()
            logger.info("event=reload model=%s evicted_s_ago=%.1f", target, ago)

    def _forget_older_than(self, moment: float) -> None:
        while self._evicted and next(iter(self._evicted.values())) < moment:
            self._evicted.popitem(last=False)
