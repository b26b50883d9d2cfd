"""The eviction policies: which model the budgets unload, and what no policy may unload.

The table and the budgets are the real ones; the lifecycle's runs use a fake loader whose loads take
virtual seconds and hold given bytes, and a fake memory measure (the sum of what is loaded).
"""

import asyncio
import random
from types import SimpleNamespace

import pytest

from mlserver_mme.config import MMESettings
from mlserver_mme.lifecycle import ModelLifecycle
from mlserver_mme.lifecycle.budgets import Budgets
from mlserver_mme.lifecycle.entries import Entry, ModelTable, State
from mlserver_mme.lifecycle.policy import LRU, FrequencyHistory, TinyLFU, make_policy
from mlserver_mme.naming import v2_name

MIB = 1 << 20


def table_of(policy, names, seconds=0.5, memory=10 * MIB):
    """A table of READY entries, loaded in the order of ``names`` (the first is the least recently used)."""
    table = ModelTable(policy)
    for name in names:
        entry = Entry(name, name, load_seconds=seconds, memory_bytes=memory)
        table.add(entry)
        table.set_state(entry, State.READY)
        table.touch(entry, used=False)
    return table


def use(table, name, times=1):
    for _ in range(times):
        table.touch(table.get(name))


def run(coroutine_function):
    return asyncio.run(coroutine_function())


# -- the frequency history ----------------------------------------------------------------------------


def test_the_history_caps_counts_halves_them_and_forgets_names_down_to_nothing():
    history = FrequencyHistory()
    for _ in range(40):
        history.add("hot", loaded=0)
    assert history["hot"] == 15  # capped
    for i in range(59):
        history.add(f"once-{i}", loaded=0)
    assert history.added == 99 and len(history) == 60
    history.add("once-0", loaded=0)  # the 100th request since the last halving (the smallest window)
    assert history.added == 0
    assert history["hot"] == 7 and history["once-0"] == 1 and history["once-1"] == 0
    assert len(history) == 2 and set(history.last) == {"hot", "once-0"}  # names counted once are forgotten
    assert history.shifts == 0  # no request missed: no shift of popularity


def test_the_history_window_grows_with_the_models_loaded():
    history = FrequencyHistory()
    for _ in range(4999):
        history.add("a", loaded=100)  # window: 50 requests per loaded model
    assert history.added == 4999
    history.add("a", loaded=100)
    assert history.added == 0 and history["a"] == 7


def steady(history, names, periods, loaded=20):
    """``periods`` periods of requests going round ``names``, each finding its model loaded."""
    for i in range(100 * periods):
        history.add(names[i % len(names)], loaded)


def test_a_shift_of_popularity_clears_the_history_but_a_scan_does_not():
    history = FrequencyHistory()
    old = [f"old{i}" for i in range(10)]
    steady(history, old, 3)
    assert history.shifts == 0 and all(history[name] == 15 for name in old)
    for i in range(300):  # a scan: each model asked for once, each a miss
        history.add(f"scan{i}", loaded=20, missed=True)
    assert history.shifts == 0 and all(history[name] == 15 for name in old)
    new = [f"new{i}" for i in range(10)]
    for i in range(99):  # new favourites, asked for again and again, keep missing: the old ones take the room
        history.add(new[i % 10], loaded=20, missed=i % 3 == 0)
    assert history.shifts == 0
    history.add(new[9], loaded=20)  # the period's end: 29 of its 90 repeated requests missed
    assert history.shifts == 1
    assert history.counts == {name: 1 for name in new}  # the old favourites are forgotten at once
    steady(history, new, 1)
    assert history.shifts == 1 and history["new0"] == 11


def test_a_workload_that_always_misses_that_much_is_no_shift():
    history = FrequencyHistory()
    names = [f"m{i}" for i in range(10)]
    fired = []
    for _ in range(8):  # every other repeated request misses, period after period
        for i in range(100):
            history.add(names[i % 10], loaded=20, missed=i % 2 == 0)
        fired.append(history.shifts)
    assert fired == [0] * 8  # the first period sets the usual share; none is over 3 times it


def test_a_server_that_starts_missing_does_not_forget_the_counts_it_restored():
    history = FrequencyHistory()
    names = [f"m{i}" for i in range(30)]
    for name in names:  # a warm restart: the counts recorded before it
        history.counts[name] = 15
    rng = random.Random(1)
    for i in range(400):  # 30 equally hot models, room for 10: many repeated requests miss from the start
        history.add(rng.choice(names), loaded=10, missed=i % 3 != 0)
    assert history.usual_missed_share is not None and history.usual_missed_share > 0.5  # periods were measured
    assert history.shifts == 0 and all(history[name] == 15 for name in names)


