"""What an XGBoost model file holds, which XGBoost wrote it, and the booster this server makes of it.

Formats are told from the bytes, not the name:

- JSON and UBJSON (XGBoost 1.0+): loaded as they are, unless a newer XGBoost
  than the runtime wrote them. A newer release may store a field in a way the
  runtime reads as something else (3.1 wrote the base score as a vector, which
  3.0 read as another number), so such a file is refused by name, not guessed at.
- Legacy binary (SageMaker's 1.x containers; XGBoost 3.1 no longer reads it):
  converted to the JSON model XGBoost 1.x made of it (``legacy_binary``), which
  XGBoost is given as UBJSON.
- Pickles (SageMaker's 0.90-1 ... 1.2-x containers): only when the operator
  allows them, since unpickling runs code. The booster inside is taken out of
  the pickle without XGBoost's own unpickling, so the 0.90 (legacy binary) and
  1.0-1.2 ("CONFIG-offset:") states that XGBoost 3.1+ cannot read are converted too.
"""

import io
import json
import pickle
import re
import struct
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import orjson
import xgboost as xgb

from ..errors import BrokenModel, describe
from . import legacy_binary

RUNTIME_VERSION = tuple(int(part) for part in re.findall(r"\d+", xgb.__version__)[:3])
_JSON_VERSION = re.compile(rb'"version"\s*:\s*\[\s*(\d{1,4})\s*,\s*(\d{1,4})\s*,\s*(\d{1,4})\s*\]')
_UBJ_VERSION_KEY = b"\x07version["  # the key's length (7, as an int8 or int64), its name, an array
# A tree's leaf vector size over 1 (multi_strategy="multi_output_tree"), in JSON or UBJSON
_VECTOR_LEAVES = re.compile(
    rb'size_leaf_vector(?:"\s*:\s*"|S(?:[iU].|I..|l....|L........))0*(?:[2-9]|[1-9][0-9]+)', re.DOTALL
)
# XGBoost 3.2 stores vector leaves in another layout and crashes on the earlier one
VECTOR_LEAF_LAYOUT_SINCE = (3, 2)
_SERIALISATION_HEADER = b"CONFIG-offset:"  # XGBoost 1.0-1.2's pickled state: offset, legacy model, config


@dataclass(frozen=True)
class ModelFile:
    """A model file's bytes as XGBoost's ``load_model`` takes them, and where they came from."""

    kind: str  # "json", "ubj", "legacy-binary" or "pickle"
    saved_by: str  # the XGBoost version that wrote it, as far as the file tells
    model: bytes  # JSON or UBJSON model bytes (a legacy model converted, to UBJSON); b"" for a pickle's snapshot
    source: bytes  # the model as the file holds it, for a second reader: JSON, UBJSON or legacy binary
    source_format: str  # "json", "ubj" or "legacy-binary"; "" when only XGBoost reads it (a snapshot)
    snapshot: Optional[bytes] = None  # a pickle's JSON/UBJSON state (model and configuration)
    converted: Optional[dict] = None  # a legacy model's values as ``model`` holds them (NumPy arrays for lists)

    def own_values(self) -> Optional[dict]:
        """The JSON model of what the file itself says (lists, not arrays), before XGBoost reads it:
        a JSON file's, or a legacy file's as converted; None for UBJSON and pickles."""
        if self.kind == "json":
            return parse_json(self.model)
        if self.kind == "legacy-binary" and self.converted is not None:
            return _listed(self.converted)
        return None

    def booster(self) -> xgb.Booster:
        """The booster, loaded by the runtime's XGBoost; raises BrokenModel with the reason."""
        try:
            booster = xgb.Booster()
            if self.snapshot is not None:
                booster.__setstate__({"handle": bytearray(self.snapshot)})
            else:
                booster.load_model(bytearray(self.model))
            return booster
        except Exception as error:  # XGBoostError, or a malformed state
            raise BrokenModel(f"XGBoost could not load the {self.kind} model file: {describe(error)}") from None


def tree_model(model: dict) -> dict:
    """The ``model`` of a JSON model's tree booster (``{}`` for gblinear)."""
    booster = model["learner"]["gradient_booster"]
    if booster["name"] == "dart":
        booster = booster["gbtree"]
    return booster["model"] if booster["name"] == "gbtree" else {}


def trees(model: dict) -> list:
    """The trees of a JSON model (none for gblinear)."""
    return tree_model(model).get("trees", [])


def outputs(learner_model_param: dict) -> int:
    """Values predicted per row: classes of a multi-class model, targets of a multi-target one."""
    return max(1, int(learner_model_param.get("num_class", 0)), int(learner_model_param.get("num_target", 1)))


def base_scores(learner_model_param: dict) -> list:
    """The base score(s): a number before XGBoost 3.1, a vector ("[7.9521604E0]") since."""
    return [float(part) for part in str(learner_model_param["base_score"]).strip("[]").split(",")]


def parse_json(data: bytes) -> dict:
    """A JSON model's values: orjson (a few times faster), else ``json`` for the NaN and Infinity orjson refuses.

    Both keep the last of repeated keys, as XGBoost's own reader does.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _listed(value):
    """``value`` with its NumPy arrays as lists, at every depth."""
    if isinstance(value, dict):
        return {key: _listed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_listed(item) for item in value]
    return value.tolist() if isinstance(value, np.ndarray) else value


def kind_of(data: bytes) -> str:
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if data[:1] == b"{":
        return "json" if data[1:2] in (b'"', b"}", b" ", b"\n", b"\r", b"\t") else "ubj"
    return "legacy-binary"


def read(data: bytes, allow_pickle: bool) -> ModelFile:
    """The model in a file's bytes; raises BrokenModel when it cannot or may not be served."""
    kind = kind_of(data)
    if kind == "pickle":
        if not allow_pickle:
            raise BrokenModel(
                "the artifact is a pickled model; pickles can run code when loaded, so they are only "
                "loaded when the server is started with MLSERVER_MME_ALLOW_PICKLE=true"
            )
        return _from_pickle(data)
    if kind == "legacy-binary":
        return _from_legacy(data, kind)
    saved_by = _json_version(data) if kind == "json" else _ubj_version(data)
    _refuse_unreadable(data, saved_by)
    return ModelFile(kind, _text(saved_by), data, data, kind)


