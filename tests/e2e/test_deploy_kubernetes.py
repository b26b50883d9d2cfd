"""The Kubernetes base in deploy/kubernetes: every object valid against Kubernetes' own schemas, the
rendered base wired together (probes, limits, selectors, autoscaler, budgets), and its HAProxy front
hashing a model's SageMaker and V2 requests onto the same server.

Offline and fast: kubernetes-validate carries the schemas, `kubectl kustomize` renders without a
cluster, and the front is run against a few loopback echo servers.
"""

import base64
import contextlib
import http.client
import http.server
import math
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from support.paths import ROOT

from mlserver_mme.config import MMESettings
from mlserver_mme.naming import v2_name, validate_target
from mlserver_mme.observability.memory import parse_size

BASE = Path(ROOT) / "deploy" / "kubernetes"
HAPROXY_CFG = BASE / "haproxy.cfg"
SCALE_ON_RELOADS = BASE / "scale-on-reloads"
ADAPTER_RULES = Path(ROOT) / "deploy" / "prometheus" / "adapter-rules.yaml"
# The oldest Kubernetes the base is meant for, and the kubectl of the development machines.
# kubernetes-validate bundles both (pyproject.toml pins a range of it that does).
KUBERNETES_VERSIONS = ("1.28.0", "1.32.0")
EXPECTED_KINDS = {
    "ConfigMap",
    "Deployment",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "Secret",
    "Service",
    "ServiceAccount",
}
SERVERS = "mlserver-mme-servers"
FRONT = "mlserver-mme-front"
CACHE_DIR = "/var/cache/mlserver-mme"
TARGET_HEADER = "X-Amzn-SageMaker-Target-Model"
ADMIN_SECRET = "mlserver-mme-admin"
ADMIN_TOKEN = "MLSERVER_MME_ADMIN_TOKEN"
SCRAPER = {"mlserver-mme/metrics-scraper": "true"}


# ---------------------------------------------------------------------------------------------------
# Reading the manifests


def _manifest_files():
    return sorted(path for path in BASE.glob("*.yaml") if path.name != "kustomization.yaml")


def _load(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _validate(obj, version):
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(part) for part in error.path)
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        pytest.fail(f"{name} invalid for Kubernetes {version} at {where}: {error.message}")
    except kubernetes_validate.SchemaNotFoundError as error:
        pytest.fail(error.message)


@pytest.fixture(scope="module")
def files():
    return [obj for path in _manifest_files() for obj in _load(path)]


def _kustomize(folder):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    done = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered():
    return _kustomize(BASE)


@pytest.fixture(scope="module")
def scaling_on_reloads(tmp_path_factory):
    """The base rendered by an overlay that opts into the scale-on-reloads component."""
    overlay = tmp_path_factory.mktemp("overlay")
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {os.path.relpath(BASE, overlay)}\n"
        f"components:\n  - {os.path.relpath(SCALE_ON_RELOADS, overlay)}\n"
    )
    return _kustomize(overlay)


@pytest.fixture(scope="module", params=["files", "rendered"])
def objects(request):
    """The base's objects as written, and as kustomize renders them (generated objects included)."""
    return request.getfixturevalue(request.param)


def _one(objects, kind, name):
    found = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} named {name}, found {len(found)}"
    return found[0]


def _generated(objects, kind, name):
    """A generated ConfigMap or Secret, named with kustomize's content hash after ``name``."""
    pattern = re.compile(rf"{name}-[a-z0-9]{{10}}")
    found = [obj for obj in objects if obj["kind"] == kind and pattern.fullmatch(obj["metadata"]["name"])]
    assert len(found) == 1, f"expected one generated {kind} {name}-<hash>, found {len(found)}"
    return found[0]


def _deployments(objects):
    return [obj for obj in objects if obj["kind"] == "Deployment"]


def _pod_labels(deployment):
    return deployment["spec"]["template"]["metadata"]["labels"]


def _containers(deployment):
    return deployment["spec"]["template"]["spec"]["containers"]


def _container(deployment, name):
    found = [c for c in _containers(deployment) if c["name"] == name]
    assert len(found) == 1
    return found[0]


