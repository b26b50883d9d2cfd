"""Hostile artifacts against a real server: no archive code runs, a crashing model costs only itself,
and a damaged cached copy is fetched again."""

import glob
import hashlib
import json
import os
import re
import time

import httpx
import pytest
from support.artifacts import (
    EXPECTED,
    code_bearing_archive,
    corrupted_legacy_model,
    example_bytes,
    header_bomb,
    legacy_model_bytes,
    many_class_model,
    path_max_escape,
    tar_bytes,
    tar_member,
    tar_of,
    ubj_allocation_bomb,
)
from support.clients import invoke
from support.s3server import BUCKET
from support.serving import call, model_error, wait_until

from mlserver_mme.observability.memory import process_tree_memory as process_memory

HOUSTON = EXPECTED["predictions"]["Houston_TX.tar.gz"][:1]


def cached_content(cache_dir, prefix, target: str) -> str:
    """Where the cache unpacked ``target``: its folder name starts with a hash anyone who knows the prefix
    can compute (before the first download, the best guess an attacker has is that hash alone)."""
    key = hashlib.sha256(f"s3://{BUCKET}/{prefix.key}\0{target}".encode()).hexdigest()[:32]
    versions = glob.glob(os.path.join(str(cache_dir), "models", key + "-*"))
    assert len(versions) <= 1, versions
    return os.path.join(versions[0] if versions else os.path.join(str(cache_dir), "models", key), "content")


def test_code_in_an_archive_never_runs(prefix, start_server, tmp_path):
    marker = tmp_path / "pwned"
    cache = tmp_path / "cache"
    for target in ("evil.tar.gz", "evil-v2.tar.gz"):
        prefix.put(target, code_bearing_archive(cached_content(cache, prefix, target), str(marker)))
    server = start_server(cache_dir=cache)
    message = model_error(call(server, "evil.tar.gz"), 500, "runtime 'payload.Model'")
    assert "MLSERVER_MME_ALLOWED_RUNTIMES" in message
    reply = httpx.post(server.url + "/v2/repository/models/evil-v2/load")
    assert reply.status_code == 422, reply.text
    assert "payload.Model" in reply.json()["error"]
    assert not marker.exists()
    assert call(server, "evil.tar.gz").status_code == 424
    assert prefix.gets("evil.tar.gz") == 1  # the refusal is remembered


def test_an_archive_cannot_name_the_servers_own_classes(prefix, start_server):
    settings = {"implementation": "mlserver_mme.router.SageMakerRouter"}
    prefix.put("router.tar.gz", tar_bytes({"model-settings.json": json.dumps(settings).encode()}))
    server = start_server()
    reply = httpx.post(server.url + "/v2/repository/models/router/load")
    assert reply.status_code == 422, reply.text
    assert "mlserver_mme.router.SageMakerRouter" in reply.json()["error"]
    model_error(call(server, "router.tar.gz"), 500, "does not allow")


def test_an_archive_cannot_bring_a_python_environment(prefix, start_server):
    settings = {"implementation": "doubler.Doubler", "parameters": {"environment_tarball": "env.tar.gz"}}
    prefix.put("env.tar.gz", tar_bytes({"model-settings.json": json.dumps(settings).encode()}))
    server = start_server()
    model_error(call(server, "env.tar.gz"), 500, "parameters.environment_tarball")


def test_a_model_file_that_crashes_xgboost_costs_only_itself(prefix, start_server):
    prefix.put("crash.tar.gz", tar_bytes({"xgboost-model": corrupted_legacy_model()}))
    houston = example_bytes("Houston_TX.tar.gz")
    prefix.put("Houston_TX.tar.gz", houston)
    server = start_server()
    assert call(server, "Houston_TX.tar.gz").json() == HOUSTON
    model_error(call(server, "crash.tar.gz"), 500, "failed its load check")
    assert server.process.poll() is None
    assert call(server, "Houston_TX.tar.gz").json() == HOUSTON
    assert call(server, "crash.tar.gz").status_code == 424
    assert prefix.gets("crash.tar.gz") == 1
    assert httpx.get(server.url + "/ping").status_code == 200


@pytest.mark.parametrize("spares", [None, 0])
def test_new_artifacts_are_checked_in_spare_children_warmed_up_in_advance(prefix, start_server, spares):
    """The spares are forked at start-up, so they are ready within a few loads; with 0, none ever is."""
    names = [f"spare-{number}.tar.gz" for number in range(6)]
    for name in names:
        prefix.put(name, example_bytes("Houston_TX.tar.gz"))
    server = start_server(**({} if spares is None else {"check_spares": spares}))
    for name in names:
        assert call(server, name).json() == HOUSTON
        if spares is None and re.search(rf"event=check model={re.escape(name)} check_ms=\S+ warm=yes", server.log()):
            break
    warm = re.findall(r"event=check model=spare-\d+\.tar\.gz check_ms=\S+ warm=(\w+)", server.log())
    if spares is None:
        assert warm[-1] == "yes", warm
    else:
        assert warm == ["no"] * len(names)


