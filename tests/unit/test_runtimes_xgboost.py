"""The XGBoost runtime's prediction when its model is unloaded under a batch in a pool thread."""

import asyncio

import numpy as np
import pytest
from mlserver.settings import ModelSettings

from mlserver_mme.errors import BadPayload, ModelStillLoading
from mlserver_mme.runtimes.xgboost import XGBoostModel, batch_predictor


def test_a_model_unloaded_under_a_request_answers_retry_not_500():
    model = XGBoostModel(ModelSettings(name="m", implementation=XGBoostModel))
    model._num_features, model._outputs = 6, 1  # as after a load; the unload then cleared the booster
    with pytest.raises(ModelStillLoading, match="retry"):
        model.predict_features(np.zeros((1, 6)))


def test_a_predictor_taken_before_an_unload_or_a_swap_still_predicts():
    from support.artifacts import ROWS, booster

    model = XGBoostModel(ModelSettings(name="m", implementation=XGBoostModel))
    loaded = booster()
    model._booster, model._num_features, model._outputs = loaded, loaded.num_features(), 1
    model._batch = batch_predictor(loaded)
    predict = model.predictor()  # taken on the loop when the request got its model
    asyncio.run(model.unload())  # then an update swaps the version out before the batch thread runs
    rows = np.asarray(ROWS, dtype=np.float32)
    assert predict(rows).tolist() == loaded.inplace_predict(rows).tolist()
    with pytest.raises(ModelStillLoading):
        model.predictor()(rows)


def _loaded(tmp_path, monkeypatch, **extra) -> XGBoostModel:
    from mlserver.settings import ModelParameters
    from support.artifacts import legacy_model_bytes

    from mlserver_mme.runtimes import xgboost as runtime

    (tmp_path / "xgboost-model").write_bytes(legacy_model_bytes())
    probes = []
    def probed(booster, trees, nthread):
        probes.append(trees)
        return runtime.gtil_predictor(booster, nthread)

    monkeypatch.setattr(runtime, "exact_gtil", probed)
    model = XGBoostModel(ModelSettings(name="m", implementation=XGBoostModel,
                                       parameters=ModelParameters(uri=str(tmp_path), extra=extra)))
    asyncio.run(model.load())
    model.probes = len(probes)
    return model


def test_a_load_takes_the_checks_verdict_on_gtil_instead_of_probing_again(tmp_path, monkeypatch):
    from support.artifacts import EXPECTED, ROWS

    rows = np.asarray(ROWS, dtype=np.float32)
    proven = _loaded(tmp_path, monkeypatch, gtil_exact=True)
    assert proven.probes == 0 and proven._gtil is not None
    assert proven.predict_features(rows).tolist() == EXPECTED["predictions"]["Houston_TX.tar.gz"]
    refused = _loaded(tmp_path, monkeypatch, gtil_exact=False)
    assert refused.probes == 0 and refused._gtil is None
    unknown = _loaded(tmp_path, monkeypatch)  # no check result at hand (an older cache): probed here
    assert unknown.probes == 1 and unknown._gtil is not None


@pytest.mark.parametrize("rows", [1, 64, 65])
def test_a_tensor_of_words_is_a_bad_payload_whatever_the_batch(rows):
    from mlserver.types import InferenceRequest

    model = XGBoostModel(ModelSettings(name="m", implementation=XGBoostModel))
    request = InferenceRequest.model_validate(
        {"inputs": [{"name": "x", "shape": [rows, 1], "datatype": "BYTES", "data": ["word"] * rows}]}
    )
    with pytest.raises(BadPayload, match="numeric tensor"):
        asyncio.run(model.predict(request))


@pytest.mark.parametrize(
    "objective, classes", [("multi:softprob", 3), ("multi:softmax", 3), ("binary:hinge", 2)]
)
def test_linear_models_of_several_classes_or_a_sign_pass_the_check_and_answer_as_xgboost(tmp_path, objective, classes):
    """XGBoost's gblinear adds the first base score to every class (3.1+ keep one per class): the check's
    NumPy reading must too, and a discrete objective has no rounding-clear mask to share with trees."""
    import xgboost as xgb

    from mlserver_mme.runtimes.xgboost import check_model_file, load_booster

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(300, 4)).astype(np.float32)
    labels = ((rows[:, 0] > 0).astype(int) + (rows[:, 1] > 0)) % classes
    extra = {"num_class": classes} if objective.startswith("multi") else {}
    booster = xgb.train({"booster": "gblinear", "objective": objective, **extra}, xgb.DMatrix(rows, labels), 5)
    path = str(tmp_path / "model.json")
    booster.save_model(path)
    assert check_model_file(path, False)["compared_with"] == "a NumPy evaluation"
    served = load_booster(path, False, 1).predict(xgb.DMatrix(rows[:20]))
    assert np.array_equal(served, booster.predict(xgb.DMatrix(rows[:20])))


def test_a_request_of_no_rows_answers_no_values_on_either_path(tmp_path, monkeypatch):
    model = _loaded(tmp_path, monkeypatch, gtil_exact=True)
    assert model._gtil is not None
    assert model.predict_features(np.zeros((0, 6), dtype=np.float32)).shape == (0,)


def test_a_gtil_verdict_is_taken_only_from_a_check_that_proved_the_same_reading(tmp_path):
    from mlserver_mme.artifacts.repository import MMERepository
    from mlserver_mme.runtimes.xgboost import GTIL_READING

    describe = MMERepository.settings_for_folder
    repository = MMERepository.__new__(MMERepository)  # only what settings_for_folder reads, no store or cache
    repository.settings = type("S", (), {"allow_pickle": False, "xgboost_nthread": 1})()
    repository.allowed_runtimes = []
    repository._xgboost_template = ModelSettings(name="template", implementation=XGBoostModel, parameters={})
    now = describe(repository, "m.tar.gz", str(tmp_path), "m", checked={"gtil": True, "gtil_reading": GTIL_READING})
    earlier = describe(repository, "m.tar.gz", str(tmp_path), "m", checked={"gtil": True})  # an older release's check
    assert now.parameters.extra["gtil_exact"] is True
    assert "gtil_exact" not in earlier.parameters.extra  # probed again at load
