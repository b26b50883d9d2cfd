"""The XGBoost version matrix of tests/fixtures/xgboost_matrix (made by its make_matrix.py)."""

import json
import os

import numpy as np

from .paths import MATRIX

MANIFEST = json.load(open(os.path.join(MATRIX, "manifest.json")))
MATRIX_ROWS = np.array(json.load(open(os.path.join(MATRIX, "rows.json"))), dtype=np.float64).astype(np.float32)
