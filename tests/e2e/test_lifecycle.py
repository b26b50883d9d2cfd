"""The model cache lifecycle with a real server and S3 endpoint: one server per scenario."""

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from support.artifacts import EXPECTED, example_bytes, legacy_model_bytes, tar_bytes
from support.s3server import BUCKET
from support.serving import call, gated_artifact, loaded, metric, metrics_text, wait_until

HOUSTON = EXPECTED["predictions"]["Houston_TX.tar.gz"][:1]
CHICAGO = EXPECTED["predictions"]["Chicago_IL.tar.gz"][:1]


# A first server that lived past the record interval (10 s by default; a first check alone took 6 s on a busy
# 2-core machine) would leave a hot-set record, and the restart would warm-load the copy on disk before its ETag
# check (the warm start has its own test below): these tests are about a restart's first request.
NO_HOT_SET_RECORD = {"hot_set_record_seconds": 3600}


def houston(prefix, *names):
    for name in names:
        prefix.put(f"{name}.tar.gz", example_bytes("Houston_TX.tar.gz"))


def test_least_recently_used_is_unloaded_and_comes_back_from_disk(prefix, start_server):
    houston(prefix, "a", "b", "c", "d")
    server = start_server(max_loaded_models=2, eviction_policy="lru")  # tinylfu: tests/unit/test_lifecycle_policy.py
    for name in ("a", "b", "c"):
        assert call(server, f"{name}.tar.gz").json() == HOUSTON
    assert loaded(server) == {"b", "c"}
    assert call(server, "b.tar.gz").status_code == 200  # b is now the most recent
    assert call(server, "d.tar.gz").status_code == 200
    assert loaded(server) == {"b", "d"}
    assert call(server, "a.tar.gz").json() == HOUSTON
    assert loaded(server) == {"d", "a"}
    assert [prefix.gets(f"{name}.tar.gz") for name in "abcd"] == [1, 1, 1, 1]  # a reloaded from disk


def test_sixty_four_concurrent_cold_requests_download_and_load_once(prefix, start_server):
    houston(prefix, "one")
    server = start_server()
    with ThreadPoolExecutor(64) as pool:
        replies = list(pool.map(lambda _: call(server, "one.tar.gz"), range(64)))
    assert [r.status_code for r in replies] == [200] * 64
    assert all(r.json() == HOUSTON for r in replies)
    assert prefix.gets("one.tar.gz") == 1
    assert server.log().count("event=load model=one.tar.gz") == 1


def test_a_model_with_a_request_in_flight_is_not_unloaded(prefix, start_server, tmp_path):
    started, gate = tmp_path / "started", tmp_path / "gate"
    prefix.put("slow.tar.gz", gated_artifact(predict_started=str(started), predict_gate=str(gate)))
    houston(prefix, "other")
    server = start_server(max_loaded_models=1)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(call, server, "slow.tar.gz", b"1,2,3\n")
        wait_until(started.exists, message="slow predict started")
        assert call(server, "other.tar.gz").json() == HOUSTON  # over the limit: slow is in flight
        assert loaded(server) == {"slow", "other"}
        gate.touch()
        assert slow.result(60).json() == [6.0]
    houston(prefix, "third")
    assert call(server, "third.tar.gz").status_code == 200
    assert loaded(server) == {"third"}


def test_disk_budget_deletes_least_recently_used_unloaded_artifacts(prefix, start_server, tmp_path):
    houston(prefix, "a", "b", "c")
    server = start_server(max_loaded_models=1, disk_limit=2 * len(legacy_model_bytes()) + 1000)
    for name in ("a", "b", "c"):
        assert call(server, f"{name}.tar.gz").status_code == 200
    # deletions run after the answer, off the request's path
    wait_until(lambda: len(os.listdir(tmp_path / "cache" / "models")) == 2, message="the disk budget applied")
    assert call(server, "b.tar.gz").status_code == 200
    assert prefix.gets("b.tar.gz") == 1  # still on disk
    assert call(server, "a.tar.gz").status_code == 200
    assert prefix.gets("a.tar.gz") == 2  # was deleted: downloaded again


