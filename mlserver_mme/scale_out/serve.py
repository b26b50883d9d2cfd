"""``mlserver-mme serve [FOLDER]``: one server process, or one per CPU behind HAProxy.

One ``mlserver start`` process uses one core. ``MLSERVER_MME_SHARDS`` says how many
to run (``auto``: the CPUs this process may use, see ``shards.usable_cpus``):

- 1, the default: this process becomes ``mlserver start FOLDER``, nothing else;
- N > 1: this process becomes supervisord (from PyPI), which runs N ``mlserver
  start`` shards on loopback (``shards.py``: ports, budgets, cache folders) and
  HAProxy on ``MLSERVER_HOST:MLSERVER_HTTP_PORT`` (``haproxy.py``: model affinity,
  bounded load, health checks, retries, metrics). supervisord restarts a shard or
  HAProxy that exits; on SIGTERM or SIGINT it stops HAProxy first (a soft stop: the
  requests in flight finish), then every shard (SIGTERM to its process group:
  MLServer drains), then exits.

The generated configuration is written to ``<MLSERVER_MME_CACHE_DIR>/serve/``;
``--print-config`` prints it without starting anything.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import sys
import time
from typing import List, Optional, Tuple

from ..config import load_settings
from ..folders import UnsafeFolder, lock_folder, private_folder, write_private_file
from . import haproxy
from .shards import DEFAULT_SHARD_PORT, PORTS_PER_SHARD, plan, shard_count

HOST = re.compile(r"[A-Za-z0-9.:\-\[\]]*")  # what HAProxy's bind line may get from MLSERVER_HOST

# Set per shard by serve: a settings.json that sets them would put every shard on the same ports.
PER_SHARD_SERVER_SETTINGS = ("host", "http_port", "grpc_port", "metrics_port")
STOP_SECONDS = 25  # per stage (front, then shards); SageMaker allows a container 30 s to stop
FRONT_WAIT_SECONDS = 120  # the front starts once the shards listen, or after this (a shard that never does is down)


# Every program: restarted when it exits (10 tries at start-up), its output on supervisord's stdout.
_SUPERVISED = """\
autorestart=true
startsecs=1
startretries=10
stdout_logfile=/dev/stdout
stdout_logfile_maxbytes=0
redirect_stderr=true
"""

# As root, say so: supervisord warns at each start when ``user`` is not set (and drops nothing either way).
_AS_ROOT = "user=root\n"


class ServeError(Exception):
    """A configuration that cannot be served; the message says why."""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="mlserver-mme", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve FOLDER's settings, with MLSERVER_MME_SHARDS shards")
    serve.add_argument("folder", nargs="?", default="model-settings", help="MLServer settings folder (model-settings)")
    serve.add_argument("--print-config", action="store_true", help="print the generated configuration and exit")
    front = commands.add_parser("start-front", help=argparse.SUPPRESS)  # supervisord's HAProxy program
    front.add_argument("--ports", required=True)
    front.add_argument("haproxy", nargs=argparse.REMAINDER, help="-- HAPROXY ARGS...")
    args = parser.parse_args(argv)
    if args.command == "start-front":
        haproxy_command = args.haproxy[1:] if args.haproxy[:1] == ["--"] else args.haproxy
        start_front([int(port) for port in args.ports.split(",")], haproxy_command)
    try:
        run(os.path.abspath(args.folder), args.print_config)
    except ServeError as error:
        parser.exit(2, f"mlserver-mme serve: {error}\n")


def start_front(shard_ports: List[int], command: List[str], timeout: float = FRONT_WAIT_SECONDS) -> None:
    """Become HAProxy (``command``) once every shard accepts connections, or after ``timeout`` s.

    Started with no shard listening, HAProxy marks them all down and alerts that no server is
    available: noise at every start, and a minute-long outage in a monitor's eyes.
    """
    deadline = time.monotonic() + timeout
    waiting = list(shard_ports)
    while waiting and time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", waiting[0]), timeout=1):
                waiting.pop(0)
        except OSError:
            time.sleep(0.1)  # a shard is still starting: MLServer binds its ports once its models are loaded
    os.execv(command[0], command)


def run(folder: str, print_config: bool = False) -> None:
    server_settings = _read_settings_json(folder)
    settings = load_settings(folder, **server_settings.get("model_repository_implementation_args", {}))
    count = _count(settings)
    mlserver = _executable("mlserver")
    if count == 1:
        if print_config:
            print(f"one shard: {mlserver} start {folder}")
            return
        os.execv(mlserver, [mlserver, "start", folder])
    clashing = sorted(set(PER_SHARD_SERVER_SETTINGS) & set(server_settings))
    if clashing:
        raise ServeError(f"{folder}/settings.json sets {', '.join(clashing)}; with shards, serve sets them per shard")
    run_sharded(folder, settings, count, mlserver, print_config)


def run_sharded(folder: str, settings, count: int, mlserver: str, print_config: bool) -> None:
    """Write HAProxy's and supervisord's configuration, then become supervisord."""
    front_host = os.environ.get("MLSERVER_HOST", "0.0.0.0")
    if not HOST.fullmatch(front_host):
        raise ServeError(f"MLSERVER_HOST must be an address or host name, not {front_host[:100]!r}")
    front_port = _number("MLSERVER_HTTP_PORT", 8080)
    metrics_port = _number("MLSERVER_METRICS_PORT", 8082)
    base_port = _number("MLSERVER_MME_SHARD_PORT", DEFAULT_SHARD_PORT)
    balance_factor = _number("MLSERVER_MME_HASH_BALANCE_FACTOR", haproxy.HASH_BALANCE_FACTOR)
    if 0 < balance_factor < 100:
        raise ServeError("MLSERVER_MME_HASH_BALANCE_FACTOR must be 0 (no bound) or at least 100 (percent)")
    shard_ports = range(base_port, base_port + PORTS_PER_SHARD * count)
    if front_port in shard_ports or metrics_port in shard_ports or shard_ports.stop > 65536:
        raise ServeError(
            f"shard ports {shard_ports.start}-{shard_ports.stop - 1} (MLSERVER_MME_SHARD_PORT + 3 per shard) "
            f"must be valid and leave out the front's ports {front_port} and {metrics_port}"
        )
    # Debian installs it in /usr/sbin, which a non-root user's PATH may leave out
    haproxy_binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if haproxy_binary is None:
        raise ServeError("MLSERVER_MME_SHARDS > 1 needs HAProxy on the PATH (Debian: apt-get install haproxy)")

    for name, value in (("the settings folder", folder), ("MLSERVER_MME_CACHE_DIR", settings.cache_dir)):
        if not value.isprintable():  # a line break would add lines to the generated configurations
            raise ServeError(f"{name} holds a character that is not printable: {value[:100]!r}")
    shards = plan(count, settings, base_port)
    run_dir = os.path.join(os.path.abspath(settings.cache_dir), "serve")
    # new at each start: what each shard's health answer must carry (see MMESettings.shard_check)
    check_keys = haproxy.new_shard_check_keys()
    haproxy_cfg = haproxy.render(shards, front_host, front_port, metrics_port, balance_factor, check_keys)
    supervisord_conf = render_supervisord(shards, folder, run_dir, mlserver, haproxy_binary, check_keys)
    if print_config:
        print(f"# {run_dir}/haproxy.cfg\n{haproxy_cfg}\n# {run_dir}/supervisord.conf\n{supervisord_conf}")
        return
    busy = busy_ports([(front_host or "0.0.0.0", front_port, "the front (MLSERVER_HTTP_PORT)"),
                       (front_host or "0.0.0.0", metrics_port, "the front's metrics (MLSERVER_METRICS_PORT)")]
                      + [("127.0.0.1", port, f"{s.name}'s {kind}") for s in shards
                         for port, kind in ((s.http_port, "HTTP"), (s.grpc_port, "gRPC"), (s.metrics_port, "metrics"))])
    if busy:
        raise ServeError(
            f"{busy[0]} is in use by another process (a second server on this host?): stop it, or choose other "
            f"ports (MLSERVER_HTTP_PORT, MLSERVER_METRICS_PORT, MLSERVER_MME_SHARD_PORT for the shards' {PORTS_PER_SHARD} "
            f"each){f'; {len(busy) - 1} more in use' if len(busy) > 1 else ''}"
        )
    try:
        private_folder(settings.cache_dir, "MLSERVER_MME_CACHE_DIR")
        # held by supervisord (the program this process becomes) while it runs: a second serve is refused
        lock_folder(settings.cache_dir, "MLSERVER_MME_CACHE_DIR", across_exec=True)
        private_folder(run_dir, "the run folder")
    except UnsafeFolder as error:
        raise ServeError(str(error)) from None
    write_private_file(os.path.join(run_dir, "haproxy.cfg"), haproxy_cfg)
    write_private_file(os.path.join(run_dir, "supervisord.conf"), supervisord_conf)
    print(
        f"mlserver-mme serve: {count} shards on 127.0.0.1 ports {shard_ports.start}-{shard_ports.stop - 1}, "
        f"HAProxy on {front_host}:{front_port} (metrics on {metrics_port}), configuration in {run_dir}",
        file=sys.stderr,
        flush=True,
    )
    conf = os.path.join(run_dir, "supervisord.conf")
    os.execv(sys.executable, [sys.executable, "-m", "supervisor.supervisord", "--nodaemon", "--configuration", conf])


def _count(settings) -> int:
    text = os.environ.get("MLSERVER_MME_SHARDS")
    try:
        count = shard_count(text)
    except ValueError as error:
        raise ServeError(str(error)) from None
    if settings.sagemaker_multi_model and count > 1:
        # The hosting contract keeps state the front cannot split: SageMaker lists loaded models
        # (GET /models) and loads each one once, explicitly, so a model must never move.
        if (text or "").strip().lower() != "auto":
            raise ServeError("SAGEMAKER_MULTI_MODEL=true (SageMaker's hosting contract) is served by one shard only")
        return 1
    return count


def busy_ports(wanted: List[Tuple[str, int, str]]) -> List[str]:
    """Which of the (host, port, what) a server would listen on another process listens on already."""
    busy = []
    for host, port, what in wanted:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: a closing connection is no owner
            try:
                probe.bind((host.strip("[]"), port))
            except OSError:
                busy.append(f"port {port} on {host} ({what})")
    return busy


def render_supervisord(shards, folder: str, run_dir: str, mlserver: str, haproxy_binary: str,
                       check_keys: Optional[Tuple[str, str]] = None) -> str:
    """supervisord's configuration: the shards in one group (stopped together), HAProxy stopped before them.

    Each shard's ``haproxy.shard_check`` values under ``check_keys`` go to it in its environment (supervisord's
    ``environment``, not its command line, which other users can read)."""
    env = shutil.which("env") or "/usr/bin/env"
    haproxy_command = _command([
        sys.executable, "-I", "-m", "mlserver_mme.scale_out.serve", "start-front",
        "--ports", ",".join(str(s.http_port) for s in shards), "--",
        haproxy_binary, "-db", "-f", os.path.join(run_dir, "haproxy.cfg"),
    ])
    sections = [
        f"""\
