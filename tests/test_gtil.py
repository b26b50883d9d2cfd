"""GTIL serves a model only where it predicts exactly as XGBoost."""

import json

import numpy as np
import pytest
import scipy.sparse
from artifacts import EXPECTED, ROWS, booster, example_targets

from mlserver_mme.runtimes import gtil
from mlserver_mme.runtimes.xgboost import _trees


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
    real = gtil._dense_call

    def one_bit_up(*args):
        call = real(*args)
        return lambda rows: np.nextafter(call(rows), np.float32(np.inf))

    monkeypatch.setattr(gtil, "_dense_call", one_bit_up)
    assert gtil.exact_gtil(model, trees_of(model), nthread=1) is None


def test_dense_rows_go_straight_to_treelites_c_function():
    model = booster()
    from treelite.gtil.gtil import GTILConfig
    import treelite

    tree_model = treelite.frontend.from_xgboost(model)
    call = gtil._dense_call(tree_model, GTILConfig(predict_type="default", nthread=1), ())
    assert call is not None
    rows = random_rows(1000)
    assert np.array_equal(call(rows), model.inplace_predict(rows))
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
