"""The documented PromQL run by a real Prometheus against a server under known traffic; the alert rules checked.

A Prometheus process scrapes the server's metrics port every second. The test sends traffic in two phases:
the first makes every series the queries read (a cold call of each model, one error of each kind), the second
is what the per-model queries measure, once Prometheus has scraped the first. Every query of the table in
docs/lifecycle.md is then evaluated through Prometheus' HTTP API, at a time after a scrape that saw all the
traffic and over a window starting before the traffic it measures, and compared with what the test sent:
ratios exactly (the series of one target share their scrape times, so ``rate()``'s extrapolation cancels
out) and quantiles with the interpolation of ``histogram_quantile`` done here on the server's own buckets.

The alert rules of deploy/prometheus/ are checked with ``promtool check rules`` and their unit tests run
with ``promtool test rules``; a broken copy must fail, so the check can fail.
"""

import math
import os
import re
import shutil
import subprocess
import time

import httpx
import pytest
import yaml
from support.artifacts import example_bytes
from support.mlserver_process import free_port, terminate
from support.paths import ROOT
from support.serving import CSV, call, metrics_text

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
RULES = ROOT + "/deploy/prometheus"
HOUSTON = "Houston_TX.tar.gz"
BAD_BODY = b"not,numbers\n"  # refused before the model is looked up: an error, neither a hit nor a miss

needs_prometheus = pytest.mark.skipif(
    not (os.access(PROMETHEUS, os.X_OK) and os.access(PROMTOOL, os.X_OK)),
    reason="prometheus/promtool not installed (apt-get install prometheus)",
)

# Phase 2, per model: (good calls, bad-body calls). Phase 1 made one good and one bad call of m1 and m2.
PHASE2 = {"m1.tar.gz": (20, 4), "m2.tar.gz": (9, 3), "m3.tar.gz": (6, 0), "m4.tar.gz": (3, 0)}
BROKEN, MISSING = "broken.tar.gz", "missing.tar.gz"  # counted under model="other"
PHASE2_OTHER = {BROKEN: 2, MISSING: 2}


def documented_queries() -> dict:
    """The PromQL of the table in docs/lifecycle.md, by what it measures."""
    text = open(ROOT + "/docs/lifecycle.md").read()
    table = text[text.index("| what | PromQL |"):].split("\n\n")[0].splitlines()[2:]
    queries = {}
    for row in table:
        what, promql = row.strip("|").split("|", 1)
        found = re.findall(r"`([^`]+)`", promql)
        queries[what.strip()] = found[0]
        if "median and p99" in what:
            assert found[1] == "0.99", row
            queries["load time, its 0.99"] = found[0].replace("histogram_quantile(0.5,", "histogram_quantile(0.99,")
    keys = {"hit ratio": "hit", "p99 invocation": "p99", "error ratio": "errors", "median and p99": "load",
            "load time, its 0.99": "load99", "busiest": "top", "reloads": "reload"}
    named = {}
    for what, query in queries.items():
        matches = [key for fragment, key in keys.items() if fragment in what]
        assert len(matches) == 1, f"an undocumented query kind: {what!r}"
        named[matches[0]] = query
    assert set(named) == set(keys.values()), named
    return named


def windowed(query: str, start: float, end: float) -> str:
    """``query`` with each range of its selectors replaced by the window from ``start`` to ``end``.

    Both are sample times (whole milliseconds): Prometheus 2's ranges include both ends, so ``rate()`` reads
    the samples from ``start`` to ``end`` and has nothing to extrapolate, and a ratio of rates is the ratio
    of the counters' increases between those two scrapes.
    """
    return re.sub(r"\[\d+[smhd]\]", f"[{round((end - start) * 1000)}ms]", query)


