"""An MLServer runtime for every XGBoost artifact SageMaker's containers write.

The model folder holds ``xgboost-model`` (containers 1.3-1 ... 1.7-1 write the
legacy binary format there, newer ones JSON or UBJSON, 0.90-1.2 a pickle), or
``model.json`` / ``model.ubj`` / ``model.bst``, or a single model file. How each
format is read, and which are refused, is ``model_file``'s job; the check that
a new artifact answers what its training answered is ``crosscheck``'s.
"""

import functools
import json
import os
from typing import Callable, Optional, Tuple

import numpy as np
import treelite
import xgboost as xgb
from mlserver import MLModel
from mlserver.codecs import NumpyRequestCodec
from mlserver.types import InferenceRequest, InferenceResponse

from ..errors import BadPayload, BrokenModel, ModelStillLoading, describe
from ..threads import in_loads
from . import crosscheck, model_file
from .gtil import Predictor, exact_gtil, gtil_predictor
from .protocol import MAX_ROWS, FeaturePredictor, Features

PREFERRED_FILES = ("xgboost-model", "model.json", "model.ubj", "model.bst")
MAX_PREDICTIONS = MAX_ROWS  # values in one answer: a million rows of one prediction each
MAX_GTIL_MODEL_BYTES = 16 * 1024 * 1024
# GTIL's per-row cost is about 5x XGBoost's: it wins on the per-call overhead of small requests only
# (1 row: 30 against 140 us; 100 rows: 210 against 170 us).
GTIL_MAX_ROWS = 64
# What a check's "gtil" verdict was proven on: a load takes it only from a check that proved the same reading
# (an artifact checked by an earlier release, whose GTIL read XGBoost's booster instead, is probed again).
GTIL_READING = "treelite-file-reading"
MAX_CATEGORY = 1 << 24  # XGBoost's own bound: a category must be exact as a float32


def find_model_file(folder: str) -> str:
    """The model file of an unpacked artifact."""
    for name in PREFERRED_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    files = [
        name
        for name in sorted(os.listdir(folder))
        if not name.startswith(".") and os.path.isfile(os.path.join(folder, name))
    ]
    if len(files) == 1:
        return os.path.join(folder, files[0])
    raise BrokenModel(
        f"no XGBoost model file in the artifact: expected one of {', '.join(PREFERRED_FILES)} "
        f"or a single file, found {files or 'none'}"
    )


def load_booster(path: str, allow_pickle: bool, nthread: int) -> xgb.Booster:
    """Load any XGBoost artifact format (``model_file``); raises BrokenModel with the reason."""
    booster = read_model_file(path, allow_pickle).booster()
    _ready(booster, nthread)
    return booster


def read_model_file(path: str, allow_pickle: bool) -> model_file.ModelFile:
    with open(path, "rb") as file:
        return model_file.read(file.read(), allow_pickle)


def _ready(booster: xgb.Booster, nthread: int, learner: Optional[dict] = None) -> Callable[[Features], np.ndarray]:
    """``booster`` on ``nthread`` threads, its predictor set up; its batch predictor."""
    booster.set_param({"nthread": nthread})
    # xgboost sets up its predictor on the first prediction: do it here, off the event loop.
    batch = batch_predictor(booster, learner)
    batch(np.zeros((1, booster.num_features()), dtype=np.float32))
    return batch


def learner_of(booster: xgb.Booster) -> dict:
    """The ``learner`` part of the booster's configuration (its objective, booster kind and model parameters)."""
    return json.loads(booster.save_config())["learner"]


def batch_predictor(booster: xgb.Booster, learner: Optional[dict] = None) -> Callable[[Features], np.ndarray]:
    """XGBoost's prediction of a matrix of rows: ``inplace_predict``, which gblinear lacks."""
    if (learner or learner_of(booster))["gradient_booster"]["name"] != "gblinear":
        return functools.partial(booster.inplace_predict, validate_features=False)
    return lambda features: booster.predict(xgb.DMatrix(features, missing=np.nan), validate_features=False)


