"""XGBoost's legacy binary model format, read into the JSON model XGBoost 1.x itself made of it.

SageMaker's XGBoost containers 1.3-1 ... 1.7-1 save models in this format, and
XGBoost removed its reader in 3.1. The format is a dump of a few C structs
(XGBoost's ``LearnerModelParamLegacy``, ``GBTreeModelParam``, ``TreeParam``,
``RTreeNodeStat`` and the tree nodes, all little-endian), so it is read here with
NumPy record types and written out field for field as the JSON model that
XGBoost 1.7's own ``load_model`` + ``save_model("*.json")`` gives for the same
file, which any later XGBoost loads. The tests hold the two side by side.

Every count is checked against the bytes left before anything is allocated, so
a hostile file is refused (``LegacyFormatError``) rather than read past its end;
what is built is bounded by the file's size (about 10-15 times it, as Python
lists). XGBoost is given the model as UBJSON (``ubjson``), which it parses about
three times faster than JSON text.
"""

import json
import math
import struct
from typing import Any, Dict, List, Tuple

import numpy as np

from . import ubjson

# LearnerModelParamLegacy: base_score, num_feature, num_class, contain_extra_attrs,
# contain_eval_metrics, major_version, minor_version, num_target, boost_from_average, reserved[25]
_LEARNER = struct.Struct("<fIiiiIIIi100x")
# GBTreeModelParam: num_trees, num_parallel_tree, num_feature, pad, num_pbuffer (int64),
# num_output_group, size_leaf_vector, reserved[32]
_GBTREE = struct.Struct("<iiiiqii128x")
# TreeParam: num_roots, num_nodes, num_deleted, max_depth, num_feature, size_leaf_vector, reserved[31]
_TREE = struct.Struct("<iiiiIi124x")
# GBLinearModelParam: num_feature, num_output_group, reserved[32]
_GBLINEAR = struct.Struct("<Ii128x")
_NODE = np.dtype([("parent", "<i4"), ("left", "<i4"), ("right", "<i4"), ("sindex", "<u4"), ("info", "<f4")])
_STAT = np.dtype([("loss_chg", "<f4"), ("sum_hess", "<f4"), ("base_weight", "<f4"), ("leaf_child_cnt", "<i4")])
_MAX_STRING = 1 << 20  # an objective name or an attribute; a longer one is not a model file

# Objectives before 1.0 saved no configuration: these are XGBoost 1.7's defaults for them.
_REG_LOSS = {"reg_loss_param": {"scale_pos_weight": "1"}}
_PRE_1_0_OBJECTIVE_PARAMETERS = {
    "reg:squarederror": _REG_LOSS,
    "reg:linear": _REG_LOSS,
    "reg:logistic": _REG_LOSS,
    "binary:logistic": _REG_LOSS,
    "binary:logitraw": _REG_LOSS,
    "count:poisson": {"poisson_regression_param": {"max_delta_step": "0.7"}},
    "reg:gamma": {},
    "reg:tweedie": {"tweedie_regression_param": {"tweedie_variance_power": "1.5"}},
    "binary:hinge": {},
    "multi:softmax": {"softmax_multiclass_param": {"num_class": "0"}},
    "multi:softprob": {"softmax_multiclass_param": {"num_class": "0"}},
}
# What XGBoost's own reader does to a pre-1.0 base score, which was saved as a margin.
_PRE_1_0_TRANSFORMS = {
    "reg:logistic": lambda x: 1.0 / (1.0 + math.exp(-x)),
    "binary:logistic": lambda x: 1.0 / (1.0 + math.exp(-x)),
    "count:poisson": math.exp,
    "reg:gamma": math.exp,
    "reg:tweedie": math.exp,
}


class LegacyFormatError(ValueError):
    """The bytes are not a legacy binary model this reader understands; the message says why."""


def saved_by(data: bytes) -> str:
    """The XGBoost version recorded in a legacy binary model ("before 1.0" when none is)."""
    learner = _Reader(data).learner()
    return f"{learner[5]}.{learner[6]}" if learner[5] else "before 1.0"


