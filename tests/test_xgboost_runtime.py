"""The XGBoost runtime's prediction when its model is unloaded under a batch in a pool thread."""

import numpy as np
import pytest
from mlserver.settings import ModelSettings

from mlserver_mme.errors import ModelStillLoading
from mlserver_mme.runtimes.xgboost import XGBoostModel


def test_a_model_unloaded_under_a_request_answers_retry_not_500():
    model = XGBoostModel(ModelSettings(name="m", implementation=XGBoostModel))
    model._num_features, model._outputs = 6, 1  # as after a load; the unload then cleared the booster
    with pytest.raises(ModelStillLoading, match="retry"):
        model.predict_features(np.zeros((1, 6)))
