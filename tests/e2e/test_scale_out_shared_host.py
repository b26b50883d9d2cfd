"""A sharded server on a host it shares: other users, other servers, processes on its ports.

- The cache and run folders are the server's own: made 0700, refused when another user owns them or may write
  in them, the generated configuration written through new files that must not exist.
- `mlserver-mme serve` refuses ports another process listens on, naming the first.
- One server process per cache folder: a second server with the default folder takes its own (``-2``); a folder
  set explicitly that another server holds is refused, by `mlserver start` and by `serve`.
- HAProxy puts a shard up only when its `/ping` answers its own check with its own answer (HMACs of its name
  under this start's keys): a process that took a shard's port (answering 200 to everything, echoing the check,
  or another shard's answer) is never sent a request.
"""

import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading

import httpx
import pytest
from support.artifacts import EXPECTED
from support.mlserver_process import ROOT, MLServerProcess, free_port, free_port_block, terminate
from support.serving import call, wait_until

from mlserver_mme.folders import UnsafeFolder, default_cache_dir, lock_folder, private_folder, write_private_file
from mlserver_mme.scale_out import haproxy
from mlserver_mme.scale_out.shards import Shard

SERVE = os.path.join(os.path.dirname(sys.executable), "mlserver-mme")
KEYS = haproxy.new_shard_check_keys()
CHECK, ANSWER = haproxy.shard_check(KEYS, "shard-0")


def serve(env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([SERVE, "serve", os.path.join(ROOT, "model-settings")], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


def test_the_default_cache_folder_is_the_users_own(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "mlserver-mme")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "mlserver-mme")
    assert not default_cache_dir().startswith(tempfile.gettempdir() + "/mlserver-mme")


def test_a_folder_others_may_write_or_own_is_refused_by_name(tmp_path):
    made = private_folder(str(tmp_path / "new" / "cache"), "MLSERVER_MME_CACHE_DIR")
    assert os.stat(made).st_mode & 0o777 == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)  # as a local user who made the folder first would leave it
    with pytest.raises(UnsafeFolder, match=f"MLSERVER_MME_CACHE_DIR \\({shared}\\) may be written by other users"):
        private_folder(str(shared), "MLSERVER_MME_CACHE_DIR")
    if os.geteuid() == 0:  # a folder another user owns (only root can give one away)
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 4242, 4242)
        with pytest.raises(UnsafeFolder, match="belongs to user 4242"):
            private_folder(str(theirs), "MLSERVER_MME_CACHE_DIR")


def test_generated_files_are_written_through_new_files_never_through_a_link(tmp_path):
    target = tmp_path / "supervisord.conf"
    elsewhere = tmp_path / "elsewhere"
    planted = tmp_path / f"supervisord.conf.{os.getpid()}.tmp"
    planted.symlink_to(elsewhere)  # a link where the new file goes: removed, not followed
    write_private_file(str(target), "[supervisord]\n")
    assert target.read_text() == "[supervisord]\n" and not elsewhere.exists()
    assert os.stat(target).st_mode & 0o777 == 0o600