def to_json_model(data: bytes, as_arrays: bool = False) -> Dict[str, Any]:
    """The JSON model (as a dict) of a legacy binary model file's bytes; NumPy arrays for lists if ``as_arrays``."""
    reader = _Reader(data)
    base_score, num_feature, num_class, extra_attrs, eval_metrics, major, minor, num_target, from_average = (
        reader.learner()
    )
    objective_name = reader.string()
    booster_name = reader.string()
    if booster_name in ("gbtree", "dart"):
        booster = _read_gbtree(reader, booster_name, as_arrays)
    elif booster_name == "gblinear":
        booster = _read_gblinear(reader, as_arrays)
    else:
        raise LegacyFormatError(f"unknown booster {booster_name[:40]!r}")
    attributes = dict(reader.pairs()) if extra_attrs else {}
    if eval_metrics:
        reader.strings()  # the evaluation metrics: training only
    objective = _objective(objective_name, attributes.pop("objective", None), num_class, major)
    attributes.pop("metrics", None)
    if major < 1 and not objective_name.startswith("multi:"):
        try:
            base_score = _PRE_1_0_TRANSFORMS.get(objective_name, lambda x: x)(base_score)
        except OverflowError:
            raise LegacyFormatError(f"its base score {base_score} is out of range for {objective_name}") from None
    if not math.isfinite(base_score):
        raise LegacyFormatError(f"its base score is {base_score}")
    return {
        "learner": {
            "attributes": attributes,
            "feature_names": [],
            "feature_types": [],
            "gradient_booster": booster,
            "learner_model_param": {
                "base_score": _float_text(base_score),
                "boost_from_average": str(from_average if major else 1),
                "num_class": str(num_class),
                "num_feature": str(num_feature),
                "num_target": str(max(1, num_target)),
            },
            "objective": objective,
        },
        "version": [major, minor, 0] if major else [0, 90, 0],
    }


def to_ubjson(data: bytes) -> Tuple[bytes, Dict[str, Any]]:
    """The converted model as UBJSON bytes for XGBoost, and its values (NumPy arrays for lists)."""
    values = to_json_model(data, as_arrays=True)
    try:
        return ubjson.dumps(values), values
    except (TypeError, KeyError, AttributeError, ValueError, OverflowError, RecursionError, struct.error) as error:  # a value the objective's saved configuration held
        raise LegacyFormatError(f"it holds a value XGBoost's models do not: {error}") from None


def _objective(name: str, saved: Any, num_class: int, major: int) -> dict:
    if saved is not None:
        try:
            objective = json.loads(saved)
        except (ValueError, RecursionError):
            raise LegacyFormatError("its objective configuration is not JSON") from None
        if not isinstance(objective, dict) or objective.get("name") != name:
            raise LegacyFormatError("its objective configuration names another objective")
        return objective
    if name not in _PRE_1_0_OBJECTIVE_PARAMETERS:
        raise LegacyFormatError(
            f"it was saved by XGBoost {'before 1.0' if major < 1 else major} without its objective's "
            f"settings, and {name[:40]!r} has no known defaults"
        )
    objective = {"name": name, **json.loads(json.dumps(_PRE_1_0_OBJECTIVE_PARAMETERS[name]))}
    if "softmax_multiclass_param" in objective:
        objective["softmax_multiclass_param"]["num_class"] = str(num_class)
    return objective


def _read_gbtree(reader: "_Reader", name: str, as_arrays: bool) -> dict:
    num_trees, num_parallel_tree, _, _, _, _, size_leaf_vector = reader.unpack(_GBTREE)
    if num_trees < 0:
        raise LegacyFormatError(f"it claims {num_trees} trees")
    trees = [_read_tree(reader, number, as_arrays) for number in range(num_trees)]
    tree_info = reader.array(np.dtype("<i4"), num_trees).tolist()
    model = {
        "gbtree_model_param": {
            "num_parallel_tree": str(max(1, num_parallel_tree)),
            "num_trees": str(num_trees),
            "size_leaf_vector": "0",
        },
        "tree_info": tree_info,
        "trees": trees,
    }
    if size_leaf_vector:
        raise LegacyFormatError("its trees have leaf vectors, which the legacy format never held")
    gbtree = {"name": "gbtree", "model": model}
    if name == "gbtree":
        return gbtree
    weights = reader.array(np.dtype("<f4"), reader.count(4)).tolist() if num_trees else []
    return {"name": "dart", "gbtree": gbtree, "weight_drop": weights}


