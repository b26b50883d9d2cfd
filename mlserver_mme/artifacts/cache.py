"""The disk tier: artifacts downloaded and unpacked under the cache folder.

Layout under ``cache_dir``::

    models/<key>/content/...   an unpacked artifact, ready to load
    models/<key>/meta.json     its target path, prefix, ETag, and each file's size and sha256
    partial/<random>/          work in progress; removed at start-up

``<key>`` is a hash of the model prefix and the target path. A model is built
in ``partial/`` and published with one ``rename``, so a crash never leaves a
half-unpacked model under ``models/``; deletion renames it back into
``partial/`` first for the same reason. One fetch runs per model at a time, in
a thread (single flight): concurrent callers wait for the same result.

Before an artifact is published, ``check`` (the repository's) may refuse it: a
refused artifact never reaches ``models/``, so whatever is there was checked.
Artifacts found on disk at start-up are reused once their ETag matches the
store's and their files still have the recorded sizes and digests; a damaged
copy is fetched again. Past ``disk_limit`` bytes, the least recently used
artifacts that are not loaded are deleted.
"""

import collections
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Dict, Optional, Tuple

from ..errors import ArtifactNotFound, BrokenModel, StorageUnavailable
from ..observability.metrics import metrics
from ..threads import in_io
from .archive import UnsafeArchive, max_archive_bytes, unpack
from .single_flight import SingleFlight
from .store import ObjectInfo, ObjectMissing, ObjectTooLarge, Store, StoreUnreachable

logger = logging.getLogger("mlserver.mme")


@dataclass(frozen=True)
class LocalArtifact:
    target: str
    folder: str  # the unpacked content
    etag: str
    unpacked_bytes: int
    checked: dict = field(default_factory=dict, compare=False)  # what the check found, as recorded in meta.json


@dataclass(frozen=True)
class _Download:
    work: str  # the folder under partial/ that becomes models/<key> when published
    content: str
    info: ObjectInfo
    download_seconds: float
    unpack_seconds: float


async def _accept(target: str, folder: str) -> dict:
    """The default check: every artifact that unpacks is published."""
    return {}