def test_servers_started_with_the_default_cache_folder_each_take_one_of_their_own(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    default = tmp_path / "xdg" / "mlserver-mme"
    houston = EXPECTED["predictions"]["Houston_TX.tar.gz"][:1]
    first = MLServerProcess(env, str(tmp_path / "first.log")).start()
    second = MLServerProcess(env, str(tmp_path / "second.log"))
    try:
        second.start()
        for server in (first, second):
            assert call(server, "Houston_TX.tar.gz").json() == houston
        assert f"event=cache-dir-in-use default={default} using={default}-2" in second.log()
        assert (default / ".lock").read_text() == f"{first.process.pid}\n"
        assert (tmp_path / "xdg" / "mlserver-mme-2" / ".lock").read_text() == f"{second.process.pid}\n"
        assert len(os.listdir(default / "models")) == len(os.listdir(f"{default}-2/models")) == 1
        # a folder given explicitly is not swapped for another: refused, naming the server that holds it
        third = MLServerProcess({"MLSERVER_MME_CACHE_DIR": str(default)}, str(tmp_path / "third.log"))
        with pytest.raises(RuntimeError, match=rf"in use by another server \(process {first.process.pid}\)"):
            third.start()
    finally:
        first.stop()
        second.stop()
    # once stopped, its folder is free again: a restart takes it back (with its models on disk)
    again = MLServerProcess(env, str(tmp_path / "again.log")).start()
    try:
        assert "event=cache-dir-in-use" not in again.log()
        assert (default / ".lock").read_text() == f"{again.process.pid}\n"
    finally:
        again.stop()


def test_serve_refuses_a_cache_folder_another_server_holds(tmp_path):
    held = tmp_path / "held"
    private_folder(str(held), "MLSERVER_MME_CACHE_DIR")
    lock_folder(str(held), "MLSERVER_MME_CACHE_DIR")  # this test's process is the other server
    done = serve({"MLSERVER_MME_SHARDS": "2", "MLSERVER_MME_CACHE_DIR": str(held),
                  "MLSERVER_MME_SHARD_PORT": str(free_port_block(6)),
                  "MLSERVER_HTTP_PORT": str(free_port()), "MLSERVER_METRICS_PORT": str(free_port())})
    assert done.returncode == 2
    assert f"MLSERVER_MME_CACHE_DIR ({held}) is in use by another server (process {os.getpid()})" in done.stderr


def test_serve_refuses_a_shared_cache_folder(tmp_path):
    shared = tmp_path / "mlserver-mme"
    shared.mkdir()
    os.chmod(shared, 0o777)
    base = free_port_block(6)
    done = serve({"MLSERVER_MME_SHARDS": "2", "MLSERVER_MME_CACHE_DIR": str(shared), "MLSERVER_MME_SHARD_PORT": str(base),
                  "MLSERVER_HTTP_PORT": str(free_port()), "MLSERVER_METRICS_PORT": str(free_port())})
    assert done.returncode == 2
    assert f"MLSERVER_MME_CACHE_DIR ({shared}) may be written by other users" in done.stderr
    assert os.listdir(shared) == []  # nothing written into it


def test_serve_refuses_a_shard_port_another_process_listens_on(tmp_path):
    base = free_port_block(6)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + 3))  # shard-1's HTTP port
        squatter.listen()
        done = serve({"MLSERVER_MME_SHARDS": "2", "MLSERVER_MME_CACHE_DIR": str(tmp_path / "cache"),
                      "MLSERVER_MME_SHARD_PORT": str(base), "MLSERVER_HTTP_PORT": str(free_port()),
                      "MLSERVER_METRICS_PORT": str(free_port())})
    assert done.returncode == 2
    assert f"port {base + 3} on 127.0.0.1 (shard-1's HTTP) is in use by another process" in done.stderr
    assert not os.path.exists(tmp_path / "cache" / "serve" / "supervisord.conf")


class _Impostor(http.server.BaseHTTPRequestHandler):
    """Answers 200 to everything; echoes the check it is sent as the answer, or answers ``answer`` if set."""

    answer = None

    def do_GET(self):
        self.send_response(200)
        self.send_header("X-MME-Shard-Answer", self.answer or self.headers.get("X-MME-Shard-Check", ""))
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args):
        pass


def _status_of_shard(metrics_url: str):
    """HAProxy's view of shard-0 in the sagemaker backend: (checks done, up) from its exporter."""
    text = httpx.get(metrics_url, timeout=5).text
    checks = up = None
    for line in text.splitlines():
        if 'proxy="sagemaker",server="shard-0"' in line:
            if line.startswith("haproxy_server_check_up_down_total") or line.startswith("haproxy_server_check_failures_total"):
                checks = (checks or 0) + float(line.split()[-1])
            if line.startswith("haproxy_server_status{") and 'state="UP"' in line:
                up = float(line.split()[-1]) == 1
    return checks, up


@pytest.mark.parametrize("answer, expected_up", [
    (None, False),  # echoes the check it is sent
    (haproxy.shard_check(KEYS, "shard-1")[1], False),  # another shard's answer, were it to learn one
    (ANSWER, True),  # shard-0's own: HAProxy's hmac and base64 converters compute what shard_check() does
])
def test_only_a_shard_that_answers_its_own_check_is_ever_up(tmp_path, answer, expected_up):
    handler = type("Impostor", (_Impostor,), {"answer": answer})
    impostor = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    port = impostor.server_address[1]
    front, metrics = free_port(), free_port()
    config = haproxy.render([Shard(0, port, port + 1, port + 2)], "127.0.0.1", front, metrics,
                            check_keys=KEYS)
    (tmp_path / "haproxy.cfg").write_text(config)
    binary = next(path for path in ("/usr/sbin/haproxy", "/usr/bin/haproxy", "/usr/local/sbin/haproxy")
                  if os.path.exists(path))
    front_process = subprocess.Popen([binary, "-db", "-f", str(tmp_path / "haproxy.cfg")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        metrics_url = f"http://127.0.0.1:{metrics}/metrics"

        def checked():
            try:
                checks, up = _status_of_shard(metrics_url)
            except httpx.HTTPError:
                return False
            return up is expected_up and (up or (checks or 0) >= 1)

        wait_until(checked, timeout=20, message=f"shard-0 {'up' if expected_up else 'down after a check'}")
        reply = httpx.post(f"http://127.0.0.1:{front}/invocations", content=b"1,2",
                           headers={"X-Amzn-SageMaker-Target-Model": "m.tar.gz"}, timeout=10)
        assert reply.status_code == (200 if expected_up else 503)
    finally:
        terminate(front_process, 5)
        impostor.shutdown()
        impostor.server_close()