# -- choices --------------------------------------------------------------------------------------------


def test_lru_picks_the_least_recently_used_as_before():
    async def scenario():
        table = table_of(LRU(), ["a", "b", "c"])
        use(table, "a", 5)
        assert table.victim().name == "b"
        use(table, "b")
        assert table.victim().name == "c"
        assert table.victim(protect=table.get("c")).name == "a"

    run(scenario)


def test_a_scan_does_not_push_out_models_used_often():
    async def scenario():
        table = table_of(TinyLFU(), ["hot1", "hot2", "hot3"])
        for name in ("hot1", "hot2", "hot3"):
            use(table, name, 5)
        # a scan: each model loaded for one request, the next one needing room
        for i in range(20):
            scanned = Entry(f"scan{i}", f"scan{i}", load_seconds=0.5, memory_bytes=10 * MIB)
            table.add(scanned)
            table.set_state(scanned, State.READY)
            table.touch(scanned, used=False)
            use(table, scanned.name)
            victim = table.victim()
            assert victim is scanned  # the one-off model goes first, though it is the most recently used
            table.remove(victim)
        assert {entry.name for entry in table} == {"hot1", "hot2", "hot3"}

    run(scenario)


def test_among_equals_a_model_on_probation_goes_before_one_used_again_then_the_least_recent():
    async def scenario():
        policy = TinyLFU()
        table = table_of(policy, ["old", "reused", "new"])
        use(table, "old")
        use(table, "reused", 2)
        use(table, "new")
        policy.history.counts["reused"] = 1  # the same frequency as the others (halved, say)
        assert table.victim().name == "old"  # used once since loaded, least recently used
        table.remove(table.get("old"))
        assert table.victim().name == "new"  # on probation: before "reused", though more recent

    run(scenario)


def test_an_old_favourite_ages_out_as_the_counts_are_halved():
    async def scenario():
        policy = TinyLFU()
        table = table_of(policy, ["old", "new"])
        use(table, "old", 15)
        use(table, "new", 2)
        assert table.victim().name == "new"
        for _ in range(4):  # the old favourite is no longer asked for: each window halves its count
            use(table, "new")
            while policy.history.added:
                use(table, "new")
        assert policy.history["old"] == 0 and policy.history["new"] == 7
        assert table.victim().name == "old"

    run(scenario)


def test_the_table_tells_the_policy_which_request_loaded_a_model():
    calls = []

    class Recording(LRU):
        def used(self, name, loaded, missed=False):
            calls.append((name, loaded, missed))

    async def scenario():
        table = table_of(Recording(), ["a", "b"])
        use(table, "a", 2)
        assert calls == [("a", 2, True), ("a", 2, False)]  # its first use is the request that loaded it

    run(scenario)


def test_the_choice_weighs_load_seconds_against_memory_held():
    async def scenario():
        policy = TinyLFU()
        table = ModelTable(policy)
        for name, seconds, memory in (("cheap", 0.1, 10 * MIB), ("costly", 2.0, 10 * MIB),
                                      ("large", 0.5, 80 * MIB), ("small", 0.5, 8 * MIB)):
            entry = Entry(name, name, load_seconds=seconds, memory_bytes=memory)
            table.add(entry)
            table.set_state(entry, State.READY)
            use(table, name, 4)
        order = []
        while (victim := table.victim()) is not None:
            order.append(victim.name)
            table.remove(victim)
        assert order == ["large", "cheap", "small", "costly"]
        # twice as large but used three times as often, a model stays
        table = table_of(policy, ["large2", "small2"])
        table.get("large2").memory_bytes = 20 * MIB
        use(table, "large2", 15)
        use(table, "small2", 1)
        assert table.victim().name == "small2"
        # room for the count of models: bytes held do not matter, a one-off goes before a model used often
        table = ModelTable(policy)
        for name, seconds, memory, uses in (("hot", 0.8, 400 * MIB, 3), ("once", 0.15, 2 * MIB, 1)):
            entry = Entry(name, name, load_seconds=seconds, memory_bytes=memory)
            table.add(entry)
            table.set_state(entry, State.READY)
            use(table, name, uses)
        assert table.victim(for_memory=True).name == "hot"  # for memory: 200 times the bytes
        assert table.victim(for_memory=False).name == "once"

    run(scenario)


