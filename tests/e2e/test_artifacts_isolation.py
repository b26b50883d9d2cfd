"""The isolated child that checks untrusted model files: crashes and limits stay in it."""

import ctypes
import os
import time

import pytest
from support.serving import wait_until

from mlserver_mme.artifacts import isolation

LIMITS = isolation.Limits(memory_bytes=256 * 1024 * 1024, cpu_seconds=2, wall_seconds=4.0)  # the hang test
# For the tests that are not about time: room for a loaded CI machine to start the children.
ROOMY = isolation.Limits(memory_bytes=256 * 1024 * 1024, cpu_seconds=10, wall_seconds=60.0)


def answer(value):
    return value * 2


WARMED = []


def warm_up():
    WARMED.append(os.getpid())


def warmed():
    """In a spare child: the warm-up ran in this very process before the check came."""
    return WARMED == [os.getpid()]


@pytest.fixture(params=["fresh child", "spare child"])
def child(request):
    """Starts checks with ``limits`` in a freshly forked child, or in a spare forked and warmed in advance."""

    def prepare(limits):
        if request.param == "fresh child":
            isolation.start([])
            return
        isolation.start([], limits=limits, warm_up=warm_up, spares=1)
        wait_for_spares(1)

    yield prepare
    if request.param == "spare child":
        assert isolation._spares.taken == 1, "the check did not run on the spare"
    isolation.start([])  # the spares go


def crash():
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def allocate():
    return bytearray(1024 * 1024 * 1024)


def spin():
    while True:
        pass


def hang():
    time.sleep(60)


def refuse():
    raise ValueError("bad input\nwith more lines")


def write_file(path):
    with open(path, "wb") as file:
        file.write(b"x" * 1000)
        file.flush()


def test_a_result_comes_back(child):
    child(ROOMY)
    assert isolation.run(answer, 21, limits=ROOMY) == 42


def test_a_spare_child_is_warmed_up_before_its_check():
    isolation.start([], limits=ROOMY, warm_up=warm_up, spares=1)
    try:
        wait_for_spares(1)
        assert isolation.run(warmed, limits=ROOMY) is True
        assert isolation.run(warmed, limits=LIMITS) is False  # other limits: a fresh child
        assert isolation._spares.taken == 1
    finally:
        isolation.start([])


def test_a_crash_is_a_failure_and_the_caller_lives(child):
    child(ROOMY)
    with pytest.raises(isolation.IsolatedFailure, match=r"crashed \(SIGSEGV\)"):
        isolation.run(crash, limits=ROOMY)
    assert isolation.run(answer, 1, limits=ROOMY) == 2


def test_memory_over_the_limit_is_a_failure(child):
    child(ROOMY)
    with pytest.raises(isolation.IsolatedFailure, match="more than 268435456 bytes of memory"):
        isolation.run(allocate, limits=ROOMY)


def test_cpu_time_over_the_limit_is_a_failure(child):
    limits = isolation.Limits(memory_bytes=256 * 1024 * 1024, cpu_seconds=2, wall_seconds=60.0)
    child(limits)
    started = time.monotonic()
    with pytest.raises(isolation.IsolatedFailure, match="more than 2 s of CPU time"):
        isolation.run(spin, limits=limits)
    assert time.monotonic() - started < limits.wall_seconds


def test_a_hang_is_stopped_at_the_wall_clock_deadline(child):
    child(LIMITS)
    started = time.monotonic()
    with pytest.raises(isolation.IsolatedFailure, match="took longer than 4 s"):
        isolation.run(hang, limits=LIMITS)
    assert time.monotonic() - started < LIMITS.wall_seconds + 10


def test_an_exception_is_its_message_without_a_trace(child):
    child(ROOMY)
    with pytest.raises(isolation.IsolatedFailure) as caught:
        isolation.run(refuse, limits=ROOMY)
    assert caught.value.message == "ValueError: with more lines"


def test_the_child_cannot_write_files(tmp_path, child):
    child(ROOMY)
    with pytest.raises(isolation.IsolatedFailure, match="Operation not permitted"):  # the seccomp filter
        isolation.run(write_file, str(tmp_path / "out"), limits=ROOMY)
    assert not (tmp_path / "out").exists()


