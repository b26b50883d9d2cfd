"""Treelite's GTIL as the predictor, for XGBoost models it predicts exactly.

``Booster.inplace_predict`` costs about 140 µs per call on this project's
development machine whatever the model, most of it fixed overhead (a JSON
configuration built and parsed, a proxy matrix made); Treelite's General Tree
Inference Library walks the same trees in about 25 µs, though about 5x slower
per row, so it serves small requests only (the runtime's ``GTIL_MAX_ROWS``). Answers must stay exactly
what XGBoost computes, so GTIL is used for a model only when it gives XGBoost's
predictions bit for bit on a probe: rows made of every feature's split thresholds,
the floats just beside them and missing values (dense and sparse), which drive
every comparison of every tree both ways. SageMaker's legacy-binary artifacts
pass; models where the two differ in the last bit (some saved by recent XGBoost
versions) keep ``inplace_predict``.
"""

from typing import Callable, Optional

import numpy as np
import scipy.sparse
import treelite
import treelite.gtil
from treelite.gtil.gtil import GTILConfig

# treelite.gtil.predict builds and parses a JSON configuration on every call (~8 us of ~30); its
# implementation takes a parsed one. Private to Treelite 4 (pinned <5); the public call otherwise.
_predict_impl = getattr(treelite.gtil.gtil, "_predict_impl", None)

PROBE_ROWS = 256
THRESHOLDS_PER_FEATURE = 64

Predictor = Callable[[np.ndarray], np.ndarray]


def exact_gtil(booster, trees: list, nthread: int) -> Optional[Predictor]:
    """A GTIL predictor equal to ``booster.inplace_predict`` on the probe, else None.

    ``trees`` are the ``trees`` of the booster's JSON model (for the thresholds).
    """
    try:
        model = treelite.frontend.from_xgboost(booster)
    except treelite.TreeliteError:
        return None  # a model Treelite does not read (gblinear, multi-target trees)
    config = GTILConfig(predict_type="default", nthread=nthread)  # parsed once, not per call
    probe = _probe(trees, booster.num_features())
    row_shape = booster.inplace_predict(probe[:1], validate_features=False).shape[1:]

    def predict(features):
        rows = features.astype(np.float32, copy=False)  # what XGBoost compares: float32 values
        return _predict_with(model, rows, config).reshape((features.shape[0], *row_shape))

    for rows in (probe, scipy.sparse.csr_matrix(np.nan_to_num(probe, nan=0.0))):
        expected = booster.inplace_predict(rows, validate_features=False)
        try:
            got = predict(rows)
        except (treelite.TreeliteError, ValueError):  # an output shape GTIL does not share with XGBoost
            return None
        if not np.array_equal(got, expected, equal_nan=True):
            return None
    return predict


def _predict_with(model, rows: np.ndarray, config: GTILConfig) -> np.ndarray:
    if _predict_impl is None:
        return treelite.gtil.predict(model, rows, nthread=config.nthread)
    return _predict_impl(model, rows, config=config)


def _probe(trees: list, num_features: int) -> np.ndarray:
    """Rows in which every feature takes each of its thresholds, the floats just below and above them,
    a missing value and 0 (absent in a sparse row)."""
    thresholds = [set() for _ in range(num_features)]
    for tree in trees:
        for feature, threshold, left in zip(tree["split_indices"], tree["split_conditions"], tree["left_children"]):
            if left != -1:
                thresholds[feature].add(threshold)
    rng = np.random.default_rng(0)
    probe = np.empty((PROBE_ROWS, num_features), dtype=np.float32)
    for feature, values in enumerate(thresholds):
        values = np.asarray(sorted(values), dtype=np.float32)
        if len(values) > THRESHOLDS_PER_FEATURE:
            values = rng.choice(values, THRESHOLDS_PER_FEATURE, replace=False)
        below = np.nextafter(values, np.float32(-np.inf))
        above = np.nextafter(values, np.float32(np.inf))
        candidates = np.concatenate([values, below, above, [np.nan, 0.0]]).astype(np.float32)
        # every candidate at least once (3 x 64 + 2 <= 256 rows), in an order of its own per feature
        probe[:, feature] = np.resize(rng.permutation(candidates), PROBE_ROWS)
    return probe
