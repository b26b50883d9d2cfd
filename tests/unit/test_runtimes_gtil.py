"""GTIL serves a model only where it predicts exactly as XGBoost."""

import json

import numpy as np
import pytest
import scipy.sparse
import treelite
import treelite.gtil
import xgboost as xgb
from support.artifacts import EXPECTED, ROWS, booster, example_targets
from treelite.gtil.gtil import GTILConfig

from mlserver_mme.runtimes import gtil
from mlserver_mme.runtimes.model_file import trees as _trees


def trees_of(model) -> list:
    return _trees(json.loads(bytes(model.save_raw("json"))))


def random_rows(count: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    rows = rng.normal([1995, 3000, 4, 2, 1, 1.5], [10, 750, 1, 0.5, 0.25, 1], (count, 6)).astype(np.float32)
    rows[rng.random(rows.shape) < 0.05] = np.nan
    return rows


@pytest.mark.parametrize("target", example_targets())
def test_sagemakers_legacy_models_are_served_by_gtil_bit_for_bit(target):
    model = booster(target)
    predict = gtil.exact_gtil(model, trees_of(model), nthread=1)
    assert predict is not None
    assert predict(np.asarray(ROWS, dtype=np.float64)).tolist() == EXPECTED["predictions"][target]
    rows = random_rows(5000)
    assert np.array_equal(predict(rows), model.inplace_predict(rows))
    sparse = scipy.sparse.csr_matrix(np.nan_to_num(rows, nan=0.0))
    assert np.array_equal(predict(sparse), model.inplace_predict(sparse))


def test_a_model_gtil_predicts_one_bit_apart_keeps_xgboost(monkeypatch):
    model = booster()
    real = gtil._dense_per_tree

    def one_bit_up(*args):
        call = real(*args)
        return lambda rows: np.nextafter(call(rows), np.float32(np.inf))

    monkeypatch.setattr(gtil, "_dense_per_tree", one_bit_up)
    assert gtil.exact_gtil(model, trees_of(model), nthread=1) is None


def test_the_base_score_is_added_first_as_xgboost_does():
    # GTIL's own sum adds a base score this small last: the last bit then differs on some rows
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 4)).astype(np.float32)
    model = xgb.train({"base_score": 1e-11, "max_depth": 3}, xgb.DMatrix(features, rng.normal(size=500)), 20)
    model.set_param({"nthread": 1})
    predict = gtil.exact_gtil(model, trees_of(model), nthread=1)
    assert predict is not None
    rows = rng.normal(size=(200_000, 4)).astype(np.float32)
    assert np.array_equal(predict(rows), model.inplace_predict(rows))


def test_models_whose_objective_transforms_the_sum_keep_xgboost():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 3)).astype(np.float32)
    for params, labels in (({"objective": "binary:logistic"}, rng.integers(0, 2, 200)),
                           ({"objective": "multi:softmax", "num_class": 3}, rng.integers(0, 3, 200))):
        model = xgb.train(params, xgb.DMatrix(features, labels), 3)
        assert gtil.exact_gtil(model, trees_of(model), nthread=1) is None


def test_dense_rows_go_straight_to_treelites_c_function():
    model = booster()
    tree_model = treelite.frontend.from_xgboost(model)
    call = gtil._dense_per_tree(tree_model, GTILConfig(predict_type="score_per_tree", nthread=1))
    assert call is not None
    rows = random_rows(1000)
    assert np.array_equal(call(rows).reshape(1000, -1), treelite.gtil.predict_per_tree(tree_model, rows).reshape(1000, -1))
    with pytest.raises(ValueError, match="the model takes 6"):
        call(rows[:, :5].copy())


def test_the_probe_sits_on_and_beside_every_threshold():
    model = booster()
    trees = trees_of(model)
    probe = gtil._probe(trees, 6)
    assert probe.shape == (gtil.PROBE_ROWS, 6) and probe.dtype == np.float32
    for feature in range(6):
        column = probe[:, feature]
        thresholds = {np.float32(t) for tree in trees for f, t, left in
                      zip(tree["split_indices"], tree["split_conditions"], tree["left_children"]) if f == feature and left != -1}
        assert np.isnan(column).any()
        present = set(column[~np.isnan(column)].tolist())
        sampled = thresholds if len(thresholds) <= gtil.THRESHOLDS_PER_FEATURE else thresholds & present
        assert len(sampled) >= min(len(thresholds), gtil.THRESHOLDS_PER_FEATURE)
        for threshold in sampled:
            below, above = np.nextafter(threshold, np.float32(-np.inf)), np.nextafter(threshold, np.float32(np.inf))
            assert {float(threshold), float(below), float(above)} <= present
