"""Floors: the work a request needs, done directly in this process."""

import io
import os
import tarfile
import tempfile
import time

import boto3
import numpy as np

from .servers import BUCKET, PREFIX

ROW = [1995, 3000, 3, 2.0, 1.0, 2]


def booster_of(raw: bytes):
    """A model file's booster, as directly as the runtime's XGBoost allows (a legacy file is converted)."""
    from mlserver_mme.runtimes.model_file import read

    return read(raw, allow_pickle=False).booster()


def floor_cold(s3_url, targets):
    """The same S3 GET + unpack + Booster load + predict, done directly in one process (ms each)."""
    client = boto3.client("s3", endpoint_url=s3_url, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    times = []
    for target in targets:
        started = time.perf_counter()
        data = client.get_object(Bucket=BUCKET, Key=PREFIX + target)["Body"].read()
        with tempfile.TemporaryDirectory() as folder:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(folder, filter="data")
            with open(os.path.join(folder, "xgboost-model"), "rb") as file:
                booster = booster_of(file.read())
        booster.inplace_predict(np.array([ROW], dtype=np.float32))
        times.append((time.perf_counter() - started) * 1e3)
    return times
