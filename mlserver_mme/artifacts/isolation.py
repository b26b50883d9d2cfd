"""Running a check on untrusted bytes in a short-lived child process with resource limits.

A model file is parsed by C++ code (XGBoost's) that trusts its input: a
malformed file can crash the process that reads it, or allocate without bound.
Before the server loads a new artifact, the check runs here, in a child that
can only hurt itself: it gets an address-space limit (the memory it may add),
a CPU-time limit, no core dump and no file writes, and is killed at a wall-clock
deadline. A crash, a limit or a timeout is reported as ``IsolatedFailure``.

Code running in the child (a hostile file that took over XGBoost's parser) is
also confined (``_confine``): an empty environment (no AWS secret; the memory
it started with zeroed, in the child and in the fork server), no reading of its
memory by other processes (not dumpable), no
descriptor but its answer pipe (standard streams on /dev/null), a private empty
working folder, and a seccomp filter (libseccomp through ``pyseccomp``) that
refuses sockets, signals to other processes, running programs, and any change to
files: no opening for writing, creating, renaming, deleting or linking. Where
libseccomp cannot be loaded the server logs it once and checks run without the
filter.

Children are forked from multiprocessing's fork server, a single-threaded
process that imported the check's modules (and so XGBoost) once: a child costs
a fork, not an interpreter start, and never inherits the server's threads or
OpenMP state (forking the multi-threaded server itself could deadlock).

A check is still cheaper in a child forked in advance: the **spare** children
(``start(spares=...)``) are forked, confined and warmed up (``warm_up``: XGBoost
starts its threads and sets up its predictor on a first model) before any
artifact exists, then wait for one check each and take their limits when it
arrives. Each serves a single check and exits, as a freshly forked child does,
and is replaced in the background. A check whose limits differ from the spares', or that finds no
spare ready, forks a child of its own. Spares are forked by the fork server, so
``memory.py`` leaves them out of the server's memory, like the fork server.
"""

import atexit
import ctypes
import errno
import gc
import json
import logging
import math
import multiprocessing
import os
import resource
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from ..errors import describe
from ..observability.memory import release_free_memory


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


def start(preload: list, limits: Optional[Limits] = None, warm_up: Optional[Callable[[], Any]] = None,
          spares: int = 0) -> None:
    """Start the fork server with ``preload`` imported, and ``spares`` children, in the background.

    ``"__main__"`` in ``preload`` imports the main script once in the fork server;
    without it every child would import it again. Spare children are limited by
    ``limits`` and run ``warm_up`` (importable, as a check is) before they wait.
    """
    global _spares
    _context.set_forkserver_preload([*preload, __name__])  # children then import nothing from disk
    if _spares is not None and (_spares.limits, _spares.warm_up, _spares.count) == (limits, warm_up, spares):
        return  # MLServer makes its repository twice at start-up: the spares forked for the first serve on
    if _spares is not None:  # started again otherwise: the old spares go
        _spares.close()
        _spares = None
    if spares and limits is not None:
        _spares = _SpareChildren(limits, warm_up, spares)
        _spares.refill()
    else:
        threading.Thread(target=_warm_up, name="isolation-warm-up", daemon=True).start()


def run(check: Callable[..., Any], *args, limits: Limits) -> Any:
    """``check(*args)`` in a limited child; its result, or IsolatedFailure.

    ``check`` must be importable (it is pickled by reference), return a JSON
    value and raise an exception whose message says what is wrong with the input.
    """
    spares = _spares
    spare = spares.take(limits) if spares is not None else None
    if spares is not None and spare is not None:
        try:
            spare.tasks.send((check, args))
            spare.tasks.close()
        except OSError:  # it died after saying it was ready: not the input's fault, a child of its own checks it
            spare.discard()
        else:
            return _finish(spare.answers, spare.process, limits, spare.workdir)
        finally:  # after the check: the next spare's fork and warm-up do not compete with it for the CPU
            spares.refill()
    receiver, sender = _context.Pipe(duplex=False)
    workdir = tempfile.mkdtemp(prefix="mme-check-")
    process = _context.Process(target=_child, args=(sender, limits, workdir, check, args), daemon=True)
    process.start()
    sender.close()
    return _finish(receiver, process, limits, workdir)


def _finish(receiver, process, limits: Limits, workdir: str) -> Any:
    """The answer of a child given its check, once it answers, dies or runs out of time."""
    try:
        ok, value = _answer(receiver, process, limits)
    except IsolatedFailure:
        if process.is_alive():
            process.kill()
        process.join()
        raise
    finally:
        receiver.close()
        shutil.rmtree(workdir, ignore_errors=True)
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