def test_a_model_file_that_allocates_without_bound_is_stopped(prefix, start_server):
    prefix.put("bomb.tar.gz", tar_bytes({"xgboost-model": ubj_allocation_bomb()}))
    server = start_server(validation_memory="512MiB")
    started = time.monotonic()
    model_error(call(server, "bomb.tar.gz"), 500, "failed its load check")
    assert time.monotonic() - started < 30  # the load would otherwise go on past the 60 s wait
    assert server.process.poll() is None


def test_a_checked_artifact_is_not_checked_again_after_a_restart(prefix, start_server, tmp_path):
    prefix.put("m.tar.gz", example_bytes("Houston_TX.tar.gz"))
    first = start_server()
    assert call(first, "m.tar.gz").json() == HOUSTON
    assert first.log().count("event=check model=m.tar.gz") == 1
    first.stop()
    second = start_server()
    assert call(second, "m.tar.gz").json() == HOUSTON
    assert "event=check" not in second.log()
    assert prefix.gets("m.tar.gz") == 1


def test_a_damaged_cached_copy_is_fetched_again(prefix, start_server, tmp_path):
    prefix.put("m.tar.gz", example_bytes("Houston_TX.tar.gz"))
    cache = tmp_path / "cache"
    first = start_server(cache_dir=cache)
    assert call(first, "m.tar.gz").json() == HOUSTON
    first.stop()
    model_file = os.path.join(cached_content(cache, prefix, "m.tar.gz"), "xgboost-model")
    with open(model_file, "r+b") as file:
        file.truncate(1000)
    second = start_server(cache_dir=cache)
    assert call(second, "m.tar.gz").json() == HOUSTON
    assert prefix.gets("m.tar.gz") == 2
    assert "event=cache-damaged model=m.tar.gz" in second.log()
    # the new copy is published beside the damaged one, which is deleted once nothing uses it
    wait_until(lambda: not os.path.exists(model_file), message="the damaged copy deleted")
    fetched_again = os.path.join(cached_content(cache, prefix, "m.tar.gz"), "xgboost-model")
    assert os.path.getsize(fetched_again) == len(legacy_model_bytes())


def test_a_cached_copy_swapped_while_the_server_runs_is_fetched_again_at_its_next_load(prefix, start_server, tmp_path):
    prefix.put("m.tar.gz", example_bytes("Houston_TX.tar.gz"))
    cache = tmp_path / "cache"
    server = start_server(cache_dir=cache)
    assert call(server, "m.tar.gz").json() == HOUSTON
    assert httpx.post(f"{server.url}/v2/repository/models/m/unload").status_code == 200
    model_file = os.path.join(cached_content(cache, prefix, "m.tar.gz"), "xgboost-model")
    with open(model_file, "wb") as file:  # another model in its place, as a local user with write access could
        file.write(legacy_model_bytes("northeast/Boston_MA.tar.gz"))
    assert call(server, "m.tar.gz").json() == HOUSTON
    assert prefix.gets("m.tar.gz") == 2
    assert "event=cache-damaged model=m.tar.gz" in server.log()


def test_an_archive_cannot_write_into_another_models_cached_copy(prefix, start_server, tmp_path):
    cache = tmp_path / "cache"
    prefix.put("victim.tar.gz", example_bytes("Houston_TX.tar.gz"))
    # the folder an archive is unpacked in: partial/tmpXXXXXXXX/content, its length known in advance
    unpacked_in = os.path.join(str(cache), "partial", "tmpXXXXXXXX", "content")
    victim_file = os.path.relpath(os.path.join(cached_content(cache, prefix, "victim.tar.gz"), "xgboost-model"),
                                  os.path.dirname(unpacked_in))
    prefix.put("escape.tar.gz", path_max_escape(unpacked_in, victim_file, b"overwritten"))
    server = start_server(cache_dir=cache)
    assert call(server, "victim.tar.gz").json() == HOUSTON
    model_error(call(server, "escape.tar.gz"), 500, "unsafe archive member")
    with open(os.path.join(cached_content(cache, prefix, "victim.tar.gz"), "xgboost-model"), "rb") as file:
        assert file.read() == legacy_model_bytes()


def test_clashing_members_are_the_artifacts_fault_and_remembered(prefix, start_server):
    prefix.put("dot.tar.gz", tar_of((tar_member("."), b"x")))
    prefix.put("inside-file.tar.gz", tar_of((tar_member("f"), b"x"), (tar_member("f/x"), b"y")))
    server = start_server()
    for target in ("dot.tar.gz", "inside-file.tar.gz"):
        model_error(call(server, target), 500, "unsafe archive member")
        assert call(server, target).status_code == 424
        assert prefix.gets(target) == 1


def test_a_header_bomb_is_refused_without_taking_memory(prefix, start_server):
    prefix.put("bomb.tar.gz", header_bomb("pax", 200 * 1024 * 1024))
    server = start_server()
    before = process_memory(server.process.pid)
    model_error(call(server, "bomb.tar.gz"), 500, "unsafe archive member")
    assert process_memory(server.process.pid) - before < 50 * 1024 * 1024


