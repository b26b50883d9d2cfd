import errno
import os
import tarfile
import tracemalloc

import pytest
from support.artifacts import (
    header_bomb,
    path_max_escape,
    pax_record,
    pax_tar,
    symlink_member,
    tar_bytes,
    tar_member,
    tar_of,
    tar_with,
)

from mlserver_mme.artifacts.archive import UnsafeArchive, unpack


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


# Links: refused outright, since checks that resolve them can be fooled


def test_path_max_symlink_chain_cannot_write_outside(tmp_path):
    """CVE-2025-4517: realpath stops expanding past PATH_MAX, so the data filter saw the link as inside."""
    victim = tmp_path / "victim" / "xgboost-model"
    victim.parent.mkdir()
    victim.write_bytes(b"another model")
    exploit = path_max_escape(str(tmp_path / "out"), "victim/xgboost-model", b"overwritten")
    with pytest.raises(UnsafeArchive, match="unsafe archive member: 'a' is a link; model archives may not hold links"):
        unpack_bytes(tmp_path, exploit, max_bytes=1_000_000)
    assert victim.read_bytes() == b"another model"


@pytest.mark.parametrize(
    "link",
    [
        tar_member("alias", tarfile.LNKTYPE, "xgboost-model"),
        tar_member("alias", tarfile.SYMTYPE, "xgboost-model"),
        tar_member("sub/alias", tarfile.SYMTYPE, "../xgboost-model"),
    ],
    ids=["hard-link", "symlink", "symlink-up-inside"],
)
def test_links_inside_the_folder_are_refused_too(tmp_path, link):
    archive = tar_of((tar_member("xgboost-model"), b"abc"), link)
    with pytest.raises(UnsafeArchive, match="unsafe archive member: '.*alias' is a link"):
        unpack_bytes(tmp_path, archive)


# Headers: bounded before tarfile reads them into memory


@pytest.mark.parametrize("kind", ["pax", "gnu"])
def test_header_bomb_is_refused_before_it_is_read(tmp_path, kind):
    archive = header_bomb(kind, 200_000_000)
    assert len(archive) < 2_000_000
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeArchive, match="unsafe archive member: header of 200000(000|512) bytes is larger"):
            unpack_bytes(tmp_path, archive)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_names_over_4096_bytes_are_refused(tmp_path, tar_format):
    archive = tar_of(tar_member("d/" * 2100 + "model"), format=tar_format)
    with pytest.raises(UnsafeArchive, match="unsafe archive member: .*4096 bytes"):
        unpack_bytes(tmp_path, archive)


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_names_within_the_limit_are_fine(tmp_path, tar_format):
    name = ("d" * 99 + "/") * 10 + "xgboost-model"
    out = unpack_bytes(tmp_path, tar_of((tar_member(name), b"abc"), format=tar_format))
    assert (out / name).read_bytes() == b"abc"


def test_a_chain_of_long_name_headers_is_refused(tmp_path):
    """tarfile follows such a chain recursively: it used to end in RecursionError."""
    one = tar_of(tar_member("n" * 200), format=tarfile.GNU_FORMAT, mode="w")
    long_name_header = one[: 2 * tarfile.BLOCKSIZE]  # the 'L' header and its data block
    chain = long_name_header * 2000 + one[2 * tarfile.BLOCKSIZE :]
    with pytest.raises(UnsafeArchive, match="unsafe archive member: header of .* bytes is larger"):
        unpack_bytes(tmp_path, chain, name="model.tar")


def test_global_headers_are_capped(tmp_path):
    """Global records stay for the whole archive and are applied to every later member."""
    git_archive_like = pax_tar(pax_record(b"comment", b"0" * 40), type=tarfile.XGLTYPE)
    assert os.listdir(unpack_bytes(tmp_path, git_archive_like)) == ["m"]
    big = pax_tar(pax_record(b"comment", b"c" * 5000), type=tarfile.XGLTYPE)
    (tmp_path / "big").mkdir()
    with pytest.raises(UnsafeArchive, match="unsafe archive member: global headers"):
        unpack_bytes(tmp_path / "big", big)


