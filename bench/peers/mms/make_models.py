"""Synthetic home-value regressors for the MMS peer, one folder per model as SageMaker's agent leaves them.

    python make_models.py --root /tmp/peer-mms --count 1000

``<root>/models/model_NNN/xgboost-model``: an XGBoost booster in the legacy binary format (what SageMaker's
built-in XGBoost 1.7-1 saves; needs xgboost < 2 to write), trained on 1,000 rows of the six features the
benchmarks send (year built, square feet, bedrooms, bathrooms, lot acres, garage spaces), 25 rounds of depth 5;
each model has its own price level, so answers tell models apart. Existing models are kept.
"""

import argparse
import os

import numpy as np
import xgboost as xgb

PARAMS = {"objective": "reg:squarederror", "max_depth": 5, "eta": 0.3, "nthread": 1, "seed": 0}


def training_set(index: int, rows: int = 1000):
    rng = np.random.default_rng(1000 + index)
    features = np.column_stack([
        rng.integers(1950, 2022, rows), rng.normal(2000, 500, rows).clip(600, 6000), rng.integers(1, 7, rows),
        rng.choice([1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0], rows), rng.normal(0.5, 0.25, rows).clip(0.05, 5.0),
        rng.integers(0, 4, rows),
    ]).astype(np.float32)
    weights = np.array([1000.0, 100.0, 10000.0, 8000.0, 40000.0, 5000.0])
    price = 50_000.0 + 5_000.0 * index + (features - [1950, 0, 0, 0, 0, 0]) @ weights + rng.normal(0, 10000, rows)
    return features, price.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="/tmp/peer-mms")
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args()
    made = 0
    for index in range(args.count):
        folder = os.path.join(args.root, "models", f"model_{index:03d}")
        path = os.path.join(folder, "xgboost-model")
        if os.path.exists(path):
            continue
        features, price = training_set(index)
        booster = xgb.train(PARAMS, xgb.DMatrix(features, label=price), num_boost_round=25)
        os.makedirs(folder, exist_ok=True)
        booster.save_model(path)  # no extension: the legacy binary format under xgboost 1.7
        made += 1
    print(f"{args.count} models in {os.path.join(args.root, 'models')} ({made} new)")


if __name__ == "__main__":
    main()
