"""The lifecycle in one process: MLServer's real model registry, a folder as the model store, the bundled
XGBoost models, and the SageMaker middleware called as an ASGI app.

The artifact check runs here in the calling thread (``check_in_process``): confining it in a child is
``isolation``'s job, tested with real children in tests/e2e/test_artifacts_isolation.py. Everything else
is the server's own code: the repository and its disk cache, the lifecycle, the runtime, the registry.
"""

import asyncio
import json
import os
import shutil

import numpy as np
import pytest
from mlserver.errors import ModelNotFound
from mlserver.registry import MultiModelRegistry
from support.artifacts import EXAMPLES, EXPECTED, ROWS, tar_bytes

from mlserver_mme.artifacts import isolation
from mlserver_mme.artifacts.repository import MMERepository
from mlserver_mme.errors import BrokenModel, ModelTooLarge, describe
from mlserver_mme.front.sagemaker import SageMakerMiddleware
from mlserver_mme.lifecycle import ModelLifecycle, State
from mlserver_mme.naming import v2_name
from mlserver_mme.observability.metrics import metrics

HOUSTON, CHICAGO, LOS_ANGELES = "Houston_TX.tar.gz", "Chicago_IL.tar.gz", "LosAngeles_CA.tar.gz"
BROKEN = "broken.tar.gz"


@pytest.fixture
def checks(monkeypatch):
    """The paths of the model files checked, each check run in this process as a child would run it."""
    checked = []

    def check_in_process(check, *args, limits):
        checked.append(args[0])
        try:
            return json.loads(json.dumps(check(*args)))  # what a child sends back: JSON
        except Exception as error:  # a child answers the message of whatever the check raised
            raise isolation.IsolatedFailure(getattr(error, "message", None) or describe(error)) from None

    monkeypatch.setattr(isolation, "start", lambda *args, **kwargs: None)
    monkeypatch.setattr(isolation, "run", check_in_process)
    return checked


@pytest.fixture
def store(tmp_path):
    """A folder holding three bundled models and one artifact whose model file is not a model."""
    folder = tmp_path / "store"
    folder.mkdir()
    for target in (HOUSTON, CHICAGO, LOS_ANGELES):
        shutil.copy(os.path.join(EXAMPLES, target), folder / target)
    (folder / BROKEN).write_bytes(tar_bytes({"xgboost-model": b"this is not a model"}))
    return folder


class Server:
    """What ``SageMakerRouter.load`` puts together, without MLServer's servers around it."""

    def __init__(self, tmp_path, store, **settings):
        self.loads, self.unloads, self.fetches = [], [], []
        self.registry = MultiModelRegistry(on_model_load=[self._loaded], on_model_unload=[self._unloaded])
        root = tmp_path / "model-settings"
        root.mkdir(exist_ok=True)
        self.repository = MMERepository(
            str(root), model_prefix=str(store), cache_dir=str(tmp_path / "cache"), **settings
        )
        self.lifecycle = ModelLifecycle(self.registry, self.repository, self.repository.settings)
        settings_for = self.repository.settings_for

        async def counted_settings_for(target, **options):
            self.fetches.append(target)
            return await settings_for(target, **options)

        self.repository.settings_for = counted_settings_for

    async def _loaded(self, model):
        self.loads.append(model.name)
        return model

    async def _unloaded(self, model):
        self.unloads.append(model.name)
        return model

    def ready(self) -> set:
        return {entry.name for entry in self.lifecycle.models if entry.state is State.READY}


@pytest.fixture
def make_server(tmp_path, store, checks, monkeypatch):
    for name in list(os.environ):
        if name.startswith("MLSERVER_MME_"):  # the environment wins over the settings given here
            monkeypatch.delenv(name)
    return lambda **settings: Server(tmp_path, store, **settings)


def predictions(entry, rows=ROWS) -> list:
    return entry.model.predictor()(np.asarray(rows, dtype=np.float32)).tolist()


def test_a_cold_load_then_a_warm_hit(make_server, checks):
    async def scenario():
        mme = make_server()
        cold = await mme.lifecycle.acquire(HOUSTON)
        assert cold.state is State.READY and cold.in_flight == 1
        assert predictions(cold) == EXPECTED["predictions"][HOUSTON]
        mme.lifecycle.release(cold)
        assert cold.in_flight == 0

        warm = await mme.lifecycle.acquire(HOUSTON)
        assert warm is cold and warm.model is await mme.registry.get_model(v2_name(HOUSTON))
        mme.lifecycle.release(warm)
        return mme

    mme = asyncio.run(scenario())
    assert mme.fetches == [HOUSTON] and mme.loads == ["Houston_TX"] and len(checks) == 1