def test_extended_headers_of_all_members_are_capped(tmp_path):
    members = [tar_member(f"m{index}", pax_headers={"comment": "c" * 60_000}) for index in range(300)]
    with pytest.raises(UnsafeArchive, match="the archive's headers take more than the limit"):
        unpack_bytes(tmp_path, tar_of(*members), max_bytes=1_000_000)


@pytest.mark.parametrize(
    "archive, message",
    [
        (tar_of(tar_member("m", pax_headers={"path": "a\0b"})), "holds a NUL byte"),
        (tar_of(tar_member("m", pax_headers={"size": "-1024"})), "negative size"),
        (tar_of(tar_member("m", pax_headers={"mtime": "inf"})), "modification time out of range"),
        (tar_of(tar_member("m", pax_headers={"mtime": "1e300"})), "modification time out of range"),
        (tar_of(tar_member("m", tarfile.GNUTYPE_SPARSE), format=tarfile.GNU_FORMAT), "sparse files are refused"),
        (tar_of(tar_member("m", pax_headers={"GNU.sparse.map": "0,1"})), "sparse files are refused"),
        (pax_tar(pax_record(b"hdrcharset", b"\xff")), "corrupt"),
    ],
    ids=["nul", "negative-size", "infinite-time", "huge-time", "gnu-sparse", "pax-sparse", "bad-hdrcharset"],
)
def test_malformed_headers_are_the_archives_fault(tmp_path, archive, message):
    """These used to escape as ValueError, IndexError or OverflowError, or to exhaust memory."""
    with pytest.raises(UnsafeArchive, match=message):
        unpack_bytes(tmp_path, archive)


# Clashes between members: the archive's fault, not a local one


@pytest.mark.parametrize(
    "members",
    [
        [tar_member(".")],
        [tar_member("./")],
        [tar_member("f"), tar_member("f/x")],
        [tar_member("f"), tar_member("f/sub/x")],
        [tar_member("d", tarfile.DIRTYPE), tar_member("d")],
        [tar_member("d/x"), tar_member("d")],
        [tar_member("f"), tar_member("f", tarfile.DIRTYPE)],
        [tar_member("f"), tar_member("f/../g")],
    ],
    ids=["dot", "dot-slash", "inside-file", "deep-inside-file", "file-over-dir", "file-over-implicit-dir",
         "dir-over-file", "dotdot-through-file"],
)
def test_clashing_members_are_refused(tmp_path, members):
    with pytest.raises(UnsafeArchive, match="unsafe archive member"):
        unpack_bytes(tmp_path, tar_of(*members))


def test_repeated_file_last_wins_and_the_folder_itself_is_fine(tmp_path):
    archive = tar_of(
        tar_member("./", tarfile.DIRTYPE),
        (tar_member("./xgboost-model"), b"first"),
        tar_member("sub", tarfile.DIRTYPE),
        tar_member("sub/", tarfile.DIRTYPE),
        (tar_member("xgboost-model"), b"second"),
    )
    out = unpack_bytes(tmp_path, archive)
    assert (out / "xgboost-model").read_bytes() == b"second"
    assert sorted(os.listdir(out)) == ["sub", "xgboost-model"]


def test_a_name_too_long_for_the_file_system_is_the_archives_fault(tmp_path):
    with pytest.raises(UnsafeArchive, match="unsafe archive member: a name is too long for the file system"):
        unpack_bytes(tmp_path, tar_bytes({"n" * 300: b"x"}))


def test_local_faults_stay_oserror(tmp_path, monkeypatch):
    def disk_full(self, tarinfo, targetpath):
        raise OSError(errno.ENOSPC, "No space left on device", targetpath)

    monkeypatch.setattr(tarfile.TarFile, "makefile", disk_full)
    with pytest.raises(OSError) as raised:
        unpack_bytes(tmp_path, tar_bytes({"xgboost-model": b"abc"}))
    assert raised.value.errno == errno.ENOSPC and not isinstance(raised.value, UnsafeArchive)