class ArtifactCache:
    def __init__(
        self,
        store: Store,
        prefix: str,
        cache_dir: str,
        max_unpacked_bytes: int,
        disk_limit: Optional[int],
        check: Callable[[str, str], Awaitable[dict]] = _accept,
    ):
        self.store = store
        # async (target, unpacked folder) -> what it found, kept with the artifact; raises BrokenModel to refuse it
        self.check = check
        self.prefix = prefix
        self.max_unpacked_bytes = max_unpacked_bytes
        self.disk_limit = disk_limit
        self.models_dir = os.path.join(cache_dir, "models")
        self.partial_dir = os.path.join(cache_dir, "partial")
        os.makedirs(self.models_dir, exist_ok=True)
        os.makedirs(self.partial_dir, exist_ok=True)
        # target -> artifact on disk, least recently used first
        self._on_disk: "collections.OrderedDict[str, LocalArtifact]" = collections.OrderedDict()
        self._bytes_on_disk = 0  # sum of _on_disk's unpacked_bytes, kept as entries come and go
        self._verified: set = set()  # ETag checked against the store by this process
        self._fetches = SingleFlight()  # by target

    def open(self) -> None:
        """Start-up: delete what interrupted fetches left, index what earlier runs unpacked."""
        for name in os.listdir(self.partial_dir):
            shutil.rmtree(os.path.join(self.partial_dir, name), ignore_errors=True)
        found = []
        for key in os.listdir(self.models_dir):
            artifact = self._read_meta(os.path.join(self.models_dir, key))
            if artifact is not None:
                found.append((os.path.getmtime(os.path.join(self.models_dir, key, "meta.json")), artifact))
        for _, artifact in sorted(found, key=lambda pair: pair[0]):
            self._index(artifact)
        if found:
            logger.info("event=cache-index artifacts=%d bytes=%d", len(found), self.disk_bytes())

    def disk_bytes(self) -> int:
        return self._bytes_on_disk

    def _index(self, artifact: LocalArtifact) -> None:
        """Record ``artifact`` as the most recently used one on disk."""
        self._unindex(artifact.target)
        self._on_disk[artifact.target] = artifact
        self._bytes_on_disk += artifact.unpacked_bytes
        metrics().disk_bytes.set(self._bytes_on_disk)

    def _unindex(self, target: str) -> Optional[LocalArtifact]:
        artifact = self._on_disk.pop(target, None)
        if artifact is not None:
            self._bytes_on_disk -= artifact.unpacked_bytes
            metrics().disk_bytes.set(self._bytes_on_disk)
        return artifact

    async def fetch(self, target: str, revalidate: bool = False) -> LocalArtifact:
        """The unpacked artifact of ``target``; with ``revalidate``, its ETag is checked again first."""
        known = self._on_disk.get(target)
        if known is not None and target in self._verified and not revalidate:
            # the files are read again at each load: they must still be what was checked (hashing them costs
            # about 2 ms per MB, a fraction of the load's own reading and parsing)
            if await in_io(_intact, os.path.join(self.models_dir, self._key(target))):
                self._on_disk.move_to_end(target)
                return known
            logger.warning("event=cache-damaged model=%s (fetched again)", target)
            self._verified.discard(target)
        artifact = await self._fetches.run(target, lambda: self._fetch(target, known))
        self._index(artifact)
        self._verified.add(target)
        return artifact

    async def evict_to_budget(self, in_use: Callable[[str], bool]) -> None:
        """Delete least recently used artifacts that are not ``in_use`` until under the disk limit."""
        if self.disk_limit is None:
            return
        while self.disk_bytes() > self.disk_limit:
            victim = next((t for t in self._on_disk if not in_use(t) and t not in self._fetches), None)
            if victim is None:
                logger.warning("event=disk-over-budget bytes=%d limit=%d (all in use)", self.disk_bytes(), self.disk_limit)
                return
            artifact = self._unindex(victim)
            assert artifact is not None  # the victim was on disk
            self._verified.discard(victim)
            await in_io(self._delete, os.path.dirname(artifact.folder))
            metrics().evictions.labels(reason="disk").inc()
            logger.info("event=evict reason=disk model=%s bytes=%d", victim, artifact.unpacked_bytes)

    def _key(self, target: str) -> str:
        return hashlib.sha256(f"{self.prefix}\0{target}".encode()).hexdigest()[:32]

    async def _fetch(self, target: str, known: Optional[LocalArtifact]) -> LocalArtifact:
        """``known`` if it is current and intact, else a fresh download, unpacked, checked and published."""
        fetched = await in_io(self._reuse_or_download, target, known)
        if isinstance(fetched, LocalArtifact):
            return fetched
        try:
            checked = await self.check(target, fetched.content)  # waits for a check slot without holding a thread
            return await in_io(self._publish_download, target, fetched, checked)  # moves the download's folder
        except BaseException:
            await in_io(shutil.rmtree, fetched.work, True)  # refused or interrupted: nothing of it is kept
            raise

    def _reuse_or_download(self, target: str, known: Optional[LocalArtifact]):
        try:
            if known is not None and self.store.head(target).etag == known.etag:
                if _intact(os.path.join(self.models_dir, self._key(target))):
                    return known
                logger.warning("event=cache-damaged model=%s (fetched again)", target)
            return self._download(target)
        except ObjectMissing as missing:
            raise ArtifactNotFound(
                f"Could not find model data for target model '{target}' at {missing.location}: "
                "check that the object exists and that the server may read it."
            ) from missing
        except StoreUnreachable as error:
            raise StorageUnavailable(f"The model store is unavailable: {error}") from error

    def _download(self, target: str) -> "_Download":
        """Download and unpack ``target`` into a new folder under ``partial/``."""
        work = tempfile.mkdtemp(dir=self.partial_dir)
        try:
            started = time.perf_counter()
            archive = os.path.join(work, "artifact")
            try:
                info = self.store.fetch(target, archive, max_archive_bytes(self.max_unpacked_bytes))
            except ObjectTooLarge as error:
                raise BrokenModel(
                    f"The artifact of '{target}' is {error.size} bytes or more: "
                    f"more than an artifact that unpacks within MLSERVER_MME_MAX_UNPACKED_BYTES "
                    f"({self.max_unpacked_bytes}) can take, so it is not downloaded"
                ) from None
            downloaded = time.perf_counter()
            content = os.path.join(work, "content")
            os.mkdir(content)
            try:
                unpack(archive, content, self.max_unpacked_bytes, bare_name=target.rsplit("/", 1)[-1])
            except UnsafeArchive as error:
                raise BrokenModel(f"The artifact of '{target}' cannot be unpacked: {error}") from error
            os.remove(archive)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return _Download(work, content, info, downloaded - started, time.perf_counter() - downloaded)

    def _publish_download(self, target: str, download: "_Download", checked: dict) -> LocalArtifact:
        files = _file_digests(download.content)
        unpacked = sum(size for size, _ in files.values())
        info = download.info
        with open(os.path.join(download.work, "meta.json"), "w") as meta:
            json.dump({"target": target, "prefix": self.prefix, "etag": info.etag, "size": info.size,
                       "unpacked": unpacked, "files": files, "checked": checked}, meta)
        final = os.path.join(self.models_dir, self._key(target))
        self._publish(download.work, final)
        metrics().downloading.observe(download.download_seconds)
        metrics().unpacking.observe(download.unpack_seconds)
        metrics().downloaded_bytes.inc(info.size)
        logger.info(
            "event=download model=%s bytes=%d unpacked_bytes=%d download_ms=%.1f unpack_ms=%.1f",
            target, info.size, unpacked, download.download_seconds * 1e3, download.unpack_seconds * 1e3,
        )
        return LocalArtifact(target, os.path.join(final, "content"), info.etag, unpacked, checked)

    def _publish(self, work: str, final: str) -> None:
        if os.path.exists(final):
            # rename cannot replace a non-empty folder: move the old version out first
            self._delete(final)
        os.rename(work, final)

    def _delete(self, folder: str) -> None:
        trash = tempfile.mkdtemp(dir=self.partial_dir)
        os.rename(folder, os.path.join(trash, "old"))
        shutil.rmtree(trash, ignore_errors=True)

    def _read_meta(self, final: str) -> Optional[LocalArtifact]:
        try:
            with open(os.path.join(final, "meta.json")) as file:
                meta = json.load(file)
            if meta.get("prefix") != self.prefix:
                return None
            checked = meta.get("checked")
            return LocalArtifact(meta["target"], os.path.join(final, "content"), meta["etag"], meta["unpacked"],
                                 checked if isinstance(checked, dict) else {})
        except (OSError, ValueError, KeyError):
            return None


def _file_digests(folder: str) -> Dict[str, Tuple[int, str]]:
    """Relative path -> (size, sha256) of every file under ``folder``."""
    digests = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            digest = hashlib.sha256()
            with open(path, "rb") as file:
                for block in iter(lambda: file.read(1024 * 1024), b""):
                    digest.update(block)
            digests[os.path.relpath(path, folder)] = (os.path.getsize(path), digest.hexdigest())
    return digests


def _intact(final: str) -> bool:
    """The published artifact in ``final`` still holds exactly the files its meta.json recorded."""
    try:
        with open(os.path.join(final, "meta.json")) as file:
            recorded = json.load(file).get("files")
        found = _file_digests(os.path.join(final, "content"))
    except (OSError, ValueError):
        return False
    return recorded is not None and {path: list(entry) for path, entry in found.items()} == recorded
