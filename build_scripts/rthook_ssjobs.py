"""PyInstaller runtime hook of the one-file ssjobs binary: runs in the Python process before
``ssjobs`` is imported, on every command.

A one-file binary is two processes: a bootloader that unpacks the bundle into
``$TMPDIR/_MEIxxxxxx`` and the Python process it runs; the bootloader deletes that dir when
the Python process exits. A SIGKILLed bootloader cannot, and its dir (~40 MB) stays.

1. Hold a shared ``flock`` on our own unpacked dir for as long as we live. Forked children
   (the master's workers) share the open file, so the lock is free only once the whole
   process tree running from that dir is gone, whatever pids were reused meanwhile. It is
   also the convention systemd-tmpfiles honours: its periodic clean-up of old files in /tmp
   skips a locked dir, so a master running for weeks keeps its files.
2. Then mark the dir as ssjobs' (a marker file, written only once the lock is held).
   The marker names the bootloader. A process that joins an instance (a multiprocessing
   child spawned from ``sys.executable`` runs from the same dir) locks it too but keeps the
   first marker.
3. Remove stale dirs: every sibling ``_MEI*`` dir owned by our uid that has the marker, that
   nobody holds locked any more and whose bootloader is gone (a live bootloader is removing
   its dir right now: leave it to it). Dirs without the marker are left alone (another
   PyInstaller application's, or one whose process is still starting).

Nothing here may stop the binary from running: every failure is ignored.
"""


def _ssjobs_mark_and_sweep():
    import fcntl
    import os
    import sys

    marker = "ssjobs-unpacked-here"
    here = getattr(sys, "_MEIPASS", None)
    if not here or not os.path.basename(here).startswith("_MEI"):
        return  # one-folder build: nothing is unpacked, nothing to clean
    parent, own = os.path.split(here)

    try:
        fd = os.open(here, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_SH)
        sys._ssjobs_unpacked_dir_fd = fd  # never closed: the lock lives as long as we do
        with open(os.path.join(here, marker), "x") as f:
            f.write(f"{os.getppid()} bootloader, {os.getpid()} python\n")
    except OSError:
        pass

    def gone(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except (OSError, IndexError):
            return True

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
            with open(os.path.join(path, marker)) as f:
                bootloader = int(f.read().split()[0])
            if not gone(bootloader):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (OSError, ValueError, IndexError):
            continue  # not ours, still starting, or in the middle of its own clean-up
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # in use
        else:
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


_ssjobs_mark_and_sweep()
del _ssjobs_mark_and_sweep