def _cpu_millis(quantity):
    text = str(quantity)
    return int(text[:-1]) if text.endswith("m") else round(float(text) * 1000)


def _env(container, namespace="default"):
    """The container's explicit environment as the kubelet fills it (downward API included)."""
    values = {}
    for item in container.get("env", []):
        if "value" in item:
            values[item["name"]] = item["value"]
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.namespace"
            values[item["name"]] = namespace
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            assert ref["resource"] == "limits.cpu"
            assert ref["containerName"] == container["name"]
            # The kubelet's rule for CPU (pkg/api/v1/resource: convertResourceCPUToString): the
            # quantity over the divisor, rounded up to an integer.
            limit = _cpu_millis(container["resources"]["limits"]["cpu"])
            values[item["name"]] = str(math.ceil(limit / _cpu_millis(ref.get("divisor", "1"))))
    return values


# ---------------------------------------------------------------------------------------------------
# Schemas


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_file_validates_strictly(version):
    files = _manifest_files()
    assert len(files) >= 9
    for path in files:
        for obj in _load(path):
            _validate(obj, version)


def test_strict_validation_refuses_a_misspelt_field():
    deployment = _load(BASE / "servers-deployment.yaml")[0]
    probe = _container(deployment, "server")["readinessProbe"]
    probe["httpGEt"] = probe.pop("httpGet")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_base_validates_strictly(rendered, version):
    for obj in rendered:
        _validate(obj, version)


def test_rendered_base_holds_every_kind(rendered):
    assert {obj["kind"] for obj in rendered} == EXPECTED_KINDS
    assert {d["metadata"]["name"] for d in _deployments(rendered)} == {SERVERS, FRONT}


# ---------------------------------------------------------------------------------------------------
# The servers


def test_servers_are_probed_on_ping(objects):
    server = _container(_one(objects, "Deployment", SERVERS), "server")
    ports = {port["name"]: port["containerPort"] for port in server["ports"]}
    assert ports["http"] == 8080
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = server[probe]["httpGet"]
        assert get["path"] == "/ping", probe
        assert ports.get(get["port"], get["port"]) == 8080, probe


@pytest.mark.parametrize("name, user", [(SERVERS, 10001), (FRONT, 99)])
def test_pods_run_unprivileged_on_a_read_only_root(objects, name, user):
    deployment = _one(objects, "Deployment", name)
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == user
    for container in _containers(deployment):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]


def test_every_container_has_requests_and_limits(objects):
    for deployment in _deployments(objects):
        for container in _containers(deployment):
            resources = container["resources"]
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resources[kind][resource], (container["name"], kind, resource)


def test_servers_get_one_shard_per_core_of_their_cpu_limit(objects):
    server = _container(_one(objects, "Deployment", SERVERS), "server")
    resources = server["resources"]
    # Whole cores, and guaranteed: the shard count is read from the limit.
    assert _cpu_millis(resources["limits"]["cpu"]) % 1000 == 0
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    (shards,) = [item for item in server["env"] if item["name"] == "MLSERVER_MME_SHARDS"]
    reference = {"containerName": "server", "resource": "limits.cpu", "divisor": "1"}
    assert shards["valueFrom"]["resourceFieldRef"] == reference
    assert _env(server)["MLSERVER_MME_SHARDS"] == str(_cpu_millis(resources["limits"]["cpu"]) // 1000)


def test_downward_cpu_count_rounds_up_to_whole_cores():
    reference = {"containerName": "c", "resource": "limits.cpu", "divisor": "1"}
    container = {"name": "c", "resources": {"limits": {"cpu": "1500m"}},
                 "env": [{"name": "N", "valueFrom": {"resourceFieldRef": reference}}]}
    assert _env(container)["N"] == "2"


def test_servers_cache_and_tmp_are_bounded_scratch_volumes(objects):
    deployment = _one(objects, "Deployment", SERVERS)
    server = _container(deployment, "server")
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in server["volumeMounts"]}
    assert set(mounts) == {CACHE_DIR, "/tmp"}
    for path in (CACHE_DIR, "/tmp"):
        assert "sizeLimit" in volumes[mounts[path]]["emptyDir"], path
    env = _env(server)
    assert env["MLSERVER_MME_CACHE_DIR"] == CACHE_DIR + "/cache"  # made by the server, its own, in the volume
    # The LRU must act before the kubelet evicts the pod for outgrowing the volume, with room for
    # one archive of the largest size allowed being unpacked.
    cache_limit = parse_size(volumes[mounts[CACHE_DIR]]["emptyDir"]["sizeLimit"])
    largest_archive = MMESettings.model_fields["max_unpacked_bytes"].default
    assert parse_size(env["MLSERVER_MME_DISK_LIMIT"]) + largest_archive <= cache_limit
    memory = parse_size(server["resources"]["limits"]["memory"])
    assert parse_size(env["MLSERVER_MME_MEMORY_LIMIT"], total=memory) < memory
    assert parse_size(server["resources"]["requests"]["ephemeral-storage"]) >= sum(
        parse_size(volume["emptyDir"]["sizeLimit"]) for volume in volumes.values()
    )


