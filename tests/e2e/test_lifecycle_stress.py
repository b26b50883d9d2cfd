"""Many hands on the same models at once: V2 calls, evictions, updates, hosting and SageMaker traffic.

Seeded mixed traffic (``mixed_traffic.py``) against a real server; every answer's status is
checked, and afterwards MLServer's registry must hold exactly the models the lifecycle counts.
"""

import asyncio
import os
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import httpx
import pytest
from support.artifacts import EXAMPLES, EXPECTED, example_bytes
from support.mixed_traffic import Tally, bad_body, bad_target, invoke, run, v2_index, v2_infer, v2_load_unload
from support.mlserver_process import MLServerProcess
from support.serving import call, loaded, metric, metrics_text, wait_until

HOUSTON = EXPECTED["predictions"]["Houston_TX.tar.gz"][:1]
CHICAGO = EXPECTED["predictions"]["Chicago_IL.tar.gz"][:1]
SEED = 20261127
STORM_SECONDS = 60


def houston(prefix, *targets):
    for target in targets:
        prefix.put(target, example_bytes("Houston_TX.tar.gz"))


def storm(server, clients, seconds: float, enough: Callable[[Tally], bool]) -> Tally:
    """At least ``seconds`` of traffic, then until ``enough`` of it overlapped (a loaded machine serves fewer
    calls a second), for at most ``STORM_SECONDS``."""
    tally = Tally()
    started = time.monotonic()

    def stop() -> bool:
        elapsed = time.monotonic() - started
        return (elapsed > seconds and enough(tally)) or elapsed > STORM_SECONDS

    asyncio.run(run(server.url, clients, tally, SEED, stop=stop))
    return tally


def registry_matches_lifecycle(server, limit) -> bool:
    """MLServer's registry holds what the lifecycle counts as loaded, within ``limit``."""
    ready = loaded(server)
    return metric(metrics_text(server), "mme_loaded_models") == len(ready) <= limit


def assert_registry_matches_lifecycle(server, limit):
    assert registry_matches_lifecycle(server, limit), (loaded(server), metric(metrics_text(server), "mme_loaded_models"))


def assert_only_expected(tally: Tally):
    assert tally.unexpected() == {}, tally.examples


def test_v2_load_unload_storm_during_sagemaker_traffic(prefix, start_server):
    churned, steady = ["NewYork_NY.tar.gz", "LosAngeles_CA.tar.gz"], ["Chicago_IL.tar.gz", "Houston_TX.tar.gz"]
    houston(prefix, *churned, *steady)
    server = start_server(max_loaded_models=3)

    def enough(tally):
        return tally.count("invoke") > 100 and tally.count("v2-load") > 20

    tally = storm(
        server,
        [v2_load_unload(churned[:1]), v2_load_unload(churned[1:]), invoke(churned + steady), invoke(churned + steady),
         v2_infer(churned + steady)],
        seconds=6,
        enough=enough,
    )
    assert_only_expected(tally)
    assert enough(tally), tally.statuses
    for target in churned + steady:  # nothing was remembered as a failure
        assert call(server, target).json() == HOUSTON
    assert_registry_matches_lifecycle(server, limit=3)
    assert "event=load-failed" not in server.log()
    assert prefix.gets(churned[0]) == 1  # unloads keep the artifact on disk


def test_evictions_under_load_with_bad_targets_and_bodies(prefix, start_server):
    targets = [f"m{i:02d}.tar.gz" for i in range(12)]
    houston(prefix, *targets)
    server = start_server(max_loaded_models=3)

    def enough(tally):  # about 110-190 invocations in 6 s on an idle machine
        return tally.count("invoke") > 50 and tally.count("bad-target") > 10

    tally = storm(
        server,
        [invoke(targets), invoke(targets), invoke(targets[:3]), bad_target(), bad_body(targets), v2_index(),
         v2_load_unload(targets[3:6])],
        seconds=6,
        enough=enough,
    )
    assert_only_expected(tally)
    assert enough(tally), tally.statuses
    assert_registry_matches_lifecycle(server, limit=3)


