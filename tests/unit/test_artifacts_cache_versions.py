"""The disk tier keeps each artifact version in a folder of its own: an overwrite never deletes what a load reads."""

import asyncio
import io
import os
import tarfile

from mlserver_mme.artifacts.cache import ArtifactCache
from mlserver_mme.artifacts.store import ObjectInfo, ObjectMissing


class MemoryStore:
    """Artifacts held in a dictionary; the ETag is the version number, as an overwrite in S3 changes it."""

    def __init__(self):
        self.objects = {}  # target -> (etag, archive bytes)

    def put(self, target: str, content: bytes) -> None:
        version = int(self.objects.get(target, ("0",))[0]) + 1
        self.objects[target] = (str(version), _archive({"weights": content}))

    def list(self):
        return sorted(self.objects)

    def head(self, relpath: str) -> ObjectInfo:
        if relpath not in self.objects:
            raise ObjectMissing(relpath)
        etag, data = self.objects[relpath]
        return ObjectInfo(location=relpath, etag=etag, size=len(data))

    def fetch(self, relpath: str, destination: str, max_bytes: int) -> ObjectInfo:
        info = self.head(relpath)
        with open(destination, "wb") as file:
            file.write(self.objects[relpath][1])
        return info


def _archive(members: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _cache(store, tmp_path) -> ArtifactCache:
    return ArtifactCache(store, "memory://", str(tmp_path / "cache"), 1 << 20, None)


def _read(artifact) -> bytes:
    with open(os.path.join(artifact.folder, "weights"), "rb") as file:
        return file.read()


def _versions(tmp_path) -> list:
    return sorted(os.listdir(tmp_path / "cache" / "models"))


def test_an_overwrite_is_published_beside_the_version_a_load_reads_which_goes_once_unused(tmp_path):
    store = MemoryStore()
    store.put("m.tar.gz", b"one")
    cache = _cache(store, tmp_path)

    async def scenario():
        first = await cache.fetch("m.tar.gz")
        store.put("m.tar.gz", b"two")
        second = await cache.fetch("m.tar.gz", revalidate=True)
        assert second.etag != first.etag and second.folder != first.folder
        assert _read(first) == b"one" and _read(second) == b"two"  # the first is still there to read
        assert cache.has_retired()
        await cache.drop_retired(in_use=lambda artifact: artifact.etag == first.etag)
        assert _read(first) == b"one"  # in use: kept
        await cache.drop_retired(in_use=lambda artifact: False)
        assert not os.path.exists(first.folder) and _read(second) == b"two"
        assert not cache.has_retired()
        assert cache.disk_bytes() == second.unpacked_bytes
        return second

    second = asyncio.run(scenario())
    assert len(_versions(tmp_path)) == 1
    found = cache.on_disk("m.tar.gz")
    assert found is not None and found.folder == second.folder


def test_retired_versions_dropped_twice_at_once_are_deleted_once(tmp_path):
    store = MemoryStore()
    cache = _cache(store, tmp_path)

    async def scenario():
        for content in (b"one", b"two", b"three"):
            store.put("m.tar.gz", content)
            newest = await cache.fetch("m.tar.gz", revalidate=True)
        await asyncio.gather(*(cache.drop_retired(in_use=lambda artifact: False) for _ in range(3)))
        return newest

    newest = asyncio.run(scenario())
    assert not cache.has_retired()
    assert cache.disk_bytes() == newest.unpacked_bytes
    assert len(_versions(tmp_path)) == 1


def test_a_restart_keeps_only_the_newest_version_of_each_target(tmp_path):
    store = MemoryStore()
    store.put("m.tar.gz", b"one")
    cache = _cache(store, tmp_path)

    async def two_versions():
        await cache.fetch("m.tar.gz")
        store.put("m.tar.gz", b"two")
        return await cache.fetch("m.tar.gz", revalidate=True)

    newest = asyncio.run(two_versions())
    assert len(_versions(tmp_path)) == 2  # the old one was never released (a crash, say)
    restarted = _cache(store, tmp_path)
    restarted.open()
    assert len(_versions(tmp_path)) == 1
    found = restarted.on_disk("m.tar.gz")
    assert found is not None and found.etag == newest.etag and _read(found) == b"two"
    assert restarted.disk_bytes() == newest.unpacked_bytes
