"""Unpacking downloaded artifacts safely.

An artifact is a tar archive (``.tar.gz``, ``.tgz``, ``.tar``; compression is
detected from the bytes) or a bare model file. Every archive comes from a tenant
and may be hostile. Unpacking refuses it with ``UnsafeArchive`` when it holds:

* headers that would take memory before any check could run, refused on their
  declared size before their data is read: a GNU long name or long link of more
  than ``MAX_NAME_BYTES``, more than ``MAX_HEADER_BYTES`` of extended headers
  (PAX records, GNU long names) for one member, more than
  ``MAX_GLOBAL_HEADER_BYTES`` of PAX global records, or a sparse file (tarfile
  reads sparse maps without bound); and, checked member by member, more than
  ``MAX_ARCHIVE_HEADER_BYTES`` of extended headers in all;
* a name that is absolute, has a ``..`` component or a NUL byte, is longer than
  ``MAX_NAME_BYTES`` or is too long for the file system;
* a member that is not a regular file or a folder: symbolic and hard links
  (model artifacts never need them, and link checks based on
  ``os.path.realpath`` can be fooled, CVE-2025-4517), devices, FIFOs, unknown
  types;
* a member that clashes with earlier ones: a file named as the folder itself
  (``.``), a member inside an earlier file, a file where a folder is or a folder
  where a file is. A file repeated under the same name is allowed: the last
  copy wins, as with ``tar``;
* a negative size or a modification time out of range;
* more than ``MAX_MEMBERS`` members, or more than ``max_bytes`` unpacked;
* corrupt or truncated data.

Members are checked one by one as they are read, so every cap holds before the
next header is read. tarfile's ``data`` filter also runs where this Python has
it, for the modes and owners it sets; Pythons older than it (3.11.2 of Debian
12, for one) extract without setting modes, owners or times. Messages never
hold the server's paths. Faults of this server (disk full, permissions) stay
``OSError``.
"""

import errno
import lzma
import math
import os
import shutil
import stat
import tarfile
import zlib

MAX_MEMBERS = 10_000
MAX_NAME_BYTES = 4096  # PATH_MAX
MAX_HEADER_BYTES = 64 * 1024  # the extended headers of one member, together
MAX_GLOBAL_HEADER_BYTES = 4096  # PAX global records: tarfile applies them to every later member
MAX_ARCHIVE_HEADER_BYTES = 16 * 1024 * 1024  # extended headers of all members: parsing them takes time
MAX_TIME = 2**40  # seconds either side of 1970; os.utime fails far beyond
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")  # gzip, bzip2, xz


def max_archive_bytes(max_bytes: int) -> int:
    """The most an artifact that unpacks to at most ``max_bytes`` can weigh: its files, each member's header
    and padding, the extended headers, the end blocks, and compression that gained nothing (under 1/64)."""
    tar = max_bytes + MAX_MEMBERS * 2 * tarfile.BLOCKSIZE + MAX_ARCHIVE_HEADER_BYTES + tarfile.RECORDSIZE
    return tar + tar // 64 + 64 * 1024


class UnsafeArchive(ValueError):
    """The artifact cannot be unpacked safely or at all; the message says why."""


_FILTER_ERRORS = (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()
# tarfile decodes a PAX hdrcharset record strictly and lets the UnicodeDecodeError out
_CORRUPT_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, UnicodeDecodeError)