def _child(sender, limits: Limits, workdir: str, check: Callable[..., Any], args: tuple) -> None:
    # The objects inherited from the fork server are never garbage: without this, the first collection
    # walks them all, copying every page they sit on (100 ms seen in one np.array call).
    gc.freeze()
    _confine((sender.fileno(),), workdir)
    _limit_self(limits)
    _check_and_answer(sender, limits, check, args)


def _spare_child(tasks, answers, limits: Limits, workdir: str, warm_up: Optional[Callable[[], Any]]) -> None:
    gc.freeze()
    # Confined before warming up: the seccomp filter must be in place before XGBoost starts threads,
    # which inherit it (a filter covers the thread that loads it and the threads it starts later).
    _confine((tasks.fileno(), answers.fileno()), workdir)
    if warm_up is not None:
        warm_up()
        gc.collect()
        gc.freeze()
        release_free_memory()  # what the warm-up freed is not room for the check
    answers.send_bytes(READY)
    try:
        check, args = tasks.recv()  # pickled by the server: trusted
    except EOFError:  # discarded unused, or the server is gone
        return
    tasks.close()
    # Limited only now: the CPU time and memory counted are the check's, not what the spare did while waiting.
    _limit_self(limits)
    _check_and_answer(answers, limits, check, args)


def _check_and_answer(sender, limits: Limits, check: Callable[..., Any], args: tuple) -> None:
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
    used = resource.getrusage(resource.RUSAGE_SELF)  # a spare's warm-up and wait are not the check's time
    seconds = math.ceil(used.ru_utime + used.ru_stime) + limits.cpu_seconds
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write fails with EFBIG instead of killing


# Refused with EPERM in the child: what code taken over by a hostile file could use to reach out.
_DENIED_SYSCALLS = (
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "sendto", "sendmsg", "sendmmsg",
    "kill", "tkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_send_signal", "ptrace",
    "process_vm_readv", "process_vm_writev", "execve", "execveat",
    "creat", "unlink", "unlinkat", "rename", "renameat", "renameat2", "rmdir", "mkdir", "mkdirat", "link", "linkat",
    "symlink", "symlinkat", "chmod", "fchmod", "fchmodat", "chown", "fchown", "lchown", "fchownat", "truncate",
    "ftruncate", "utime", "utimes", "utimensat", "futimesat", "mknod", "mknodat",
)
_WRITING_FLAGS = (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND)


def _confine(keep_fds: tuple, workdir: str) -> None:
    """Leave the child nothing to reach the server, its secrets or other files with."""
    os.chdir(workdir)
    _shed_environment()
    null = os.open(os.devnull, os.O_RDWR)
    for standard in (0, 1, 2):
        os.dup2(null, standard)
    for fd in [int(name) for name in os.listdir("/proc/self/fd")]:
        if fd > 2 and fd not in keep_fds:
            try:
                os.close(fd)
            except OSError:
                pass  # the listing's own descriptor, closed already
    if _make_filter is not None:
        _make_filter().load()


_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_DUMPABLE = 4


