"""Per-model metrics: bounded label values, hot models labelled, counts that add up."""

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from mlserver_mme.observability import model_metrics as module
from mlserver_mme.observability.model_metrics import OTHER, ModelMetrics


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def registry():
    return CollectorRegistry()


def make(registry, top_k=10, clock=None):
    return ModelMetrics(top_k, review_seconds=60, registry=registry, clock=clock or Clock())


def requests_by_model(registry) -> dict:
    """Requests per ``model`` label value: the latency histogram's counts."""
    return samples(registry, "mme_model_request_seconds_count", "model")


def errors_by_model(registry) -> dict:
    return samples(registry, "mme_model_errors_total", "model")


def samples(registry, name: str, label: str) -> dict:
    totals = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name:
                totals[sample.labels[label]] = totals.get(sample.labels[label], 0) + sample.value
    return totals


def test_a_thousand_models_make_at_most_k_plus_one_label_values(registry):
    clock = Clock()
    metrics = make(registry, top_k=10, clock=clock)
    for _ in range(3):
        for i in range(1000):
            metrics.record(f"tenant/{i:04d}.tar.gz", "200", 0.001)
        clock.now += 61  # a review each round: slots may change hands
    totals = requests_by_model(registry)
    assert len(totals) <= 11
    assert OTHER in totals
    for i in range(1000):
        metrics.record(f"tenant/{i:04d}.tar.gz", "ModelError", 0.001)
    assert set(errors_by_model(registry)) <= set(totals)


def test_fewer_models_than_k_are_each_labelled_at_once(registry):
    metrics = make(registry, top_k=10)
    for i in range(5):
        metrics.record(f"m{i}.tar.gz", "200", 0.001)
    assert requests_by_model(registry) == {**{f"m{i}.tar.gz": 1 for i in range(5)}, OTHER: 0}


def test_a_hot_model_gets_its_own_label_at_the_next_review(registry):
    clock = Clock()
    metrics = make(registry, top_k=10, clock=clock)
    for i in range(1000):  # the first ten take the free slots
        metrics.record(f"cold/{i:04d}.tar.gz", "200", 0.001)
    for _ in range(500):
        metrics.record("hot.tar.gz", "200", 0.002)
    assert "hot.tar.gz" not in requests_by_model(registry)
    clock.now += 61
    metrics.record("hot.tar.gz", "200", 0.002)  # this request triggers the review
    assert "hot.tar.gz" in metrics.labelled()
    metrics.record("hot.tar.gz", "200", 0.002)
    totals = requests_by_model(registry)
    assert totals["hot.tar.gz"] == 1  # the request after the review
    assert len(totals) <= 11


def test_counts_add_up(registry):
    clock = Clock()
    metrics = make(registry, top_k=10, clock=clock)
    recorded = 0
    for i in range(1000):
        for _ in range(1 + i % 3):
            metrics.record(f"t/{i}.tar.gz", "200", 0.001)
            recorded += 1
        if i % 5 == 0:
            metrics.record(f"t/{i}.tar.gz", "404", 0.001)
            recorded += 1
    totals = requests_by_model(registry)
    assert sum(totals.values()) == recorded
    assert totals["t/0.tar.gz"] == 2 and totals["t/2.tar.gz"] == 3
    errors = errors_by_model(registry)
    assert sum(errors.values()) == 200 and errors["t/0.tar.gz"] == 1 and "t/2.tar.gz" not in errors


def test_a_model_losing_its_slot_has_its_series_removed_and_counts_as_other_after(registry):
    clock = Clock()
    metrics = make(registry, top_k=2, clock=clock)
    metrics.record("a.tar.gz", "404", 0.001)
    metrics.record("b.tar.gz", "404", 0.001)
    for _ in range(10):
        metrics.record("c.tar.gz", "200", 0.001)
    assert requests_by_model(registry) == {"a.tar.gz": 1, "b.tar.gz": 1, OTHER: 10}
    clock.now += 61
    metrics.record("c.tar.gz", "200", 0.001)  # c: 11 recent requests against 1 for a and b
    assert metrics.labelled() == {"c.tar.gz", "a.tar.gz"} or metrics.labelled() == {"c.tar.gz", "b.tar.gz"}
    loser = ({"a.tar.gz", "b.tar.gz"} - metrics.labelled()).pop()
    for target in ("a.tar.gz", "b.tar.gz", "c.tar.gz"):
        metrics.record(target, "200", 0.001)
    totals = requests_by_model(registry)
    assert set(totals) == {"a.tar.gz", "b.tar.gz", "c.tar.gz", OTHER} - {loser}
    assert totals["c.tar.gz"] == 1
    # Nothing lost but the removed series' own count (one request): 16 recorded in all.
    assert sum(totals.values()) == 16 - 1
    assert errors_by_model(registry) == {({"a.tar.gz", "b.tar.gz"} - {loser}).pop(): 1}


