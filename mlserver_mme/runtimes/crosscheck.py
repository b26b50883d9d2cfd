"""A second, independent reading of a model file, compared with what the server will answer.

XGBoost releases read each other's files differently now and then (3.0 read a
3.1 model's vector base score as another number and answered a wrong value with
no error), and a legacy binary model is converted before XGBoost reads it. So
when a new artifact is checked, Treelite reads the same bytes on its own (its
JSON, UBJSON and legacy binary readers share no code with XGBoost's) and its
General Tree Inference Library predicts probe rows: every feature on, just below
and just above each of its split thresholds, missing values, and one row down
the path to each leaf. XGBoost answers the same rows in batches larger than the
small-batch path takes, dense and sparse, and every answer must match Treelite's
to float32 rounding. The small batches' predictor (GTIL on Treelite's reading,
summed as XGBoost sums, ``gtil.py``) must then match XGBoost's answers bit for
bit, one row and batches alike; where it does not, XGBoost serves the small
batches too, and is compared in those shapes as well. A model Treelite does not
read (gblinear, vector leaves) is compared through its margins with a NumPy
evaluation of the JSON model instead.
"""

import ctypes
from typing import Callable, List, Optional, Tuple

import numpy as np
import scipy.sparse
import treelite
import treelite.core
import treelite.gtil
import xgboost

from ..errors import BrokenModel, describe
from . import model_file
from .gtil import IDENTITY_OBJECTIVES, _probe
from .model_file import ModelFile

RTOL = 1e-5  # float32 rounding of sums taken in another order, and of exp/sigmoid in double
MAX_LEAF_ROWS = 2048
MAX_PATH_STEPS = 64  # splits a leaf row follows, nearest the leaf first: deeper paths are followed in part
MAX_WALK_NODES = 200_000  # nodes of the trees walked to find leaves, whatever the model's size
MAX_PROBE_VALUES = 400_000  # rows x outputs per prediction: a model with 100,000 classes is probed on 4 rows
# Objectives whose answer is a class or a sign: compared through their margins, where a
# rounding difference cannot flip the answer.
DISCRETE_OBJECTIVES = ("multi:softmax", "binary:hinge")
_LIB = getattr(treelite.core, "_LIB", None)


def second_reading(source: ModelFile) -> Optional[treelite.Model]:
    """Treelite's reading of the file's own bytes; None for a pickle's snapshot, which only XGBoost reads.

    Raises ``treelite.TreeliteError`` when Treelite does not read the model.
    """
    if source.source_format == "json":
        return treelite.frontend.from_xgboost_json(source.source)
    if source.source_format == "ubj":
        return treelite.frontend.from_xgboost_ubjson(source.source)
    if source.source_format == "legacy-binary" and _LIB is not None:
        handle = ctypes.c_void_p()
        data = bytearray(source.source)
        buffer = (ctypes.c_char * len(data)).from_buffer(data)
        status = _LIB.TreeliteLoadXGBoostModelLegacyBinaryFromMemoryBuffer(
            buffer, ctypes.c_size_t(len(data)), ctypes.c_char_p(b"{}"), ctypes.byref(handle)
        )
        if status != 0:
            raise treelite.TreeliteError(_LIB.TreeliteGetLastError().decode(errors="replace"))
        return treelite.Model(handle=handle)
    return None


def treelite_reading(source: ModelFile, model: dict) -> Optional[treelite.Model]:
    """Treelite's reading of a tree model's file; None for gblinear (NumPy evaluates its JSON model)
    and a pickle's snapshot (only XGBoost reads it). Raises BrokenModel when Treelite cannot read it."""
    if model["learner"]["gradient_booster"]["name"] == "gblinear":
        return None
    try:
        return second_reading(source)
    except treelite.TreeliteError as error:
        raise BrokenModel(
            f"Treelite, which checks the server's reading of every tree model, cannot read it "
            f"({describe(error)}); the model was saved by XGBoost {source.saved_by}"
        ) from None


