"""Unpacking downloaded artifacts safely.

An artifact is a tar archive (``.tar.gz``, ``.tgz``, ``.tar``; compression is
detected from the bytes) or a bare model file. Archives are extracted with
tarfile's ``data`` filter, which refuses absolute names, names escaping the
folder, links pointing outside it and device files; on top of it the total
unpacked size and the number of members are capped. Pythons older than the
filter (3.11.2 of Debian 12, for one) get the same refusals from ``_checked``.
"""

import lzma
import os
import shutil
import tarfile
import zlib

MAX_MEMBERS = 10_000
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")  # gzip, bzip2, xz


class UnsafeArchive(ValueError):
    """The artifact cannot be unpacked safely or at all; the message says why."""


_FILTER_ERRORS = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()


def unpack(artifact: str, destination: str, max_bytes: int, bare_name: str) -> None:
    """Unpack ``artifact`` into the (existing, empty) folder ``destination``.

    A file that is not a tar archive is copied in as ``bare_name``.
    """
    if not _looks_like_archive(artifact, bare_name):
        if os.path.getsize(artifact) > max_bytes:
            raise UnsafeArchive(f"the model file is larger than the limit of {max_bytes} bytes")
        shutil.copyfile(artifact, os.path.join(destination, bare_name))
        return
    budget = _Budget(max_bytes)
    try:
        with tarfile.open(artifact, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(destination, filter=budget.filter)
            else:
                for member in tar:
                    tar.extract(budget.filter(member, destination), destination, set_attrs=False)
    except _FILTER_ERRORS as error:
        raise UnsafeArchive(f"unsafe archive member: {error}") from None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as error:
        raise UnsafeArchive(f"the archive is corrupt or truncated: {error}") from None
    except OSError as error:
        if error.errno is not None:
            raise  # a local fault (disk full, permissions), not a bad archive
        # gzip and bz2 report bad streams as OSError without an errno
        raise UnsafeArchive(f"the archive is corrupt or truncated: {error}") from None


def _looks_like_archive(path: str, name: str) -> bool:
    """Named or compressed like an archive: then it must unpack, or it is corrupt."""
    if name.endswith(ARCHIVE_SUFFIXES):
        return True
    with open(path, "rb") as file:
        head = file.read(6)
    return head.startswith(COMPRESSED_MAGIC) or tarfile.is_tarfile(path)


class _Budget:
    """An extraction filter: tarfile's ``data`` filter plus size and count caps."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.total = 0
        self.members = 0

    def filter(self, member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        if member.name.startswith("/"):
            # the data filter would strip the slash; an absolute name is refused instead
            raise UnsafeArchive(f"unsafe archive member: '{member.name}' is an absolute path")
        member = tarfile.data_filter(member, path) if hasattr(tarfile, "data_filter") else _checked(member, path)
        self.members += 1
        if self.members > MAX_MEMBERS:
            raise UnsafeArchive(f"the archive holds more than {MAX_MEMBERS} members")
        self.total += member.size
        if self.total > self.max_bytes:
            raise UnsafeArchive(f"the archive unpacks to more than the limit of {self.max_bytes} bytes")
        return member


def _checked(member: tarfile.TarInfo, destination: str) -> tarfile.TarInfo:
    """The ``data`` filter's refusals, for Pythons without it."""
    root = os.path.realpath(destination)
    where = os.path.realpath(os.path.join(root, member.name))
    if os.path.commonpath([root, where]) != root:
        raise UnsafeArchive(f"unsafe archive member: '{member.name}' would be extracted outside the folder")
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        raise UnsafeArchive(f"unsafe archive member: '{member.name}' is a special file")
    if member.issym() or member.islnk():
        base = os.path.dirname(where) if member.issym() else root
        pointed = os.path.realpath(os.path.join(base, member.linkname))
        if os.path.isabs(member.linkname) or os.path.commonpath([root, pointed]) != root:
            raise UnsafeArchive(f"unsafe archive member: '{member.name}' links outside the folder")
    if member.isfile() or member.isdir():
        member.mode &= 0o755  # no set-id bits, no group or world write
    return member
