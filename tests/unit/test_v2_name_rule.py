"""The V2-name rule is written once (naming.py); HAProxy reads it backwards with the same lines in the
configuration `mlserver-mme serve` writes and in deploy/kubernetes/haproxy.cfg."""

from pathlib import Path

from mlserver_mme.scale_out.haproxy import V2_KEY_RULES, render
from mlserver_mme.scale_out.shards import Shard

KUBERNETES_CFG = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "haproxy.cfg"


def test_both_fronts_turn_v2_names_into_targets_with_the_same_lines():
    local = render([Shard(0, 8090, 8091, 8092)], "127.0.0.1", 8080, 8082, check_keys=("c" * 32, "a" * 32))
    kubernetes = KUBERNETES_CFG.read_text()
    for config in (local, kubernetes):
        assert V2_KEY_RULES in config
        assert "balance hash var(txn.key)" in config  # the key those lines set is the one hashed on
    assert kubernetes.count("set-var(txn.key)") == V2_KEY_RULES.count("set-var(txn.key)") + 1  # + the header's