def test_concurrent_first_requests_load_the_model_once(make_server, checks):
    async def scenario():
        mme = make_server()
        entries = await asyncio.gather(*(mme.lifecycle.acquire(CHICAGO) for _ in range(32)))
        assert all(entry is entries[0] for entry in entries)
        assert entries[0].in_flight == 32
        for entry in entries:
            mme.lifecycle.release(entry)
        assert predictions(entries[0]) == EXPECTED["predictions"][CHICAGO]
        return mme

    mme = asyncio.run(scenario())
    assert mme.fetches == [CHICAGO] and mme.loads == ["Chicago_IL"] and len(checks) == 1
    assert len(os.listdir(mme.repository.settings.cache_dir + "/models")) == 1  # one copy on disk


def test_the_count_budget_unloads_the_least_recently_used_idle_model(make_server):
    async def scenario():
        mme = make_server(max_loaded_models=2)
        for target in (HOUSTON, CHICAGO):
            mme.lifecycle.release(await mme.lifecycle.acquire(target))
        mme.lifecycle.release(await mme.lifecycle.acquire(HOUSTON))  # Chicago is now the least recently used
        assert mme.ready() == {"Houston_TX", "Chicago_IL"} and mme.unloads == []

        third = await mme.lifecycle.acquire(LOS_ANGELES)
        assert mme.unloads == ["Chicago_IL"]
        assert mme.ready() == {"Houston_TX", "LosAngeles_CA"}
        with pytest.raises(ModelNotFound):
            await mme.registry.get_model("Chicago_IL")

        # a model with a request in flight is no victim: the budget waits, over its count, for it
        held = await mme.lifecycle.acquire(HOUSTON)
        mme.lifecycle.release(third)
        back = await mme.lifecycle.acquire(CHICAGO)  # from the disk cache, no new fetch of the store
        assert mme.unloads == ["Chicago_IL", "LosAngeles_CA"]
        assert mme.ready() == {"Houston_TX", "Chicago_IL"}
        assert predictions(back) == EXPECTED["predictions"][CHICAGO]
        assert predictions(held) == EXPECTED["predictions"][HOUSTON]
        mme.lifecycle.release(held)
        mme.lifecycle.release(back)
        return mme

    mme = asyncio.run(scenario())
    assert mme.loads == ["Houston_TX", "Chicago_IL", "LosAngeles_CA", "Chicago_IL"]


def test_a_broken_artifacts_failure_is_remembered(make_server, checks):
    async def failures(mme, times):
        messages = []
        for _ in range(times):
            with pytest.raises(BrokenModel) as failed:
                await mme.lifecycle.acquire(BROKEN)
            messages.append(failed.value.message)
        return messages

    remembering = make_server(failure_ttl=60)
    messages = asyncio.run(failures(remembering, 3))
    assert len(set(messages)) == 1 and "failed its load check" in messages[0]
    assert len(checks) == 1 and remembering.fetches == [BROKEN] and remembering.loads == []
    assert v2_name(BROKEN) in remembering.lifecycle.failures
    assert v2_name(BROKEN) not in remembering.lifecycle.models

    del checks[:]
    forgetting = make_server(failure_ttl=0)
    asyncio.run(failures(forgetting, 2))
    assert len(checks) == 2  # without the memory, each request tries again


# --- the SageMaker route, called as the ASGI app MLServer's REST server calls ----------------------


async def not_found(scope, receive, send):
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def invoke(app, target: str, body: bytes = b"1995,3000,3,2,1.0,2\n"):
    """Status, headers and body of ``POST /invocations`` of ``target``."""
    received = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        return received.pop(0)

    async def send(message):
        sent.append(message)

    headers = [
        (b"content-type", b"text/csv"),
        (b"content-length", str(len(body)).encode()),
        (b"x-amzn-sagemaker-target-model", target.encode()),
    ]
    scope = {"type": "http", "method": "POST", "path": "/invocations", "raw_path": b"/invocations",
             "query_string": b"", "headers": headers}
    await app(scope, receive, send)
    start, = (message for message in sent if message["type"] == "http.response.start")
    content = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), content


def test_the_sagemaker_route_loads_answers_and_remembers_a_failure(make_server, checks):
    async def scenario():
        mme = make_server()
        app = SageMakerMiddleware(not_found, lifecycle=mme.lifecycle, settings=mme.repository.settings)
        first = await asyncio.gather(*(invoke(app, HOUSTON) for _ in range(8)))
        again = await invoke(app, HOUSTON)
        broken = [await invoke(app, BROKEN) for _ in range(2)]
        return mme, first, again, broken

    mme, first, again, broken = asyncio.run(scenario())
    for status, headers, content in first + [again]:
        assert status == 200, content
        assert headers[b"x-amzn-invoked-production-variant"] == b"AllTraffic"
        assert json.loads(content) == EXPECTED["predictions"][HOUSTON][:1]
    assert mme.loads == ["Houston_TX"]
    for status, headers, content in broken:
        assert status == 424 and headers[b"x-amzn-errortype"] == b"ModelError", content
    assert len({json.loads(content)["OriginalMessage"] for _, _, content in broken}) == 1
    assert len(checks) == 2  # Houston's and the broken artifact's, once each


