"""Make the bundled home-value models, one XGBoost regressor per city.

The models follow AWS's multi-model endpoint sample: six features in this order
YEAR_BUILT, SQUARE_FEET, NUM_BEDROOMS, NUM_BATHROOMS, LOT_ACRES, GARAGE_SPACES,
synthetic houses priced by a fixed formula plus a per-city level, and the
hyper-parameters of the sample (max_depth 5, eta 0.2, gamma 4, min_child_weight 6,
subsample 0.8, reg:squarederror, 25 rounds).

Each model is written as SageMaker's built-in XGBoost container 1.3-1 ... 1.7-1
writes it: a ``model.tar.gz`` holding one file, ``xgboost-model``, at its root.
Run under xgboost 1.7.x the file is in XGBoost's legacy binary format, exactly
what those containers produce; the committed models were made that way:

    python -m venv /tmp/xgb17 && /tmp/xgb17/bin/pip install 'xgboost==1.7.6' 'numpy<2'
    /tmp/xgb17/bin/python examples/make_models.py examples/models

Under a newer xgboost the same name holds UBJSON (what 2.x containers write).
"""

import argparse
import io
import os
import tarfile

import numpy as np
import xgboost as xgb

CITIES = {
    "NewYork_NY": 1.30,
    "Chicago_IL": 0.95,
    "Houston_TX": 0.90,
    "LosAngeles_CA": 1.40,
    "northeast/Boston_MA": 1.20,
}
PARAMS = {
    "max_depth": 5,
    "eta": 0.2,
    "gamma": 4,
    "min_child_weight": 6,
    "subsample": 0.8,
    "objective": "reg:squarederror",
    "nthread": 1,
    "seed": 0,
}
ROUNDS = 25


def synthetic_houses(rng: np.random.Generator, n: int, level: float):
    """Houses and prices as in the AWS sample, the price scaled by a city level."""
    year = np.minimum(2019, rng.normal(1995, 10, n)).astype(int)
    sqft = rng.normal(3000, 750, n).astype(int)
    beds = rng.integers(2, 7, n)
    baths = rng.integers(2, 7, n) / 2.0
    lot = np.round(rng.normal(1.0, 0.25, n), 2)
    garage = rng.integers(0, 4, n)
    price = (
        150 * sqft + 10000 * beds + 15000 * baths + 15000 * lot + 15000 * garage
        - 5000 * (2019 - year)
    ) * level
    features = np.column_stack([year, sqft, beds, baths, lot, garage]).astype(np.float32)
    return features, price.astype(np.float32)


def train(seed: int, level: float, rows: int = 1000) -> xgb.Booster:
    rng = np.random.default_rng(seed)
    features, price = synthetic_houses(rng, rows, level)
    return xgb.train(PARAMS, xgb.DMatrix(features, label=price), num_boost_round=ROUNDS)


def booster_bytes(booster: xgb.Booster) -> bytes:
    """The bytes of ``save_model('xgboost-model')``: legacy binary on xgboost < 2."""
    major = int(xgb.__version__.split(".")[0])
    return bytes(booster.save_raw("deprecated" if major < 2 else "ubj"))


def write_tar_gz(path: str, files: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="folder to write <city>.tar.gz into")
    args = parser.parse_args()
    for seed, (city, level) in enumerate(sorted(CITIES.items())):
        booster = train(seed, level)
        path = os.path.join(args.out, city + ".tar.gz")
        write_tar_gz(path, {"xgboost-model": booster_bytes(booster)})
        print(f"{path} (xgboost {xgb.__version__})")


if __name__ == "__main__":
    main()