def test_restart_reuses_the_cache_and_removes_leftovers(prefix, start_server, tmp_path):
    houston(prefix, "kept")
    first = start_server(**NO_HOT_SET_RECORD)
    assert call(first, "kept.tar.gz").json() == HOUSTON
    first.stop()
    leftover = tmp_path / "cache" / "partial" / "interrupted"
    leftover.mkdir(parents=True)
    (leftover / "artifact").write_bytes(b"half a download")
    second = start_server()
    assert not leftover.exists()
    assert call(second, "kept.tar.gz").json() == HOUSTON
    assert prefix.gets("kept.tar.gz") == 1
    assert prefix.heads("kept.tar.gz") == 1  # the ETag check


def test_a_changed_artifact_after_restart_is_downloaded_again(prefix, start_server):
    houston(prefix, "m")
    first = start_server(**NO_HOT_SET_RECORD)
    assert call(first, "m.tar.gz").json() == HOUSTON
    first.stop()
    prefix.put("m.tar.gz", example_bytes("Chicago_IL.tar.gz"))
    second = start_server()
    assert call(second, "m.tar.gz").json() == CHICAGO
    assert prefix.gets("m.tar.gz") == 2


def test_long_load_answers_model_not_ready_and_goes_on(prefix, start_server, tmp_path):
    gate = tmp_path / "gate"
    prefix.put("slow.tar.gz", gated_artifact(load_gate=str(gate)))
    server = start_server(load_wait_timeout=0.5)
    reply = call(server, "slow.tar.gz", b"1,2\n")
    assert reply.status_code == 429
    assert reply.headers["x-amzn-errortype"] == "ModelNotReadyException"
    assert httpx.get(server.url + "/ping").status_code == 200
    gate.touch()
    wait_until(lambda: call(server, "slow.tar.gz", b"1,2\n").status_code == 200, message="load finished")
    assert prefix.gets("slow.tar.gz") == 1


def test_a_failure_is_remembered_not_retried_by_every_client_retry(prefix, start_server):
    prefix.put("bad.tar.gz", tar_bytes({"xgboost-model": b"not a model"}))
    server = start_server(failure_ttl=60)
    replies = [call(server, "bad.tar.gz") for _ in range(5)]
    assert [r.status_code for r in replies] == [424] * 5
    assert len({r.json()["OriginalMessage"] for r in replies}) == 1
    assert prefix.gets("bad.tar.gz") == 1
    assert server.log().count("event=load-failed model=bad.tar.gz") == 1
    # an operator fixes the artifact and loads it over V2: tried again at once, not answered from memory
    houston(prefix, "bad")
    assert httpx.post(f"{server.url}/v2/repository/models/bad/load", timeout=60).status_code == 200
    assert call(server, "bad.tar.gz").json() == HOUSTON


def test_a_failure_is_retried_once_forgotten(prefix, start_server):
    server = start_server(failure_ttl=0)
    assert call(server, "late.tar.gz").status_code == 400  # not there yet
    houston(prefix, "late")
    assert call(server, "late.tar.gz").json() == HOUSTON


def test_revalidated_update_swaps_without_a_failed_request(prefix, start_server):
    houston(prefix, "m")
    server = start_server(revalidate_after=0.2)
    assert call(server, "m.tar.gz").json() == HOUSTON
    prefix.put("m.tar.gz", example_bytes("Chicago_IL.tar.gz"))
    answers = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = call(server, "m.tar.gz")
        assert reply.status_code == 200, reply.text
        answers.append(reply.json())
        if answers[-1] == CHICAGO:
            break
    assert answers[-1] == CHICAGO
    assert all(answer in (HOUSTON, CHICAGO) for answer in answers)
    assert prefix.gets("m.tar.gz") == 2
    assert "event=update model=m.tar.gz" in server.log()


def weighted_artifact(weight: int, gate, started) -> bytes:
    """A gated model that reads its weight from its own folder once its load gate opens."""
    extra = {"load_gate": str(gate), "load_started": str(started), "weight_file": "weight"}
    settings = {"implementation": "gated.Gated", "parameters": {"extra": extra}}
    return tar_bytes({"model-settings.json": json.dumps(settings).encode(), "weight": str(weight).encode()})


