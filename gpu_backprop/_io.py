"""Writing files so that a reader sees the old file or the new one, never a part of either.

Several processes may write into one directory at once. Each temporary file is
named after the process that writes it (``.NAME.gbtmp.HOST.PID.TOKEN.tmp``),
and a process deletes only temporary files of its own: the one it was writing
when a write fails, and, before each write of ``NAME``, those left by a process
of this host that no longer runs (killed mid-write). Nothing else is ever
deleted, so another run's file that is being written, or a user's file that
happens to start with ``.NAME.``, is left alone.

Files get the mode a plain ``open()`` gives them: ``0o666`` less the umask
(the kernel applies it), or the mode of the file they replace.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import secrets
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["DirectoryInUse", "atomic_write_bytes", "create_temporary", "lock_directory", "save_png", "strict_json"]

_MARK = "gbtmp"


def _host() -> str:
    """This host's name as it appears in temporary names (letters, digits and dashes only)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:48] or "host"


def create_temporary(path: str | os.PathLike[str], suffix: str = ".tmp") -> tuple[int, Path]:
    """Create a new, empty temporary file beside ``path``, named for this process: ``(fd, its path)``.

    It has the mode ``open(path, "w")`` would give: the mode of ``path`` if it
    exists, else ``0o666`` less the umask. The caller writes it, renames it over
    ``path`` and deletes it if anything fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(path, suffix)
    while True:
        tmp = path.with_name(f".{path.name}.{_MARK}.{_host()}.{os.getpid()}.{secrets.token_hex(6)}{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            break
        except FileExistsError:  # a token drawn twice: draw again
            continue
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = None  # a new file: the umask has already been applied by os.open
    if mode is not None and hasattr(os, "fchmod"):
        try:
            os.fchmod(fd, mode)
        except OSError:
            pass
    return fd, tmp


def _remove_dead_temporaries(path: Path, suffix: str) -> None:
    """Delete temporary files of ``path`` left by processes of this host that no longer run."""
    if os.name != "posix":  # os.kill(pid, 0) would not be a harmless probe
        return
    pattern = re.compile(re.escape(f".{path.name}.{_MARK}.{_host()}.") + r"(\d+)\.[0-9a-f]{12}" + re.escape(suffix))
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        m = pattern.fullmatch(name)
        if m is None or int(m.group(1)) == os.getpid() or _running(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            (path.parent / name).unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it runs
        return True
    return True


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> None:
    """Write ``payload`` to a temporary file beside ``path``, fsync it, rename it over ``path``, fsync the folder.

    A crash at any moment leaves either the previous file or the new one (and at
    worst this process's temporary file, which the next write of ``path`` on
    this host removes). The temporary file is removed if the write fails.
    """
    path = Path(path)
    try:
        fd, tmp = create_temporary(path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        exc.filename = exc.filename or str(path)  # an error says which file it was writing (a full disk does not)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def save_png(fig: Any, path: str | os.PathLike[str], dpi: int = 110) -> None:
    """A matplotlib figure (made without pyplot, so nothing to close) written to ``path`` as a PNG, atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())


class DirectoryInUse(OSError):
    """Another process holds the lock of a directory (see :func:`lock_directory`); ``holder`` says which."""

    def __init__(self, directory: str | os.PathLike[str], holder: str) -> None:
        super().__init__(f"{directory} is in use by {holder}")
        self.holder = holder


LOCK_NAME = ".gpu_backprop.lock"


@contextlib.contextmanager
def lock_directory(directory: str | os.PathLike[str], remove_when_alone: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (a ``.gpu_backprop.lock`` file in it) while the block runs.

    Raises :class:`DirectoryInUse`, naming the holder's host and pid, if another
    process holds it. The lock goes with the process, so a killed run leaves
    none behind (the empty lock file stays). With ``remove_when_alone`` the
    holder deletes the lock file, still holding it, if nothing else is in the
    directory at the end (a run that wrote nothing leaves an empty directory to
    remove); whoever locks a file that was deleted meanwhile locks a new one.
    Where ``fcntl`` is missing (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock_path = Path(directory) / LOCK_NAME
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DirectoryInUse(directory, holder) from None
        try:
            if os.fstat(fd).st_ino == os.stat(lock_path).st_ino:
                break  # the lock file that is there, not one its last holder deleted after we opened it
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            if remove_when_alone and os.listdir(directory) == [LOCK_NAME]:
                lock_path.unlink()
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def strict_json(value: Any, **kw: Any) -> str:
    """``json.dumps(value)`` that strict readers accept: every NaN and infinity becomes ``null``."""
    return json.dumps(_finite_or_none(value), allow_nan=False, **kw)


def _finite_or_none(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_none(v) for v in x]
    return x