def test_servers_read_the_prefix_and_credentials_from_generated_objects(rendered):
    server = _container(_one(rendered, "Deployment", SERVERS), "server")
    config = _generated(rendered, "ConfigMap", "mlserver-mme-config")
    secret = _generated(rendered, "Secret", "mlserver-mme-aws")
    sources = server["envFrom"]
    assert {"configMapRef": {"name": config["metadata"]["name"]}} in sources
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in sources
    # The image's example models until an overlay names a bucket.
    dockerfile = (BASE.parent.parent / "Dockerfile").read_text()
    assert "COPY examples/models ./examples/models" in dockerfile
    workdir = re.search(r"^WORKDIR (\S+)$", dockerfile, re.MULTILINE).group(1)
    assert config["data"]["MLSERVER_MME_MODEL_PREFIX"] == f"{workdir}/examples/models"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["data"])


def test_servers_take_the_admin_token_from_a_generated_secret(rendered):
    server = _container(_one(rendered, "Deployment", SERVERS), "server")
    secret = _generated(rendered, "Secret", ADMIN_SECRET)
    (item,) = [item for item in server["env"] if item["name"] == ADMIN_TOKEN]
    assert item["valueFrom"] == {"secretKeyRef": {"name": secret["metadata"]["name"], "key": ADMIN_TOKEN}}
    assert set(secret["data"]) == {ADMIN_TOKEN}
    # Not in envFrom as well, where another source could set it.
    assert all(ADMIN_TOKEN not in str(source) for source in server["envFrom"])


def test_the_admin_token_placeholder_cannot_be_presented(rendered):
    """The base's token is a placeholder that keeps the management routes closed: it says to change it,
    and holds a line break followed by more text, which no HTTP header or gRPC metadata value can carry."""
    secret = _generated(rendered, "Secret", ADMIN_SECRET)
    token = base64.b64decode(secret["data"][ADMIN_TOKEN]).decode()
    assert token.startswith("CHANGE-ME")
    head, _, tail = token.partition("\n")
    assert head and tail and not tail[0].isspace(), token
    # The server compares the whole header with it: such a header cannot even be sent.
    connection = http.client.HTTPConnection("127.0.0.1", 9)
    connection.putrequest("GET", "/v2/repository/index")
    with pytest.raises(ValueError):
        connection.putheader("Authorization", f"Bearer {token}")


def test_servers_have_no_fixed_replica_count_under_the_autoscaler(objects):
    assert "replicas" not in _one(objects, "Deployment", SERVERS)["spec"]


