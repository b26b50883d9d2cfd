"""What the front asks of a runtime that predicts feature matrices directly (``runtimes/xgboost.py``).

A runtime deriving from ``FeaturePredictor`` answers SageMaker's routes without MLServer's V2 request
codec; any other runtime an archive names is called through ``MLModel.predict``.
"""

import abc
from typing import Callable, Optional, Union

import numpy as np
import scipy.sparse

Features = Union[np.ndarray, scipy.sparse.csr_matrix]
"""Rows of feature values: dense, or CSR with absent values missing."""

MAX_ROWS = 1_000_000
"""Rows one request may hold, and values one answer may hold."""


class FeaturePredictor(abc.ABC):
    @property
    @abc.abstractmethod
    def values_per_row(self) -> int:
        """Values predicted per row (classes or targets)."""

    @property
    @abc.abstractmethod
    def visits_per_row(self) -> Optional[int]:
        """The most tree nodes one row can visit, None when unknown: the cost of a row."""

    @abc.abstractmethod
    def predictor(self) -> Callable[[Features], np.ndarray]:
        """Predictions for a matrix of rows, bound to the version loaded now (taken on the event loop,
        run in a batch thread)."""
