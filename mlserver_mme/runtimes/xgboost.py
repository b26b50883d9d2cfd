"""An MLServer runtime for every XGBoost artifact SageMaker's containers write.

The model folder holds ``xgboost-model`` (containers 1.3-1 ... 1.7-1 write the
legacy binary format there, newer ones JSON or UBJSON, 0.90-1.2 a pickle), or
``model.json`` / ``model.ubj`` / ``model.bst``, or a single model file. The
format is told from the bytes, not the name. Pickles run code when loaded, so
they are refused unless the operator allows them (``MLSERVER_MME_ALLOW_PICKLE``).
"""

import functools
import json
import os
import pickle

from typing import Callable, Optional

import numpy as np
import treelite
import xgboost as xgb
from mlserver import MLModel
from mlserver.codecs import NumpyRequestCodec
from mlserver.types import InferenceRequest, InferenceResponse

from ..errors import BadPayload, BrokenModel, ModelStillLoading, describe
from ..payloads import MAX_ROWS, Features
from ..threads import in_loads
from .gtil import Predictor, exact_gtil

PREFERRED_FILES = ("xgboost-model", "model.json", "model.ubj", "model.bst")
MAX_PREDICTIONS = MAX_ROWS  # values in one answer: a million rows of one prediction each
MAX_GTIL_MODEL_BYTES = 16 * 1024 * 1024
# GTIL's per-row cost is about 5x XGBoost's: it wins on the per-call overhead of small requests only
# (1 row: 30 against 140 us; 100 rows: 210 against 170 us).
GTIL_MAX_ROWS = 64


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


def model_format(data: bytes) -> str:
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if data[:1] == b"{":
        return "json" if data[1:2] in (b'"', b"}", b" ", b"\n") else "ubj"
    return "legacy-binary"


def load_booster(path: str, allow_pickle: bool, nthread: int) -> xgb.Booster:
    """Load any XGBoost artifact format; raises BrokenModel with the reason."""
    with open(path, "rb") as file:
        data = file.read()
    kind = model_format(data)
    try:
        if kind == "pickle":
            if not allow_pickle:
                raise BrokenModel(
                    "the artifact is a pickled model; pickles can run code when loaded, so they are only "
                    "loaded when the server is started with MLSERVER_MME_ALLOW_PICKLE=true"
                )
            booster = pickle.loads(data)
            if not isinstance(booster, xgb.Booster):
                booster = getattr(booster, "get_booster", lambda: None)()
            if not isinstance(booster, xgb.Booster):
                raise BrokenModel("the pickle does not hold an XGBoost Booster or scikit-learn model")
        else:
            booster = xgb.Booster()
            booster.load_model(bytearray(data))
    except BrokenModel:
        raise
    except Exception as error:  # xgboost raises XGBoostError, pickle many kinds
        raise BrokenModel(f"XGBoost could not load the {kind} model file: {describe(error)}") from None
    booster.set_param({"nthread": nthread})
    # xgboost sets up its predictor on the first prediction: do it here, off the event loop.
    booster.inplace_predict(np.zeros((1, booster.num_features()), dtype=np.float32))
    return booster


def _gtil_for(booster: xgb.Booster, path: str, nthread: int, model: Optional[dict] = None) -> Optional[Predictor]:
    """GTIL when it predicts exactly as ``booster`` (see ``gtil.py``), else None.

    ``model`` is the booster's JSON model if already at hand. Models over
    ``MAX_GTIL_MODEL_BYTES`` keep ``inplace_predict``: a cheaper call gains them
    little, and the probe costs more. (Multi-output models never take GTIL.)
    """
    if os.path.getsize(path) > MAX_GTIL_MODEL_BYTES:
        return None
    model = model or json.loads(bytes(booster.save_raw("json")))
    return exact_gtil(booster, _trees(model), nthread)


def outputs_per_row(booster: xgb.Booster) -> int:
    """Values predicted per row: classes of a multi-class model, targets of a multi-target one."""
    return _outputs(json.loads(booster.save_config())["learner"]["learner_model_param"])


def _outputs(learner_model_param: dict) -> int:
    return max(1, int(learner_model_param.get("num_class", 0)), int(learner_model_param.get("num_target", 1)))


def check_model_file(path: str, allow_pickle: bool) -> None:
    """Raise BrokenModel unless XGBoost can load and predict with ``path`` without harm.

    Run in an isolated child (``isolation.run``): loading parses the file in C++,
    and prediction follows the trees' child indices without bounds checks, so a
    malformed file can crash. The trees are checked to be well-formed (every
    child index in range, every split on a known feature, no node reached twice)
    and then predicted on, with values and with missing values.
    """
    booster = load_booster(path, allow_pickle, nthread=1)
    model = json.loads(bytes(booster.save_raw("json")))
    _check_structure(model)
    width = booster.num_features()
    booster.inplace_predict(np.full((1, width), np.nan, dtype=np.float32))
    booster.inplace_predict(np.ones((1, width), dtype=np.float32))
    _gtil_for(booster, path, 1, model)  # as the server's load does next: Treelite's parsing included


