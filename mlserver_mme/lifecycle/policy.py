"""Which loaded model is unloaded when a budget needs room: the eviction policies.

The budgets ask the model table for a victim; the table keeps the models that can go at once
(loaded, not pinned, no request in flight or waiting, no operation under way, not the model
being loaded) in least-recently-used order and lets the policy pick one of them. Pins and
those constraints are the table's: no policy can unload a pinned or busy model.

- ``lru``: the least recently used (the first candidate).
- ``tinylfu``: the model whose requests are worth least, in the spirit of W-TinyLFU and
  GreedyDual-Size-Frequency. Every request of a model counts in a frequency history kept by
  name, loaded or not: counts capped at 15 (TinyLFU's counters) and halved every ``50 x``
  loaded models' worth of requests, a long memory, as ranking the models at the edge of what
  fits on a steady Zipf trace takes (a cap of 3 halved every ``10 x`` kept ~2.5 points less
  hit ratio on the pure Zipf trace of ``python -m bench hot_set``). So that the history still
  follows a shift of popularity, it watches the requests for models asked for within the last
  ``loaded`` requests, hot enough to deserve a slot: they mostly find their model loaded (~2 % miss on
  that trace). In a period of ``loaded / 2`` requests (at least 100) where more than 30 % of
  them missed, and more than 3 times the usual share (a moving average over periods, set by
  the first period with 20 such requests: a workload that misses that much anyway is no
  shift), the counts describe a past popularity: only the models asked for in the
  period are kept, each with a count of 1. A scan never looks like a shift: its models are
  asked for once each. A model's worth is its frequency times the square root of what a miss
  of it costs (its measured load seconds), per byte it holds (its measured memory) when the
  room needed is memory, not a count of models, in half-octave steps (the root: the full
  ratio outweighed frequency and saved fewer load seconds in ``python -m bench hot_set``; it
  also damps the noise of measured memory). Among equal worth, a model not used again since
  its load (on probation, as in S3-FIFO) goes first, then the least recently used. A model
  loaded for a one-off request (a scan) is thus the next to go, not a model used often.
"""

import math
from typing import TYPE_CHECKING, Dict, List, Optional, Protocol

if TYPE_CHECKING:
    from .entries import Entry

POLICIES = ("lru", "tinylfu")

_CAP = 15  # TinyLFU's 4-bit counters: on a Zipf trace, the models at the edge of what fits count ~6 to 12, told apart
_WINDOW_PER_MODEL = 50  # requests per loaded model between two halvings: a long memory ranks a steady Zipf well
_MIN_WINDOW = 100
_MIN_PERIOD = 100  # a look for a shift of popularity every max(this, loaded / 2) requests
_MIN_REPEAT_GAP = 10  # a repeated request: its model asked for within the last max(this, loaded) requests
_MIN_REPEATS = 20  # fewer repeated requests in a period tell nothing
_SHIFT_SHARE = 0.3  # a shift: more than this share of the repeated requests missed...
_SHIFT_TIMES_USUAL = 3  # ...and more than 3 times the usual share (a workload that misses that much anyway is no shift)
_USUAL_WEIGHT = 1 / 8  # the usual share: a moving average over periods
_MIN_SECONDS = 1e-3  # a load measured faster than this costs this much
_MIN_BYTES = 1 << 20  # a model measured smaller than this holds this much


class Policy(Protocol):
    name: str

    def used(self, name: str, loaded: int, missed: bool = False) -> None:
        """A request used the model ``name``; ``loaded`` models are in the table; ``missed``: it had to load it."""

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

    def used(self, name: str, loaded: int, missed: bool = False) -> None:
        pass

    def requests(self, name: str) -> int:
        return 0

    def restore(self, name: str, requests: int) -> None:
        pass

    def choose(self, candidates: List["Entry"], per_byte: bool = True) -> Optional["Entry"]:
        return candidates[0] if candidates else None


class FrequencyHistory:
    """Requests per model name, capped and periodically halved; names whose count falls to 0 are forgotten.

    It also watches for a shift of popularity: in each period, the requests for a model already asked for
    within the last ``loaded`` requests (a model hot enough to deserve a slot) should mostly find it loaded.
    When many of them miss, the counts describe a past popularity: only the models asked for in the period
    are kept, with a count of 1, and the history builds up again from there.
    """

    def __init__(self) -> None:
        self.counts: Dict[str, int] = {}
        self.added = 0  # requests since the last halving
        self.clock = 0  # requests ever
        self.last: Dict[str, int] = {}  # the clock at each name's last request (names counted, or asked for since the last halving)
        self.period_start = 0
        self.repeats = 0  # in the period: requests for a model asked for within the last ``loaded`` requests
        self.repeats_missed = 0  # those that had to load it
        self.usual_missed_share: Optional[float] = None  # None until a period had enough repeated requests
        self.shifts = 0

    def add(self, name: str, loaded: int, missed: bool = False) -> None:
        self.clock += 1
        previous = self.last.get(name)
        if previous is not None and self.clock - previous <= max(loaded, _MIN_REPEAT_GAP):
            self.repeats += 1
            self.repeats_missed += missed
        self.last[name] = self.clock
        count = self.counts.get(name, 0)
        if count < _CAP:
            self.counts[name] = count + 1
        self.added += 1
        if self.added >= max(_MIN_WINDOW, _WINDOW_PER_MODEL * loaded):
            self.halve()
        if self.clock - self.period_start >= max(_MIN_PERIOD, loaded // 2):
            self.end_period()

    def halve(self) -> None:
        self.counts = {name: count // 2 for name, count in self.counts.items() if count > 1}
        self.last = {name: at for name, at in self.last.items() if name in self.counts}
        self.added = 0

    def end_period(self) -> None:
        if self.repeats >= _MIN_REPEATS:
            share = self.repeats_missed / self.repeats
            usual = self.usual_missed_share
            if usual is None:  # the first measured period sets the usual share: no verdict without one
                self.usual_missed_share = share
            else:
                if share > _SHIFT_SHARE and share > _SHIFT_TIMES_USUAL * usual:
                    self.counts = {name: 1 for name, at in self.last.items() if at > self.period_start}
                    self.added = 0  # the next halving is a whole window away: the fresh counts of 1 survive it
                    self.shifts += 1
                self.usual_missed_share = usual + _USUAL_WEIGHT * (share - usual)
        self.period_start = self.clock
        self.repeats = self.repeats_missed = 0

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)

    def __len__(self) -> int:
        return len(self.counts)


class TinyLFU:
    name = "tinylfu"

    def __init__(self) -> None:
        self.history = FrequencyHistory()

    def used(self, name: str, loaded: int, missed: bool = False) -> None:
        self.history.add(name, loaded, missed)

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
