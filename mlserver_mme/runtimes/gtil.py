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

import ctypes
from typing import Callable, Optional

import numpy as np
import scipy.sparse
import treelite
import treelite.core
import treelite.gtil
from treelite.gtil.gtil import GTILConfig

# treelite.gtil.predict builds and parses a JSON configuration and asks the model its types on every
# call (~20 us of ~26 for one row); a dense float32 matrix goes straight to Treelite's C function
# instead, with all of that done once. Treelite's library handle is private to Treelite 4 (pinned
# <5): without it, the public call.
_LIB = getattr(treelite.core, "_LIB", None)

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

    dense = _dense_call(model, config, row_shape)

    def predict(features):
        if dense is not None and isinstance(features, np.ndarray):
            # what XGBoost compares: float32 values, in C order for the C call
            return dense(np.ascontiguousarray(features, dtype=np.float32))
        rows = features.astype(np.float32, copy=False)
        return treelite.gtil.predict(model, rows, nthread=config.nthread).reshape((features.shape[0], *row_shape))

    for rows in (probe, scipy.sparse.csr_matrix(np.nan_to_num(probe, nan=0.0))):
        expected = booster.inplace_predict(rows, validate_features=False)
        try:
            got = predict(rows)
        except (treelite.TreeliteError, ValueError):  # an output shape GTIL does not share with XGBoost
            return None
        if not np.array_equal(got, expected, equal_nan=True):
            return None
    return predict


def _dense_call(model, config: GTILConfig, row_shape: tuple) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """``TreeliteGTILPredict`` on a C-ordered float32 matrix of ``model.num_feature`` columns, or None."""
    if _LIB is None or model.input_type != "float32" or model.output_type != "float32":
        return None
    handle, config_handle, floats = model.handle, config.handle, ctypes.POINTER(ctypes.c_float)
    width = model.num_feature

    def call(rows: np.ndarray) -> np.ndarray:
        if rows.ndim != 2 or rows.shape[1] != width:  # the C function reads rows x width floats
            raise ValueError(f"rows of {rows.shape[1:]} values given, the model takes {width}")
        out = np.empty((rows.shape[0], *row_shape), dtype=np.float32)
        status = _LIB.TreeliteGTILPredict(
            handle, rows.ctypes.data_as(floats), b"float32", ctypes.c_uint64(rows.shape[0]),
            out.ctypes.data_as(floats), config_handle,
        )
        if status != 0:
            raise treelite.TreeliteError(_LIB.TreeliteGetLastError().decode(errors="replace"))
        return out

    call.config = config  # the parsed configuration lives as long as the call
    return call


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