def _check_structure(model: dict) -> None:
    learner = model["learner"]
    num_feature = int(learner["learner_model_param"]["num_feature"])
    outputs = _outputs(learner["learner_model_param"])
    trees = _trees(model)
    if not trees:
        return  # gblinear: a weight vector, no trees to walk
    tree_info = _tree_model(model)["tree_info"]
    if len(tree_info) != len(trees) or any(not 0 <= group < outputs for group in tree_info):
        raise BrokenModel("the model's tree groups do not match its outputs")
    for number, tree in enumerate(trees):
        problem = _tree_problem(tree, num_feature)
        if problem:
            raise BrokenModel(f"tree {number} of the model is malformed: {problem}")


def _tree_model(model: dict) -> dict:
    """The ``model`` of a JSON model's tree booster (``{}`` for gblinear)."""
    booster = model["learner"]["gradient_booster"]
    if booster["name"] == "dart":
        booster = booster["gbtree"]
    return booster["model"] if booster["name"] == "gbtree" else {}


def _trees(model: dict) -> list:
    return _tree_model(model).get("trees", [])


def _tree_problem(tree: dict, num_feature: int) -> str:
    size = int(tree["tree_param"]["num_nodes"])
    left, right, split = tree["left_children"], tree["right_children"], tree["split_indices"]
    if size < 1 or not len(left) == len(right) == len(split) == len(tree["split_conditions"]) == size:
        return "its node arrays do not match its node count"
    seen, pending = set(), [0]
    while pending:
        node = pending.pop()
        if node in seen:
            return f"node {node} is reached twice"
        seen.add(node)
        if left[node] == -1 and right[node] == -1:
            continue
        for child in (left[node], right[node]):
            if not 0 < child < size:
                return f"node {node} has a child {child} outside the tree"
            pending.append(child)
        if not 0 <= split[node] < num_feature:
            return f"node {node} splits on feature {split[node]} of {num_feature}"
    if any(kind != 0 for kind in tree.get("split_type", [])):
        categories, starts, sizes = tree["categories"], tree["categories_segments"], tree["categories_sizes"]
        if any(start < 0 or count < 0 or start + count > len(categories) for start, count in zip(starts, sizes)):
            return "its categorical splits point outside their categories"
    return ""


class XGBoostModel(MLModel):
    """Serves one XGBoost booster, through V2 and through the SageMaker router.

    ``parameters.uri`` is the unpacked artifact's folder; ``parameters.extra`` may
    hold ``allow_pickle`` (bool) and ``nthread`` (int).
    """

    _booster: Optional[xgb.Booster] = None
    _gtil: Optional[Predictor] = None
    _outputs = 1

    async def load(self) -> bool:
        parameters = self.settings.parameters
        options = parameters.extra or {}
        path = find_model_file(parameters.uri)
        # Reading and parsing a model takes milliseconds to seconds: keep it off the event loop.
        nthread = int(options.get("nthread", 1))
        self._booster = await in_loads(load_booster, path, bool(options.get("allow_pickle", False)), nthread)
        self._num_features = self._booster.num_features()
        self._outputs = outputs_per_row(self._booster)
        self._gtil = await in_loads(_gtil_for, self._booster, path, nthread)
        return True

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
        return functools.partial(self._predict_with, self._booster, self._gtil)

    def _predict_with(
        self, booster: Optional[xgb.Booster], gtil: Optional[Predictor], features: Features
    ) -> np.ndarray:
        if booster is None:
            raise ModelStillLoading("The model was unloaded while the request waited; retry it.")
        if features.shape[0] * self._outputs > MAX_PREDICTIONS:
            # a model with many classes multiplies a small body into a huge answer
            raise BadPayload(
                f"the answer would hold {features.shape[0]} rows of {self._outputs} values, more than "
                f"{MAX_PREDICTIONS} values: send fewer rows"
            )
        if features.shape[1] > self._num_features:
            raise BadPayload(
                f"the model takes {self._num_features} features but a row has {features.shape[1]}"
            )
        if features.shape[1] < self._num_features:
            if isinstance(features, np.ndarray):
                raise BadPayload(
                    f"the model takes {self._num_features} features but a row has {features.shape[1]}"
                )
            features.resize((features.shape[0], self._num_features))  # libsvm: trailing features absent
        try:
            if gtil is not None and features.shape[0] <= GTIL_MAX_ROWS:
                return gtil(features)
            return booster.inplace_predict(features, validate_features=False)
        except (xgb.core.XGBoostError, treelite.TreeliteError) as error:
            raise BadPayload(f"XGBoost rejected the input: {describe(error)}") from None

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        features = self.decode_request(payload, default_codec=NumpyRequestCodec)
        if not isinstance(features, np.ndarray):
            raise BadPayload("send one numeric tensor of feature rows")
        if features.ndim == 1:
            features = features.reshape(1, -1)
        if features.ndim != 2:
            raise BadPayload(f"the input must be a matrix of feature rows, not shape {features.shape}")
        predictions = self.predict_features(features)
        return self.encode_response(predictions, default_codec=NumpyRequestCodec)

    async def unload(self) -> bool:
        self._booster = self._gtil = None
        return True