def _gtil_for(
    booster: xgb.Booster, path: str, nthread: int, proven: Optional[bool] = None,
    source: Optional[model_file.ModelFile] = None, learner: Optional[dict] = None,
) -> Optional[Predictor]:
    """GTIL when it predicts exactly as ``booster`` (see ``gtil.py``), else None.

    ``proven`` is what the artifact's check found (True: exact, False: not), None when unknown (then
    the probe runs here). The check proved GTIL on Treelite's reading of the file (``source``), so a
    proven load reads it the same way. Models over ``MAX_GTIL_MODEL_BYTES`` keep ``inplace_predict``:
    a cheaper call gains them little, and the probe costs more. (Multi-output models never take GTIL.)
    """
    if proven is False or os.path.getsize(path) > MAX_GTIL_MODEL_BYTES:
        return None
    if proven:  # the artifact's check probed this file: no second probe
        try:
            reading = crosscheck.second_reading(source) if source is not None else None
        except treelite.TreeliteError:
            return None
        return gtil_predictor(booster, nthread, reading, learner)
    model = model_file.parse_json(bytes(booster.save_raw("json")))
    return exact_gtil(booster, model_file.trees(model), nthread)


def _loaded(path: str, allow_pickle: bool, nthread: int, proven: Optional[bool]):
    """The booster, its batch predictor, GTIL predictor (or None) and values per row: a load's work, in one
    load thread."""
    source = read_model_file(path, allow_pickle)
    booster = source.booster()
    learner = learner_of(booster)
    batch, gtil = _ready(booster, nthread, learner), _gtil_for(booster, path, nthread, proven, source, learner)
    return booster, batch, gtil, model_file.outputs(learner["learner_model_param"])


def check_model_file(path: str, allow_pickle: bool) -> dict:
    """Raise BrokenModel unless the server can serve ``path`` without harm and with the right answers.

    Run in an isolated child (``isolation.run``): loading parses the file in C++,
    and prediction follows the trees' child indices without bounds checks, so a
    malformed file can crash. The trees are checked to be well-formed (every
    child index in range, every split on a known feature, no node reached twice),
    and then the server's predictors (GTIL included, as the load sets it up),
    on rows with values and missing values in every shape the server predicts
    in, must agree with a second reading of the file (``crosscheck``). Returns
    what the log records of it (``warm``: a spare child, warmed up, ran the check).
    """
    warm = _warmed_up
    source = read_model_file(path, allow_pickle)
    own = source.own_values()
    own_values = own is not None
    if own is not None:  # the file's own values, checked before XGBoost's parser (which trusts them) reads them
        model = own
        visits = _check_structure(model)
    booster = source.booster()
    if not own_values:  # UBJSON or a pickle: checked as XGBoost read them
        model = model_file.parse_json(bytes(booster.save_raw("json")))
        visits = _check_structure(model)
    booster.set_param({"nthread": 1})
    learner = learner_of(booster)
    reference = crosscheck.treelite_reading(source, model)
    small = None  # GTIL as a load after this check makes it (on Treelite's reading): proven exact, or not
    if os.path.getsize(path) <= MAX_GTIL_MODEL_BYTES:
        small = gtil_predictor(booster, 1, reference, learner)
    second_reader, exact = crosscheck.check_agreement(
        source, model, own_values, booster, batch_predictor(booster, learner), small, GTIL_MAX_ROWS, reference
    )
    return {
        "format": source.kind, "saved_by": source.saved_by, "compared_with": second_reader, "gtil": exact,
        "gtil_reading": GTIL_READING,
        "visits_per_row": visits, "warm": warm,
    }


WARM_UP_MODEL = os.path.join(os.path.dirname(__file__), "warm_up_model.json")  # 4 small trees, XGBoost 3.2


def warm_up_check() -> None:
    """Check a small bundled model once: a spare check child then meets its artifact warm.

    XGBoost starts a thread and sets up its predictor on its first model, and the
    check's Python code runs faster the second time: together 2-4x the check's
    own time in a freshly forked child.
    """
    global _warmed_up
    check_model_file(WARM_UP_MODEL, False)
    _warmed_up = True


