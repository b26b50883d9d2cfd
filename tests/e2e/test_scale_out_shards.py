"""`mlserver-mme serve` with 3 shards behind a real HAProxy, against moto's S3.

One sharded server is shared by the module; the last test stops it with SIGTERM.
"""

import json
import os
import pathlib
import random
import re
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict

import boto3
import httpx
import pytest
from support.artifacts import EXPECTED, ROWS, example_bytes, example_targets
from support.mlserver_process import ROOT, free_port, free_port_block, terminate
from support.s3server import BUCKET, boto3_credentials, s3_env

from mlserver_mme.config import MMESettings
from mlserver_mme.naming import v2_name
from mlserver_mme.scale_out.shards import plan, shard_count, share_of_count, share_of_size, usable_cpus

SERVE = os.path.join(os.path.dirname(sys.executable), "mlserver-mme")
SHARDS = 3
KEY_PREFIX = "shards/"
CSV = "".join(",".join(map(str, row)) + "\n" for row in ROWS).encode()

# target -> the bundled example it is a copy of
SPREAD = {f"spread/m{i:02d}.tar.gz": example_targets()[i % 5] for i in range(24)}
NAMED = {
    "northeast/Boston_MA.tar.gz": "northeast/Boston_MA.tar.gz",
    "Houston_TX.tar.gz": "Houston_TX.tar.gz",
    "formats/legacy.tgz": "Chicago_IL.tar.gz",  # no .tar.gz: its V2 name ends in "~"
    "exotic/a b,c+d~e.tar.gz": "NewYork_NY.tar.gz",  # space, comma, plus and tilde
}
KILL_LOOP = {f"kill/m{i}.tar.gz": example_targets()[i % 5] for i in range(9)}
MODELS = {**SPREAD, **NAMED, **KILL_LOOP}

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


def expected(target):
    return EXPECTED["predictions"][MODELS[target]]


def children(pid: int) -> list:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as file:
                found += [int(child) for child in file.read().split()]
    except OSError:
        pass
    return found


def environ(pid: int) -> dict:
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            items = file.read().decode(errors="replace").split("\0")
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in items if "=" in item)