def test_similar_models_do_not_trade_slots(registry):
    clock = Clock()
    metrics = make(registry, top_k=1, clock=clock)
    for _ in range(10):
        metrics.record("a.tar.gz", "200", 0.001)
    for _ in range(15):
        metrics.record("b.tar.gz", "200", 0.001)
    clock.now += 61
    metrics.record("a.tar.gz", "200", 0.001)
    assert metrics.labelled() == {"a.tar.gz"}  # 16 is less than twice 11


def test_errors_by_code(registry):
    metrics = make(registry, top_k=5)
    metrics.record("a.tar.gz", "200", 0.001)
    metrics.record("a.tar.gz", "ModelError", 0.001)
    metrics.record("a.tar.gz", "ModelError", 0.001)
    metrics.record("a.tar.gz", "OK", 0.001)  # gRPC's success
    metrics.record("a.tar.gz", "NOT_FOUND", 0.001)
    assert registry.get_sample_value("mme_model_errors_total", {"model": "a.tar.gz", "code": "ModelError"}) == 2
    assert registry.get_sample_value("mme_model_errors_total", {"model": "a.tar.gz", "code": "NOT_FOUND"}) == 1
    assert registry.get_sample_value("mme_model_errors_total", {"model": "a.tar.gz", "code": "200"}) is None
    assert registry.get_sample_value("mme_model_request_seconds_count", {"model": "a.tar.gz"}) == 5


def test_latency_lands_in_its_bucket(registry):
    metrics = make(registry, top_k=5)
    metrics.record("a.tar.gz", "200", 0.0004)
    metrics.record("a.tar.gz", "200", 3.0)
    assert registry.get_sample_value("mme_model_request_seconds_bucket", {"model": "a.tar.gz", "le": "0.0005"}) == 1
    assert registry.get_sample_value("mme_model_request_seconds_bucket", {"model": "a.tar.gz", "le": "5.0"}) == 2
    assert registry.get_sample_value("mme_model_request_seconds_sum", {"model": "a.tar.gz"}) == pytest.approx(3.0004)


def test_codes_are_bounded_too(registry):
    metrics = make(registry, top_k=5)
    for i in range(100):
        metrics.record("a.tar.gz", f"E{i}", 0.001)
    codes = samples(registry, "mme_model_errors_total", "code")
    assert len(codes) == module.MAX_CODES + 1
    assert codes[OTHER] == 100 - module.MAX_CODES
    assert sum(codes.values()) == 100


def test_a_target_named_other_is_counted_as_other(registry):
    metrics = make(registry, top_k=5)
    metrics.record(OTHER, "200", 0.001)
    assert metrics.labelled() == set()
    assert requests_by_model(registry) == {OTHER: 1}


def test_top_k_zero_labels_no_model(registry):
    metrics = make(registry, top_k=0)
    for i in range(20):
        metrics.record(f"m{i}", "200", 0.001)
    metrics.review()
    assert requests_by_model(registry) == {OTHER: 20}


def test_tracked_names_are_bounded(registry):
    metrics = make(registry, top_k=1)
    for i in range(50_000):
        metrics.record(f"flood/{i}", "404", 0.0001)
    assert len(metrics._recent) <= 1025


def test_the_process_metrics_are_served_with_the_other_mme_series():
    metrics = module.model_metrics(3)
    assert module.model_metrics(99) is metrics
    metrics.record("served/Houston_TX.tar.gz", "ModelError", 0.01)
    text = generate_latest(REGISTRY).decode()
    assert 'mme_model_errors_total{code="ModelError",model="served/Houston_TX.tar.gz"}' in text
    assert 'mme_model_request_seconds_count{model="served/Houston_TX.tar.gz"}' in text
