"""Running a check on untrusted bytes in a short-lived child process with resource limits.

A model file is parsed by C++ code (XGBoost's) that trusts its input: a
malformed file can crash the process that reads it, or allocate without bound.
Before the server loads a new artifact, the check runs here, in a child that
can only hurt itself: it gets an address-space limit (the memory it may add),
a CPU-time limit, no core dump and no file writes, and is killed at a wall-clock
deadline. A crash, a limit or a timeout is reported as ``IsolatedFailure``.

Children are forked from multiprocessing's fork server, a single-threaded
process that imported the check's modules (and so XGBoost) once: a child costs
a fork, not an interpreter start, and never inherits the server's threads or
OpenMP state (forking the multi-threaded server itself could deadlock).
"""

import json
import multiprocessing
import os
import resource
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable

from .errors import describe


@dataclass(frozen=True)
class Limits:
    memory_bytes: int  # address space the child may add to what it starts with
    cpu_seconds: int
    wall_seconds: float


class IsolatedFailure(Exception):
    """The check failed, crashed, hit a limit or timed out; the message says which."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


MAX_ANSWER_BYTES = 64 * 1024

_context = multiprocessing.get_context("forkserver")


def start(preload: list) -> None:
    """Start the fork server with ``preload`` imported, in the background, so checks pay no start-up.

    ``"__main__"`` in ``preload`` imports the main script once in the fork server;
    without it every child would import it again.
    """
    _context.set_forkserver_preload([*preload, __name__])  # children then import nothing from disk
    threading.Thread(target=_warm_up, name="isolation-warm-up", daemon=True).start()


def run(check: Callable[..., Any], *args, limits: Limits) -> Any:
    """``check(*args)`` in a limited child; its result, or IsolatedFailure.

    ``check`` must be importable (it is pickled by reference), return a JSON
    value and raise an exception whose message says what is wrong with the input.
    """
    receiver, sender = _context.Pipe(duplex=False)
    process = _context.Process(target=_child, args=(sender, limits, check, args), daemon=True)
    process.start()
    sender.close()
    try:
        ok, value = _answer(receiver, process, limits)
    except IsolatedFailure:
        if process.is_alive():
            process.kill()
        process.join()
        raise
    finally:
        receiver.close()
    # A child that answered exits by itself: not waiting for its exit status saves milliseconds.
    if not ok:
        raise IsolatedFailure(value)
    return value


def _answer(receiver, process, limits: Limits) -> tuple:
    if not receiver.poll(limits.wall_seconds):
        raise IsolatedFailure(f"the check took longer than {limits.wall_seconds:g} s")
    try:
        # JSON, not pickle: a child taken over by a hostile file must not get to run code here
        ok, value = json.loads(receiver.recv_bytes(MAX_ANSWER_BYTES))
    except EOFError:  # the child died without answering
        process.join()
        raise IsolatedFailure(_death(process.exitcode, limits)) from None
    except (OSError, ValueError, TypeError):
        raise IsolatedFailure("the check answered something unreadable") from None
    return ok, value


def _death(exitcode: int, limits: Limits) -> str:
    if exitcode is not None and exitcode < 0:
        number = -exitcode
        if number in (signal.SIGXCPU, signal.SIGKILL):
            return f"the check used more than {limits.cpu_seconds} s of CPU time"
        return f"the check crashed ({signal.Signals(number).name})"
    return f"the check exited with status {exitcode}"


def _child(sender, limits: Limits, check: Callable[..., Any], args: tuple) -> None:
    _limit_self(limits)
    try:
        answer = (True, check(*args))
    except MemoryError:
        answer = (False, f"the check needed more than {limits.memory_bytes} bytes of memory")
    except BaseException as error:  # anything the check raises is the input's fault
        answer = (False, getattr(error, "message", None) or describe(error))
    sender.send_bytes(json.dumps(answer).encode())
    sender.close()


def _limit_self(limits: Limits) -> None:
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as statm:
        address_space = int(statm.read().split()[0]) * page
    resource.setrlimit(resource.RLIMIT_AS, (address_space + limits.memory_bytes,) * 2)
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write fails with EFBIG instead of killing


def _warm_up() -> None:
    process = _context.Process(target=_nothing, daemon=True)
    process.start()
    process.join()


def _nothing() -> None:
    pass
