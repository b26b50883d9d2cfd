"""Treelite's GTIL as the predictor of small requests, computing exactly what XGBoost computes.

``Booster.inplace_predict`` costs about 140 µs per call on this project's
development machine whatever the model, most of it fixed overhead (a JSON
configuration built and parsed, a proxy matrix made). Treelite's General Tree
Inference Library finds the same leaves in a few microseconds, though about 5x
slower per row, so it serves small requests only (the runtime's ``GTIL_MAX_ROWS``).

Answers must stay exactly XGBoost's. GTIL's own sum of the trees adds the base
score in another order (about one row in a million differs in the last bit), so
GTIL only gives each tree's leaf value, and they are summed here as XGBoost sums
them: in float32, starting from the base score, tree after tree. That is why only
single-output tree models whose objective leaves the sum as it is
(``reg:squarederror``) take this path. On top, a probe must match XGBoost bit for
bit: rows made of every feature's split thresholds, the floats just beside them
and missing values (dense and sparse), which drive every comparison of every tree
both ways. Any other model keeps ``inplace_predict``.
"""

import ctypes
import json
from typing import Callable, List, Optional

import numpy as np
import scipy.sparse
import treelite
import treelite.core
import treelite.gtil
from treelite.gtil.gtil import GTILConfig

# treelite.gtil.predict_per_tree builds and parses a JSON configuration and asks the model its types on
# every call; a dense float32 matrix goes straight to Treelite's C function instead, with all of that
# done once. Treelite's library handle is private to Treelite 4 (pinned <5): without it, the public call.
_LIB = getattr(treelite.core, "_LIB", None)

IDENTITY_OBJECTIVES = ("reg:squarederror", "reg:linear")  # the prediction is the sum of the trees
PROBE_ROWS = 256
THRESHOLDS_PER_FEATURE = 64

Predictor = Callable[[np.ndarray], np.ndarray]


def exact_gtil(booster, trees: list, nthread: int) -> Optional[Predictor]:
    """A GTIL predictor computing ``booster.inplace_predict``'s values, else None.

    ``trees`` are the ``trees`` of the booster's JSON model (for the probe's thresholds).
    """
    predict = gtil_predictor(booster, nthread)
    if predict is None:
        return None
    probe = _probe(trees, booster.num_features())
    for rows in (probe, scipy.sparse.csr_matrix(np.nan_to_num(probe, nan=0.0))):
        expected = booster.inplace_predict(rows, validate_features=False)
        if not np.array_equal(predict(rows), expected, equal_nan=True):
            return None
    return predict


def gtil_predictor(
    booster, nthread: int, model: Optional[treelite.Model] = None, learner: Optional[dict] = None
) -> Optional[Predictor]:
    """GTIL's per-tree scores summed as XGBoost sums them, for a model whose objective allows it, else None.

    ``model`` is Treelite's reading of the model file (``crosscheck.second_reading``); without it, of
    ``booster``. The base score is Treelite's, so exact answers also prove that XGBoost read the base
    score as Treelite did. Unproven: ``exact_gtil`` probes it against XGBoost. A load may take it as it
    is when the artifact's check (which proved the same reading of the same file) found it exact.
    ``learner`` is the ``learner`` part of the booster's configuration, if at hand.
    """
    learner = learner or json.loads(booster.save_config())["learner"]
    parameters = learner["learner_model_param"]
    if (
        learner["objective"]["name"] not in IDENTITY_OBJECTIVES
        or learner["gradient_booster"]["name"] != "gbtree"
        or int(parameters.get("num_class", 0)) > 1
        or int(parameters.get("num_target", 1)) != 1
    ):
        return None
    try:
        model = model if model is not None else treelite.frontend.from_xgboost(booster)
        header = model.get_header_accessor()
        base_scores, postprocessor = header.get_field("base_scores"), header.get_field("postprocessor")
        outputs = (header.get_field("num_target"), header.get_field("num_class"))
    except treelite.TreeliteError:
        return None  # a model Treelite does not read
    if postprocessor != "identity" or len(base_scores) != 1 or any(list(field) != [1] for field in outputs):
        return None  # Treelite reads another kind of model than XGBoost does: no fast path, the check compares them
    base_score = np.float32(base_scores[0])
    config = GTILConfig(predict_type="score_per_tree", nthread=nthread)  # parsed once, not per call
    dense = _dense_per_tree(model, config)

    def predict(features):
        if dense is not None and isinstance(features, np.ndarray):
            scores = dense(np.ascontiguousarray(features, dtype=np.float32))  # XGBoost compares float32 values
        else:
            scores = treelite.gtil.predict_per_tree(model, features.astype(np.float32), nthread=nthread)
        scores = scores.reshape(features.shape[0], -1)
        # ((base + tree 1) + tree 2) + ...: XGBoost's order and precision (accumulate adds in sequence;
        # base + tree 1 is tree 1 + base exactly)
        scores[:, 0] += base_score
        return np.add.accumulate(scores, axis=1, dtype=np.float32)[:, -1]

    return predict