_warmed_up = False  # in a check child: it ran warm_up_check before its check


def _check_structure(model: dict) -> int:
    """Raise BrokenModel unless the trees are well-formed; the most nodes one row can visit."""
    learner = model["learner"]
    num_feature = int(learner["learner_model_param"]["num_feature"])
    outputs = model_file.outputs(learner["learner_model_param"])
    trees = model_file.trees(model)
    if not trees:
        return num_feature * outputs  # gblinear: a weight per feature and output
    tree_info = model_file.tree_model(model)["tree_info"]
    if len(tree_info) != len(trees) or any(not 0 <= group < outputs for group in tree_info):
        raise BrokenModel("the model's tree groups do not match its outputs")
    visits = 0
    for number, tree in enumerate(trees):
        problem, depth = _tree_problem(tree, num_feature, outputs)
        if problem:
            raise BrokenModel(f"tree {number} of the model is malformed: {problem}")
        visits += depth
    return visits


def _tree_problem(tree: dict, num_feature: int, outputs: int) -> Tuple[str, int]:
    """What is wrong with a tree ('' if nothing), and the nodes on its longest path."""
    size = int(tree["tree_param"]["num_nodes"])
    leaf_size = max(1, int(tree["tree_param"].get("size_leaf_vector", 0)))
    left, right, split = tree["left_children"], tree["right_children"], tree["split_indices"]
    if size < 1 or not len(left) == len(right) == len(split) == len(tree["split_conditions"]) == size:
        return "its node arrays do not match its node count", 0
    if leaf_size not in (1, outputs) or len(tree.get("base_weights", ())) != size * leaf_size:
        return f"its leaves hold {leaf_size} values, for {outputs} outputs and {size} nodes", 0
    # XGBoost 3.2's vector leaves: a leaf's right child is its row in leaf_weights
    leaf_rows = len(tree.get("leaf_weights", ())) // leaf_size if leaf_size > 1 else 0
    if leaf_size > 1 and leaf_rows * leaf_size != len(tree.get("leaf_weights", ())):
        return "its leaf weights do not fill whole leaves", 0
    seen, pending, deepest = set(), [(0, 1)], 1
    while pending:
        node, depth = pending.pop()
        if node in seen:
            return f"node {node} is reached twice", 0
        seen.add(node)
        deepest = max(deepest, depth)
        if left[node] == -1 and (right[node] == -1 or (leaf_size > 1 and 0 <= right[node] < leaf_rows)):
            continue
        for child in (left[node], right[node]):
            if not 0 < child < size:
                return f"node {node} has a child {child} outside the tree", 0
            pending.append((child, depth + 1))
        if not 0 <= split[node] < num_feature:
            return f"node {node} splits on feature {split[node]} of {num_feature}", 0
    if any(kind != 0 for kind in tree.get("split_type", [])):
        categories, starts, sizes = tree["categories"], tree["categories_segments"], tree["categories_sizes"]
        if any(start < 0 or count < 0 or start + count > len(categories) for start, count in zip(starts, sizes)):
            return "its categorical splits point outside their categories", 0
        if any(not 0 <= node < size for node in tree["categories_nodes"]):
            return "its categorical splits name nodes outside the tree", 0
        # XGBoost keeps a bit per category up to the largest a split names: 2**28 took 32 MiB a split
        outside = [category for category in categories if not 0 <= category < MAX_CATEGORY]
        if outside:
            bounds = f"XGBoost's categories are 0 ... {MAX_CATEGORY - 1}"
            return f"a categorical split names category {outside[0]}; {bounds}", 0
    return "", deepest


