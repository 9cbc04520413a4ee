"""Files and directories handled as a root process must handle them: never through a link.

A master starts as root and later hands data_dir and log.dir to ``process.user``, so from
the second start on, that user can plant anything there: a symlink named ``ssjobs.log``
pointing at a root-only file, a hard link, a FIFO. Everything ssjobs creates, opens for
writing or chowns goes through here:

- :func:`make_dirs` creates missing directories with an exact mode (not the umask's);
- :func:`check_dir` is the StrictModes-style check run before a master starts: the
  directory and the entries ssjobs uses in it must belong to a trusted user (root, the
  current user or ``process.user``), be writable by nobody else, and be no link;
- :func:`open_file` opens with ``O_NOFOLLOW`` and refuses what is not a plain file with one
  name (a FIFO cannot block it: ``O_NONBLOCK``);
- :func:`hand_over` chowns through a descriptor it opened itself (``fchown``), so a path
  swapped for a link at the last moment changes nothing but the link.

Layer 0: it imports only ``ssjobs.errors``.
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import UnsafePathError

NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY


def make_dirs(path: Path, mode: int, parents_mode: int = 0o755) -> None:
    """Create ``path`` with exactly ``mode`` and its missing parents with ``parents_mode``
    (not what the umask leaves: it could make them group-writable, which :func:`check_dir`
    refuses). Existing ones are left as they are."""
    path = Path(os.path.abspath(path))
    missing = []
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            break
        missing.append(candidate)
    for directory in reversed(missing):
        wanted = mode if directory == path else parents_mode
        try:
            os.mkdir(directory, wanted)
        except FileExistsError:  # made meanwhile by another process: not ours to chmod
            continue
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
        try:
            os.fchmod(fd, wanted)
        finally:
            os.close(fd)


def check_dir(path: Path, trusted: Iterable[int], *, what: str,
              entries: Callable[[str], bool] | None = None) -> None:
    """Raise UnsafePathError unless ``path`` (a directory, maybe reached through a link the
    deployer made) and the entries of it that ``entries`` selects (all by default) are
    owned by a ``trusted`` uid, not writable by group or other, and no link; a file must
    have no other hard link. Parents must not be writable by others unless sticky (/tmp),
    or someone could swap the directory itself."""
    trusted = set(trusted)
    real = Path(os.path.realpath(path))
    for parent in reversed(real.parents):
        st = os.lstat(parent)
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise UnsafePathError(f"{what} {path}: its parent {parent} is writable by "
                                  f"{_who(st)}: make it 0755, or move {what} elsewhere")
    st = os.lstat(real)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{what} {path} is not a directory")
    _check(real, st, trusted, what=what, shown=str(path))
    for name in sorted(os.listdir(real)):
        if entries is None or entries(name):
            _check(real / name, os.lstat(real / name), trusted, what=what,
                   shown=f"{path}/{name}")


def _check(path: Path, st: os.stat_result, trusted: set[int], *, what: str, shown: str) -> None:
    fix = f"remove it or fix it (ssjobs refuses to start while a user other than root or " \
          f"the service user could change {what})"
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(f"{shown} is a symbolic link: {fix}")
    if st.st_uid not in trusted:
        raise UnsafePathError(f"{shown} is owned by uid {st.st_uid}, not by root or the "
                              f"service user: {fix}")
    if st.st_mode & 0o022:
        raise UnsafePathError(f"{shown} is writable by {_who(st)}: {fix}")
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        raise UnsafePathError(f"{shown} has {st.st_nlink - 1} other hard link(s): {fix}")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
        raise UnsafePathError(f"{shown} is not a regular file or directory: {fix}")


def _who(st: os.stat_result) -> str:
    return "its group and others" if st.st_mode & 0o022 == 0o022 else \
        "its group" if st.st_mode & 0o020 else "others"


def open_file(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that never follows a link and only returns a descriptor of a plain file
    with no other name (``O_CREAT`` makes it with ``mode``); UnsafePathError otherwise."""
    try:
        fd = os.open(path, flags | NOFOLLOW | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component is a link
            raise UnsafePathError(f"{path} is a symbolic link: not followed") from None
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads, or a socket
            raise UnsafePathError(f"{path} is not a regular file") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise UnsafePathError(f"{path} is not a regular file with one name")
    if flags & os.O_NONBLOCK == 0:  # a plain file ignores it, but later fcntl users may not
        os.set_blocking(fd, True)
    return fd


def hand_over(path: Path, uid: int, gid: int) -> bool:
    """chown ``path`` (a plain file with one name, or a directory) to uid:gid through a
    descriptor opened without following links; False (nothing changed) for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False  # a link (ELOOP), a socket (ENXIO), gone
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink == 1):
            os.fchown(fd, uid, gid)
            return True
        return False
    finally:
        os.close(fd)
