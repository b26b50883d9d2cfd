"""Models written by every XGBoost line people use answer what they answered at training, or are refused by name.

The fixtures (tests/fixtures/xgboost_matrix, made by its make_matrix.py) hold small models
that XGBoost 1.3.3 ... 3.2.0 each trained and saved in every format it writes, with the
predictions that version made of rows.json.
"""

import copy
import json
import os
import pickle
import struct
import warnings

import numpy as np
import pytest
import scipy.sparse
from hypothesis import given, settings
from hypothesis import strategies as st
from support.artifacts import EXAMPLES, ROWS, example_targets, legacy_model_bytes
from support.matrix import MANIFEST, MATRIX, MATRIX_ROWS

from mlserver_mme.errors import BrokenModel
from mlserver_mme.runtimes import legacy_binary, model_file
from mlserver_mme.runtimes.xgboost import GTIL_MAX_ROWS, _gtil_for, batch_predictor, check_model_file, load_booster

# A dart model's trees are weighted as they are summed, and XGBoost 3.2's inplace_predict does that in
# another order than the DMatrix predict of the version that trained it: within 2 float32 ulp.
ULPS = {"dart": 2}
# What the runtime refuses, by name: XGBoost 3.2 crashes on multi-output trees written before it.
REFUSED = {(version, "multi_output_tree"): "multi-output trees" for version in ("2.1.4", "3.0.5", "3.1.3")}

warnings.filterwarnings("ignore", message=".*older version of XGBoost.*")


def _id(entry: dict) -> str:
    return entry["file"]


@pytest.mark.parametrize("entry", MANIFEST, ids=_id)
def test_every_matrix_model_answers_its_training_predictions_or_is_refused_by_name(entry):
    path = os.path.join(MATRIX, entry["file"])
    refusal = REFUSED.get((entry["version"], entry["variant"]))
    if refusal:
        with pytest.raises(BrokenModel, match=refusal) as refused:
            check_model_file(path, allow_pickle=True)
        assert f"XGBoost {entry['version']}" in refused.value.message
        return
    found = check_model_file(path, allow_pickle=True)
    assert found["format"] == entry["format"]
    assert found["compared_with"] in ("Treelite", "a NumPy evaluation", "a NumPy evaluation of XGBoost's reading",
                                      "XGBoost only")
    assert found["compared_with"] != "XGBoost only" or entry["format"] == "pickle"
    booster = load_booster(path, allow_pickle=True, nthread=1)
    answer = batch_predictor(booster)(MATRIX_ROWS).reshape(np.shape(entry["predictions"]))
    expected = np.asarray(entry["predictions"], dtype=np.float32)
    ulps = ULPS.get(entry["booster"], 0)
    assert np.all(np.abs(answer - expected) <= ulps * np.spacing(np.abs(expected))), (answer, expected)


@pytest.mark.parametrize("version", ["1.3.3", "1.5.2", "1.7.6", "2.1.4", "3.0.5"])
def test_legacy_binary_models_convert_to_the_json_model_their_own_xgboost_wrote(version):
    pairs = [
        (entry, os.path.join(MATRIX, entry["file"]).replace(".bin", ".json"))
        for entry in MANIFEST
        if entry["version"] == version and entry["format"] == "legacy-binary"
    ]
    assert len(pairs) >= 20
    for entry, json_path in pairs:
        converted = legacy_binary.to_json_model(open(os.path.join(MATRIX, entry["file"]), "rb").read())
        written = json.load(open(json_path))["learner"]
        for field in ("trees", "tree_info", "weights"):
            assert _booster_part(converted["learner"], field) == _booster_part(written, field), entry["file"]
        assert converted["learner"]["objective"] == written["objective"], entry["file"]
        for key in ("num_class", "num_feature"):
            assert converted["learner"]["learner_model_param"][key] == written["learner_model_param"][key]