def unpack(artifact: str, destination: str, max_bytes: int, bare_name: str) -> None:
    """Unpack ``artifact`` into the (existing, empty) folder ``destination``.

    A file that is not a tar archive is copied in as ``bare_name``.
    """
    if not _looks_like_archive(artifact, bare_name):
        if os.path.getsize(artifact) > max_bytes:
            raise UnsafeArchive(f"the model file is larger than the limit of {max_bytes} bytes")
        shutil.copyfile(artifact, os.path.join(destination, bare_name))
        return
    extraction = _Extraction(max_bytes)
    try:
        with tarfile.open(artifact, "r:*", tarinfo=_BoundedTarInfo) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(destination, filter=extraction.filter)  # reads and extracts member by member
            else:
                for member in tar:
                    tar.extract(extraction.filter(member, destination), destination, set_attrs=False)
    except _FILTER_ERRORS as error:
        # not expected after our own checks; its messages would show the server's paths
        raise UnsafeArchive(f"unsafe archive member: refused by the data filter ({type(error).__name__})") from None
    except _CORRUPT_ERRORS as error:
        raise UnsafeArchive(f"the archive is corrupt or truncated: {error}") from None
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            raise UnsafeArchive("unsafe archive member: a name is too long for the file system") from None
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
    return head.startswith(COMPRESSED_MAGIC) or _is_tar(path)


def _is_tar(path: str) -> bool:
    """``tarfile.is_tarfile`` for an uncompressed file, reading its first header with bounds."""
    try:
        with tarfile.open(path, "r:", tarinfo=_BoundedTarInfo):
            return True
    except UnsafeArchive:
        return True  # a tar archive, and a hostile one: unpacking it says why
    except _CORRUPT_ERRORS:
        return False


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile's header reading, with bounds checked before a header's data is read.

    tarfile reads a GNU long name or a PAX header whole into memory, and follows
    a chain of them recursively, before any filter sees the member. UnsafeArchive
    is no ``HeaderError``, so ``TarFile.next()`` lets it through unchanged.
    """

    def _proc_gnulong(self, tar):
        if self.size > MAX_NAME_BYTES + 1:  # the name and the NUL ending it
            raise UnsafeArchive(
                f"unsafe archive member: header of {self.size} bytes is larger than "
                f"the limit of {MAX_NAME_BYTES} bytes for a name"
            )
        self._check_extended_size(tar)
        return super()._proc_gnulong(tar)

    def _proc_pax(self, tar):
        self._check_extended_size(tar)
        if self.type == tarfile.XGLTYPE:
            self._check_global_size(tar)
        return super()._proc_pax(tar)

    def _check_extended_size(self, tar):
        """The member's extended headers up to this one's end stay within MAX_HEADER_BYTES.

        While they are read, ``tar.offset`` still points at the member's first
        header. The bound also caps how deep tarfile recurses along a chain.
        """
        taken = self.offset + tarfile.BLOCKSIZE + self.size - tar.offset
        if taken > MAX_HEADER_BYTES:
            raise UnsafeArchive(
                f"unsafe archive member: header of {taken} bytes is larger than the limit of {MAX_HEADER_BYTES} bytes"
            )

    def _check_global_size(self, tar):
        """Global records accumulate for the whole archive and are applied to every member."""
        kept = sum(len(key) + len(value) for key, value in tar.pax_headers.items())
        if kept + self.size > MAX_GLOBAL_HEADER_BYTES:
            raise UnsafeArchive(
                f"unsafe archive member: global headers of more than {MAX_GLOBAL_HEADER_BYTES} bytes"
            )

    def _apply_pax_info(self, pax_headers, encoding, errors):
        super()._apply_pax_info(pax_headers, encoding, errors)
        self.pax_headers = {}  # applied already; TarFile.members keeps every member, so keep no copy

    def _refuse_sparse(self, *args):
        raise UnsafeArchive("unsafe archive member: sparse files are refused")

    # old GNU sparse headers and the PAX sparse formats 0.0, 0.1 and 1.0
    _proc_sparse = _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse


class _Extraction:
    """The extraction filter: every check on a member, then tarfile's ``data`` filter where it exists."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.total = 0
        self.members = 0
        self.header_bytes = 0

    def filter(self, member: tarfile.TarInfo, destination: str) -> tarfile.TarInfo:
        parts = _name_parts(member)
        _check_type(member)
        _check_numbers(member)
        self._count(member)
        _check_clashes(member, parts, destination)
        if hasattr(tarfile, "data_filter"):
            member = tarfile.data_filter(member, destination)
        return member

    def _count(self, member: tarfile.TarInfo) -> None:
        self.members += 1
        if self.members > MAX_MEMBERS:
            raise UnsafeArchive(f"the archive holds more than {MAX_MEMBERS} members")
        self.total += member.size
        if self.total > self.max_bytes:
            raise UnsafeArchive(f"the archive unpacks to more than the limit of {self.max_bytes} bytes")
        # tarfile sets offset to the member's first extended header, offset_data past its own header
        self.header_bytes += member.offset_data - member.offset - tarfile.BLOCKSIZE
        if self.header_bytes > MAX_ARCHIVE_HEADER_BYTES:
            raise UnsafeArchive(f"the archive's headers take more than the limit of {MAX_ARCHIVE_HEADER_BYTES} bytes")