def test_an_overwrite_published_while_a_reload_reads_the_old_version_leaves_it_whole(
    prefix, start_server, s3, tmp_path
):
    gate, started = tmp_path / "gate", tmp_path / "load-started"
    prefix.put("m.tar.gz", weighted_artifact(1, gate, started))
    gate.touch()
    server = start_server(revalidate_after=0)
    assert call(server, "m.tar.gz", b"1,2,3\n").json() == [6.0]  # its use starts an ETag check, maybe still running
    download = s3.hold("GET", f"/{BUCKET}/{prefix.key}m.tar.gz")  # before the update: any check's download waits
    prefix.put("m.tar.gz", weighted_artifact(2, gate, started))
    try:
        # a use starts a check unless one is under way; the one that sees the new ETag downloads it and waits
        wait_until(
            lambda: call(server, "m.tar.gz", b"1,2,3\n").json() == [6.0] and prefix.gets("m.tar.gz") == 2,
            message="the update's download started (and waits)",
        )
        gate.unlink()
        started.unlink()
        assert httpx.post(f"{server.url}/v2/repository/models/m/unload", timeout=30).status_code == 200
        with ThreadPoolExecutor(1) as pool:
            reload = pool.submit(call, server, "m.tar.gz", b"1,2,3\n")
            wait_until(started.exists, message="the reload of the first version started")
            download.set()  # the second version is published while the reload reads the first
            wait_until(lambda: server.log().count("event=download model=m.tar.gz") == 2, message="the update published")
            gate.touch()
            reply = reload.result(60)
        assert reply.status_code == 200, reply.text
        assert reply.json() == [6.0]  # the first version, read whole
    finally:
        download.set()
    # the next uses swap the second version in; the first version's folder then goes
    wait_until(lambda: call(server, "m.tar.gz", b"1,2,3\n").json() == [12.0], message="the update swapped in")
    wait_until(lambda: len(os.listdir(tmp_path / "cache" / "models")) == 1, message="the old version deleted")
    assert "event=version-deleted model=m.tar.gz" in server.log()
    assert "event=load-failed" not in server.log()


def recorded(cache) -> list:
    """The targets of the cache folder's record of loaded models (hot-set.json), in its order."""
    try:
        return [model["target"] for model in json.loads((cache / "hot-set.json").read_text())["models"]]
    except FileNotFoundError:
        return []


def test_a_restart_loads_the_previous_hot_set_from_disk_in_the_background(prefix, start_server, tmp_path):
    houston(prefix, "a", "b", "c")
    gate, started = tmp_path / "gate", tmp_path / "load-started"
    prefix.put("slow.tar.gz", weighted_artifact(3, gate, started))
    gate.touch()
    settings = {"max_loaded_models": 3, "hot_set_record_seconds": 0.1, "eviction_policy": "lru"}  # a goes, not c
    first = start_server(**settings)
    for name in ("a", "b", "c"):
        assert call(first, f"{name}.tar.gz").json() == HOUSTON
    assert call(first, "slow.tar.gz", b"1,2,3\n").json() == [18.0]
    assert loaded(first) == {"b", "c", "slow"}  # a made room for slow
    wait_until(lambda: recorded(tmp_path / "cache") == ["slow.tar.gz", "c.tar.gz", "b.tar.gz"], message="recorded")
    first.stop()
    gets = {name: prefix.gets(f"{name}.tar.gz") for name in ("a", "b", "c", "slow")}
    assert gets == {"a": 1, "b": 1, "c": 1, "slow": 1}
    gate.unlink()
    started.unlink()
    prefix.put("b.tar.gz", example_bytes("Chicago_IL.tar.gz"))  # overwritten while the server was down

    second = start_server(**settings)  # answers /ping while its first warm load waits at the gate
    wait_until(started.exists, message="the warm load of the most recently used model started")
    assert httpx.get(second.url + "/ping").status_code == 200
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(call, second, "slow.tar.gz", b"1,2,3\n")
        gate.touch()
        assert waiting.result(60).json() == [18.0]
    wait_until(lambda: "event=warm-start loaded=3 skipped=0 recorded=3" in second.log(), message="the warm start")
    assert loaded(second) == {"b", "c", "slow"}
    # each warm-loaded model's ETag is checked once it is loaded: b's changed, so it is downloaded and swapped in
    wait_until(lambda: "event=update model=b.tar.gz" in second.log(), message="b's new version swapped in")
    assert call(second, "b.tar.gz").json() == CHICAGO
    assert call(second, "c.tar.gz").json() == HOUSTON
    text = metrics_text(second)
    assert metric(text, "mme_model_cache_hits_total") >= 2  # b and c were loaded before their first request
    assert metric(text, "mme_model_cache_misses_total") <= 1  # slow's request may have waited for its warm load
    assert {name: prefix.gets(f"{name}.tar.gz") for name in gets} == gets | {"b": 2}  # only b's new version
    assert {name: prefix.heads(f"{name}.tar.gz") for name in ("b", "c", "slow")} == {"b": 1, "c": 1, "slow": 1}
    assert second.log().count("event=load model=slow.tar.gz") == 1
    assert "event=load model=a.tar.gz" not in second.log()  # not recorded: it had been unloaded