def _from_legacy(data: bytes, kind: str) -> ModelFile:
    try:
        model, values = legacy_binary.to_ubjson(data)
        return ModelFile(kind, legacy_binary.saved_by(data), model, data, "legacy-binary", converted=values)
    except legacy_binary.LegacyFormatError as error:
        raise BrokenModel(f"could not load the {kind} model file as XGBoost's legacy binary format: {error}") from None


def _refuse_unreadable(data: bytes, saved_by: Optional[Tuple[int, ...]]) -> None:
    """Refuse by name what the runtime would read differently from its writer, or crash on."""
    if saved_by is None:  # XGBoost has written one since 1.0: without it, nothing says how to read the rest
        raise BrokenModel("the model file records no XGBoost version (its top-level \"version\"), so the "
                          "server cannot tell how to read it; save it again with XGBoost's save_model")
    if saved_by[:2] < VECTOR_LEAF_LAYOUT_SINCE and _VECTOR_LEAVES.search(data):
        raise BrokenModel(
            f"the model has multi-output trees (multi_strategy=\"multi_output_tree\") saved by XGBoost "
            f"{_text(saved_by)}; XGBoost {xgb.__version__}, which this server runs, stores them in another "
            f"layout and cannot read these. Train or save it with XGBoost "
            f"{'.'.join(map(str, VECTOR_LEAF_LAYOUT_SINCE))} or later, or use one_output_per_tree"
        )
    if saved_by[:2] > RUNTIME_VERSION[:2]:
        raise BrokenModel(
            f"the model was saved by XGBoost {_text(saved_by)}, newer than the XGBoost {xgb.__version__} this "
            f"server runs, which may read it differently; save it with XGBoost {RUNTIME_VERSION[0]}."
            f"{RUNTIME_VERSION[1]} or older, or upgrade the server"
        )


def _text(version: Optional[Tuple[int, ...]]) -> str:
    return ".".join(map(str, version)) if version else "unknown"


def _json_version(data: bytes) -> Optional[Tuple[int, ...]]:
    # The top level's "version" is its last key (XGBoost writes keys sorted): the last match.
    found = None
    for found in _JSON_VERSION.finditer(data):  # noqa: B007 (the loop only walks to the last match)
        pass
    return tuple(int(part) for part in found.groups()) if found else None


def _ubj_version(data: bytes) -> Optional[Tuple[int, ...]]:
    """The ``version`` array of a UBJSON model: three integers, typed or not."""
    start = data.rfind(_UBJ_VERSION_KEY)
    if start < 0:
        return None
    view, at = data[start + len(_UBJ_VERSION_KEY) : start + len(_UBJ_VERSION_KEY) + 64], 0
    sizes = {b"i": "b", b"U": "B", b"I": ">h", b"l": ">i", b"L": ">q"}
    typed = None
    if view[:1] == b"$":
        typed, at = view[1:2], 2
    if view[at : at + 1] == b"#":  # a count follows: skip it
        if view[at + 1 : at + 2] not in sizes:
            return None
        at += 2 + struct.calcsize(sizes[view[at + 1 : at + 2]])
    parts: list = []
    try:
        while len(parts) < 3:
            marker = typed or view[at : at + 1]
            at += 0 if typed else 1
            layout = sizes[marker]
            parts.append(struct.unpack_from(layout, view, at)[0])
            at += struct.calcsize(layout)
    except (KeyError, struct.error):
        return None
    return tuple(parts)


class _BoosterState:
    """Stands in for ``xgboost.core.Booster`` while unpickling: keeps the state, runs nothing."""

    def __setstate__(self, state):
        self.state = state


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("xgboost.core", "Booster"):
            return _BoosterState
        return super().find_class(module, name)


def _from_pickle(data: bytes) -> ModelFile:
    try:
        value = _Unpickler(io.BytesIO(data)).load()
    except Exception as error:  # anything a pickle raises
        raise BrokenModel(f"the pickle could not be loaded: {describe(error)}") from None
    if not isinstance(value, _BoosterState):
        value = getattr(value, "_Booster", None)  # a scikit-learn model keeps its booster there
    raw = value.state.get("handle") if isinstance(value, _BoosterState) and isinstance(value.state, dict) else None
    if not isinstance(raw, (bytes, bytearray)):
        raise BrokenModel("the pickle does not hold an XGBoost Booster or scikit-learn model")
    raw = bytes(raw)
    if raw.startswith(_SERIALISATION_HEADER):  # XGBoost 1.0-1.2: the model is legacy binary
        at = len(_SERIALISATION_HEADER)
        (size,) = struct.unpack_from("<q", raw, at) if len(raw) >= at + 8 else (-1,)
        if not 0 <= size <= len(raw) - at - 8:
            raise BrokenModel("the pickled booster's state is truncated")
        return _from_legacy(raw[at + 8 : at + 8 + size], "pickle")
    if kind_of(raw) == "legacy-binary":  # XGBoost before 1.0
        return _from_legacy(raw, "pickle")
    model_version = _json_version(raw) if kind_of(raw) == "json" else _ubj_version(raw)
    _refuse_unreadable(raw, model_version)
    return ModelFile("pickle", _text(model_version), b"", b"", "", snapshot=raw)