def _read_tree(reader: "_Reader", number: int, as_arrays: bool) -> dict:
    _, num_nodes, num_deleted, _, num_feature, size_leaf_vector = reader.unpack(_TREE)
    if num_nodes < 1:
        raise LegacyFormatError(f"tree {number} claims {num_nodes} nodes")
    nodes = reader.array(_NODE, num_nodes)
    stats = reader.array(_STAT, num_nodes)
    parents = nodes["parent"].view("<u4") & 0x7FFFFFFF  # the top bit says "is a left child"

    def listed(array: np.ndarray, dtype: str):  # as arrays: the types XGBoost gives each field in its UBJSON
        return np.ascontiguousarray(array, dtype=dtype) if as_arrays else array.tolist()

    return {
        "base_weights": listed(stats["base_weight"], "<f4"),
        "categories": listed(np.empty(0), "<i4"),
        "categories_nodes": listed(np.empty(0), "<i4"),
        "categories_segments": listed(np.empty(0), "<i8"),
        "categories_sizes": listed(np.empty(0), "<i8"),
        "default_left": listed(nodes["sindex"] >> 31, "u1"),
        "id": number,
        "left_children": listed(nodes["left"], "<i4"),
        "loss_changes": listed(stats["loss_chg"], "<f4"),
        "parents": listed(parents, "<i4"),
        "right_children": listed(nodes["right"], "<i4"),
        "split_conditions": listed(nodes["info"], "<f4"),
        "split_indices": listed(nodes["sindex"] & 0x7FFFFFFF, "<i4"),
        "split_type": listed(np.zeros(num_nodes, dtype="u1"), "u1"),
        "sum_hessian": listed(stats["sum_hess"], "<f4"),
        "tree_param": {
            "num_deleted": str(num_deleted),
            "num_feature": str(num_feature),
            "num_nodes": str(num_nodes),
            "size_leaf_vector": str(size_leaf_vector),
        },
    }


def _read_gblinear(reader: "_Reader", as_arrays: bool) -> dict:
    reader.unpack(_GBLINEAR)
    weights = reader.array(np.dtype("<f4"), reader.count(4))
    return {"model": {"weights": np.ascontiguousarray(weights) if as_arrays else weights.tolist()}, "name": "gblinear"}


def _float_text(value: float) -> str:
    """A float32 as the shortest decimal text that reads back as the same float32."""
    mantissa, exponent = np.format_float_scientific(np.float32(value), unique=True, trim="-").split("e")
    return f"{mantissa}E{int(exponent)}"


class _Reader:
    """Reads a legacy model's fields in order, refusing any count the bytes left cannot hold."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.offset = 4 if bytes(data[:4]) == b"binf" else 0

    def learner(self) -> Tuple:
        self.offset = 4 if bytes(self.data[:4]) == b"binf" else 0
        return self.unpack(_LEARNER)

    def unpack(self, layout: struct.Struct) -> Tuple:
        return layout.unpack(self.take(layout.size))

    def take(self, size: int) -> memoryview:
        if size < 0 or self.offset + size > len(self.data):
            raise LegacyFormatError("it ends before the model does")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def count(self, item_size: int) -> int:
        (count,) = struct.unpack("<Q", self.take(8))
        if count * item_size > len(self.data) - self.offset:
            raise LegacyFormatError("a count in it is larger than the file")
        return count

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        return np.frombuffer(self.take(dtype.itemsize * count), dtype=dtype)

    def string(self) -> str:
        size = self.count(1)
        if size > _MAX_STRING:
            raise LegacyFormatError("a name in it is too long")
        try:
            return bytes(self.take(size)).decode()
        except UnicodeDecodeError:
            raise LegacyFormatError("a name in it is not text") from None

    def strings(self) -> List[str]:
        return [self.string() for _ in range(self.count(8))]

    def pairs(self) -> List[Tuple[str, str]]:
        return [(self.string(), self.string()) for _ in range(self.count(16))]
