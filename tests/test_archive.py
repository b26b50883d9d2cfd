import os
import tarfile

import pytest
from artifacts import symlink_member, tar_bytes, tar_with

from mlserver_mme.archive import UnsafeArchive, unpack


@pytest.fixture(autouse=True, params=["data-filter", "without-data-filter"])
def extraction(request, monkeypatch):
    """Every test runs with tarfile's data filter and as on Pythons that lack it (Debian 12's 3.11.2)."""
    if request.param == "without-data-filter":
        monkeypatch.delattr(tarfile, "data_filter")


def unpack_bytes(tmp_path, data: bytes, name="model.tar.gz", max_bytes=10_000):
    artifact = tmp_path / "artifact"
    artifact.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    unpack(str(artifact), str(out), max_bytes, bare_name=name)
    return out


def test_tar_gz_members_are_extracted(tmp_path):
    out = unpack_bytes(tmp_path, tar_bytes({"xgboost-model": b"abc", "sub/extra": b"de"}))
    assert (out / "xgboost-model").read_bytes() == b"abc"
    assert (out / "sub" / "extra").read_bytes() == b"de"


def test_plain_tar(tmp_path):
    out = unpack_bytes(tmp_path, tar_bytes({"xgboost-model": b"abc"}, mode="w"), name="m.tar")
    assert (out / "xgboost-model").read_bytes() == b"abc"


def test_bare_file_keeps_its_name(tmp_path):
    out = unpack_bytes(tmp_path, b'{"learner": {}}', name="model.json")
    assert os.listdir(out) == ["model.json"]


@pytest.mark.parametrize(
    "member",
    [
        symlink_member("link", "/etc/passwd"),
        symlink_member("link", "../../outside"),
    ],
)
def test_links_out_are_refused(tmp_path, member):
    with pytest.raises(UnsafeArchive, match="unsafe archive member"):
        unpack_bytes(tmp_path, tar_with(member))


def test_device_is_refused(tmp_path):
    member = tarfile.TarInfo("dev")
    member.type = tarfile.CHRTYPE
    with pytest.raises(UnsafeArchive, match="unsafe archive member"):
        unpack_bytes(tmp_path, tar_with(member))


@pytest.mark.parametrize("name", ["../escape", "/abs/file", "a/../../escape"])
def test_escaping_names_are_refused_and_nothing_lands_outside(tmp_path, name):
    with pytest.raises(UnsafeArchive, match="unsafe archive member"):
        unpack_bytes(tmp_path, tar_bytes({name: b"x"}))
    assert not (tmp_path / "escape").exists()
    assert not os.path.exists("/abs/file")


def test_unpacked_size_is_capped(tmp_path):
    with pytest.raises(UnsafeArchive, match="more than the limit"):
        unpack_bytes(tmp_path, tar_bytes({"a": b"x" * 6000, "b": b"y" * 6000}))


def test_gzip_bomb_is_stopped_by_the_cap(tmp_path):
    with pytest.raises(UnsafeArchive, match="more than the limit"):
        unpack_bytes(tmp_path, tar_bytes({"zeros": bytes(50_000_000)}), max_bytes=1_000_000)


@pytest.mark.parametrize("data", [b"\x1f\x8bnot gzip at all", tar_bytes({"a": os.urandom(5000)})[:2000]])
def test_corrupt_archives(tmp_path, data):
    with pytest.raises(UnsafeArchive, match="corrupt or truncated"):
        unpack_bytes(tmp_path, data)


def test_archive_name_that_is_not_an_archive(tmp_path):
    with pytest.raises(UnsafeArchive, match="corrupt or truncated"):
        unpack_bytes(tmp_path, b"plain bytes", name="model.tar.gz")