; Written by `mlserver-mme serve` at each start (see mlserver_mme/scale_out/serve.py); edits are lost.
[supervisord]
nodaemon=true
; its own log once, on stdout, like the programs' output
silent=true
logfile=/dev/stdout
logfile_maxbytes=0
pidfile={_escape(os.path.join(run_dir, "supervisord.pid"))}
; every log goes to stdout: no log files to clean in the temporary folder at start
nocleanup=true
{_AS_ROOT if os.geteuid() == 0 else ""}
; Stopped first (higher priority): SIGUSR1 is HAProxy's soft stop, which lets requests in flight finish.
[program:haproxy]
command={haproxy_command}
; every program runs in the private run folder: nothing is imported from where serve was started
directory={_escape(run_dir)}
priority=200
stopsignal=USR1
stopwaitsecs={STOP_SECONDS + 5}
{_SUPERVISED}
[group:shards]
programs={",".join(s.name for s in shards)}
priority=100
"""
    ]
    for shard in shards:
        command = _command([env, *(f"{key}={value}" for key, value in shard.env.items()), mlserver, "start", folder])
        check, answer = haproxy.shard_check(check_keys, shard.name) if check_keys else ("", "")
        check_env = f'MLSERVER_MME_SHARD_CHECK="{check}",MLSERVER_MME_SHARD_ANSWER="{answer}"'
        sections.append(
            f"""
[program:{shard.name}]
command={command}
directory={_escape(run_dir)}
environment={check_env}
; MLServer drains on SIGTERM; the group also holds its fork server
stopsignal=TERM
stopasgroup=true
killasgroup=true
stopwaitsecs={STOP_SECONDS}
{_SUPERVISED}"""
        )
    return "".join(sections)


def _read_settings_json(folder: str) -> dict:
    path = os.path.join(folder, "settings.json")
    if not os.path.exists(path):
        return {}
    with open(path) as file:
        return json.load(file)


def _executable(name: str) -> str:
    """``name`` beside this Python (its virtual environment), else on the PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    found = beside if os.access(beside, os.X_OK) else shutil.which(name)
    if not found:
        raise ServeError(f"'{name}' was not found beside {sys.executable} nor on the PATH")
    return found


def _number(variable: str, default: int) -> int:
    text = os.environ.get(variable, str(default))
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ServeError(f"{variable} must be a whole number, not '{text}'")
    return value


def _command(argv) -> str:
    return _escape(" ".join(shlex.quote(arg) for arg in argv))


def _escape(text: str) -> str:
    return text.replace("%", "%%")  # supervisord expands %(name)s in its values


if __name__ == "__main__":
    main()
