"""Models crafted to pass a one-row check and then hurt the server: refused by the check itself."""

import json
import os

import pytest
from support import paths

from mlserver_mme.artifacts import isolation
from mlserver_mme.runtimes.xgboost import MAX_CATEGORY, check_model_file

MATRIX = os.path.join(paths.MATRIX, "3.2.0")
LIMITS = isolation.Limits(memory_bytes=2 << 30, cpu_seconds=30, wall_seconds=60)


@pytest.fixture(autouse=True, scope="module")
def _preloaded_checks():
    isolation.start([check_model_file.__module__])  # children fork with XGBoost imported, as in the server


def _model(name: str) -> dict:
    return json.load(open(os.path.join(MATRIX, name)))


def _checked(tmp_path, model: dict):
    path = tmp_path / "xgboost-model"
    path.write_text(json.dumps(model))
    return isolation.run(check_model_file, str(path), False, limits=LIMITS)  # XGBoost may crash on it: a child


def test_leaves_wider_than_the_models_targets_are_refused_before_any_batch_predicts(tmp_path):
    model = _model("reg_squarederror_multi_output_tree.json")
    for tree in model["learner"]["gradient_booster"]["model"]["trees"]:
        nodes = int(tree["tree_param"]["num_nodes"])
        tree["tree_param"]["size_leaf_vector"] = "3"  # two targets, three values a leaf: XGBoost writes past its output
        tree["base_weights"] = (tree["base_weights"] * 2)[: nodes * 3]
        tree["leaf_weights"] = (tree["leaf_weights"] * 2)[: len(tree["leaf_weights"]) // 2 * 3]
    with pytest.raises(isolation.IsolatedFailure, match="leaves hold 3 values, for 2 outputs"):
        _checked(tmp_path, model)


def test_base_weights_that_do_not_match_the_nodes_are_refused(tmp_path):
    model = _model("reg_squarederror.json")
    model["learner"]["gradient_booster"]["model"]["trees"][0]["base_weights"].pop()
    with pytest.raises(isolation.IsolatedFailure, match="leaves hold 1 values, for 1 outputs"):
        _checked(tmp_path, model)


@pytest.mark.parametrize("category", [MAX_CATEGORY, 1 << 28, -1])
def test_a_category_outside_xgboosts_range_is_refused_by_name(tmp_path, category):
    model = _model("reg_squarederror_categorical.json")
    tree = next(t for t in model["learner"]["gradient_booster"]["model"]["trees"] if t["categories"])
    tree["categories"][-1 if category >= 0 else 0] = category
    with pytest.raises(isolation.IsolatedFailure, match=f"names category {category}; XGBoost's categories are 0"):
        _checked(tmp_path, model)


def test_the_largest_category_xgboost_allows_is_served(tmp_path):
    model = _model("reg_squarederror_categorical.json")
    tree = next(t for t in model["learner"]["gradient_booster"]["model"]["trees"] if t["categories"])
    tree["categories"][-1] = MAX_CATEGORY - 1
    try:
        _checked(tmp_path, model)
    except isolation.IsolatedFailure as failure:  # refused only by the second reading, never by the bound
        assert "categories are 0" not in failure.message


MUTABLE = ("left_children", "right_children", "split_indices", "split_conditions", "base_weights", "default_left",
           "categories", "categories_nodes", "categories_segments", "categories_sizes", "split_type", "leaf_weights")


def _mutated(model: dict, rng) -> dict:
    """A copy with one tree field changed as an attacker would: a value out of range, a list cut or grown,
    or a count that no longer matches."""
    tree = rng.choice(model["learner"]["gradient_booster"]["model"]["trees"])
    field = rng.choice([name for name in MUTABLE if tree.get(name)] + ["num_nodes", "size_leaf_vector"])
    if field in ("num_nodes", "size_leaf_vector"):
        tree["tree_param"][field] = str(int(tree["tree_param"][field]) + rng.choice([-1, 1, 2, 1000]))
        return model
    values, position = tree[field], rng.randrange(len(tree[field]))
    change = rng.choice(["huge", "negative", "cut", "grow", "swap"])
    if change == "huge":
        values[position] = 2**31 - 1 if isinstance(values[position], int) else 3e38
    elif change == "negative":
        values[position] = -2 if isinstance(values[position], int) else -3e38
    elif change == "cut":
        del values[position:]
    elif change == "grow":
        values.extend(values[: rng.randrange(1, 4)])
    else:
        values[position], values[-1] = values[-1], values[position]
    return model


@pytest.mark.parametrize("name", ["reg_squarederror.json", "reg_squarederror_categorical.json",
                                  "reg_squarederror_multi_output_tree.json", "multi_softprob.json"])
def test_mutated_models_are_refused_or_answer_what_a_second_reading_does(tmp_path, name):
    import copy
    import random

    import numpy as np

    from mlserver_mme.runtimes.xgboost import load_booster

    rng = random.Random(name)
    original = _model(name)
    outcomes = {"refused": 0, "served": 0}
    for _ in range(12):
        model = _mutated(copy.deepcopy(original), rng)
        try:
            _checked(tmp_path, model)  # a crash, a limit or a refusal is an IsolatedFailure: the caller lives on
        except isolation.IsolatedFailure:
            outcomes["refused"] += 1
            continue
        # passed the check: the server's own load and a batch of every kind of row must not crash this process,
        # and the check has compared its answers with Treelite's reading already
        booster = load_booster(str(tmp_path / "xgboost-model"), allow_pickle=False, nthread=1)
        rows = np.random.default_rng(0).normal(0, 3, (5000, 6)).astype(np.float32)
        rows[::7, ::2] = np.nan
        assert booster.inplace_predict(rows).shape[0] == len(rows)
        outcomes["served"] += 1
    assert outcomes["refused"] >= 1, outcomes  # the mutations do reach the checks
