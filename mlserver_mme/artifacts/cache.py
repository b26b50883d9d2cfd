"""The disk tier: artifacts downloaded and unpacked under the cache folder.

Layout under ``cache_dir``::

    models/<version>/content/...   an unpacked artifact, ready to load
    models/<version>/meta.json     its target path, prefix, ETag, and each file's size and sha256
    partial/<random>/              work in progress; removed at start-up

``<version>`` is a hash of the model prefix and the target path, one of the
ETag, and a random part: every download is published in a folder of its own,
never over another. A model is built in ``partial/`` and published with one
``rename``, so a crash never leaves a half-unpacked model under ``models/``;
deletion renames it back into ``partial/`` first for the same reason. One fetch
runs per model at a time, in a thread (single flight): concurrent callers wait
for the same result.

When a new version of a target is published (an overwrite in the store), the
one it replaces is *retired*, not deleted: a load may be reading it, or a loaded
model may still be the one it holds. ``drop_retired`` deletes retired versions
once the lifecycle says nothing uses them; at start-up, only the newest version
of each target is kept.

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
import secrets
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
        self._retired: Dict[str, LocalArtifact] = {}  # folder -> a replaced version, deleted once unused

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
        for folder in list(self._retired):  # older versions an earlier run left: nothing uses them yet
            self._delete(self._forget_retired(folder))
        if found:
            logger.info("event=cache-index artifacts=%d bytes=%d", len(self._on_disk), self.disk_bytes())

    def on_disk(self, target: str) -> Optional[LocalArtifact]:
        """The newest version of ``target`` on disk, if any (as indexed; not checked)."""
        return self._on_disk.get(target)

    def disk_bytes(self) -> int:
        return self._bytes_on_disk

    def _index(self, artifact: LocalArtifact) -> None:
        """Record ``artifact`` as the most recently used one on disk; a version it replaces is retired."""
        replaced = self._on_disk.get(artifact.target)
        if replaced is not None and replaced.folder != artifact.folder:
            self._on_disk.pop(artifact.target)
            self._retired[os.path.dirname(replaced.folder)] = replaced  # its bytes stay counted until deleted
            logger.info("event=version-retired model=%s etag=%s", replaced.target, replaced.etag)
        else:
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

    def has_retired(self) -> bool:
        return bool(self._retired)

    async def drop_retired(self, in_use: Callable[[LocalArtifact], bool]) -> None:
        """Delete the retired versions that are not ``in_use`` (being loaded, or held by a loaded model)."""
        for folder, artifact in list(self._retired.items()):
            if self._retired.get(folder) is artifact and not in_use(artifact):  # another drop may have taken it
                await in_io(self._delete, self._forget_retired(folder))

    def _forget_retired(self, folder: str) -> str:
        """Take ``folder`` out of the retired versions and their bytes off the count (on the loop); its path."""
        artifact = self._retired.pop(folder)
        self._bytes_on_disk -= artifact.unpacked_bytes
        metrics().disk_bytes.set(self._bytes_on_disk)
        logger.info("event=version-deleted model=%s etag=%s", artifact.target, artifact.etag)
        return folder

    async def fetch(self, target: str, revalidate: bool = False, unverified: bool = False) -> LocalArtifact:
        """The unpacked artifact of ``target``; with ``revalidate``, its ETag is checked again first.

        A copy on disk whose ETag this process has not checked yet is checked first (a HEAD), unless
        ``unverified``: a warm restart loads it at once and has its ETag checked right after.
        """
        known = self._on_disk.get(target)
        if known is not None and (target in self._verified or unverified) and not revalidate:
            # the files are read again at each load: they must still be what was checked (hashing them costs
            # about 2 ms per MB, a fraction of the load's own reading and parsing)
            if await in_io(_intact, os.path.dirname(known.folder)):
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

    def _version_folder(self, target: str, etag: str) -> str:
        """A new folder name for a version of ``target``: one per download, so no publish replaces another."""
        key = hashlib.sha256(f"{self.prefix}\0{target}".encode()).hexdigest()[:32]
        version = hashlib.sha256(etag.encode()).hexdigest()[:12]
        return os.path.join(self.models_dir, f"{key}-{version}-{secrets.token_hex(4)}")

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
                if _intact(os.path.dirname(known.folder)):
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
        final = self._version_folder(target, info.etag)
        os.rename(download.work, final)
        metrics().downloading.observe(download.download_seconds)
        metrics().unpacking.observe(download.unpack_seconds)
        metrics().downloaded_bytes.inc(info.size)
        logger.info(
            "event=download model=%s bytes=%d unpacked_bytes=%d download_ms=%.1f unpack_ms=%.1f",
            target, info.size, unpacked, download.download_seconds * 1e3, download.unpack_seconds * 1e3,
        )
        return LocalArtifact(target, os.path.join(final, "content"), info.etag, unpacked, checked)

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