def test_without_the_filter_the_file_size_limit_still_stops_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(isolation, "_make_filter", None)
    isolation.start([])  # the fork server has the filter: fork children of this process instead
    monkeypatch.setattr(isolation, "_context", isolation.multiprocessing.get_context("fork"))
    with pytest.raises(isolation.IsolatedFailure, match="File too large"):
        isolation.run(write_file, str(tmp_path / "out"), limits=ROOMY)
    assert os.path.getsize(tmp_path / "out") == 0


def huge_answer():
    return "x" * (isolation.MAX_ANSWER_BYTES + 1)


def test_an_answer_over_the_bound_is_refused_unread():
    with pytest.raises(isolation.IsolatedFailure, match="unreadable"):
        isolation.run(huge_answer, limits=ROOMY)


def wait_for_spares(count):
    wait_until(lambda: isolation._spares.ready() >= count, 60, "the spare children becoming ready")


def test_concurrent_checks_each_get_their_own_answer():
    from concurrent.futures import ThreadPoolExecutor

    isolation.start([], limits=ROOMY, warm_up=warm_up, spares=2)
    try:
        wait_for_spares(2)
        with ThreadPoolExecutor(8) as pool:  # two on spares at least, the others on spares or fresh children
            answers = list(pool.map(lambda n: isolation.run(answer, n, limits=ROOMY), range(8)))
        assert answers == [2 * n for n in range(8)]
        assert 2 <= isolation._spares.taken <= 8
    finally:
        isolation.start([])


def test_the_fork_server_and_spares_are_not_counted_as_the_servers_memory():
    from mlserver_mme.observability import memory

    isolation.start([], limits=ROOMY, warm_up=warm_up, spares=1)
    wait_for_spares(1)
    children = [int(pid) for task in os.listdir(f"/proc/{os.getpid()}/task")
                for pid in open(f"/proc/{os.getpid()}/task/{task}/children").read().split()]
    assert any(memory._is_check_helper(child) for child in children)
    assert not any(memory._is_check_helper(pid) for pid in memory._descendants(os.getpid()))
    isolation.start([])


def reach_out(secret_name, victim, parent):
    """What code taken over by a hostile file would try; each answer says what it got."""
    import socket

    found = {"secret": os.environ.get(secret_name), "cwd_empty": os.listdir(".") == []}
    # The environment's memory, its own and its parent's (the fork server's), as /proc shows it: names left?
    for who, process in (("self", "self"), ("parent", str(os.getppid()))):
        try:
            with open(f"/proc/{process}/environ", "rb") as environ:
                found[f"environ {who}"] = environ.read().replace(b"\0", b"").decode(errors="replace")
        except OSError as error:
            found[f"environ {who}"] = errno_name(error)
    found["fds"] = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
    attempts = {
        "connect": lambda: socket.create_connection(("127.0.0.1", 9), timeout=1),
        "signal": lambda: os.kill(parent, 0),
        "rename": lambda: os.rename(victim, victim + ".moved"),
        "unlink": lambda: os.unlink(victim),
        "overwrite": lambda: open(victim, "r+b").write(b"X"),
        "create": lambda: open(victim + ".new", "wb"),
        "run": lambda: os.execv("/bin/true", ["true"]),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
            found[name] = "done"
        except OSError as error:
            found[name] = errno_name(error)
    return found


def errno_name(error: OSError) -> str:
    import errno

    return errno.errorcode.get(error.errno, str(error.errno))


def test_the_child_has_no_secret_network_signal_or_file_changes(tmp_path, monkeypatch, child):
    monkeypatch.setenv("MME_TEST_SECRET", "aws-secret")
    victim = tmp_path / "other-model"
    victim.write_bytes(b"model")
    child(ROOMY)
    found = isolation.run(reach_out, "MME_TEST_SECRET", str(victim), os.getpid(), limits=ROOMY)
    assert found["secret"] is None and found["cwd_empty"]
    assert found["environ self"] == ""  # zeroed, not only dropped from os.environ
    assert found["environ parent"] in ("", "EACCES", "EPERM")  # the fork server: erased and not readable
    assert len(found["fds"]) <= 5  # 0, 1, 2 on /dev/null, the answer pipe, the listing's own
    for attempt in ("connect", "signal", "rename", "unlink", "overwrite", "create", "run"):
        assert found[attempt] == "EPERM", (attempt, found)
    assert victim.read_bytes() == b"model" and sorted(os.listdir(tmp_path)) == ["other-model"]