def _name_parts(member: tarfile.TarInfo) -> list:
    """The components of a plain relative name; ``.`` and empty ones dropped."""
    name = member.name
    if len(os.fsencode(name)) > MAX_NAME_BYTES:
        raise UnsafeArchive(f"unsafe archive member: a name is longer than the limit of {MAX_NAME_BYTES} bytes")
    if "\0" in name:
        raise UnsafeArchive(f"unsafe archive member: {name!r} holds a NUL byte")
    if name.startswith("/"):
        # the data filter would strip the slash; an absolute name is refused instead
        raise UnsafeArchive(f"unsafe archive member: '{name}' is an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        # refused even when it stays inside: on disk 'file/..' fails, and lexical checks stay exact
        raise UnsafeArchive(f"unsafe archive member: '{name}' has a '..' component")
    return parts


def _check_type(member: tarfile.TarInfo) -> None:
    """Only regular files and folders: links could point anywhere, devices are no model data."""
    if member.issym() or member.islnk():
        raise UnsafeArchive(f"unsafe archive member: '{member.name}' is a link; model archives may not hold links")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchive(f"unsafe archive member: '{member.name}' is a special file, not a file or a folder")


def _check_numbers(member: tarfile.TarInfo) -> None:
    """A negative size would move tarfile's reading backwards; a time out of range fails os.utime."""
    if member.size < 0:
        raise UnsafeArchive(f"unsafe archive member: '{member.name}' has a negative size")
    if not (math.isfinite(member.mtime) and abs(member.mtime) < MAX_TIME):
        raise UnsafeArchive(f"unsafe archive member: '{member.name}' has a modification time out of range")


def _check_clashes(member: tarfile.TarInfo, parts: list, destination: str) -> None:
    """Refuse a member that earlier members leave no room for: extracting it would fail.

    The folder started empty and holds no links, so what is on disk is exactly
    what earlier members made; two ``lstat`` calls answer, however deep the name.
    """
    if not parts:
        if member.isdir():
            return  # './': the folder itself, which exists
        raise UnsafeArchive(f"unsafe archive member: '{member.name}' names the folder itself")
    try:
        parent = os.lstat(os.path.join(destination, *parts[:-1]))
    except FileNotFoundError:
        return  # folders still to be made: nothing there yet
    except NotADirectoryError:
        parent = None  # a file somewhere above
    if parent is None or not stat.S_ISDIR(parent.st_mode):
        raise UnsafeArchive(f"unsafe archive member: '{member.name}' would be inside an earlier file")
    try:
        existing = os.lstat(os.path.join(destination, *parts))
    except FileNotFoundError:
        return
    if stat.S_ISDIR(existing.st_mode) != member.isdir():
        raise UnsafeArchive(
            f"unsafe archive member: '{member.name}' is a {'folder' if member.isdir() else 'file'} "
            f"where an earlier member made a {'file' if member.isdir() else 'folder'}"
        )