def test_xgboost_reads_a_converted_legacy_model_as_ubjson_exactly_as_its_json():
    import xgboost

    files = [open(os.path.join(MATRIX, entry["file"]), "rb").read() for entry in MANIFEST
             if entry["format"] == "legacy-binary"]
    files += [legacy_model_bytes(target) for target in example_targets()]
    assert len(files) > 100
    for data in files:
        try:
            ubj, values = legacy_binary.to_ubjson(data)
        except legacy_binary.LegacyFormatError:
            continue  # refused by name (a matrix entry the server refuses)
        boosters = []
        for model in (ubj, json.dumps(legacy_binary.to_json_model(data)).encode()):
            booster = xgboost.Booster()
            booster.load_model(bytearray(model))
            boosters.append(json.loads(bytes(booster.save_raw("json"))))
        assert boosters[0] == boosters[1]
        assert boosters[0]["learner"]["gradient_booster"] != {}


def _booster_part(learner: dict, field: str):
    booster = learner["gradient_booster"]
    if booster["name"] == "dart":
        assert learner["gradient_booster"]["weight_drop"] is not None
        booster = booster["gbtree"]
    part = booster["model"].get(field)
    if field == "trees" and part:  # fields a later XGBoost adds, or writes as another type, left out
        keep = ("left_children", "right_children", "split_indices", "split_conditions", "default_left", "base_weights")
        return [{key: np.asarray(tree[key], dtype=np.float32).tolist() for key in keep} for tree in part]
    return np.asarray(part, dtype=np.float32).tolist() if field == "weights" and part else part


def test_a_model_whose_bytes_two_readers_read_differently_is_refused_naming_its_version(tmp_path):
    model = json.load(open(os.path.join(MATRIX, "3.2.0", "reg_squarederror.json")))
    tampered = copy.deepcopy(model)
    tampered["learner"]["gradient_booster"]["model"]["trees"][0]["default_left"][0] = 2  # XGBoost: left, Treelite: right
    with pytest.raises(BrokenModel) as refused:
        _check_bytes(tmp_path, json.dumps(tampered).encode())
    message = refused.value.message
    assert "differ from a second reading of the file (Treelite)" in message
    assert "saved by XGBoost 3.2.0" in message and "against" in message
    assert _check_bytes(tmp_path, json.dumps(model).encode())["compared_with"] == "Treelite"


def test_a_model_from_a_newer_xgboost_is_refused_by_name_never_guessed_at(tmp_path):
    model = json.load(open(os.path.join(MATRIX, "3.2.0", "reg_squarederror.json")))
    model["version"] = [3, 3, 0]
    with pytest.raises(BrokenModel, match=r"saved by XGBoost 3\.3\.0, newer than the XGBoost 3\.2"):
        _check_bytes(tmp_path, json.dumps(model).encode())
    ubj = open(os.path.join(MATRIX, "3.2.0", "reg_squarederror.ubj"), "rb").read()
    newer = ubj.replace(b"\x07version[#L\x00\x00\x00\x00\x00\x00\x00\x03i\x03i\x02", b"\x07version[#L\x00\x00\x00\x00\x00\x00\x00\x03i\x04i\x00")
    assert newer != ubj
    with pytest.raises(BrokenModel, match=r"saved by XGBoost 4\.0\.0"):
        _check_bytes(tmp_path, newer)


def _check_bytes(tmp_path, data: bytes) -> dict:
    path = tmp_path / "xgboost-model"
    path.write_bytes(data)
    return check_model_file(str(path), allow_pickle=False)


class _OldBooster:
    """Pickles as ``xgboost.core.Booster`` did with the state XGBoost 0.90 or 1.0-1.2 gave it."""

    def __init__(self, handle: bytes):
        self.handle = handle

    def __reduce__(self):
        return (_booster_class(), (), {"handle": bytearray(self.handle)})


def _booster_class():
    import xgboost.core

    return xgboost.core.Booster


@pytest.mark.parametrize("era", ["0.90", "1.0-1.2"])
def test_pickles_of_sagemakers_oldest_containers_are_read_when_allowed(era):
    legacy = legacy_model_bytes()
    handle = legacy if era == "0.90" else b"CONFIG-offset:" + struct.pack("<q", len(legacy)) + legacy + b'{"Learner":{}}'
    data = pickle.dumps(_OldBooster(handle))
    with pytest.raises(BrokenModel, match="MLSERVER_MME_ALLOW_PICKLE"):
        model_file.read(data, allow_pickle=False)
    read = model_file.read(data, allow_pickle=True)
    assert read.kind == "pickle" and read.source_format == "legacy-binary"
    answer = read.booster().inplace_predict(np.asarray(ROWS, dtype=np.float32)).tolist()
    from support.artifacts import EXPECTED

    assert answer == EXPECTED["predictions"]["Houston_TX.tar.gz"]