def _expected(model: dict, own_values: bool, reference: Optional[treelite.Model], rows: np.ndarray):
    """(the reading's name, its answers to ``rows`` by kind, where a discrete answer is clear of rounding).

    The answers map "margins", "dense" and "sparse" to arrays; None when only XGBoost reads the file.
    """
    learner = model["learner"]
    objective = learner["objective"]["name"]
    if learner["gradient_booster"]["name"] == "gblinear":
        expected = {"margins": _linear_margin(model, rows)}
        if objective in IDENTITY_OBJECTIVES:  # the answer is the margin (a missing value weighs 0, as a 0 does)
            expected["dense"] = expected["sparse"] = expected["margins"]
        return ("a NumPy evaluation" if own_values else "a NumPy evaluation of XGBoost's reading"), expected, {}
    if reference is None:
        return "XGBoost only", None, {}
    margins = treelite.gtil.predict(reference, rows, nthread=1, pred_margin=True)
    dense = margins if objective in IDENTITY_OBJECTIVES else treelite.gtil.predict(reference, rows, nthread=1)
    expected = {
        "margins": margins,  # the answers themselves where the objective leaves the sum as it is
        "dense": dense,
        "sparse": _sparse_answers(reference, rows, dense, pred_margin=False),
    }
    clear = {}
    if objective in DISCRETE_OBJECTIVES:
        sparse_margins = _sparse_answers(reference, rows, margins, pred_margin=True)
        expected["dense"], clear["dense"] = _decided(objective, margins)
        expected["sparse"], clear["sparse"] = _decided(objective, sparse_margins)
    return "Treelite", expected, clear


def _sparse_answers(reference, rows: np.ndarray, dense: np.ndarray, pred_margin: bool) -> np.ndarray:
    """Treelite's answers to ``rows`` sent sparse, given its ``dense`` answers.

    A sparse row leaves out its zeros: they are missing values there, as in a libsvm request. Only
    rows holding a zero read differently, so only those are predicted again.
    """
    with_zeros = np.flatnonzero((rows == 0).any(axis=1))
    answers = np.array(dense, copy=True)
    if len(with_zeros):
        sparse_rows = np.where(rows[with_zeros] == 0, np.float32(np.nan), rows[with_zeros])
        answers[with_zeros] = treelite.gtil.predict(reference, sparse_rows, nthread=1, pred_margin=pred_margin)
    return answers


def check_agreement(
    source: ModelFile, model: dict, own_values: bool, booster, batch: Callable, small: Optional[Callable],
    max_rows: int, reference: Optional[treelite.Model], rows: Optional[np.ndarray] = None,
) -> Tuple[str, bool]:
    """Raise BrokenModel unless the server's answers match a second reading. Returns which reading was
    used, and whether ``small`` is exact.

    ``model`` is the JSON model: the file's own values if ``own_values``, else XGBoost's reading
    of them; ``reference`` is Treelite's reading of the file (``treelite_reading``), ``rows`` the
    probe rows (``probe_rows(model)`` if not given). ``batch`` is XGBoost's predictor, which the
    server runs on batches over ``max_rows`` rows. ``small`` is GTIL on ``reference``
    (``gtil.gtil_predictor``), which the server would run on batches of up to ``max_rows`` rows,
    still unproven (or None): it is exact when it answers every probe row, dense and sparse, bit
    for bit as ``batch`` does, and then takes the small batches; else ``batch`` takes them too and is
    compared in those shapes as well. An exact GTIL is itself the comparison: Treelite's trees and
    base score, summed, gave XGBoost's answers to the bit.
    """
    learner = model["learner"]
    objective = learner["objective"]["name"]
    outputs = model_file.outputs(learner["learner_model_param"])
    rows = probe_rows(model) if rows is None else rows
    answers = _answers(batch, rows, max_rows, outputs)
    exact = small is not None and _same_as_batch(small, rows, max_rows, answers)
    if exact and reference is not None:
        return "Treelite", True
    if not exact:  # XGBoost answers the small batches too: they are compared in their own shapes
        answers.update(_small_answers(batch, rows, max_rows))
    linear = learner["gradient_booster"]["name"] == "gblinear"
    margins = None
    if objective not in IDENTITY_OBJECTIVES or "one large batch" not in answers:  # else the answers are margins
        margins = ("margins", np.arange(len(rows)), _margins(booster, rows, linear))
    reader, expected, clear = _expected(model, own_values, reference, rows)
    if expected is None:
        return reader, exact
    if "dense" not in expected:  # the answers' own transformation is not computed: the margins only
        answers = {}
    if margins is not None:
        answers["margins"] = margins
    for shape, (kind, asked, answer) in answers.items():
        wanted = np.asarray(expected[kind]).reshape(len(rows), -1)[asked]
        if kind in clear:  # a class or sign a rounding could flip: not compared
            answer = np.where(clear[kind][asked], np.asarray(answer).reshape(wanted.shape), wanted)
        difference = _difference(answer, wanted)
        if difference:
            raise BrokenModel(
                f"its predictions differ from a second reading of the file ({reader}) on {shape}: "
                f"{difference}. The model was saved by XGBoost {source.saved_by}; this server runs XGBoost "
                f"{xgboost.__version__} and will not serve answers it cannot vouch for"
            )
    return reader, exact