@pytest.mark.parametrize("policy", ["lru", "tinylfu"])
def test_no_policy_picks_a_pinned_busy_or_protected_model(policy):
    async def scenario():
        table = table_of(make_policy(policy), ["pinned", "in_flight", "waiting", "locked", "protected", "free"])
        use(table, "free", 15)  # the most valuable and most recent: the only one that may go
        table.get("pinned").pinned = True
        table.get("in_flight").in_flight = 1
        table.get("waiting").waiting = 1
        await table.get("locked").operation.acquire()
        assert table.victim(protect=table.get("protected")).name == "free"
        table.remove(table.get("free"))
        assert table.victim(protect=table.get("protected")) is None
        loading = Entry("loading", "loading")
        table.add(loading)
        table.set_state(loading, State.LOADING)
        assert table.victim(protect=table.get("protected")) is None

    run(scenario)


def test_make_policy_knows_its_names():
    assert isinstance(make_policy("lru"), LRU) and isinstance(make_policy("tinylfu"), TinyLFU)
    with pytest.raises(ValueError):
        make_policy("fifo")


# -- the budgets with a fake memory measure ----------------------------------------------------------------


def test_the_memory_budget_unloads_the_policys_victims_until_under_and_never_a_pin():
    async def scenario():
        table = table_of(TinyLFU(), ["pin", "hot", "cold1", "cold2", "new"])
        table.get("pin").pinned = True
        use(table, "pin", 1)
        use(table, "hot", 10)
        use(table, "cold1", 1)
        use(table, "cold2", 2)
        unloaded = []

        async def unload(entry, reason):
            unloaded.append((entry.name, reason))
            table.remove(entry)

        budgets = Budgets(table, unload, None, 25 * MIB, SimpleNamespace(),
                          measure=lambda: sum(entry.memory_bytes for entry in table))
        assert await budgets.fits(table.get("new"))  # 50 MiB loaded: three must go, "new" is protected
        assert unloaded == [("cold1", "memory"), ("cold2", "memory"), ("hot", "memory")]
        budgets.memory_limit = 5 * MIB
        assert not await budgets.fits(table.get("new"))  # only the pin and the protected one are left
        assert {entry.name for entry in table} == {"pin", "new"}

    run(scenario)


# -- the lifecycle: its setting, measured load seconds, requests counted once ----------------------------


class FakeLoader:
    def __init__(self, clock, seconds):
        self.clock, self.seconds = clock, seconds

    async def registered(self, name):
        return None

    async def load(self, target, settings):
        self.clock.now += self.seconds[target]
        return SimpleNamespace(name=target), 10 * MIB

    async def unload(self, entry, reason):
        pass


class FakeCache:
    """The disk tier's side of a load: no replaced versions to drop."""

    def has_retired(self):
        return False

    async def drop_retired(self, in_use):
        pass


class FakeRepository:
    cache = FakeCache()

    async def settings_for(self, target):
        return SimpleNamespace(parameters=SimpleNamespace(extra={}))


def lifecycle_of(policy, monkeypatch, **settings):
    for name in ("MLSERVER_MME_EVICTION_POLICY", "MLSERVER_MME_MEMORY_LIMIT", "MLSERVER_MME_MAX_LOADED_MODELS"):
        monkeypatch.delenv(name, raising=False)
    lifecycle = ModelLifecycle(None, FakeRepository(), MMESettings(model_prefix="/nonexistent",
                                                                   eviction_policy=policy, **settings))
    clock = SimpleNamespace(now=0.0)
    lifecycle.loader = FakeLoader(clock, {"a": 2.0, "b": 0.5, "c": 1.0, "once": 0.5})
    lifecycle.clock = lambda: clock.now

    async def nothing():
        pass

    lifecycle.budgets.trim_disk = nothing
    return lifecycle


def test_the_setting_chooses_the_policy_and_tinylfu_is_the_default(monkeypatch):
    monkeypatch.delenv("MLSERVER_MME_EVICTION_POLICY", raising=False)
    assert MMESettings().eviction_policy == "tinylfu"
    monkeypatch.setenv("MLSERVER_MME_EVICTION_POLICY", "lru")
    assert MMESettings().eviction_policy == "lru"
    monkeypatch.setenv("MLSERVER_MME_EVICTION_POLICY", "nope")
    with pytest.raises(ValueError):
        MMESettings()