def _dense_per_tree(model, config: GTILConfig) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """``TreeliteGTILPredict`` (one score per tree) on a C-ordered float32 matrix, or None."""
    if _LIB is None or model.input_type != "float32" or model.output_type != "float32":
        return None
    handle, config_handle, floats = model.handle, config.handle, ctypes.POINTER(ctypes.c_float)
    width = model.num_feature
    # The output's shape for one row, from Treelite itself: the buffer must hold all it writes.
    shape, ndim = ctypes.POINTER(ctypes.c_uint64)(), ctypes.c_uint64()
    if _LIB.TreeliteGTILGetOutputShape(handle, ctypes.c_uint64(1), config_handle, ctypes.byref(shape),
                                       ctypes.byref(ndim)) != 0:
        return None
    per_row = tuple(int(shape[i]) for i in range(1, ndim.value))

    def call(rows: np.ndarray) -> np.ndarray:
        if rows.ndim != 2 or rows.shape[1] != width:  # the C function reads rows x width floats
            raise ValueError(f"rows of {rows.shape[1:]} values given, the model takes {width}")
        out = np.empty((rows.shape[0], *per_row), dtype=np.float32)
        status = _LIB.TreeliteGTILPredict(
            handle, rows.ctypes.data_as(floats), b"float32", ctypes.c_uint64(rows.shape[0]),
            out.ctypes.data_as(floats), config_handle,
        )
        if status != 0:
            raise treelite.TreeliteError(_LIB.TreeliteGetLastError().decode(errors="replace"))
        return out

    call.keep = config  # type: ignore[attr-defined]  # the parsed configuration must outlive its handle's use
    return call


def _probe(trees: list, num_features: int) -> np.ndarray:
    """Rows in which every feature takes each of its thresholds, the floats just below and above them,
    a missing value and 0 (absent in a sparse row)."""
    thresholds: List[set] = [set() for _ in range(num_features)]
    for tree in trees:
        for feature, threshold, left in zip(tree["split_indices"], tree["split_conditions"], tree["left_children"]):
            if left != -1:
                thresholds[feature].add(threshold)
    rng = np.random.default_rng(0)
    probe = np.empty((PROBE_ROWS, num_features), dtype=np.float32)
    for feature, found in enumerate(thresholds):
        values = np.asarray(sorted(found), dtype=np.float32)
        if len(values) > THRESHOLDS_PER_FEATURE:
            values = rng.choice(values, THRESHOLDS_PER_FEATURE, replace=False)
        below = np.nextafter(values, np.float32(-np.inf))
        above = np.nextafter(values, np.float32(np.inf))
        candidates = np.concatenate([values, below, above, [np.nan, 0.0]]).astype(np.float32)
        # every candidate at least once (3 x 64 + 2 <= 256 rows), in an order of its own per feature
        probe[:, feature] = np.resize(rng.permutation(candidates), PROBE_ROWS)
    return probe
