"""The MMS handler service of the peer: what SageMaker's built-in XGBoost container answers, on the
SageMaker Inference Toolkit's ``DefaultHandlerService`` (its ``Transformer`` calls the handler's
``default_model_fn``, ``default_input_fn``, ``default_predict_fn`` and ``default_output_fn``).

MMS imports this module as ``default_service_handler=xgb_mme_handler`` (start.sh puts this folder on
``PYTHONPATH``) and takes its one top-level class; so the module holds exactly one class, and no
top-level ``handle``.

- model: the one file of the model folder (``xgboost-model`` first), a pickle or else a native booster
  file, predicting on one thread;
- request: ``text/csv`` rows of floats without a header, empty cells as NaN, the delimiter sniffed on the
  first line as the container does (``PEER_XGB_SNIFF_CSV=0``: always a comma); another type is a 415;
- response: a JSON list of predictions by default; ``Accept: text/csv``: the predictions joined by commas.
"""

import csv
import json
import os
import pickle

import numpy as np
import xgboost as xgb
from sagemaker_inference import content_types, default_inference_handler
from sagemaker_inference.default_handler_service import DefaultHandlerService
from sagemaker_inference.errors import GenericInferenceToolkitError
from sagemaker_inference.transformer import Transformer


class HandlerService(DefaultHandlerService):
    """One per MMS model (its backend process); its workers fork from it."""

    class Handler(default_inference_handler.DefaultInferenceHandler):
        sniff = os.environ.get("PEER_XGB_SNIFF_CSV", "1") == "1"

        def default_model_fn(self, model_dir, context=None):
            names = sorted(name for name in os.listdir(model_dir)
                           if not name.startswith(".") and os.path.isfile(os.path.join(model_dir, name)))
            if not names:
                raise GenericInferenceToolkitError(500, f"no model file in {model_dir}")
            path = os.path.join(model_dir, "xgboost-model" if "xgboost-model" in names else names[0])
            try:
                with open(path, "rb") as file:
                    booster = pickle.load(file)
            except Exception:  # not a pickle: a booster file
                booster = xgb.Booster()
                booster.load_model(path)
            booster.set_param("nthread", 1)
            return booster

        def default_input_fn(self, input_data, content_type, context=None):
            if (content_type or "").split(";")[0].strip().lower() not in (content_types.CSV, "csv"):
                raise GenericInferenceToolkitError(415, f"Content-Type {content_type} is not supported: text/csv only")
            text = input_data.decode("utf-8") if isinstance(input_data, (bytes, bytearray)) else input_data
            text = text.strip()
            if not text:
                raise GenericInferenceToolkitError(204, "empty body")
            lines = text.split("\n")
            delimiter = ","
            if self.sniff:
                try:
                    found = csv.Sniffer().sniff(lines[0][:512]).delimiter
                    delimiter = delimiter if found.isalnum() else found
                except csv.Error:
                    pass
            try:
                cells = [[cell or "nan" for cell in line.rstrip("\r").split(delimiter)] for line in lines]
                return xgb.DMatrix(np.array(cells).astype(float))
            except ValueError as error:
                raise GenericInferenceToolkitError(415, f"not CSV rows of numbers: {error}") from error

        def default_predict_fn(self, data, model, context=None):
            try:
                return model.predict(data, validate_features=False)
            except Exception as error:  # e.g. a wrong number of features
                raise GenericInferenceToolkitError(400, str(error)) from error

        def default_output_fn(self, prediction, accept, context=None):
            kind = (accept or content_types.JSON).split(";")[0].strip().lower()
            if kind in (content_types.CSV, "csv"):
                return ",".join(map(str, prediction.tolist())).encode(), content_types.CSV
            if kind in (content_types.JSON, "json", content_types.ANY):
                return json.dumps(prediction.tolist()).encode(), content_types.JSON
            raise GenericInferenceToolkitError(415, f"Accept {accept} is not supported: text/csv or application/json")

    def __init__(self):
        super().__init__(transformer=Transformer(default_inference_handler=self.Handler()))
