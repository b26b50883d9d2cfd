"""Which loaded model is unloaded when a budget needs room: the eviction policies.

The budgets ask the model table for a victim; the table keeps the models that can go at once
(loaded, not pinned, no request in flight or waiting, no operation under way, not the model
being loaded) in least-recently-used order and lets the policy pick one of them. Pins and
those constraints are the table's: no policy can unload a pinned or busy model.

- ``lru``: the least recently used (the first candidate).
- ``tinylfu``: the model whose requests are worth least, in the spirit of W-TinyLFU and
  GreedyDual-Size-Frequency. Every request of a model counts in a frequency history kept by
  name, loaded or not (counts capped at 3 and halved every ``10 x`` loaded models' worth of
  requests, as TinyLFU ages its sketch, so the history stays small and follows changes in
  popularity: TinyLFU's cap of 15 kept ~1 point more hit ratio on a steady Zipf trace but
  took twice as long to settle after a shift of popularity). A model's worth is its
  frequency times the square root of what a miss of it costs (its measured load seconds),
  per byte it holds (its measured memory) when the room needed is memory, not a count of
  models, in half-octave steps (the root: with counts this
  coarse, the full ratio outweighed frequency and saved fewer load seconds in ``python -m
  bench hot_set``; it also damps the noise of measured memory). Among equal worth, a model
  not used again since its load (on probation, as in S3-FIFO) goes first, then the least
  recently used. A model loaded for a one-off request (a scan) is thus the next to go, not
  a model used often.
"""

import math
from typing import TYPE_CHECKING, Dict, List, Optional, Protocol

if TYPE_CHECKING:
    from .entries import Entry

POLICIES = ("lru", "tinylfu")

_CAP = 3  # low: a model no longer requested falls to 0 in two halvings (a shift settles within ~2,000 requests)
_WINDOW_PER_MODEL = 10  # requests per loaded model between two halvings (TinyLFU's sample size)
_MIN_WINDOW = 100
_MIN_SECONDS = 1e-3  # a load measured faster than this costs this much
_MIN_BYTES = 1 << 20  # a model measured smaller than this holds this much


class Policy(Protocol):
    name: str

    def used(self, name: str, loaded: int) -> None:
        """A request used the model ``name``; ``loaded`` models are in the table."""

    def choose(self, candidates: List["Entry"], per_byte: bool = True) -> Optional["Entry"]:
        """The victim among ``candidates`` (least recently used first), or None if there are none.

        ``per_byte``: room is made for memory (what a model holds counts); else for the count of models.
        """

    def requests(self, name: str) -> int:
        """What the policy remembers of ``name``'s requests (recorded for a warm restart)."""

    def restore(self, name: str, requests: int) -> None:
        """After a restart: ``name`` had ``requests`` (as ``requests`` gave them before)."""


class LRU:
    name = "lru"

    def used(self, name: str, loaded: int) -> None:
        pass

    def requests(self, name: str) -> int:
        return 0

    def restore(self, name: str, requests: int) -> None:
        pass

    def choose(self, candidates: List["Entry"], per_byte: bool = True) -> Optional["Entry"]:
        return candidates[0] if candidates else None


class FrequencyHistory:
    """Requests per model name, capped and periodically halved; names whose count falls to 0 are forgotten."""

    def __init__(self) -> None:
        self.counts: Dict[str, int] = {}
        self.added = 0

    def add(self, name: str, loaded: int) -> None:
        count = self.counts.get(name, 0)
        if count < _CAP:
            self.counts[name] = count + 1
        self.added += 1
        if self.added >= max(_MIN_WINDOW, _WINDOW_PER_MODEL * loaded):
            self.halve()

    def halve(self) -> None:
        self.counts = {name: count // 2 for name, count in self.counts.items() if count > 1}
        self.added = 0

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)

    def __len__(self) -> int:
        return len(self.counts)


class TinyLFU:
    name = "tinylfu"

    def __init__(self) -> None:
        self.history = FrequencyHistory()

    def used(self, name: str, loaded: int) -> None:
        self.history.add(name, loaded)

    def requests(self, name: str) -> int:
        return self.history[name]

    def restore(self, name: str, requests: int) -> None:
        if requests > 0:
            self.history.counts[name] = min(requests, _CAP)

    def worth(self, entry: "Entry", per_byte: bool = True) -> float:
        """Requests in the history x the square root of load seconds (per byte held, when memory is short)."""
        cost = max(entry.load_seconds, _MIN_SECONDS)
        if per_byte:
            cost /= max(entry.memory_bytes, _MIN_BYTES)
        return self.history[entry.name] * math.sqrt(cost)

    def rank(self, entry: "Entry", per_byte: bool = True) -> tuple:
        worth = self.worth(entry, per_byte)
        step = math.floor(2 * math.log2(worth)) if worth > 0 else -(10**9)
        return (step, entry.uses > 1)  # then, with equal rank, the earlier (least recently used) candidate

    def choose(self, candidates: List["Entry"], per_byte: bool = True) -> Optional["Entry"]:
        return min(candidates, key=lambda entry: self.rank(entry, per_byte), default=None)  # the first of equals


def make_policy(name: str) -> Policy:
    if name == "lru":
        return LRU()
    if name == "tinylfu":
        return TinyLFU()
    raise ValueError(f"unknown eviction policy {name!r}: one of {', '.join(POLICIES)}")
