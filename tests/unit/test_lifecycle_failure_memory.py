"""Remembered failures: many distinct bad targets cost a bounded amount of memory."""

import tracemalloc

from mlserver_mme.errors import ArtifactNotFound
from mlserver_mme.lifecycle.failures import MAX_REMEMBERED_FAILURE_BYTES, FailureMemory


def failure_memory() -> FailureMemory:
    return FailureMemory(ttl=10.0)


def not_found(index: int) -> ArtifactNotFound:
    target = f"{index:08d}" + "x" * 1000 + ".tar.gz"
    try:  # raised, as in the server, so the error carries a traceback
        raise ArtifactNotFound(f"Could not find model data for target model '{target}' at s3://bucket/{target}")
    except ArtifactNotFound as error:
        return error


def test_seventy_thousand_distinct_failures_stay_bounded():
    memory = failure_memory()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for index in range(70_000):
        memory.remember(f"name-{index:08d}" + "y" * 1000, not_found(index))
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert memory.bytes <= MAX_REMEMBERED_FAILURE_BYTES + 4096
    assert grown < 20 * 1024 * 1024, grown
    assert len(memory) < 70_000
    newest = f"name-{69_999:08d}" + "y" * 1000
    assert newest in memory  # the oldest make room, the newest is kept


def test_a_remembered_failure_keeps_no_traceback():
    memory = failure_memory()
    memory.remember("m", not_found(1))
    assert memory._failures["m"][1].__traceback__ is None