def test_autoscaler_targets_the_servers(objects):
    hpa = _one(objects, "HorizontalPodAutoscaler", SERVERS)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": SERVERS}
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # Pods beyond the front's slots would get no traffic.
    assert hpa["spec"]["maxReplicas"] <= _server_template(HAPROXY_CFG.read_text())["slots"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_scale_on_reloads_component_adds_the_adapters_metric_and_changes_nothing_else(
    scaling_on_reloads, rendered, version
):
    for obj in scaling_on_reloads:
        _validate(obj, version)
    hpa = _one(scaling_on_reloads, "HorizontalPodAutoscaler", SERVERS)
    cpu, reloads = hpa["spec"]["metrics"]
    assert cpu == _one(rendered, "HorizontalPodAutoscaler", SERVERS)["spec"]["metrics"][0]
    assert reloads["type"] == "External"
    assert reloads["external"]["target"] == {"type": "AverageValue", "averageValue": "100m"}
    (rule,) = yaml.safe_load(ADAPTER_RULES.read_text())["externalRules"]
    assert reloads["external"]["metric"]["name"] == rule["name"]["as"]
    # the adapter reads the counter the servers export, by the name the exposition gives it
    series = re.fullmatch(r"(\w+)\{.*\}", rule["seriesQuery"]).group(1)
    assert re.fullmatch(rule["name"]["matches"], series)
    assert series == "mme_model_reloads_total"
    assert f"``{series}``" in open(Path(ROOT) / "mlserver_mme" / "observability" / "metrics.py").read()
    assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
    without = [obj for obj in scaling_on_reloads if obj["kind"] != "HorizontalPodAutoscaler"]
    assert without == [obj for obj in rendered if obj["kind"] != "HorizontalPodAutoscaler"]


def test_disruption_budgets_cover_the_servers(objects):
    budgets = [obj for obj in objects if obj["kind"] == "PodDisruptionBudget"]
    assert all(budget["apiVersion"] == "policy/v1" for budget in budgets)
    covered = set()
    for budget in budgets:
        selector = budget["spec"]["selector"]["matchLabels"]
        matching = [d["metadata"]["name"] for d in _deployments(objects) if selector.items() <= _pod_labels(d).items()]
        assert len(matching) == 1, budget["metadata"]["name"]
        covered.update(matching)
        assert budget["spec"]["maxUnavailable"] == 1
    assert SERVERS in covered


def test_services_select_their_pods_and_ports(objects):
    services = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "Service"}
    assert set(services) == {SERVERS, FRONT}
    assert services[SERVERS]["spec"]["clusterIP"] == "None"
    for name, service in services.items():
        selector = service["spec"]["selector"]
        matching = [d for d in _deployments(objects) if selector.items() <= _pod_labels(d).items()]
        assert [d["metadata"]["name"] for d in matching] == [name]
        named_ports = {port["name"] for container in _containers(matching[0]) for port in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in named_ports, (name, port)


# ---------------------------------------------------------------------------------------------------
# Network policies


def _policies(objects):
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "NetworkPolicy"}


def _rules_by_port(policy):
    """Each port the policy opens, by name, with the peers it opens it to (None: any source)."""
    opened = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            assert port["protocol"] == "TCP"
            assert port["port"] not in opened, "one rule per port"
            opened[port["port"]] = rule.get("from")
    return opened


def test_network_policies_isolate_each_deployments_pods(objects):
    policies = _policies(objects)
    assert set(policies) == {SERVERS, FRONT}
    for name, policy in policies.items():
        assert policy["apiVersion"] == "networking.k8s.io/v1"
        assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress stays open: S3, DNS
        # The exact labels of the Deployment's pods, so no other pod is selected.
        assert policy["spec"]["podSelector"] == {"matchLabels": _pod_labels(_one(objects, "Deployment", name))}
        # Ports by the names the containers give them: a policy naming a port no container has opens nothing.
        container_ports = {port["name"] for c in _containers(_one(objects, "Deployment", name)) for port in c["ports"]}
        assert set(_rules_by_port(policy)) == container_ports == {"http", "metrics"}, name


def test_servers_take_http_from_the_front_only(objects):
    opened = _rules_by_port(_policies(objects)[SERVERS])
    front_labels = _pod_labels(_one(objects, "Deployment", FRONT))
    # A podSelector without a namespaceSelector: the front's pods of the servers' own namespace.
    assert opened["http"] == [{"podSelector": {"matchLabels": front_labels}}]
    servers_labels = _pod_labels(_one(objects, "Deployment", SERVERS))
    assert not front_labels.items() <= servers_labels.items()


def test_the_front_takes_http_from_anywhere(objects):
    assert _rules_by_port(_policies(objects)[FRONT])["http"] is None