def test_a_many_class_model_cannot_multiply_a_small_body_into_a_huge_answer(prefix, start_server):
    prefix.put("classes.tar.gz", tar_bytes({"xgboost-model": many_class_model(100_000)}))
    server = start_server()
    one_row = invoke(server, "classes.tar.gz", b"1,2,3\n")
    assert one_row.status_code == 200, one_row.text
    assert len(one_row.json()[0]) == 100_000
    model_error(invoke(server, "classes.tar.gz", b"1,2,3\n" * 11), 400, "more than 1000000 values")


def test_an_object_larger_than_any_artifact_within_the_limits_is_refused_unread(prefix, start_server, tmp_path, s3):
    from mlserver_mme.artifacts.archive import max_archive_bytes

    limit = 1 << 20
    size = max_archive_bytes(limit) + 1
    prefix.put("huge.tar.gz", b"\x1f\x8b" + b"\0" * (size - 2))
    server = start_server(max_unpacked_bytes=limit)
    message = model_error(call(server, "huge.tar.gz"), 500, f"is {size} bytes or more")
    assert "MLSERVER_MME_MAX_UNPACKED_BYTES" in message
    assert os.listdir(tmp_path / "cache" / "partial") == []
    assert call(server, "huge.tar.gz").status_code == 424  # remembered: not fetched again
    assert prefix.gets("huge.tar.gz") == 1


def test_a_deep_model_predicts_its_batches_off_the_loop_so_ping_stays_quick(prefix, start_server):
    import threading

    from support.artifacts import chain_model

    prefix.put("deep.tar.gz", tar_bytes({"xgboost-model": chain_model(10, 5000)}))  # 50,010 node visits a row
    server = start_server()
    assert call(server, "deep.tar.gz", b"0,0,0,0,0,0\n").status_code == 200  # loaded (and checked)
    body = b"1e9,0,0,0,0,0\n" * 4096  # 24 KiB, every row down every chain: about 200 million visits
    replies = []
    batch = threading.Thread(target=lambda: replies.append(call(server, "deep.tar.gz", body)))
    batch_started = time.monotonic()
    batch.start()
    pings = []
    while batch.is_alive():
        started = time.monotonic()
        assert httpx.get(server.url + "/ping", timeout=10).status_code == 200
        pings.append(time.monotonic() - started)
    batch.join()
    batch_seconds = time.monotonic() - batch_started
    assert replies[0].status_code == 200 and len(replies[0].json()) == 4096
    assert len(pings) >= 5, pings  # the batch took long enough to be measured against
    # on the loop, a ping would wait for the whole prediction; off it, a ping takes a few ms (more on a busy
    # machine, never a good part of the batch)
    assert max(pings) < max(0.1, batch_seconds / 4), (batch_seconds, sorted(pings)[-3:])


def test_made_up_targets_with_unreadable_bodies_take_no_metric_label(prefix, start_server):
    from support.serving import metrics_text

    prefix.put("Houston_TX.tar.gz", example_bytes("Houston_TX.tar.gz"))
    server = start_server()
    for number in range(30):
        assert call(server, f"made-up-{number}.tar.gz", b"not,numbers\n").status_code == 424
    assert call(server, "Houston_TX.tar.gz").json() == HOUSTON
    assert call(server, "Houston_TX.tar.gz", b"not,numbers\n").status_code == 424  # a found model: its own label
    text = metrics_text(server)
    assert "made-up" not in text
    assert 'mme_model_errors_total{code="ModelError",model="other"} 30.0' in text
    assert 'mme_model_errors_total{code="ModelError",model="Houston_TX.tar.gz"} 1.0' in text


def _stalled(server, path: str, headers: str = "") -> bytes:
    """A request whose body stops one byte short of its Content-Length; what the server answers."""
    import socket
    from urllib.parse import urlparse

    address = urlparse(server.url)
    with socket.create_connection((address.hostname, address.port), timeout=20) as connection:
        connection.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: 100\r\n{headers}\r\n".encode()
            + b"1" * 99
        )
        return connection.recv(65536)


def test_a_body_that_stops_arriving_is_answered_408_on_every_route(prefix, start_server):
    server = start_server(body_timeout=1)
    started = time.monotonic()
    sagemaker = _stalled(server, "/invocations", "X-Amzn-SageMaker-Target-Model: m.tar.gz\r\n")
    v2 = _stalled(server, "/v2/models/m/infer")
    assert sagemaker.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in sagemaker, sagemaker[:300]
    assert v2.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in v2, v2[:300]
    assert time.monotonic() - started < 10
    assert httpx.get(server.url + "/ping").status_code == 200


def test_headers_over_the_limit_are_refused_on_v2_routes_too(prefix, start_server):
    server = start_server()
    big = {"X-Padding": "x" * 20_000}
    for path in ("/v2/models/m/infer", "/v2/health/ready", "/v2/repository/index"):
        reply = httpx.post(server.url + path, headers=big, json={}) if "health" not in path else httpx.get(
            server.url + path, headers=big
        )
        assert reply.status_code == 431, (path, reply.text)
        assert "headers are larger than 16384 bytes" in reply.json()["error"]