def test_preloaded_models_are_loaded_at_start_and_never_unloaded(prefix, start_server):
    houston(prefix, "pin1", "pin2", "x", "y")
    server = start_server(preload="pin1.tar.gz, pin2.tar.gz", max_loaded_models=1)
    # /ping answers once the router is loaded; MLServer loads the preloaded models beside it, maybe a moment later
    wait_until(lambda: loaded(server) == {"pin1", "pin2"}, message="the preloaded models loaded")
    for name in ("x", "y", "pin1"):
        assert call(server, f"{name}.tar.gz").json() == HOUSTON
    assert loaded(server) == {"pin1", "pin2", "y"}
    assert prefix.gets("pin1.tar.gz") == 1


def test_v2_loads_and_unloads_take_part_in_the_bookkeeping(prefix, start_server):
    houston(prefix, "v", "s1", "s2")
    server = start_server(max_loaded_models=2, eviction_policy="lru")
    assert httpx.post(f"{server.url}/v2/repository/models/v/load", timeout=60).status_code == 200
    assert call(server, "s1.tar.gz").status_code == 200
    assert call(server, "s2.tar.gz").status_code == 200
    assert loaded(server) == {"s1", "s2"}  # v was the least recently used
    assert httpx.post(f"{server.url}/v2/repository/models/s1/unload").status_code == 200
    assert call(server, "v.tar.gz").json() == HOUSTON
    assert loaded(server) == {"s2", "v"}
    assert prefix.gets("v.tar.gz") == 1


def test_a_model_that_cannot_fit_gets_a_clear_error(prefix, start_server):
    houston(prefix, "big")
    server = start_server(memory_limit="1MB")
    reply = call(server, "big.tar.gz")
    assert reply.status_code == 424
    assert reply.json()["OriginalStatusCode"] == 507
    assert "does not fit in the memory limit" in reply.json()["OriginalMessage"]
    assert loaded(server) == set()
    assert httpx.get(server.url + "/ping").status_code == 200


def test_metrics_count_hits_misses_loads_and_evictions(prefix, start_server):
    houston(prefix, "a", "b")
    prefix.put("broken.tar.gz", b"not an archive")
    server = start_server(max_loaded_models=1, memory_limit="3GiB")
    for name in ("a", "a", "a", "b"):
        assert call(server, f"{name}.tar.gz").status_code == 200
    assert call(server, "broken.tar.gz").status_code == 424
    assert call(server, "missing.tar.gz").status_code == 400
    text = httpx.get(f"http://127.0.0.1:{server.env['MLSERVER_METRICS_PORT']}/metrics").text
    assert metric(text, 'mme_load_failures_total{code="ModelError"}') == 1
    assert metric(text, 'mme_load_failures_total{code="ValidationError"}') == 1
    assert metric(text, "mme_memory_limit_bytes") == 3 * 2**30
    assert metric(text, "mme_model_cache_hits_total") == 2
    assert metric(text, "mme_model_cache_misses_total") == 2
    assert metric(text, "mme_loaded_models") == 1
    assert metric(text, 'mme_evictions_total{reason="count"}') == 1
    assert metric(text, "mme_model_loading_seconds_count") == 2
    assert metric(text, "mme_model_downloading_seconds_count") == 2
    assert metric(text, "mme_model_unloading_seconds_count") == 1
    assert metric(text, "mme_downloaded_bytes_total") == 2 * len(example_bytes("Houston_TX.tar.gz"))
    assert metric(text, "mme_disk_bytes") == 2 * len(legacy_model_bytes())
    assert metric(text, "mme_model_loading_wait_seconds_count") == 2  # the requests that waited