def _gtil_models():
    """Every bundled and matrix model served by both paths: (name, GTIL predictor, XGBoost's).

    Each GTIL model twice: made from XGBoost's booster and probed (a load without the check's
    verdict), and made from Treelite's own reading of the file (a load after the check proved it).
    """
    from mlserver_mme.runtimes import crosscheck
    from mlserver_mme.runtimes.gtil import gtil_predictor

    models = []
    for target in example_targets():
        source = model_file.read(legacy_model_bytes(target), allow_pickle=False)
        models.append((target, source, os.path.join(EXAMPLES, target)))
    for entry in MANIFEST:
        if entry["format"] in ("json", "ubj", "legacy-binary") and (entry["version"], entry["variant"]) not in REFUSED:
            path = os.path.join(MATRIX, entry["file"])
            models.append((entry["file"], model_file.read(open(path, "rb").read(), allow_pickle=False), path))
    found = []
    for name, source, path in models:
        booster = source.booster()
        booster.set_param({"nthread": 1})
        probed = _gtil_for(booster, path, 1)
        if probed is not None:
            found.append((name, probed, batch_predictor(booster)))
            found.append((f"{name} (as checked)", gtil_predictor(booster, 1, crosscheck.second_reading(source)),
                          batch_predictor(booster)))
    return found


GTIL_MODELS = _gtil_models()


def _row_values(thresholds):
    return st.one_of(st.sampled_from(thresholds), st.floats(width=32), st.just(float("nan")), st.just(0.0))


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_gtil_and_xgboost_answer_every_row_the_same_whatever_the_batch(data):
    name, gtil, batch = data.draw(st.sampled_from(GTIL_MODELS))
    width = 6
    thresholds = [-3.0, -0.0625, 0.5, 1.5, 1995.0, 3000.0, 2899.5]
    rows = data.draw(st.lists(st.lists(_row_values(thresholds), min_size=width, max_size=width), min_size=1,
                              max_size=GTIL_MAX_ROWS))
    dense = np.asarray(rows, dtype=np.float32)
    assert np.array_equal(gtil(dense), batch(dense), equal_nan=True), name
    sparse = scipy.sparse.csr_matrix(np.nan_to_num(dense, nan=0.0))
    sparse.eliminate_zeros()
    assert np.array_equal(gtil(sparse), batch(sparse), equal_nan=True), name


def test_the_gtil_differential_covers_bundled_and_matrix_models():
    names = [name for name, _, _ in GTIL_MODELS]
    assert sorted(name for name in names if name in example_targets()) == example_targets()
    assert len([name for name in names if name not in example_targets()]) > 40
    assert sum(name.endswith("(as checked)") for name in names) * 2 == len(names)


def test_a_damaged_legacy_file_is_refused_by_the_reader_never_a_stray_exception():
    data = legacy_model_bytes()
    rng = np.random.default_rng(7)
    damaged = [data[:cut] for cut in range(0, len(data), 97)]
    for _ in range(1500):
        flipped = bytearray(data)
        for position in rng.integers(0, len(data), rng.integers(1, 4)):
            flipped[position] = int(rng.integers(0, 256))
        damaged.append(bytes(flipped))
    for sample in damaged:
        try:
            legacy_binary.to_ubjson(sample)
        except legacy_binary.LegacyFormatError:
            pass  # refused, with the reason; anything else raised fails the test


