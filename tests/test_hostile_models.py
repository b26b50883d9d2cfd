"""Models crafted to pass a one-row check and then hurt the server: refused by the check itself."""

import json
import os

import pytest

from mlserver_mme import isolation
from mlserver_mme.errors import BrokenModel
from mlserver_mme.runtimes.xgboost import MAX_CATEGORY, check_model_file

MATRIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "xgboost_matrix", "3.2.0")
LIMITS = isolation.Limits(memory_bytes=2 << 30, cpu_seconds=30, wall_seconds=60)


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
