"""Atomic file writes: a file is written under a temporary name in its folder and renamed
over the target only when complete, so a failed or interrupted write never leaves a
half-written file and never destroys an earlier good one."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from bayesnlme.errors import BayesNLMEInputError

LOCK_NAME = ".bayesnlme.lock"
_TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")   # what write_atomic's mkstemp names look like


class OutputError(BayesNLMEInputError):
    """A result could not be written (disk full, no permission) or its folder is in use."""


def write_atomic(path, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it to ``path``.

    The parent folder is created if needed; on any error the temporary file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; results should be readable like any new file
        os.replace(tmp, path)
    except OSError as exc:   # disk full, quota, permissions: the old file stays; say so in one line
        kept = "the earlier file is unchanged" if path.exists() else "nothing was written"
        raise OutputError(f"{path}: could not write the result ({exc.strerror or exc}); {kept}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def remove_stale_temporaries(folder) -> list[Path]:
    """Remove the temporary files of :func:`write_atomic` left in ``folder`` by a killed writer.

    Only call this while holding the folder's :func:`output_lock`.  Sub-folders are not searched.
    """
    stale = [p for p in Path(folder).glob(".*.tmp") if _TEMPORARY.fullmatch(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


#: what :func:`private_temporary_folder` names look like: the owning process's PID after the prefix
_PRIVATE = re.compile(r"bayesnlme-(?:workers-)?(\d+)-[A-Za-z0-9_]+")
#: a dead process's private temporary folder is removed once it has not changed for this long (s)
PRIVATE_STALE_S = 24 * 3600.0


def private_temporary_folder(kind: str = "") -> str:
    """A new temporary folder of this process, ``bayesnlme-[KIND-]PID-XXXXXXXX`` in the system's one.

    First removes the folders of this kind of name that processes no longer running left behind (a command
    killed by SIGKILL or SIGTERM runs no cleanup): only folders of this user, whose PID is not a running
    process and which have not changed for :data:`PRIVATE_STALE_S` (a PID from another container sharing
    the folder, or a reused PID, is never taken for a dead one while its folder is in use).
    """
    base, now = tempfile.gettempdir(), time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(base):
            found = _PRIVATE.fullmatch(entry.name)
            if not found or not entry.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if (info.st_uid == os.getuid() and now - info.st_mtime > PRIVATE_STALE_S
                        and not _running(int(found.group(1)))):
                    shutil.rmtree(entry.path, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"bayesnlme-{kind + '-' if kind else ''}{os.getpid()}-")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


@contextlib.contextmanager
def output_lock(folder):
    """Hold an exclusive lock on an output folder while a command writes into it.

    A second process that tries to write into the same folder at the same time
    is refused with :class:`OutputError` instead of interleaving its files with
    the first one's.  The lock is an advisory ``flock`` on ``folder/.bayesnlme.lock``,
    removed when the command ends.  The operating system releases a ``flock``
    when its holder dies, so a run killed with ``kill -9`` leaves at most an
    unlocked file that the next run takes over, and the temporary files of
    :func:`write_atomic` it was writing (``.NAME.XXXXXXXX.tmp``); the new holder
    removes those from the folder, since no other writer can be using them.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise OutputError(f"{folder}: another bayesnlme command ({holder}) is writing into this folder; "
                              f"wait for it to finish or choose another output folder") from None
        try:   # the holder before us may have removed the file between our open and our flock
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        remove_stale_temporaries(folder)
        yield folder
    finally:
        path.unlink(missing_ok=True)   # still holding the lock: nobody can have taken this file over
        handle.close()
        if created and not any(folder.iterdir()):   # a failed run leaves no empty folder behind
            folder.rmdir()
