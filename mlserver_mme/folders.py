"""Folders the server writes and later trusts: its cache (downloads, unpacked models) and the sharded run folder.

What the server reads back from them it runs or serves (a model file, supervisord's configuration), so
they must be the server's alone: another local user who created or could write the folder could swap a
model or a command line between the write and the read. The default cache folder is the user's own
(``$XDG_CACHE_HOME``, else ``~/.cache``), never one shared name in the temporary folder.
"""

import fcntl
import os
import stat
import tempfile
from typing import Dict

LOCK_FILE = ".lock"  # in a cache folder: held (flock) by the one server process that uses the folder
_held: Dict[str, int] = {}  # real path -> the descriptor holding its lock, for this process's life


class UnsafeFolder(ValueError):
    """A folder the server would trust belongs to another user or may be written by others."""


class FolderInUse(UnsafeFolder):
    """A cache folder another server process holds: two servers deleting each other's files would corrupt both."""


def lock_folder(path: str, setting: str, across_exec: bool = False) -> None:
    """Hold ``path``'s lock for this process's life (and, ``across_exec``, its next program's): FolderInUse if
    another process holds it. The lock file records the holder's process id, for the message."""
    real = os.path.realpath(path)
    if real in _held:
        return
    descriptor = os.open(os.path.join(real, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise FolderInUse(
            f"{setting} ({path}) is in use by another server (process {holder}): servers sharing a cache folder "
            f"would delete each other's files. Give each server its own {setting}"
        ) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    os.set_inheritable(descriptor, across_exec)
    _held[real] = descriptor


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/mlserver-mme``, else ``~/.cache/mlserver-mme``; without a home, a folder named after
    the user in the temporary folder (refused at start if another user made it first)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG rule: a relative value is ignored
        base = os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):  # no home to expand "~" to
        return os.path.join(tempfile.gettempdir(), f"mlserver-mme-{os.geteuid()}")
    return os.path.join(base, "mlserver-mme")


def private_folder(path: str, setting: str) -> str:
    """``path``, made (mode 0700) if missing; UnsafeFolder unless this user owns it and no one else may write in it.

    ``setting`` names what set the path, for the message.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):  # whoever made the link could point it elsewhere later
        raise UnsafeFolder(f"{setting} ({path}) is a symbolic link: give the folder itself")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeFolder(f"{setting} ({path}) is not a folder")
    if info.st_uid != os.geteuid():
        raise UnsafeFolder(
            f"{setting} ({path}) belongs to user {info.st_uid}, not to this server's user {os.geteuid()}: whoever "
            f"owns it could swap the models and files the server keeps there. Use a folder of this user's own"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeFolder(
            f"{setting} ({path}) may be written by other users (mode {stat.S_IMODE(info.st_mode):o}): they could "
            f"swap the models and files the server keeps there. Remove their write access (chmod go-w) or use "
            f"another folder"
        )
    return path


def write_private_file(path: str, text: str) -> None:
    """Write ``path`` (mode 0600) through a new file that must not exist yet nor be a link, then rename it."""
    partial = f"{path}.{os.getpid()}.tmp"
    try:
        os.unlink(partial)  # a leftover of this very process id
    except FileNotFoundError:
        pass
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.replace(partial, path)