def _predict(
    batch: Callable[[Features], np.ndarray], gtil: Optional[Predictor], num_features: int, outputs: int,
    features: Features,
) -> np.ndarray:
    """The server's prediction: GTIL for small requests where it is exact, else XGBoost's."""
    if features.shape[0] * outputs > MAX_PREDICTIONS:
        # a model with many classes multiplies a small body into a huge answer
        raise BadPayload(
            f"the answer would hold {features.shape[0]} rows of {outputs} values, more than "
            f"{MAX_PREDICTIONS} values: send fewer rows"
        )
    if features.shape[1] > num_features or (features.shape[1] < num_features and isinstance(features, np.ndarray)):
        raise BadPayload(f"the model takes {num_features} features but a row has {features.shape[1]}")
    if features.shape[1] < num_features:
        features.resize((features.shape[0], num_features))  # libsvm: trailing features absent
    try:
        if gtil is not None and 0 < features.shape[0] <= GTIL_MAX_ROWS:  # no rows: XGBoost answers no values
            return gtil(features)
        return batch(features)
    except (xgb.core.XGBoostError, treelite.TreeliteError) as error:
        raise BadPayload(f"XGBoost rejected the input: {describe(error)}") from None


class XGBoostModel(MLModel, FeaturePredictor):
    """Serves one XGBoost booster, through V2 and through the SageMaker router.

    ``parameters.uri`` is the unpacked artifact's folder; ``parameters.extra`` may
    hold ``allow_pickle`` (bool), ``nthread`` (int), and what the artifact's check found, when at hand:
    ``gtil_exact`` (bool: GTIL is exact on this file) and ``visits_per_row`` (int: the most tree nodes
    one row can visit, which says how long a batch takes).
    """

    _booster: Optional[xgb.Booster] = None
    _batch: Optional[Callable[[Features], np.ndarray]] = None  # batch_predictor(_booster)
    _gtil: Optional[Predictor] = None
    _outputs = 1

    async def load(self) -> bool:
        parameters = self.settings.parameters
        options = parameters.extra or {}
        path = find_model_file(parameters.uri)
        # Reading and parsing a model takes milliseconds to seconds: keep it off the event loop.
        nthread = int(options.get("nthread", 1))
        allow_pickle, proven = bool(options.get("allow_pickle", False)), options.get("gtil_exact")
        self._booster, self._batch, self._gtil, self._outputs = await in_loads(
            _loaded, path, allow_pickle, nthread, proven
        )
        self._num_features = self._booster.num_features()
        return True

    @property
    def visits_per_row(self) -> Optional[int]:
        """The most tree nodes one row can visit (the check's count), None when unknown."""
        visits = (self.settings.parameters.extra or {}).get("visits_per_row") if self.settings.parameters else None
        return visits if isinstance(visits, int) else None

    @property
    def values_per_row(self) -> int:
        """Values predicted per row (classes or targets)."""
        return self._outputs

    def predict_features(self, features: Features) -> np.ndarray:
        """Predictions for a matrix of feature rows, exactly as ``Booster.predict`` gives them."""
        return self.predictor()(features)

    def predictor(self) -> Callable[[Features], np.ndarray]:
        """``predict_features`` bound to the version loaded now.

        Taken on the event loop when a request gets its model, then run in a batch thread: an
        unload or an update's swap in between does not take the booster from under it.
        """
        return functools.partial(self._predict_with, self._batch, self._gtil)

    def _predict_with(self, batch: Optional[Callable], gtil: Optional[Predictor], features: Features) -> np.ndarray:
        if batch is None:
            raise ModelStillLoading("The model was unloaded while the request waited; retry it.")
        return _predict(batch, gtil, self._num_features, self._outputs, features)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        features = self.decode_request(payload, default_codec=NumpyRequestCodec)
        if not isinstance(features, np.ndarray) or features.dtype.kind not in "biuf":  # BYTES: words, not numbers
            raise BadPayload("send one numeric tensor of feature rows")
        if features.ndim == 1:
            features = features.reshape(1, -1)
        if features.ndim != 2:
            raise BadPayload(f"the input must be a matrix of feature rows, not shape {features.shape}")
        predictions = self.predict_features(features)
        return self.encode_response(predictions, default_codec=NumpyRequestCodec)

    async def unload(self) -> bool:
        self._booster = self._batch = self._gtil = None
        return True
