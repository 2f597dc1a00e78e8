"""Private files and directories: what qhpc writes at rest is its owner's alone.

Every file the broker (or a Slurm hook) writes holds something a tenant must not read
from another tenant: the store and SQLite's ``-wal``/``-shm`` beside it, the journal
and its dead letters, tokens, logs. Co-located programs run on the same host under
another uid, so file modes are the boundary. The rule, whatever the process umask:

- files are created ``0600`` (``os.open(..., 0o600)`` with ``O_NOFOLLOW``, so a
  symlink planted at the name is refused, not followed) and ``fchmod``-ed to 0600
  if they existed looser;
- directories qhpc creates are ``0700``, every missing parent too (``os.makedirs``
  would give parents ``0777 & ~umask``, world-writable under umask 0);
- an existing directory that must be private (the journal, the data dir) is
  *tightened* to 0700 with a logged warning when this process owns it, and
  *refused* (:class:`NotPrivateError`) when it cannot be: owned by another user,
  sticky (a shared place such as ``/tmp``), or a place shared by design, the
  filesystem's top two levels (``/``, ``/var``, ``/var/lib``) and the user's home,
  where a ``chmod`` would break others.

SQLite creates ``-wal`` and ``-shm`` itself, with the mode of the database file:
:func:`private_file` creates that file 0600 before SQLite first opens it.

This module sits at the bottom of the dependency graph (it imports nothing of
qhpc), so every room, the resources included, may use it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

#: mode of every file qhpc writes for itself
PRIVATE_FILE = 0o600
#: mode of every directory qhpc keeps its state in
PRIVATE_DIR = 0o700
#: the permission bits of group and others
_SHARED_BITS = 0o077


class NotPrivateError(PermissionError):
    """A path group or others may use that this process cannot (or must not) tighten."""


def private_dir(path: str | os.PathLike[str], *, tighten: bool = True) -> Path:
    """``path`` as a directory only its owner may use; created 0700 (parents too) if missing.

    An existing ``path`` with group or other bits is tightened (warning) or refused, see
    the module docstring; ``tighten=False`` leaves an existing directory as it is (a
    directory the caller only writes one private file into).
    """
    directory = Path(path).expanduser()
    missing = []
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for candidate in reversed(missing):
        try:
            os.mkdir(candidate, PRIVATE_DIR)
        except FileExistsError:
            continue  # made concurrently: judged below like any existing directory
        os.chmod(candidate, PRIVATE_DIR)  # a umask can only remove bits; set them exactly
    if tighten:
        secure_dir(directory)
    return directory


def secure_dir(path: str | os.PathLike[str]) -> None:
    """Make the existing directory ``path`` private, or raise :class:`NotPrivateError`."""
    directory = Path(path)
    info = directory.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise NotPrivateError(f"{directory} is not a directory")
    if not info.st_mode & _SHARED_BITS:
        return
    mode = stat.S_IMODE(info.st_mode)
    why_not = _why_not_tighten(directory.resolve(), info)
    if why_not is not None:
        raise NotPrivateError(
            f"{directory} (mode {mode:04o}) is open to group or others and {why_not}; "
            f"chmod 700 it, or keep qhpc's state in a directory of its own"
        )
    os.chmod(directory, PRIVATE_DIR)
    log.warning("%s was mode %04o; tightened to %04o", directory, mode, PRIVATE_DIR)


def _why_not_tighten(directory: Path, info: os.stat_result) -> str | None:
    if info.st_uid != os.geteuid():
        return f"owned by uid {info.st_uid}, not this process's"
    if info.st_mode & stat.S_ISVTX:
        return "is a shared (sticky) directory"
    if len(directory.parts) <= 3:  # "/", "/var", "/var/lib": others live there too
        return "is a top-level directory others rely on"
    home = os.path.expanduser("~")
    if home not in ("", "/") and directory == Path(home).resolve():
        return "is a home directory"
    return None


def open_private(path: str | os.PathLike[str], flags: int = os.O_WRONLY | os.O_CREAT) -> int:
    """``os.open`` of a private file: created 0600, never through a symlink, ours alone.

    An existing file looser than 0600 is ``fchmod``-ed (on the descriptor, so nothing
    swapped in between is touched); one owned by someone else is refused, since a file
    planted by another user (e.g. a ``-wal`` pre-created in a shared directory) would
    stay readable to them whatever its mode.
    """
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise NotPrivateError(f"{path} is owned by uid {info.st_uid}, not this process's")
        if info.st_mode & _SHARED_BITS:
            os.fchmod(fd, PRIVATE_FILE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_file(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` empty and 0600 if missing, tighten it if looser; its directory is
    created private if missing (an existing one is the caller's to judge)."""
    file = Path(path).expanduser()
    private_dir(file.parent, tighten=False)
    os.close(open_private(file))
    return file


def write_private(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Replace the contents of ``path`` with ``data``; the file is 0600 and ours."""
    file = Path(path).expanduser()
    private_dir(file.parent, tighten=False)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd = open_private(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "wb") as stream:
        stream.write(raw)
    return file


def tighten_file(path: str | os.PathLike[str]) -> None:
    """An existing file made 0600 if this process owns it, refused if it is someone
    else's and group or others may read it; a missing file is fine."""
    file = Path(path)
    try:
        info = file.stat()
    except FileNotFoundError:
        return
    if not info.st_mode & _SHARED_BITS:
        return
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.geteuid():
        raise NotPrivateError(
            f"{file} (mode {mode:04o}) is open to group or others and owned by uid "
            f"{info.st_uid}, not this process's; chmod 600 it"
        )
    os.chmod(file, PRIVATE_FILE)
    log.warning("%s was mode %04o; tightened to %04o", file, mode, PRIVATE_FILE)


__all__ = [
    "PRIVATE_DIR",
    "PRIVATE_FILE",
    "NotPrivateError",
    "open_private",
    "private_dir",
    "private_file",
    "secure_dir",
    "tighten_file",
    "write_private",
]