def _shed_environment() -> None:
    """Keep no environment, and let no other process of the same user read this one's memory (not dumpable).

    ``os.environ.clear()`` only drops the pointers: the memory the environment started in is zeroed too, as
    ``/proc/<pid>/environ`` reads it (the fork server's environment is the server's, secrets included).
    """
    os.environ.clear()
    with open("/proc/self/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    start, end = int(fields[47]), int(fields[48])  # env_start, env_end: fields 50 and 51 of stat
    if 0 < start < end:
        ctypes.memset(start, 0, end - start)
    _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def _seccomp_filter():
    """A maker of the child's seccomp filter, or None where libseccomp cannot be used here."""
    try:
        import pyseccomp as seccomp

        def make():
            rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
            refuse = seccomp.ERRNO(errno.EPERM)
            for name in _DENIED_SYSCALLS:
                try:
                    rules.add_rule(refuse, name)
                except (OSError, RuntimeError, ValueError):
                    pass  # a call this architecture does not have
            for flag in _WRITING_FLAGS:  # opening for writing, creating or truncating
                rules.add_rule(refuse, "openat", seccomp.Arg(2, seccomp.MASKED_EQ, flag, flag))
                rules.add_rule(refuse, "open", seccomp.Arg(1, seccomp.MASKED_EQ, flag, flag))
            return rules

        make()  # fails here, at import, if libseccomp is missing
        return make
    except Exception as error:  # ImportError, OSError from ctypes, libseccomp's own errors
        logging.getLogger("mlserver.mme").warning(
            "event=check-unconfined reason=%s: model checks run without a seccomp filter", describe(error)
        )
        return None


_make_filter = _seccomp_filter()  # made at import: in the server (which logs a problem) and the fork server


def _harden_fork_server() -> None:
    """In the fork server (which imports this module at start): its children, whose parent it is, would
    otherwise find the server's secrets in its environment."""
    with open("/proc/self/cmdline", "rb") as cmdline:
        if b"multiprocessing.forkserver import main" in cmdline.read():
            _shed_environment()


_harden_fork_server()


def _warm_up() -> None:
    process = _context.Process(target=_nothing, daemon=True)
    process.start()
    process.join()


def _nothing() -> None:
    pass


READY = b"ready"
MAX_SPARE_FAILURES = 3  # spares that die before they are ready, in a row, before the server stops making them


class _Spare:
    """A child forked in advance: it confines itself, warms up, says it is ready, waits for one check, and limits
    itself when the check arrives."""

    def __init__(self, limits: Limits, warm_up: Optional[Callable[[], Any]]):
        self.workdir = tempfile.mkdtemp(prefix="mme-check-")
        task_end, self.tasks = _context.Pipe(duplex=False)
        self.answers, answer_end = _context.Pipe(duplex=False)
        self.process = _context.Process(
            target=_spare_child, args=(task_end, answer_end, limits, self.workdir, warm_up), daemon=True
        )
        try:
            self.process.start()
        except BaseException:
            for end in (self.tasks, self.answers):
                end.close()
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        finally:
            task_end.close()
            answer_end.close()
        self.ready = False

    def state(self) -> str:
        """"ready", "warming" or "dead", without waiting."""
        if not self.ready:
            try:
                if not self.answers.poll(0):
                    return "warming"
                self.ready = self.answers.recv_bytes(len(READY)) == READY
            except (EOFError, OSError):
                pass
            if not self.ready:
                return "dead"
        return "ready"

    def discard(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.tasks.close()
        self.answers.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class _SpareChildren:
    """Up to ``count`` spares for checks with ``limits``; one taken is replaced (``refill``) in the background."""

    def __init__(self, limits: Limits, warm_up: Optional[Callable[[], Any]], count: int):
        self.limits, self.warm_up, self.count = limits, warm_up, count
        self.spares: List[_Spare] = []
        self.failures = 0
        self.taken = 0  # checks run on a spare
        self.lock = threading.Lock()
        self.wanted = threading.Event()  # set when a spare may be missing; one thread forks them
        self.closed = False
        threading.Thread(target=self._keep_filled, name="isolation-spares", daemon=True).start()
        atexit.register(self.close)

    def take(self, limits: Limits) -> Optional[_Spare]:
        if limits != self.limits:
            return None
        with self.lock:
            for spare in list(self.spares):
                state = spare.state()
                if state == "warming":
                    continue
                self.spares.remove(spare)
                if state == "ready":
                    self.failures = 0
                    self.taken += 1
                    return spare
                self._failed(spare)
        return None

    def ready(self) -> int:
        with self.lock:
            return sum(spare.state() == "ready" for spare in self.spares)

    def refill(self) -> None:
        """Have the spares' thread fork what is missing (a check does not wait for a thread to start)."""
        self.wanted.set()

    def _keep_filled(self) -> None:
        while True:
            self.wanted.wait()
            self.wanted.clear()
            if self.closed:
                return
            self._fill()

    def _fill(self) -> None:
        """Fork spares until there are ``count``; none once ``MAX_SPARE_FAILURES`` died unready in a row."""
        while True:
            with self.lock:
                if self.closed or len(self.spares) >= self.count or self.failures >= MAX_SPARE_FAILURES:
                    return
            try:
                spare = _Spare(self.limits, self.warm_up)
            except Exception as error:  # out of processes or descriptors, the fork server gone: checks fork their own
                logging.getLogger("mlserver.mme").warning("event=check-spare-failed reason=%s", describe(error))
                with self.lock:
                    self.failures += 1
                return
            with self.lock:
                if self.closed:
                    spare.discard()
                    return
                self.spares.append(spare)

    def _failed(self, spare: _Spare) -> None:
        spare.discard()
        self.failures += 1
        logging.getLogger("mlserver.mme").warning(
            "event=check-spare-failed reason=exit status %s before it was ready%s", spare.process.exitcode,
            "; checks fork their own children from now on" if self.failures >= MAX_SPARE_FAILURES else "",
        )
        self.refill()

    def close(self) -> None:
        self.closed = True
        self.wanted.set()  # its thread ends
        with self.lock:
            for spare in self.spares:
                spare.discard()
            self.spares.clear()


_spares: Optional[_SpareChildren] = None