def reloads() -> float:
    return metrics().reloads._value.get()


def test_reloads_count_the_budgets_victims_loaded_again_and_nothing_else(make_server):
    async def count_budget():
        mme = make_server(max_loaded_models=1)
        for target in (HOUSTON, CHICAGO, HOUSTON):  # Houston unloaded by the count, then loaded again
            mme.lifecycle.release(await mme.lifecycle.acquire(target))
        entry = mme.lifecycle.models.get("Houston_TX")
        assert await mme.lifecycle.unload(entry, "request")  # an explicit unload is no thrash
        mme.lifecycle.release(await mme.lifecycle.acquire(HOUSTON))

    before = reloads()
    asyncio.run(count_budget())
    assert reloads() - before == 1

    async def too_large():
        mme = make_server(memory_limit="1", failure_ttl=0)
        for _ in range(3):
            with pytest.raises(ModelTooLarge):
                await mme.lifecycle.acquire(CHICAGO)

    before = reloads()
    asyncio.run(too_large())
    assert reloads() == before  # unloaded as it loaded, never a victim of the budgets


def on_disk(make_server, *targets):
    """A first server's run: ``targets`` downloaded into the cache folder the next server uses."""

    async def fetch():
        first = make_server()
        for target in targets:
            first.lifecycle.release(await first.lifecycle.acquire(target))

    asyncio.run(fetch())


def test_a_warm_start_restores_the_policys_counts_and_ranks_its_models_below_requests_models(make_server):
    on_disk(make_server, HOUSTON, CHICAGO, LOS_ANGELES)

    async def scenario():
        mme = make_server(max_loaded_models=3)
        mme.lifecycle.release(await mme.lifecycle.acquire(LOS_ANGELES))  # a request's, before the warm start
        record = [{"target": HOUSTON, "memory_bytes": 0, "requests": 3}, {"target": CHICAGO, "memory_bytes": 0,
                                                                         "requests": 1}]
        await mme.lifecycle.hot_set.warm_up(record)
        order = [entry.name for entry in mme.lifecycle.models]
        policy = mme.lifecycle.models.policy
        return mme, order, policy.requests("Houston_TX"), policy.requests("Chicago_IL")

    mme, order, houston, chicago = asyncio.run(scenario())
    assert order == ["Chicago_IL", "Houston_TX", "LosAngeles_CA"]  # the coldest recorded model goes first
    assert (houston, chicago) == (3, 1)
    assert mme.unloads == []


def test_a_warm_start_unloads_no_model_and_stops_where_memory_runs_short(make_server):
    on_disk(make_server, HOUSTON, CHICAGO, LOS_ANGELES)

    async def scenario():
        mme = make_server(memory_limit="300")
        lifecycle = mme.lifecycle
        lifecycle.budgets.measure = lambda: 120 * sum(entry.model is not None for entry in lifecycle.models)
        mme.lifecycle.release(await lifecycle.acquire(LOS_ANGELES))  # 120 of 300
        record = [{"target": target, "memory_bytes": 0} for target in (HOUSTON, CHICAGO)]
        await lifecycle.hot_set.warm_up(record)  # two fit 240 < 270 (90%); three would be 360
        return mme

    mme = asyncio.run(scenario())
    assert "LosAngeles_CA" in mme.ready() and len(mme.ready()) == 2
    assert len(mme.unloads) == 1 and mme.unloads[0] in ("Houston_TX", "Chicago_IL")  # the warm load itself


@pytest.mark.parametrize("record", [
    b"{not json",
    json.dumps({"prefix": "s3://someone-else/", "models": [{"target": HOUSTON}]}).encode(),
    json.dumps({"models": "not a list"}).encode(),
    json.dumps([HOUSTON]).encode(),
])
def test_a_record_that_is_not_this_servers_loads_nothing(make_server, record):
    on_disk(make_server, HOUSTON)

    async def scenario():
        mme = make_server()
        with open(os.path.join(mme.repository.settings.cache_dir, "hot-set.json"), "wb") as file:
            file.write(record)
        await mme.lifecycle.hot_set.warm_up(mme.lifecycle.hot_set._read())
        return mme

    mme = asyncio.run(scenario())
    assert mme.ready() == set() and mme.loads == []