@pytest.mark.parametrize("name", [SERVERS, FRONT])
def test_metrics_only_from_labelled_scrapers(objects, name):
    (peer,) = _rules_by_port(_policies(objects)[name])["metrics"]
    # Both selectors in one peer: pods with the scraper label, in any namespace.
    assert peer == {"namespaceSelector": {}, "podSelector": {"matchLabels": SCRAPER}}
    for deployment in _deployments(objects):
        assert not SCRAPER.items() <= _pod_labels(deployment).items()


def test_the_scraper_label_is_documented():
    docs = (Path(ROOT) / "docs" / "scale-out.md").read_text()
    (key, value), = SCRAPER.items()
    assert f'{key}: "{value}"' in docs
    assert f'{key}: "{value}"' in (BASE / "networkpolicy.yaml").read_text()


# ---------------------------------------------------------------------------------------------------
# The front


def _server_template(config):
    (line,) = [line.split() for line in config.splitlines() if line.strip().startswith("server-template ")]
    fqdn, _, port = line[3].strip('"').rpartition(":")
    return {"slots": int(line[2]), "fqdn": fqdn, "port": int(port), "options": line[4:]}


def _directives(config, section):
    """The lines of one section of an HAProxy config, comments dropped."""
    lines, inside = [], False
    for raw in config.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line:
            continue
        if not raw[0].isspace():
            inside = line == section
        elif inside:
            lines.append(line.strip())
    assert lines, f"no section '{section}'"
    return lines


def test_front_config_is_the_one_mounted(rendered):
    front = _one(rendered, "Deployment", FRONT)
    config = _generated(rendered, "ConfigMap", FRONT)
    (volume,) = front["spec"]["template"]["spec"]["volumes"]
    assert volume["configMap"]["name"] == config["metadata"]["name"]
    (mount,) = _container(front, "haproxy")["volumeMounts"]
    # The official image's default command reads this file.
    assert mount["mountPath"] == "/usr/local/etc/haproxy"
    assert config["data"]["haproxy.cfg"] == HAPROXY_CFG.read_text()


def test_front_hashes_the_target_header_consistently():
    config = HAPROXY_CFG.read_text()
    frontend = _directives(config, "frontend sagemaker")
    backend = _directives(config, "backend servers")
    assert f"http-request set-var(txn.key) req.fhdr({TARGET_HEADER})" in frontend
    assert "balance hash var(txn.key)" in backend
    assert "hash-type consistent" in backend
    (factor,) = [line.split()[1] for line in backend if line.startswith("hash-balance-factor ")]
    assert 100 < int(factor) <= 200
    assert "option httpchk GET /ping" in backend


def test_front_discovers_the_server_pods_through_the_headless_service(objects):
    config = HAPROXY_CFG.read_text()
    template = _server_template(config)
    backend = _directives(config, "backend servers")
    options = [word for line in backend if line.startswith("default-server ") for word in line.split()[1:]]
    options += template["options"]
    assert "check" in options
    assert options[options.index("resolvers") + 1] == "cluster"
    assert options[options.index("init-addr") + 1] == "none"
    assert options[options.index("hash-key") + 1] == "addr"
    assert "parse-resolv-conf" in _directives(config, "resolvers cluster")
    service = _one(objects, "Service", SERVERS)
    assert template["fqdn"] == f"{SERVERS}.${{POD_NAMESPACE}}.svc.${{CLUSTER_DOMAIN}}"
    (http,) = [port for port in service["spec"]["ports"] if port["name"] == "http"]
    assert template["port"] == http["port"]
    front = _one(objects, "Deployment", FRONT)
    haproxy = _container(front, "haproxy")
    assert haproxy["image"].startswith("haproxy:3.")  # hash-key needs 3.0 or later
    # Every variable the config reads is set.
    assert set(re.findall(r"\$\{(\w+)\}", config)) <= set(_env(haproxy))
    ports = {port["name"]: port["containerPort"] for port in haproxy["ports"]}
    assert f"bind :{ports['http']}" in _directives(config, "frontend sagemaker")


def _local_haproxy():
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.skip("haproxy is not installed")
    version = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10).stdout
    major, minor = map(int, re.search(r"version (\d+)\.(\d+)", version).groups())
    return binary, (major, minor)