@pytest.mark.parametrize("policy, evicted", [("lru", "a"), ("tinylfu", "once")])
def test_the_lifecycle_measures_loads_counts_each_request_once_and_unloads_the_policys_victim(
        policy, evicted, monkeypatch):
    async def scenario():
        lifecycle = lifecycle_of(policy, monkeypatch, max_loaded_models=3)
        for target in ("a", "a", "a", "b", "b", "once", "c"):
            lifecycle.release(await lifecycle.acquire(target))
        return lifecycle

    lifecycle = asyncio.run(scenario())
    loaded = {entry.name: entry for entry in lifecycle.models}
    assert v2_name(evicted) not in loaded and len(loaded) == 3
    assert loaded[v2_name("c")].load_seconds == 1.0 and loaded[v2_name("b")].load_seconds == 0.5
    assert loaded[v2_name("b")].uses == 2  # the requests, not the load
    if policy == "tinylfu":
        assert lifecycle.models.policy.history[v2_name("b")] == 2


def test_a_model_with_a_request_in_flight_stays_whatever_its_worth(monkeypatch):
    async def scenario():
        lifecycle = lifecycle_of("tinylfu", monkeypatch, max_loaded_models=2)
        for _ in range(5):
            lifecycle.release(await lifecycle.acquire("a"))
        held = await lifecycle.acquire("once")  # in flight: no victim, though it is worth least
        lifecycle.release(await lifecycle.acquire("b"))
        assert {entry.name for entry in lifecycle.models} == {v2_name("once"), v2_name("b")}
        lifecycle.release(held)

    asyncio.run(scenario())


async def turns_until(condition, turns=100) -> bool:
    """Whether ``condition()`` holds within ``turns`` turns of the event loop (background work runs meanwhile)."""
    for _ in range(turns):
        if condition():
            return True
        await asyncio.sleep(0)
    return condition()


@pytest.mark.parametrize("policy", ["lru", "tinylfu"])
def test_a_load_over_the_count_while_the_others_were_busy_is_undone_once_one_of_them_is_released(policy, monkeypatch):
    async def scenario():
        lifecycle = lifecycle_of(policy, monkeypatch, max_loaded_models=1)
        held = await lifecycle.acquire("a")
        b = await lifecycle.acquire("b")  # a has a request in flight: b loads over the count
        lifecycle.release(b)
        assert lifecycle.budgets.count_blocked_by == {v2_name("a")}
        assert not await turns_until(lambda: len(lifecycle.models) < 2)  # b stays: unloading it would be thrash
        again = await lifecycle.acquire("b")
        lifecycle.release(again)
        assert again is b and b.uses == 2  # b's second request found it loaded
        lifecycle.release(held)  # a can go now: the policy chooses between a and b
        done = await turns_until(lambda: len(lifecycle.models) == 1 and not lifecycle.budgets.count_blocked_by)
        assert done, "still over the count"
        return {entry.name for entry in lifecycle.models}

    assert asyncio.run(scenario()) == {v2_name("b")}  # used last (lru); used twice, a once (tinylfu)


class GatedLoader(FakeLoader):
    """Each load waits for its target's gate; ``loads`` lists them."""

    def __init__(self, clock, seconds):
        super().__init__(clock, seconds)
        self.gates = {target: asyncio.Event() for target in seconds}
        self.loads = []

    async def load(self, target, settings):
        self.loads.append(target)
        await self.gates[target].wait()
        return await super().load(target, settings)


@pytest.mark.parametrize("policy", ["lru", "tinylfu"])
@pytest.mark.parametrize("turns", range(8))
def test_a_model_is_no_victim_between_its_load_and_its_waiters_use(policy, turns, monkeypatch):
    async def scenario():
        lifecycle = lifecycle_of(policy, monkeypatch, max_loaded_models=1)
        loader = GatedLoader(lifecycle.loader.clock, {"a": 2.0, "b": 0.5})
        lifecycle.loader = loader
        first = asyncio.ensure_future(lifecycle.acquire("a"))
        second = asyncio.ensure_future(lifecycle.acquire("b"))
        while len(loader.loads) < 2:
            await asyncio.sleep(0)
        loader.gates["a"].set()
        for _ in range(turns):  # b's load ends, and makes room, this many loop turns after a's
            await asyncio.sleep(0)
        loader.gates["b"].set()
        a, b = await first, await second
        assert a.in_flight == 1 and b.in_flight == 1
        lifecycle.release(a)
        lifecycle.release(b)
        return loader.loads

    assert asyncio.run(scenario()) == ["a", "b"]  # each served from its one load