def processes_with(marker: str) -> set:
    """Every live process whose environment mentions ``marker`` (the server's cache folder), orphans included."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and marker in environ(int(entry)).get("MLSERVER_MME_CACHE_DIR", ""):
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                        continue  # exited, not yet reaped
            except OSError:
                continue
            found.add(int(entry))
    return found


class ShardedServer:
    def __init__(self, s3, work):
        self.work = work
        self.cache = str(work / "cache")
        self.http_port, self.metrics_port = free_port(), free_port()
        self.shard_port = free_port_block(3 * SHARDS)
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"
        self.env = {
            **os.environ,
            **s3_env(s3),
            "MLSERVER_MME_MODEL_PREFIX": f"s3://{BUCKET}/{KEY_PREFIX}",
            "MLSERVER_MME_CACHE_DIR": self.cache,
            "MLSERVER_MME_SHARDS": str(SHARDS),
            "MLSERVER_MME_MAX_LOADED_MODELS": "91",  # for the whole server: 31 + 30 + 30
            "MLSERVER_MME_HOT_SET_RECORD_SECONDS": "0.2",
            "MLSERVER_MME_SHARD_PORT": str(self.shard_port),
            "MLSERVER_HOST": "127.0.0.1",
            "MLSERVER_HTTP_PORT": str(self.http_port),
            "MLSERVER_METRICS_PORT": str(self.metrics_port),
        }
        self.process = None

    def start(self, timeout=90.0) -> "ShardedServer":
        self._log = open(self.work / "serve.log", "ab")
        self.process = subprocess.Popen(
            [SERVE, "serve", os.path.join(ROOT, "model-settings")],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        self.wait_until_all_up(timeout)
        return self

    def shards_up(self) -> set:
        """Shards HAProxy sees up, from its Prometheus exporter."""
        try:
            text = httpx.get(self.metrics_url + "/metrics", timeout=2).text
        except httpx.TransportError:
            return set()
        return {
            line.split('server="')[1].split('"')[0]
            for line in text.splitlines()
            if line.startswith('haproxy_server_status{proxy="sagemaker"') and 'state="UP"' in line and line.endswith(" 1")
        }

    def wait_until_all_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.shards_up()) < SHARDS:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}:\n{self.log()[-5000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the shards were not all up within {timeout} s:\n{self.log()[-5000:]}")
            time.sleep(0.1)

    def shard_pid(self, index: int):
        """The process of shard ``index`` (a child of supervisord), or None while it is being restarted."""
        port = str(self.shard_port + 3 * index)
        pids = [p for p in children(self.process.pid) if environ(p).get("MLSERVER_HTTP_PORT") == port]
        return pids[0] if pids else None

    def log(self) -> str:
        return (self.work / "serve.log").read_bytes().decode(errors="replace")

    def stop(self) -> None:
        terminate(self.process, 40)
        for pid in processes_with(self.cache):  # whatever a failed test left behind
            os.kill(pid, signal.SIGKILL)
        self._log.close()


@pytest.fixture(scope="module")
def front(s3, tmp_path_factory):
    assert os.path.exists(SERVE), "the mlserver-mme console script is missing: pip install ."
    assert HAPROXY, "HAProxy is missing: apt-get install haproxy"
    for target, source in MODELS.items():
        s3.client.put_object(Bucket=BUCKET, Key=KEY_PREFIX + target, Body=example_bytes(source))
    server = ShardedServer(s3, tmp_path_factory.mktemp("shards")).start()
    yield server
    server.stop()
    print(server.log()[-5000:])


def invoke(front, target, client=httpx):
    return client.post(
        front.url + "/invocations", content=CSV, timeout=60,
        headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target},
    )


def gets(s3, target):
    return s3.count("GET", f"/{BUCKET}/{KEY_PREFIX}{target}")


def serve_config(tmp_path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SERVE, "serve", os.path.join(ROOT, "model-settings"), "--print-config"], capture_output=True, text=True,
        env={**os.environ, "MLSERVER_MME_CACHE_DIR": str(tmp_path), **env}, cwd=ROOT,
    )


def test_budgets_are_divided_among_shards():
    assert [share_of_count(10, 3, i) for i in range(3)] == [4, 3, 3]
    assert [share_of_count(2, 3, i) for i in range(3)] == [1, 1, 1]  # every shard can load a model
    assert share_of_size("80%", 4) == "20.0%"
    assert share_of_size("3GiB", 3) == str(2**30)
    settings = MMESettings(max_loaded_models=300, memory_limit="2GiB", disk_limit="50%", cache_dir="/c")
    shards = plan(2, settings, base_port=9000)
    assert [(s.http_port, s.grpc_port, s.metrics_port) for s in shards] == [(9000, 9001, 9002), (9003, 9004, 9005)]
    assert shards[1].env == {
        "MLSERVER_HOST": "127.0.0.1", "MLSERVER_HTTP_PORT": "9003", "MLSERVER_GRPC_PORT": "9004",
        "MLSERVER_METRICS_PORT": "9005", "MLSERVER_MME_CACHE_DIR": "/c/shard-1", "MLSERVER_MME_MAX_LOADED_MODELS": "150",
        "MLSERVER_MME_MEMORY_LIMIT": str(2**30), "MLSERVER_MME_DISK_LIMIT": "25.0%",
    }


def test_shard_count_setting():
    assert shard_count(None) == shard_count("1") == 1
    assert shard_count(" AUTO ") == usable_cpus() <= len(os.sched_getaffinity(0))
    for bad in ("0", "-2", "two", "1.5"):
        with pytest.raises(ValueError):
            shard_count(bad)


def test_the_generated_haproxy_configuration_is_valid(tmp_path):
    assert HAPROXY, "HAProxy is missing: apt-get install haproxy"
    printed = serve_config(tmp_path, MLSERVER_MME_SHARDS="4")
    assert printed.returncode == 0, printed.stderr
    haproxy_cfg = printed.stdout.split("# " + str(tmp_path / "serve" / "supervisord.conf"))[0]
    (tmp_path / "haproxy.cfg").write_text(haproxy_cfg.split("\n", 1)[1])
    check = subprocess.run([HAPROXY, "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert haproxy_cfg.count("\n    server shard-") == 3 * 4  # front, V2 and metrics backends


def test_settings_that_would_add_lines_to_the_generated_configurations_are_refused(tmp_path):
    host = serve_config(tmp_path, MLSERVER_MME_SHARDS="2", MLSERVER_HOST="127.0.0.1:9\n    http-request return")
    assert host.returncode == 2 and "MLSERVER_HOST" in host.stderr and "http-request" not in host.stdout
    cache = serve_config(tmp_path, MLSERVER_MME_SHARDS="2", MLSERVER_MME_CACHE_DIR=f"{tmp_path}\n[program:x]")
    assert cache.returncode == 2 and "not printable" in cache.stderr


def test_one_shard_is_mlserver_itself_and_the_hosting_contract_is_not_sharded(tmp_path):
    assert serve_config(tmp_path, MLSERVER_MME_SHARDS="1").stdout.startswith("one shard: ")
    assert serve_config(tmp_path, MLSERVER_MME_SHARDS="auto", SAGEMAKER_MULTI_MODEL="true").stdout.startswith("one shard: ")
    refused = serve_config(tmp_path, MLSERVER_MME_SHARDS="3", SAGEMAKER_MULTI_MODEL="true")
    assert refused.returncode == 2 and "one shard only" in refused.stderr
    clash = serve_config(tmp_path, MLSERVER_MME_SHARDS="3", MLSERVER_MME_SHARD_PORT="8079")
    assert clash.returncode == 2 and "8080" in clash.stderr


def test_the_front_starts_once_the_shards_listen_so_its_start_is_quiet(front):
    log = front.log()
    assert "Server sagemaker/shard-0" not in log  # no shard went down (nor came up) at start
    assert "[ALERT]" not in log and "no server available" not in log


def test_boto3_answers_through_the_front_equal_xgboost(front):
    runtime = boto3.client(
        "sagemaker-runtime", endpoint_url=front.url,
        config=boto3.session.Config(retries={"max_attempts": 1, "mode": "standard"}), **boto3_credentials(),
    )
    for target in NAMED:
        reply = runtime.invoke_endpoint(EndpointName="any", TargetModel=target, ContentType="text/csv", Body=CSV)
        assert reply["ContentType"] == "application/json"
        assert httpx.Response(200, content=reply["Body"].read()).json() == expected(target)
        assert reply["ResponseMetadata"]["HTTPHeaders"]["x-mme-shard"] in {f"shard-{i}" for i in range(SHARDS)}


def test_each_target_stays_on_one_shard_targets_spread_over_all_and_download_once(front, s3):
    seen = defaultdict(set)
    with httpx.Client() as client:
        for _ in range(3):
            for target in SPREAD:
                reply = invoke(front, target, client)
                assert reply.status_code == 200, reply.text
                assert reply.json() == expected(target)
                seen[target].add(reply.headers["X-MME-Shard"])
    assert {target: len(shards) for target, shards in seen.items()} == {target: 1 for target in SPREAD}
    per_shard = Counter(shard for (shard,) in seen.values())
    assert set(per_shard) == {f"shard-{i}" for i in range(SHARDS)}, per_shard
    assert {target: gets(s3, target) for target in SPREAD} == {target: 1 for target in SPREAD}


def test_v2_routes_reach_the_shard_the_sagemaker_route_loaded(front, s3):
    for target in [*NAMED, *list(SPREAD)[:6]]:
        reply = invoke(front, target)
        assert reply.status_code == 200, reply.text
        shard = reply.headers["X-MME-Shard"]
        name = v2_name(target)
        payload = {"inputs": [{"name": "input-0", "shape": [len(ROWS), 6], "datatype": "FP64", "data": sum(ROWS, [])}]}
        v2 = httpx.post(f"{front.url}/v2/models/{name}/infer", json=payload, timeout=60)
        assert (v2.status_code, v2.headers["X-MME-Shard"]) == (200, shard), (target, v2.text)
        assert v2.json()["outputs"][0]["data"] == expected(target)
        # the shards decode the path: an encoded V2 path is a V2 call there, and hashed as one here
        encoded = httpx.post(f"{front.url}/v2%2Fmodels/{name}/infer", json=payload, timeout=60)
        assert (encoded.status_code, encoded.headers["X-MME-Shard"]) == (200, shard), (target, encoded.text)
        ready = httpx.get(f"{front.url}/v2/repository/models/{name}/ready")
        assert ready.headers["X-MME-Shard"] == shard
        assert gets(s3, target) == 1


def test_v2_load_then_sagemaker_call_is_one_download_on_one_shard(front, s3):
    target = "kill/m8.tar.gz"
    load = httpx.post(f"{front.url}/v2/repository/models/{v2_name(target)}/load", timeout=60)
    assert load.status_code == 200, load.text
    reply = invoke(front, target)
    assert (reply.status_code, reply.headers["X-MME-Shard"]) == (200, load.headers["X-MME-Shard"])
    assert reply.json() == expected(target)
    assert gets(s3, target) == 1


def test_v2_names_hash_as_their_targets_for_every_printable_ascii_character(front):
    """The header's target and the V2 name's target are one key. No model is touched: GET on these POST
    routes is answered 405 by the shard the request reached."""
    rng = random.Random(11)
    alphabet = string.ascii_letters + string.digits + string.punctuation + " "
    targets = [c + "/x.tar.gz" for c in alphabet] + ["a" + c for c in alphabet]
    targets += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 30))) for _ in range(200)]
    targets = [t for t in targets if t == t.strip()]  # HTTP drops a header value's outer spaces
    placed = Counter()
    with httpx.Client(base_url=front.url) as client:
        for target in targets:
            by_header = client.get("/ping", headers={"X-Amzn-SageMaker-Target-Model": target}).headers["X-MME-Shard"]
            name = v2_name(target)
            by_name = client.get(f"/v2/models/{name}/infer")
            # a client may percent-encode the name; it is the same model
            by_encoded_name = client.get(f"/v2/repository/models/{name.replace('~', '%7E')}/load")
            assert (by_name.status_code, by_encoded_name.status_code) == (405, 405)
            assert by_header == by_name.headers["X-MME-Shard"] == by_encoded_name.headers["X-MME-Shard"], (target, name)
            placed[by_header] += 1
    assert len(placed) == SHARDS


def test_each_shard_has_its_share_of_the_budget_and_its_own_cache_folder(front):
    shares = {environ(front.shard_pid(i)).get("MLSERVER_MME_MAX_LOADED_MODELS") for i in range(SHARDS)}
    assert shares == {"31", "30"}
    folders = sorted(os.listdir(front.cache))
    assert folders == [".lock", "serve", "shard-0", "shard-1", "shard-2"]  # .lock: serve's, held by supervisord
    with open(os.path.join(front.cache, ".lock")) as lock:
        assert lock.read() == f"{front.process.pid}\n"  # serve's process, which became supervisord
    for i in range(SHARDS):  # every shard downloaded models into its own folder
        assert os.listdir(os.path.join(front.cache, f"shard-{i}", "models"))


def test_metrics_of_the_front_and_of_each_shard(front):
    text = httpx.get(front.metrics_url + "/metrics").text
    for i in range(SHARDS):
        assert f'haproxy_server_status{{proxy="sagemaker",server="shard-{i}",state="UP"}} 1' in text
        shard = httpx.get(f"{front.metrics_url}/shards/{i}/metrics")
        assert shard.status_code == 200
        assert "mme_model_cache_hits_total" in shard.text  # every shard served models above
    assert httpx.get(f"{front.metrics_url}/shards/{SHARDS}/metrics").status_code == 404
    assert httpx.get(f"{front.metrics_url}/nothing").status_code == 404


def test_kill_9_of_a_shard_fails_no_request_and_it_comes_back(front):
    home = {target: invoke(front, target).headers["X-MME-Shard"] for target in KILL_LOOP}
    victim = "shard-1"
    victim_targets = [t for t, shard in home.items() if shard == victim]
    assert victim_targets, home
    pid = front.shard_pid(1)
    assert pid is not None
    group = {p for p in processes_with(front.cache) if os.getpgid(p) == pid}
    assert pid in group and len(group) > 1  # the shard and its fork server
    answers, failures, stop = defaultdict(Counter), [], threading.Event()

    def loop():
        with httpx.Client() as client:
            while not stop.is_set():
                for target in KILL_LOOP:
                    try:
                        reply = invoke(front, target, client)
                    except httpx.TransportError as error:
                        failures.append((target, repr(error)))
                        continue
                    if reply.status_code != 200 or reply.json() != expected(target):
                        failures.append((target, reply.status_code, reply.text[:200]))
                    answers[target][reply.headers.get("X-MME-Shard")] += 1

    clients = [threading.Thread(target=loop) for _ in range(2)]
    for thread in clients:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while sum(sum(counts.values()) for counts in list(answers.values())) < 50:  # the loops are running
            assert time.monotonic() < deadline and not failures, failures
            time.sleep(0.01)
        record = pathlib.Path(front.cache) / "shard-1" / "hot-set.json"
        deadline = time.monotonic() + 30

        def recorded():
            try:
                return {model["target"] for model in json.loads(record.read_text())["models"]}
            except (OSError, ValueError):
                return set()

        while not set(victim_targets) <= recorded():  # what the restarted shard will load from its disk
            assert time.monotonic() < deadline, f"{record} never recorded {victim_targets}"
            time.sleep(0.05)
        warm_starts = front.log().count("event=warm-start ")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        # back: a new process, seen up by HAProxy, answering its targets again
        while not (front.shards_up() == {f"shard-{i}" for i in range(SHARDS)} and front.shard_pid(1) not in (pid, None)
                   and all(invoke(front, t).headers["X-MME-Shard"] == victim for t in victim_targets)):
            assert time.monotonic() < deadline, f"{victim} did not come back within 60 s"
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)
    assert failures == []
    # the new process loaded what the killed one held, from its disk (each model by a warm load or a request)
    deadline = time.monotonic() + 30
    while front.log().count("event=warm-start ") == warm_starts:
        assert time.monotonic() < deadline, "the restarted shard logged no warm start"
        time.sleep(0.05)
    restarted = front.log().split("event=warm-start ")[warm_starts + 1].split("\n")[0]
    loaded, skipped, total = (int(re.search(rf"{key}=(\d+)", restarted).group(1)) for key in ("loaded", "skipped", "recorded"))
    assert total >= len(victim_targets) and loaded + skipped == total, restarted
    # while it was down, its targets were answered by the other shards
    assert any(set(answers[t]) - {victim} for t in victim_targets), dict(answers)
    assert processes_with(front.cache) & group == set()  # nothing of the killed shard is left


def test_a_shard_too_busy_to_answer_for_seconds_stays_up(front):
    """A shard starved of CPU answers its health checks late; only a dead one may lose its models."""
    pid = front.shard_pid(2)
    assert pid is not None and "shard-2" in front.shards_up()
    os.kill(pid, signal.SIGSTOP)  # answers nothing for 6 s: longer than two checks of the old 2 s timeout
    seen = []
    try:
        end = time.monotonic() + 6
        while time.monotonic() < end:
            seen.append("shard-2" in front.shards_up())
            time.sleep(0.25)  # the stall being measured, not a wait for an event
    finally:
        os.kill(pid, signal.SIGCONT)
    assert len(seen) > 10 and all(seen), seen
    assert "Server sagemaker/shard-2 is DOWN" not in front.log()


def test_sigterm_stops_the_whole_tree(front):
    assert len(processes_with(front.cache)) > SHARDS + 2  # supervisord, HAProxy, shards and their children
    front.process.send_signal(signal.SIGTERM)
    assert front.process.wait(40) == 0
    assert processes_with(front.cache) == set()
    with pytest.raises(httpx.TransportError):
        httpx.get(front.url + "/ping", timeout=2)
