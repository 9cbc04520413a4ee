"""PyInstaller runtime hook of the one-file ssjobs binary: runs in the Python process before
``ssjobs`` is imported, on every command.

A one-file binary is two processes: a bootloader that unpacks the bundle into
``$TMPDIR/_MEIxxxxxx`` and the Python process it runs; the bootloader deletes that dir when
the Python process exits. A SIGKILLed bootloader cannot, and its dir (tens of MB) stays.

1. Mark our own dir as in use: a marker file in ``sys._MEIPASS`` that this process holds a
   shared ``flock`` on. Forked children (the master's workers) share the open file, so the
   lock is free only once the whole process tree that runs from this dir is gone — whatever
   pid was reused meanwhile. The marker appears under its final name only once locked.
2. Remove stale dirs: every sibling ``_MEI*`` dir of ours owned by our uid that carries the
   marker and whose marker nobody holds any more. Dirs without a marker are left alone
   (another PyInstaller application's, or one still starting).

Nothing here may stop the binary from running: every failure is ignored.
"""


def _ssjobs_mark_and_sweep():
    import fcntl
    import os
    import sys

    marker_name = "ssjobs-extraction.lock"
    here = getattr(sys, "_MEIPASS", None)
    if not here or not os.path.basename(here).startswith("_MEI"):
        return  # one-folder build: nothing is unpacked, nothing to clean
    parent, own = os.path.split(here)

    try:
        tmp = os.path.join(here, f".{marker_name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.write(fd, f"bootloader {os.getppid()} python {os.getpid()}\n".encode())
        os.rename(tmp, os.path.join(here, marker_name))
        sys._ssjobs_extraction_lock_fd = fd  # kept open (never closed) for our lifetime
    except OSError:
        pass

    try:
        names = [n for n in os.listdir(parent) if n.startswith("_MEI") and n != own]
    except OSError:
        return
    uid = os.geteuid()
    for name in names:
        path = os.path.join(parent, name)
        try:
            if os.lstat(path).st_uid != uid:
                continue
            fd = os.open(os.path.join(path, marker_name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # not ssjobs', or not marked yet
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # still in use
        try:
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


_ssjobs_mark_and_sweep()
del _ssjobs_mark_and_sweep
