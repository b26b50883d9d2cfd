"""Failed loads, remembered for ``failure_ttl`` seconds and answered without trying again.

Only an artifact's own faults are remembered (``ARTIFACT_FAULTS``: nothing at that path,
an archive or model that cannot be unpacked, checked or loaded); an unreachable store,
a timeout, a race with an unload or a cancelled request never are. Many distinct bad
names cost a bounded number of entries and bytes: the oldest are dropped first.
"""

import copy
import time
from typing import Dict, Tuple

from ..errors import ArtifactNotFound, BrokenModel, MMEError

ARTIFACT_FAULTS = (ArtifactNotFound, BrokenModel)
MAX_REMEMBERED_FAILURES = 10_000
MAX_REMEMBERED_FAILURE_BYTES = 8 * 1024 * 1024  # names and messages of remembered failures


class FailureMemory:
    def __init__(self, ttl: float):
        self.ttl = ttl
        self._failures: Dict[str, Tuple[float, MMEError]] = {}  # oldest first
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._failures)

    def __contains__(self, name: str) -> bool:
        return name in self._failures

    @property
    def bytes(self) -> int:
        return self._bytes

    def raise_if_remembered(self, name: str) -> None:
        failure = self._failures.get(name)
        if failure is not None and failure[0] > time.monotonic():
            raise copy.copy(failure[1])

    def remember(self, name: str, error: MMEError) -> None:
        if self.ttl <= 0:
            return
        now = time.monotonic()
        self.forget(name)
        # Oldest first, and all remembered for the same time: the first ones expire first.
        while self._failures:
            oldest = next(iter(self._failures))
            full = len(self._failures) >= MAX_REMEMBERED_FAILURES or self._bytes > MAX_REMEMBERED_FAILURE_BYTES
            if not full and self._failures[oldest][0] > now:
                break
            self.forget(oldest)
        # a copy holds no traceback nor cause, so no frames are kept alive with it
        self._failures[name] = (now + self.ttl, copy.copy(error))
        self._bytes += _size(name, error)

    def forget(self, name: str) -> None:
        failure = self._failures.pop(name, None)
        if failure is not None:
            self._bytes -= _size(name, failure[1])


def _size(name: str, error: MMEError) -> int:
    return len(name) + len(error.message) + 512  # the entry's objects, roughly