def _decided(objective: str, margins: np.ndarray):
    """The class (multi:softmax) or sign (binary:hinge) Treelite's margins give, and where no rounding
    could change it: the top two margins, or the margin and 0, further apart than the tolerance."""
    margins = np.asarray(margins, dtype=np.float64).reshape(len(margins), -1)
    slack = RTOL * (np.abs(margins).max(axis=1) + 1.0)
    if objective == "binary:hinge":
        return (margins[:, 0] > 0).astype(np.float64).reshape(-1, 1), (np.abs(margins[:, 0]) > slack).reshape(-1, 1)
    top = np.sort(margins, axis=1)
    return margins.argmax(axis=1).astype(np.float64).reshape(-1, 1), (top[:, -1] - top[:, -2] > slack).reshape(-1, 1)


def _sparse(rows: np.ndarray) -> scipy.sparse.csr_matrix:
    """``rows`` as a libsvm request gives them: zeros and missing values absent."""
    sparse = scipy.sparse.csr_matrix(np.nan_to_num(rows, nan=0.0))
    sparse.eliminate_zeros()
    return sparse


def _stacked(parts) -> np.ndarray:
    return np.concatenate([np.asarray(part).reshape(len(part), -1) for part in parts])


def _answers(batch: Callable, rows: np.ndarray, max_rows: int, outputs: int) -> dict:
    """XGBoost's answers to ``rows`` in batches larger than the small-batch path takes, dense and sparse:
    {shape: (which expected answers, the rows asked about, the answer)}."""
    count = len(rows)
    large = np.tile(np.arange(count), max_rows // count + 1 if count <= max_rows else 1)
    if len(large) * outputs > MAX_PROBE_VALUES:  # a model of 100,000 classes answers 4 rows, no large batch
        return {}
    return {
        "one large batch": ("dense", large, batch(rows[large])),
        "one large sparse batch": ("sparse", large, batch(_sparse(rows)[large])),
    }


def _small_answers(predict: Callable, rows: np.ndarray, max_rows: int) -> dict:
    """``predict``'s answers to ``rows`` one at a time (the first 8) and in batches of ``max_rows``."""
    count = len(rows)
    return {
        "single rows": ("dense", np.arange(min(8, count)), _stacked(predict(rows[i : i + 1]) for i in range(min(8, count)))),
        f"batches of {max_rows} rows": (
            "dense", np.arange(count), _stacked(predict(rows[i : i + max_rows]) for i in range(0, count, max_rows))
        ),
    }


def _same_as_batch(small: Callable, rows: np.ndarray, max_rows: int, answers: dict) -> bool:
    """Whether ``small`` answers every row, dense and sparse, bit for bit as XGBoost's large batches did."""
    if "one large batch" not in answers:
        return False
    count = len(rows)
    try:
        mine = _small_answers(small, rows, max_rows)
        mine["sparse rows"] = ("sparse", np.arange(count), small(_sparse(rows)))  # GTIL answers each row on its own
    except (treelite.TreeliteError, ValueError):  # GTIL cannot answer these rows: not exact, XGBoost serves them
        return False
    theirs = {
        kind: np.asarray(answer, dtype=np.float32).reshape(len(asked), -1)[:count]
        for _, (kind, asked, answer) in answers.items()
    }
    return all(
        np.array_equal(np.asarray(answer, dtype=np.float32).reshape(len(asked), -1), theirs[kind][asked], equal_nan=True)
        for kind, asked, answer in mine.values()
    )


def _margins(booster, rows: np.ndarray, linear: bool) -> np.ndarray:
    if linear:  # gblinear has no inplace_predict
        return booster.predict(xgboost.DMatrix(rows, missing=np.nan), output_margin=True)
    return booster.inplace_predict(rows, predict_type="margin", validate_features=False)


def _difference(answer: np.ndarray, expected: np.ndarray) -> str:
    """'' when ``answer`` has ``expected``'s rows and matches them to float32 rounding, else what differs.

    Each value gets a tolerance of its own: ``RTOL`` of itself plus ``RTOL`` of the answers' median size
    (sums taken in another order round differently near zero); values that are not finite must match.
    """
    answer = np.asarray(answer, dtype=np.float64).reshape(len(answer), -1)
    if answer.shape != expected.shape:
        return f"{answer.shape[0]} rows of {answer.shape[1]} values instead of {expected.shape[0]} of {expected.shape[1]}"
    expected = expected.astype(np.float64)
    finite = np.abs(expected[np.isfinite(expected)])
    scale = float(np.median(finite)) if finite.size else 0.0
    close = np.isclose(answer, expected, rtol=RTOL, atol=RTOL * scale + 1e-6, equal_nan=True)
    close &= np.isfinite(answer) == np.isfinite(expected)
    if close.all():
        return ""
    row, column = np.argwhere(~close)[0]
    return (
        f"{int((~close).any(axis=1).sum())} of {len(answer)} rows differ, the first "
        f"{answer[row, column]:.7g} against {expected[row, column]:.7g}"
    )


def probe_rows(model: dict) -> np.ndarray:
    """Rows on and beside every split threshold, missing values, and one row down to each leaf
    (as many as ``MAX_PROBE_VALUES`` allows for the model's outputs)."""
    parameters = model["learner"]["learner_model_param"]
    num_features = int(parameters["num_feature"])
    trees = model_file.trees(model)
    parts = [_probe(trees, num_features)]
    leaf_rows = _leaf_rows(trees, num_features)
    if len(leaf_rows):
        parts.append(leaf_rows)
    rows = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    return rows[: max(1, MAX_PROBE_VALUES // model_file.outputs(parameters))]


def _leaf_rows(trees: List[dict], num_features: int) -> np.ndarray:
    """One row per leaf (up to ``MAX_LEAF_ROWS``), its features set to go down that leaf's path.

    Whole trees are taken in order (the first whatever its size) while their nodes add up to at most
    ``MAX_WALK_NODES``. Every leaf walks up its parents at once, one level per step (NumPy over all
    leaves), so a leaf's row follows the ``MAX_PATH_STEPS`` splits nearest to it.
    """
    taken: List[dict] = []
    nodes = 0
    for tree in trees:
        size = len(tree["left_children"])
        if taken and (nodes + size > MAX_WALK_NODES or nodes // 2 >= MAX_LEAF_ROWS):  # the first tree, whatever its size
            break
        taken.append(tree)
        nodes += size
    if not taken:
        return np.empty((0, num_features), dtype=np.float32)
    sizes = np.asarray([len(tree["left_children"]) for tree in taken])
    first = np.repeat(np.cumsum(sizes) - sizes, sizes)  # each node's tree's first node
    size_of = np.repeat(sizes, sizes)
    left = np.concatenate([np.asarray(tree["left_children"], dtype=np.int64) for tree in taken])
    right = np.concatenate([np.asarray(tree["right_children"], dtype=np.int64) for tree in taken])
    split = np.concatenate([np.asarray(tree["split_indices"], dtype=np.int64) for tree in taken])
    threshold = np.concatenate([np.asarray(tree["split_conditions"], dtype=np.float32) for tree in taken])
    categorical = np.concatenate([np.asarray(tree.get("split_type") or np.zeros(len(tree["left_children"])),
                                             dtype=bool) for tree in taken])
    # parent links: x < threshold goes left, else right (NaN: the default side, covered by the threshold probe)
    parent = np.full(nodes, -1, dtype=np.int64)
    went_left = np.zeros(nodes, dtype=bool)
    for children, side in ((left, True), (right, False)):
        inner = np.flatnonzero((left != -1) & (children > 0) & (children < size_of))  # a leaf's right may be a row
        parent[first[inner] + children[inner]] = inner
        went_left[first[inner] + children[inner]] = side
    leaves = np.flatnonzero(left == -1)[:MAX_LEAF_ROWS]
    low = np.full((len(leaves), num_features), -np.inf, dtype=np.float32)
    high = np.full((len(leaves), num_features), np.inf, dtype=np.float32)
    row, node = np.arange(len(leaves)), leaves
    for _ in range(MAX_PATH_STEPS):
        up = parent[node]
        going = up >= 0
        row, node, up = row[going], node[going], up[going]
        if not len(node):
            break
        feature = split[up]
        bounded = ~categorical[up] & (feature >= 0) & (feature < num_features)  # categories: the threshold probe
        below = bounded & went_left[node]
        above = bounded & ~went_left[node]
        np.minimum.at(high, (row[below], feature[below]), threshold[up[below]])  # the tightest bounds on the path
        np.maximum.at(low, (row[above], feature[above]), threshold[up[above]])
        node = up
    # a float32 in [low, high): low itself, or just below high when there is no low; NaN for a leaf no row reaches
    with np.errstate(invalid="ignore"):
        rows = np.where(np.isinf(low), np.nextafter(high, np.float32(-np.inf)), low)
    rows[np.isinf(low) & np.isinf(high)] = np.nan  # off the path: missing (dense and sparse rows read alike)
    rows[low >= high] = np.nan
    return rows


def _linear_margin(model: dict, rows: np.ndarray) -> np.ndarray:
    """gblinear's margins: the rows (missing as 0) times the weights, plus the bias and base margin."""
    groups = model_file.outputs(model["learner"]["learner_model_param"])
    weights = np.asarray(model["learner"]["gradient_booster"]["model"]["weights"], dtype=np.float64)
    weights = weights.reshape(-1, groups)
    base = _base_margin(model)[:1]  # XGBoost's gblinear adds the first base score to every output (3.1+ store one per class)
    return np.nan_to_num(rows.astype(np.float64), nan=0.0) @ weights[:-1] + weights[-1] + base


def _base_margin(model: dict) -> np.ndarray:
    """The base score as a margin, as XGBoost turns the stored probability into one."""
    learner = model["learner"]
    score = np.asarray(model_file.base_scores(learner["learner_model_param"]), dtype=np.float64)
    objective = learner["objective"]["name"]
    if objective in ("binary:logistic", "reg:logistic"):
        return np.log(score / (1 - score))
    if objective in ("count:poisson", "reg:gamma", "reg:tweedie", "survival:aft", "survival:cox"):
        return np.log(score)
    return score
