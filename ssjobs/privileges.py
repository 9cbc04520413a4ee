"""A root-started ssjobs and its service user (``process.user``).

Before a master starts, :func:`prepare_dirs` creates data_dir and log.dir if needed and
refuses (one clear line, exit 1) a directory or file there that a user other than root and
the service user could change, or that is a link: the StrictModes rule of OpenSSH.
:func:`drop_privileges` then hands data_dir and ssjobs' own files in log.dir to the
service user, through descriptors that never follow a link, and becomes that user; a
shared log.dir (``/var/log``) is never handed over, nor any file in it that is not ssjobs'.
:func:`become` is the last step alone, for the child in which ``check`` imports consumers.

See docs/security.md for who may write what.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple

from . import fsguard
from .config import EMBEDDED_DIR_NAME
from .errors import ControlError, UnsafePathError
from .logs import LOG_DIR_MODE, is_log_file
from .runtime import DATA_DIR_MODE


class ServiceUser(NamedTuple):
    name: str
    uid: int
    gid: int


def service_user(user: str) -> ServiceUser | None:
    """The account of ``process.user`` ("name" or "name:group"); None when there is no
    user to become (none configured, or not running as root)."""
    if not user or os.getuid() != 0:
        return None
    import grp
    import pwd

    name, _, group = user.partition(":")
    try:
        pw = pwd.getpwnam(name)
        gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
    except KeyError:
        raise ControlError(f"process.user: no such user or group {user!r}") from None
    return ServiceUser(name, pw.pw_uid, gid)


def trusted_uids(user: str) -> set[int]:
    """Who may own data_dir, log.dir and ssjobs' files: root, us, and the service user."""
    su = service_user(user)
    return {0, os.geteuid(), *([su.uid] if su else [])}


def prepare_dirs(data_dir: Path, log_dir: Path | None, user: str) -> None:
    """Create data_dir and log.dir when missing; UnsafePathError when either, or a file
    ssjobs uses in them, could be changed by another user or is a link. No log.dir: the
    log goes to stderr."""
    trusted = trusted_uids(user)
    for path, mode, what in ((data_dir, DATA_DIR_MODE, "data_dir"),
                             (log_dir, LOG_DIR_MODE, "log.dir")):
        if path is None:
            continue
        try:
            fsguard.make_dirs(path, mode)
        except OSError as exc:
            raise ControlError(f"cannot create {what} {path}: {exc.strerror}") from None
    check_dirs(data_dir, log_dir, trusted)
    su = service_user(user)
    if su is not None and log_dir is not None:
        _log_dir_is_own(log_dir, data_dir, su)  # refused now, before a master is started


def _log_dir_is_own(log_dir: Path, data_dir: Path, su: ServiceUser) -> bool:
    """True when log.dir is ssjobs' alone (then it is handed over with its files); False
    for a shared one the service user can write already; UnsafePathError for a shared one
    it cannot: ssjobs never hands over a directory it does not own alone."""
    if all(is_log_file(name) for name in os.listdir(log_dir)) or \
            Path(log_dir).resolve() == Path(data_dir).resolve():
        return True
    if _writable_by(su, log_dir):
        return False
    raise UnsafePathError(
        f"log.dir {log_dir} holds files that are not ssjobs' and {su.name} cannot write "
        f"there (ssjobs hands over only a directory of its own): use a directory for ssjobs "
        f"alone, e.g. {Path(log_dir) / 'ssjobs'}")


def check_dirs(data_dir: Path, log_dir: Path | None, trusted: set[int]) -> None:
    # Everything in data_dir is ssjobs'; log.dir may be shared: only ssjobs' files count.
    fsguard.check_dir(data_dir, trusted, what="data_dir")
    embedded = Path(data_dir) / EMBEDDED_DIR_NAME  # an embedded redis-server's: the same rule
    if os.path.isdir(embedded) and not os.path.islink(embedded):
        fsguard.check_dir(embedded, trusted, what="data_dir")
    if log_dir is not None:
        fsguard.check_dir(log_dir, trusted, what="log.dir", entries=is_log_file)


def drop_privileges(user: str, data_dir: Path, log_dir: Path | None) -> None:
    """As root, become ``user`` after handing it data_dir and ssjobs' files in log.dir; a
    no-op without a user or when not root."""
    su = service_user(user)
    if su is None:
        return
    check_dirs(data_dir, log_dir, trusted_uids(user))  # again: just before chown, as root
    for path in (data_dir, *(data_dir / name for name in os.listdir(data_dir))):
        fsguard.hand_over(path, su.uid, su.gid)
    _hand_over_tree(Path(data_dir) / EMBEDDED_DIR_NAME, su)  # the server runs as su too
    if log_dir is not None:
        if _log_dir_is_own(log_dir, data_dir, su):
            fsguard.hand_over(log_dir, su.uid, su.gid)
        for name in os.listdir(log_dir):
            if is_log_file(name):
                fsguard.hand_over(Path(log_dir) / name, su.uid, su.gid)
    _hand_over_bundle(su)
    become(su)


def _writable_by(su: ServiceUser, path: Path) -> bool:
    st = os.stat(path)
    return (st.st_uid == su.uid and bool(st.st_mode & 0o200)) or \
        (st.st_gid == su.gid and bool(st.st_mode & 0o020))


def _hand_over_tree(top: Path, su: ServiceUser) -> None:
    """Everything below ``top`` (an embedded redis-server's files, which a run without
    process.user made as root), through ``fsguard.hand_over``: no link followed, no file
    with a second name."""
    if not os.path.isdir(top) or os.path.islink(top):
        return
    for parent, subdirs, files in os.walk(top):  # os.walk never follows a link
        for name in subdirs + files:
            fsguard.hand_over(Path(parent) / name, su.uid, su.gid)


def _hand_over_bundle(su: ServiceUser) -> None:
    """A one-file binary unpacked as root (a 0700 dir): its modules must stay importable."""
    bundle = getattr(sys, "_MEIPASS", None)
    if not bundle:
        return
    for parent, subdirs, files in os.walk(bundle):  # os.walk never follows a link
        for entry in (parent, *(os.path.join(parent, f) for f in subdirs + files)):
            os.lchown(entry, su.uid, su.gid)


def become(su: ServiceUser) -> None:
    """Switch this process to ``su`` for good: groups, gid, then uid."""
    os.setgid(su.gid)
    os.initgroups(su.name, su.gid)
    os.setuid(su.uid)