def test_a_request_for_a_missing_model_unloads_nothing(prefix, start_server):
    houston(prefix, "a.tar.gz", "b.tar.gz")
    server = start_server(max_loaded_models=2)
    assert call(server, "a.tar.gz").status_code == 200
    assert call(server, "b.tar.gz").status_code == 200
    with ThreadPoolExecutor(5) as pool:
        replies = list(pool.map(lambda i: call(server, f"missing-{i}.tar.gz"), range(5)))
    assert [reply.status_code for reply in replies] == [400] * 5
    assert loaded(server) == {"a", "b"}
    assert 'mme_evictions_total{reason="count"}' not in metrics_text(server)


def test_an_update_of_a_model_evicted_meanwhile_is_not_loaded_behind_the_budgets(prefix, start_server):
    prefix.put("changing.tar.gz", example_bytes("Houston_TX.tar.gz"))
    houston(prefix, "other.tar.gz")
    server = start_server(max_loaded_models=1, revalidate_after=0)
    versions = [example_bytes("Chicago_IL.tar.gz"), example_bytes("Houston_TX.tar.gz")]
    for round in range(8):
        prefix.put("changing.tar.gz", versions[round % 2])
        # the first call starts an update in the background; the second evicts the model under it
        assert call(server, "changing.tar.gz").json() in (HOUSTON, CHICAGO)
        assert call(server, "other.tar.gz").json() == HOUSTON
        # an update swapping the new version in holds the model: other loads over the count, and the update
        # applies the budgets once it ends (in the background, after other's answer)
        wait_until(lambda: registry_matches_lifecycle(server, limit=1), message="the budgets applied")
    wait_until(lambda: call(server, "changing.tar.gz").json() == HOUSTON, message="the last version served")
    assert "event=update-failed" not in server.log()


@pytest.fixture
def hosting(tmp_path):
    root = tmp_path / "opt-ml-models"
    for city in ("Houston_TX", "Chicago_IL"):
        folder = root / city
        folder.mkdir(parents=True)
        with tarfile.open(os.path.join(EXAMPLES, f"{city}.tar.gz")) as tar:
            tar.extractall(folder, filter="data")
    process = MLServerProcess(
        {"SAGEMAKER_MULTI_MODEL": "true", "MLSERVER_MME_HOSTING_ROOTS": str(root),
         "MLSERVER_MME_MAX_LOADED_MODELS": "2", "MLSERVER_MME_CACHE_DIR": str(tmp_path / "cache")},
        str(tmp_path / "log"),
    ).start()
    process.root = root
    yield process
    process.stop()


def test_hosted_loads_racing_respect_the_limit_and_the_name(hosting):
    def load(name, city="Houston_TX"):
        return httpx.post(hosting.url + "/models", json={"model_name": name, "url": str(hosting.root / city)}, timeout=60)

    with ThreadPoolExecutor(6) as pool:
        same_name = sorted(reply.status_code for reply in pool.map(lambda _: load("one"), range(4)))
    assert same_name == [200, 409, 409, 409]
    with ThreadPoolExecutor(6) as pool:
        others = sorted(reply.status_code for reply in pool.map(lambda i: load(f"m{i}", "Chicago_IL"), range(5)))
    assert others == [200, 507, 507, 507, 507]
    names = [m["modelName"] for m in httpx.get(hosting.url + "/models").json()["models"]]
    assert len(names) == 2 and "one" in names, names


def test_loads_and_unloads_of_one_model_at_the_same_moment_keep_the_count(prefix, start_server):
    houston(prefix, "m.tar.gz")
    server = start_server(max_loaded_models=1)

    def both(_):
        with ThreadPoolExecutor(2) as pair:
            load = pair.submit(httpx.post, f"{server.url}/v2/repository/models/m/load", timeout=60)
            unload = pair.submit(httpx.post, f"{server.url}/v2/repository/models/m/unload", timeout=60)
            return load.result().status_code, unload.result().status_code

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(both, range(60)))
    assert {load for load, _ in answers} == {200}
    assert {unload for _, unload in answers} <= {200, 404}
    assert_registry_matches_lifecycle(server, limit=1)
    assert call(server, "m.tar.gz").json() == HOUSTON
    assert_registry_matches_lifecycle(server, limit=1)
