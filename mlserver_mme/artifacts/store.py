"""Where model artifacts live: an S3 prefix or a local folder.

Both stores answer the same three questions (what is there, what is this object,
fetch it into a file) and raise the same two errors, so nothing above this module
knows which one it talks to. Calls block: callers run them off the event loop.
"""

import os
from dataclasses import dataclass
from typing import List, Protocol
from urllib.parse import urlparse

ARTIFACT_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".json", ".ubj", ".bst", ".pkl", ".pickle")
"""Names listed as models; a file named ``xgboost-model`` (no suffix) is listed too."""


class ObjectMissing(LookupError):
    """No readable artifact at that path; ``location`` says where it was looked for."""

    def __init__(self, location: str):
        super().__init__(location)
        self.location = location


class StoreUnreachable(OSError):
    """The store could not be reached or refused the request."""


class ObjectTooLarge(ValueError):
    """The object is larger than the caller will take: refused on its size, or as soon as the bytes passed it."""

    def __init__(self, location: str, size: int, limit: int):
        super().__init__(f"{location} is {size} bytes or more, more than {limit}")
        self.size, self.limit = size, limit


@dataclass(frozen=True)
class ObjectInfo:
    location: str  # for messages: s3://bucket/key or a local path
    etag: str  # changes when the artifact changes
    size: int


class Store(Protocol):
    def list(self) -> List[str]: ...

    def head(self, relpath: str) -> ObjectInfo: ...

    def fetch(self, relpath: str, destination: str, max_bytes: int) -> ObjectInfo:
        """Copy the object into ``destination``; ObjectTooLarge past ``max_bytes``, before or while reading."""
        ...


def is_listed_artifact(relpath: str) -> bool:
    name = relpath.rsplit("/", 1)[-1]
    return name == "xgboost-model" or name.endswith(ARTIFACT_SUFFIXES)


def open_store(prefix: str) -> Store:
    """The store for ``s3://bucket/path/``, ``file:///path`` or a folder path."""
    parsed = urlparse(prefix)
    if parsed.scheme == "s3":
        return S3Store(parsed.netloc, parsed.path.lstrip("/"))
    if parsed.scheme == "file":
        return LocalStore(parsed.path)
    if parsed.scheme:
        raise ValueError(f"unsupported model prefix '{prefix}': use s3://bucket/path/, file:// or a folder")
    return LocalStore(prefix)


class LocalStore:
    def __init__(self, root: str):
        self.root = os.path.realpath(root)

    def _path(self, relpath: str) -> str:
        path = os.path.realpath(os.path.join(self.root, relpath))
        # A symlink inside the folder must not lead out of it.
        if os.path.commonpath([path, self.root]) != self.root or not os.path.isfile(path):
            raise ObjectMissing(os.path.join(self.root, relpath))
        return path

    def list(self) -> List[str]:
        found = []
        for folder, _, files in os.walk(self.root):
            for name in files:
                relpath = os.path.relpath(os.path.join(folder, name), self.root).replace(os.sep, "/")
                if is_listed_artifact(relpath):
                    found.append(relpath)
        return sorted(found)

    def head(self, relpath: str) -> ObjectInfo:
        path = self._path(relpath)
        stat = os.stat(path)
        return ObjectInfo(path, f"{stat.st_mtime_ns:x}-{stat.st_size:x}", stat.st_size)

    def fetch(self, relpath: str, destination: str, max_bytes: int) -> ObjectInfo:
        info = self.head(relpath)
        if info.size > max_bytes:
            raise ObjectTooLarge(info.location, info.size, max_bytes)
        with open(self._path(relpath), "rb") as source:
            _copy_at_most(source, destination, max_bytes, info.location)  # the file may grow meanwhile
        return info


class S3Store:
    """An S3 prefix, reached through boto3's standard configuration chain.

    Endpoint (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``), credentials, region
    and retries all come from boto3's usual sources, and the region also from ``AWS_REGION``
    (which the AWS SDKs and our Kubernetes ConfigMap use, and this botocore would ignore), before
    ``AWS_DEFAULT_REGION``.
    """

    def __init__(self, bucket: str, key_prefix: str):
        import boto3
        from botocore.config import Config

        if not bucket:
            raise ValueError("the S3 model prefix names no bucket: use s3://bucket/path/")
        self.bucket = bucket
        self.key_prefix = key_prefix if not key_prefix or key_prefix.endswith("/") else key_prefix + "/"
        self._client = boto3.session.Session(region_name=os.environ.get("AWS_REGION") or None).client(
            "s3", config=Config(retries={"mode": "standard", "max_attempts": 3}, max_pool_connections=32)
        )

    def _location(self, relpath: str) -> str:
        return f"s3://{self.bucket}/{self.key_prefix}{relpath}"

    def list(self) -> List[str]:
        found = []
        with _s3_errors(self._location("")):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.key_prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    relpath = item["Key"][len(self.key_prefix) :]
                    if relpath and is_listed_artifact(relpath):
                        found.append(relpath)
        return sorted(found)

    def head(self, relpath: str) -> ObjectInfo:
        with _s3_errors(self._location(relpath)):
            reply = self._client.head_object(Bucket=self.bucket, Key=self.key_prefix + relpath)
        return ObjectInfo(self._location(relpath), reply["ETag"].strip('"'), reply["ContentLength"])

    def fetch(self, relpath: str, destination: str, max_bytes: int) -> ObjectInfo:
        # One GET: the ETag and size come with the body, so no HEAD first.
        location = self._location(relpath)
        with _s3_errors(location):
            reply = self._client.get_object(Bucket=self.bucket, Key=self.key_prefix + relpath)
            with reply["Body"] as body:  # closed unread when refused on its size
                if reply["ContentLength"] > max_bytes:
                    raise ObjectTooLarge(location, reply["ContentLength"], max_bytes)
                _copy_at_most(body, destination, max_bytes, location)
        return ObjectInfo(location, reply["ETag"].strip('"'), reply["ContentLength"])


def _copy_at_most(source, destination: str, max_bytes: int, location: str) -> None:
    copied = 0
    with open(destination, "wb") as out:
        while True:
            chunk = source.read(1024 * 1024)
            if not chunk:
                return
            copied += len(chunk)
            if copied > max_bytes:
                raise ObjectTooLarge(location, copied, max_bytes)
            out.write(chunk)


class _s3_errors:
    """Turn botocore's errors into ObjectMissing / StoreUnreachable."""

    def __init__(self, location: str):
        self.location = location

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None:
            return False
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(error, ClientError):
            code = error.response.get("Error", {}).get("Code", "")
            # S3 answers 403 for a missing key when listing is not allowed: both are "not there".
            if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket", "403", "AccessDenied", "Forbidden"):
                raise ObjectMissing(self.location) from None
            raise StoreUnreachable(f"S3 refused {self.location}: {code or error}") from None
        if isinstance(error, BotoCoreError):
            raise StoreUnreachable(f"S3 could not be reached for {self.location}: {error}") from None
        return False