class Prometheus:
    def __init__(self, tmp_path, target: str):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            f"scrape_configs:\n  - job_name: mlserver-mme\n    static_configs:\n      - targets: ['{target}']\n"
        )
        self.log = open(tmp_path / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.log_path = tmp_path / "prometheus.log"
        try:
            until(self._ready, 30, "Prometheus ready")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        assert self.process.poll() is None, self.log_path.read_text()
        try:
            return httpx.get(self.url + "/-/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def query(self, promql: str, at: float = None) -> list:
        params = {"query": promql, **({"time": f"{at:.3f}"} if at is not None else {})}
        reply = httpx.get(self.url + "/api/v1/query", params=params, timeout=10).json()
        assert reply["status"] == "success", (promql, reply)
        assert reply["data"]["resultType"] == "vector", (promql, reply)
        return reply["data"]["result"]

    def scraped_after(self, moment: float) -> float:
        """Wait for a successful scrape of the server that started after ``moment``; its time."""
        latest = []

        def scraped():
            # timestamp() of a selector is the scrape's time (of an expression, the evaluation's); 0 if it failed
            found = self.query('timestamp(up{job="mlserver-mme"}) * up{job="mlserver-mme"}')
            latest[:] = [float(found[0]["value"][1])] if found else []
            return bool(latest) and latest[0] > moment

        until(scraped, 30, f"a scrape after {moment}")
        return latest[0]

    def stop(self) -> None:
        terminate(self.process, 10)
        self.log.close()


def until(condition, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message}: not within {timeout} s")
        time.sleep(0.05)


def samples(text: str, name: str) -> dict:
    """``{labels: value}`` of every sample of ``name`` in an exposition."""
    found = {}
    for line in text.splitlines():
        match = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
        if match:
            found[match.group(1) or ""] = float(match.group(2))
    return found


def total(text: str, name: str) -> float:
    return sum(samples(text, name).values())


def buckets(text: str, name: str, model: str = None) -> list:
    """``[(le, cumulative count)]`` of a histogram (of one model's series), in ``le`` order."""
    chosen = []
    for labels, value in samples(text, name + "_bucket").items():
        if model is not None and f'model="{model}"' not in labels:
            continue
        chosen.append((float(re.search(r'le="([^"]+)"', labels).group(1)), value))
    return sorted(chosen)


def quantile(q: float, before: list, after: list) -> float:
    """Prometheus' ``histogram_quantile`` of the observations between two snapshots of the buckets."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    rank = q * counts[-1][1]
    lower, below = 0.0, 0.0
    for le, count in counts:
        if count >= rank:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    raise AssertionError(counts)


def value(result: list, **labels) -> float:
    matching = [float(r["value"][1]) for r in result if all(r["metric"].get(k) == v for k, v in labels.items())]
    assert len(matching) == 1, (labels, result)
    return matching[0]


@needs_prometheus
def test_documented_queries_measure_the_traffic_sent(artifacts, prefix, start_server, tmp_path):
    queries = documented_queries()
    houston = example_bytes(HOUSTON)
    for target in PHASE2:
        prefix.put(target, houston)
    prefix.put(BROKEN, artifacts["broken/not-a-model.tar.gz"])
    server = start_server()
    metrics_port = server.env["MLSERVER_METRICS_PORT"]
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{metrics_port}")
    try:
        # Prometheus sees the server's counters at zero before any traffic.
        first = prometheus.scraped_after(0)
        assert prometheus.query("mme_model_cache_hits_total + mme_model_cache_misses_total"), "no cache counters"
        zero = metrics_text(server)
        assert total(zero, "mme_model_cache_hits_total") == total(zero, "mme_model_cache_misses_total") == 0

        # Phase 1: every series the queries read comes to exist.
        slowest_cold = 0.0
        for target in PHASE2:
            started = time.perf_counter()
            assert call(server, target).status_code == 200
            slowest_cold = max(slowest_cold, time.perf_counter() - started)
        for target in ("m1.tar.gz", "m2.tar.gz"):
            assert call(server, target, body=BAD_BODY).status_code == 424
        assert call(server, BROKEN).status_code == 424
        assert call(server, MISSING).status_code == 400
        phase1 = {model: 1 for model in PHASE2} | {"m1.tar.gz": 2, "m2.tar.gz": 2, "other": 2}
        until(lambda: total(metrics_text(server), "mme_model_request_seconds_count") == sum(phase1.values()), 10,
              "phase 1 recorded")
        before = metrics_text(server)
        phase1_scrape = prometheus.scraped_after(time.time())  # the first sample of the phase 2 windows

        # Phase 2: warm hits and errors, measured by the per-model queries.
        slowest_warm = {}
        for target, (good, bad) in PHASE2.items():
            for body, count, status in ((CSV, good, 200), (BAD_BODY, bad, 424)):
                for _ in range(count):
                    started = time.perf_counter()
                    assert call(server, target, body=body).status_code == status
                    slowest_warm[target] = max(slowest_warm.get(target, 0.0), time.perf_counter() - started)
        for target, count in PHASE2_OTHER.items():
            for _ in range(count):
                assert call(server, target).status_code in (400, 424)
        sent = sum(good + bad for good, bad in PHASE2.values()) + sum(PHASE2_OTHER.values())
        until(lambda: total(metrics_text(server), "mme_model_request_seconds_count") == sum(phase1.values()) + sent,
              10, "phase 2 recorded")
        after = metrics_text(server)
        at = prometheus.scraped_after(time.time())  # every query at a scrape that saw everything

        def over_all(key):
            return prometheus.query(windowed(queries[key], first, at), at)

        def over_phase2(key):
            return prometheus.query(windowed(queries[key], phase1_scrape, at), at)

        # What the server counted is what the test sent (the basis of every expectation below).
        hits = sum(good for good, _ in PHASE2.values())
        misses = len(PHASE2)
        assert total(after, "mme_model_cache_hits_total") == hits
        assert total(after, "mme_model_cache_misses_total") == misses
        per_model = samples(after, "mme_model_request_seconds_count")
        assert per_model['{model="other"}'] == phase1["other"] + sum(PHASE2_OTHER.values())

        report = {}
        # hit ratio, over all the traffic
        hit = over_all("hit")
        report["hit"] = (value(hit), hits / (hits + misses))
        assert abs(report["hit"][0] - report["hit"][1]) < 0.01

        # error ratio by model, over phase 2
        errors = over_phase2("errors")
        expected = {model: bad / (good + bad) for model, (good, bad) in PHASE2.items() if bad}
        expected["other"] = 1.0
        got = {r["metric"]["model"]: float(r["value"][1]) for r in errors}
        report["errors"] = (got, expected)
        assert got.keys() == expected.keys(), got  # m3, m4: no error series, so no ratio
        for model, ratio in expected.items():
            assert got[model] == pytest.approx(ratio, abs=1e-9), (model, got)

        # p99 invocation time by model, over phase 2: histogram_quantile of the server's buckets; under the
        # upper bound of the bucket of the slowest call the client saw
        p99 = over_phase2("p99")
        report["p99"] = {}
        for target in PHASE2:
            own = quantile(0.99, buckets(before, "mme_model_request_seconds", target),
                           buckets(after, "mme_model_request_seconds", target))
            report["p99"][target] = (value(p99, model=target), own)
            assert value(p99, model=target) == pytest.approx(own, rel=1e-9)
            bound = min(le for le, _ in buckets(after, "mme_model_request_seconds", target) if le >= slowest_warm[target])
            assert 0 < own <= bound, (target, own, slowest_warm[target])

        # median and p99 load time, over all the traffic: the four cold loads
        assert total(after, "mme_model_loading_seconds_count") == len(PHASE2)
        load_buckets = buckets(after, "mme_model_loading_seconds")
        report["load"] = {}
        for key, q in (("load", 0.5), ("load99", 0.99)):
            own = quantile(q, [(le, 0.0) for le, _ in load_buckets], load_buckets)
            got_load = value(over_all(key))
            report["load"][q] = (got_load, own)
            assert got_load == pytest.approx(own, rel=1e-9)
            assert 0 < own <= min(le for le, _ in load_buckets if le >= slowest_cold)

        # the busiest labelled models, over phase 2: all four, in the order and proportions of their calls
        top = over_phase2("top")
        rates = {r["metric"]["model"]: float(r["value"][1]) for r in top}
        report["top"] = rates
        assert rates.keys() == PHASE2.keys()
        calls = {model: good + bad for model, (good, bad) in PHASE2.items()}
        assert sorted(rates, key=rates.get, reverse=True) == sorted(calls, key=calls.get, reverse=True)
        for model in PHASE2:
            assert rates[model] / rates["m1.tar.gz"] == pytest.approx(calls[model] / calls["m1.tar.gz"], rel=1e-9)
        # and the rate is the calls over the window
        assert rates["m1.tar.gz"] * (at - phase1_scrape) == pytest.approx(calls["m1.tar.gz"], rel=1e-6)

        # The documented text itself (its own windows, now) parses and answers with the same label sets.
        now = prometheus.query(queries["hit"])
        assert len(now) == 1
        assert {r["metric"]["model"] for r in prometheus.query(queries["errors"])} == expected.keys()
        assert {r["metric"]["model"] for r in prometheus.query(queries["p99"])} >= set(PHASE2)
        assert {r["metric"]["model"] for r in prometheus.query(queries["top"])} == set(PHASE2)
        assert len(prometheus.query(queries["load"])) == len(prometheus.query(queries["load99"])) == 1
        print("query: (Prometheus, expected)", report)
    finally:
        prometheus.stop()


def adapter_query(matchers: str, group_by: str) -> str:
    """The autoscaler's query, as prometheus-adapter makes it from deploy/prometheus/adapter-rules.yaml."""
    (rule,) = yaml.safe_load(open(RULES + "/adapter-rules.yaml"))["externalRules"]
    series = re.fullmatch(r"(\w+)\{.*\}", rule["seriesQuery"]).group(1)
    template = rule["metricsQuery"]
    return template.replace("<<.Series>>", series).replace("<<.LabelMatchers>>", matchers).replace(
        "<<.GroupBy>>", group_by
    )


@needs_prometheus
def test_reloads_are_counted_and_read_as_the_docs_and_the_autoscaler_read_them(prefix, start_server, tmp_path):
    queries = documented_queries()
    for target in ("a.tar.gz", "b.tar.gz"):
        prefix.put(target, example_bytes(HOUSTON))
    server = start_server(max_loaded_models=1)
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{server.env['MLSERVER_METRICS_PORT']}")
    try:
        first = prometheus.scraped_after(0)
        assert prometheus.query("mme_model_reloads_total"), "no reload counter before any traffic"
        for name in "ababa":
            assert call(server, f"{name}.tar.gz").status_code == 200
        # a and b load once each, then a, b, a each load again just after the count budget unloaded them
        until(lambda: total(metrics_text(server), "mme_model_reloads_total") == 3, 10, "the reloads counted")
        assert total(metrics_text(server), "mme_evictions_total") == 4
        assert server.log().count("event=reload model=") == 3
        at = prometheus.scraped_after(time.time())
        documented = value(prometheus.query(windowed(queries["reload"], first, at), at))
        assert documented * (at - first) == pytest.approx(3, rel=1e-6)
        autoscaler = adapter_query(matchers='job="mlserver-mme"', group_by="job")
        assert value(prometheus.query(windowed(autoscaler, first, at), at)) == pytest.approx(documented, rel=1e-9)
    finally:
        prometheus.stop()


@needs_prometheus
def test_alert_rules_pass_promtool_and_a_broken_rule_does_not(tmp_path):
    check = subprocess.run([PROMTOOL, "check", "rules", "alerts.yml"], cwd=RULES, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run([PROMTOOL, "test", "rules", "alerts.test.yml"], cwd=RULES, capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    alerts = {name for name in re.findall(r"- alert: (\w+)", open(RULES + "/alerts.yml").read())}
    tested = set(re.findall(r"alertname: (\w+)", open(RULES + "/alerts.test.yml").read()))
    assert alerts == tested and len(alerts) >= 5, (alerts, tested)

    rules = open(RULES + "/alerts.yml").read()
    # a syntax error: check rules fails
    (tmp_path / "alerts.yml").write_text(rules.replace("rate(mme_model_cache_hits_total[15m])", "rate(mme_model_cache_hits_total[15m]", 1))
    broken = subprocess.run([PROMTOOL, "check", "rules", "alerts.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert broken.returncode != 0, broken.stdout
    # a wrong threshold: check rules passes, the unit tests fail
    (tmp_path / "alerts.yml").write_text(rules.replace(") < 0.8", ") < 0.4", 1))
    shutil.copy(RULES + "/alerts.test.yml", tmp_path / "alerts.test.yml")
    assert subprocess.run([PROMTOOL, "check", "rules", "alerts.yml"], cwd=tmp_path, capture_output=True).returncode == 0
    wrong = subprocess.run([PROMTOOL, "test", "rules", "alerts.test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert wrong.returncode != 0, wrong.stdout
    assert "MMECacheHitRatioLow" in wrong.stdout + wrong.stderr
