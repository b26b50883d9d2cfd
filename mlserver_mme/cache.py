"""The disk tier: artifacts downloaded and unpacked under the cache folder.

Layout under ``cache_dir``::

    models/<key>/content/...   an unpacked artifact, ready to load
    models/<key>/meta.json     its target path, prefix, ETag and sizes
    partial/<random>/          work in progress; removed at start-up

``<key>`` is a hash of the model prefix and the target path. A model is built
in ``partial/`` and published with one ``rename``, so a crash never leaves a
half-unpacked model under ``models/``. One fetch runs per model at a time, in
a thread (single flight): concurrent callers wait for the same result.
"""

import asyncio
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Dict

from .archive import UnsafeArchive, unpack
from .errors import ArtifactNotFound, BrokenModel, StorageUnavailable
from .store import ObjectMissing, Store, StoreUnavailable

logger = logging.getLogger("mlserver.mme")


@dataclass(frozen=True)
class LocalArtifact:
    target: str
    folder: str  # the unpacked content
    etag: str
    size: int  # bytes downloaded


class ArtifactCache:
    def __init__(self, store: Store, prefix: str, cache_dir: str, max_unpacked_bytes: int):
        self.store = store
        self.prefix = prefix
        self.max_unpacked_bytes = max_unpacked_bytes
        self.models_dir = os.path.join(cache_dir, "models")
        self.partial_dir = os.path.join(cache_dir, "partial")
        os.makedirs(self.models_dir, exist_ok=True)
        os.makedirs(self.partial_dir, exist_ok=True)
        self._known: Dict[str, LocalArtifact] = {}  # fetched or checked by this process
        self._flights: Dict[str, asyncio.Future] = {}

    def remove_partials(self) -> None:
        """Delete what interrupted fetches left behind (call once, at start-up)."""
        for name in os.listdir(self.partial_dir):
            shutil.rmtree(os.path.join(self.partial_dir, name), ignore_errors=True)

    async def fetch(self, target: str) -> LocalArtifact:
        """The unpacked artifact of ``target``, fetched at most once at a time."""
        known = self._known.get(target)
        if known is not None and os.path.isdir(known.folder):
            return known
        flight = self._flights.get(target)
        if flight is None:
            flight = asyncio.ensure_future(asyncio.to_thread(self._fetch_blocking, target))
            self._flights[target] = flight
            flight.add_done_callback(lambda _: self._flights.pop(target, None))
        # shield: a caller that gives up does not cancel the fetch for the others
        artifact = await asyncio.shield(flight)
        self._known[target] = artifact
        return artifact

    def _key(self, target: str) -> str:
        return hashlib.sha256(f"{self.prefix}\0{target}".encode()).hexdigest()[:32]

    def _fetch_blocking(self, target: str) -> LocalArtifact:
        final = os.path.join(self.models_dir, self._key(target))
        try:
            cached = self._read_meta(final, target)
            if cached is not None and self.store.head(target).etag == cached.etag:
                logger.info("model %s: reusing the unpacked artifact in %s", target, final)
                return cached
            return self._download_and_publish(target, final)
        except ObjectMissing as missing:
            raise ArtifactNotFound(
                f"Could not find model data for target model '{target}' at {missing.location}: "
                "check that the object exists and that the server may read it."
            ) from None
        except StoreUnavailable as error:
            raise StorageUnavailable(f"The model store is unavailable: {error}") from None

    def _download_and_publish(self, target: str, final: str) -> LocalArtifact:
        work = tempfile.mkdtemp(dir=self.partial_dir)
        try:
            started = time.perf_counter()
            download = os.path.join(work, "artifact")
            info = self.store.fetch(target, download)
            downloaded = time.perf_counter()
            content = os.path.join(work, "content")
            os.mkdir(content)
            try:
                unpack(download, content, self.max_unpacked_bytes, bare_name=target.rsplit("/", 1)[-1])
            except UnsafeArchive as error:
                raise BrokenModel(f"The artifact of '{target}' cannot be unpacked: {error}") from None
            os.remove(download)
            with open(os.path.join(work, "meta.json"), "w") as meta:
                json.dump({"target": target, "prefix": self.prefix, "etag": info.etag, "size": info.size}, meta)
            self._publish(work, final)
            logger.info(
                "model %s: downloaded %d bytes in %.1f ms, unpacked in %.1f ms",
                target, info.size, (downloaded - started) * 1e3, (time.perf_counter() - downloaded) * 1e3,
            )
            return LocalArtifact(target, os.path.join(final, "content"), info.etag, info.size)
        finally:
            shutil.rmtree(work, ignore_errors=True)  # gone already when published

    def _publish(self, work: str, final: str) -> None:
        if os.path.exists(final):
            # Move the old version aside first: rename cannot replace a non-empty folder.
            stale = tempfile.mkdtemp(dir=self.partial_dir)
            os.rename(final, os.path.join(stale, "old"))
            os.rename(work, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.rename(work, final)

    def _read_meta(self, final: str, target: str):
        try:
            with open(os.path.join(final, "meta.json")) as file:
                meta = json.load(file)
        except (OSError, ValueError):
            return None
        if meta.get("target") != target or meta.get("prefix") != self.prefix:
            return None
        return LocalArtifact(target, os.path.join(final, "content"), meta["etag"], meta["size"])