def _for_local_haproxy(config, version):
    """The config as a local HAProxy older than 3.0 reads it: without "hash-key", which places
    pods on the ring by address (3.0 and later) rather than by slot."""
    if version >= (3, 0):
        return config
    assert config.count(" hash-key addr") == 1
    return config.replace(" hash-key addr", "")


def _front_env():
    front = _load(BASE / "front-deployment.yaml")[0]
    return _env(_container(front, "haproxy"))


def test_haproxy_accepts_the_front_config(tmp_path):
    binary, version = _local_haproxy()
    path = tmp_path / "haproxy.cfg"
    path.write_text(_for_local_haproxy(HAPROXY_CFG.read_text(), version))
    done = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **_front_env()})
    assert done.returncode == 0, done.stdout + done.stderr


class _Echo(http.server.BaseHTTPRequestHandler):
    """Answers every request with the index of its server."""

    def _answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = str(self.server.index).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _front_over_echo_servers(count, tmp_path):
    """The front's config run by the local HAProxy, its server slots replaced by ``count`` loopback
    echo servers on distinct addresses (so "hash-key addr" tells them apart)."""
    binary, version = _local_haproxy()
    servers = []
    for index in range(count):
        server = http.server.ThreadingHTTPServer((f"127.0.0.{index + 2}", 0), _Echo)
        server.index = index
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    port = _free_port()
    config = _for_local_haproxy(HAPROXY_CFG.read_text(), version)
    replacements = [
        ("bind :8080", f"bind 127.0.0.1:{port}"),
        ("bind :8404", f"bind 127.0.0.1:{_free_port()}"),
        ("default-server resolvers cluster resolve-prefer ipv4 init-addr none", "default-server"),
    ]
    for old, new in replacements:
        assert config.count(old) == 1, old
        config = config.replace(old, new)
    (template,) = [line for line in config.splitlines() if line.strip().startswith("server-template ")]
    config = config.replace(template, "\n".join(
        f"    server echo{server.index} {server.server_address[0]}:{server.server_address[1]}" for server in servers
    ))
    path = tmp_path / "front.cfg"
    path.write_text(config)
    process = subprocess.Popen([binary, "-db", "-f", str(path)], env={**os.environ, **_front_env()},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, process.stderr.read().decode()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, "the front did not start listening"
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        for server in servers:
            server.shutdown()
            server.server_close()


def _served_by(port, method, path, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=b"{}", headers=headers or {})
        response = connection.getresponse()
        assert response.status == 200, (path, response.status)
        return int(response.read())
    finally:
        connection.close()


TARGETS = [f"region{i % 3}/city_{i}.tar.gz" for i in range(24)] + [
    "Houston_TX.tar.gz",
    "northeast/Boston_MA.tar.gz",
    "formats/legacy.tgz",
    "model.json",
    ".tar.gz",
    "a,b c+d%e~f.tar.gz",
    "caf\u00e9/m\u00fcnchen.tar.gz",
    "nested/deeper/still/model.tar",
]


def test_front_sends_a_models_v2_and_sagemaker_requests_to_one_server(tmp_path):
    with _front_over_echo_servers(4, tmp_path) as port:
        chosen = {}
        for target in TARGETS:
            validate_target(target)
            name = v2_name(target)
            by_header = _served_by(port, "POST", "/invocations", {TARGET_HEADER: target.encode("utf-8")})
            chosen[target] = by_header
            paths = [f"/v2/models/{name}/infer", f"/v2/models/{name}", f"/v2/repository/models/{name}/load",
                     f"/v2/models/{name}/versions/1/infer", f"/v2/models/{name.replace('~', '%7E')}/infer"]
            for path in paths:
                assert _served_by(port, "POST", path) == by_header, (target, path)
            # The same again: the choice is a function of the model, not of the moment.
            assert _served_by(port, "POST", "/invocations", {TARGET_HEADER: target.encode("utf-8")}) == by_header
        # Models spread over the servers, and requests naming no model are not all sent to one.
        assert len(set(chosen.values())) >= 3, chosen
        assert len({_served_by(port, "GET", "/ping") for _ in range(8)}) >= 2