@pytest.mark.parametrize("base_score", [float("nan"), float("inf"), 1e30])
def test_a_legacy_base_score_out_of_range_is_refused(base_score):
    data = bytearray(legacy_model_bytes())
    offset = 4 if data[:4] == b"binf" else 0
    struct.pack_into("<f", data, offset, base_score)
    struct.pack_into("<I", data, offset + 20, 0)  # major version 0: the score is a margin to transform
    objective = legacy_binary.to_json_model(legacy_model_bytes())["learner"]["objective"]["name"]
    if base_score == 1e30 and objective == "reg:squarederror":
        assert legacy_binary.to_json_model(bytes(data))["learner"]["learner_model_param"]["base_score"] == "1E30"
        return
    with pytest.raises(legacy_binary.LegacyFormatError, match="base score"):
        legacy_binary.to_json_model(bytes(data))


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("protocol", range(6))
def test_a_pickle_is_never_unpickled_unless_allowed(tmp_path, protocol):
    marker = tmp_path / "ran"
    with pytest.raises(BrokenModel):
        model_file.read(pickle.dumps(_RunsCode(str(marker)), protocol=protocol), allow_pickle=False)
    assert not marker.exists()


@pytest.mark.parametrize(
    "file", ["3.2.0/multi_softmax.json", "3.2.0/binary_hinge.json", "3.2.0/reg_squarederror_gblinear.json",
             "1.7.6/reg_squarederror.bin"],
)
def test_a_server_predictor_answering_wrong_is_caught_whatever_the_objective(file):
    from mlserver_mme.runtimes import crosscheck

    source = model_file.read(open(os.path.join(MATRIX, file), "rb").read(), allow_pickle=False)
    booster = source.booster()
    batch = batch_predictor(booster)
    model = source.own_values()
    reference = crosscheck.treelite_reading(source, model)
    assert crosscheck.check_agreement(source, model, True, booster, batch, None, GTIL_MAX_ROWS, reference)[0]

    def off_by_one(rows):
        return batch(rows) + 1  # another class, sign or value on every row

    with pytest.raises(BrokenModel, match="differ from a second reading"):
        crosscheck.check_agreement(source, model, True, booster, off_by_one, None, GTIL_MAX_ROWS, reference)
    # a small-batch predictor that is off is not exact: XGBoost keeps the small batches, and the model is served
    assert crosscheck.check_agreement(
        source, model, True, booster, batch, off_by_one, GTIL_MAX_ROWS, reference)[1] is False


def test_gtil_is_proven_exact_by_the_check_only_when_it_is():
    from mlserver_mme.runtimes import crosscheck
    from mlserver_mme.runtimes.gtil import gtil_predictor

    source = model_file.read(open(os.path.join(MATRIX, "1.7.6/reg_squarederror.bin"), "rb").read(), allow_pickle=False)
    booster = source.booster()
    model = source.own_values()
    reference = crosscheck.treelite_reading(source, model)
    batch, gtil = batch_predictor(booster), gtil_predictor(booster, 1, reference)
    assert crosscheck.check_agreement(source, model, True, booster, batch, gtil, GTIL_MAX_ROWS, reference) == (
        "Treelite", True)

    def last_bit_off(rows):
        answer = gtil(rows)
        answer[-1] = np.nextafter(answer[-1], np.float32(np.inf))  # one row, one float apart
        return answer

    assert crosscheck.check_agreement(source, model, True, booster, batch, last_bit_off, GTIL_MAX_ROWS, reference) == (
        "Treelite", False)


def test_a_base_score_xgboost_reads_otherwise_than_treelite_is_caught_even_where_gtil_would_serve():
    """XGBoost 3.0 read 3.1's vector base score as another number: GTIL, summing from Treelite's base score,
    is then not exact, and the comparison refuses the model."""
    from mlserver_mme.runtimes import crosscheck
    from mlserver_mme.runtimes.gtil import gtil_predictor

    source = model_file.read(open(os.path.join(MATRIX, "3.2.0/reg_squarederror.json"), "rb").read(), allow_pickle=False)
    model = source.own_values()
    misread = json.loads(source.model)
    misread["learner"]["learner_model_param"]["base_score"] = "[1.25E0]"  # what a misreading XGBoost would hold
    booster = model_file.read(json.dumps(misread).encode(), allow_pickle=False).booster()
    reference = crosscheck.treelite_reading(source, model)  # Treelite reads the file as it is
    gtil = gtil_predictor(booster, 1, reference)
    assert gtil is not None
    with pytest.raises(BrokenModel, match="differ from a second reading"):
        crosscheck.check_agreement(source, model, True, booster, batch_predictor(booster), gtil, GTIL_MAX_ROWS,
                                   reference)
