"""One process per run or sweep directory: an advisory lock file holding the owner's pid.

The lock is `flock` on `<dir>/.lock`: the kernel releases it when its holder dies (kill -9 too),
so a stale lock of a dead process is simply taken over; a live holder makes a second process
refuse with one line naming its pid.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from hapo_cli.errors import HapoError

LOCK_FILE = ".lock"


class DirLock:
    """`with DirLock(path, what="hapo train"):` ... (or acquire()/release())."""

    def __init__(self, directory: str | os.PathLike, what: str = "hapo"):
        self.path = Path(directory) / LOCK_FILE
        self.what = what
        self.fd: int | None = None

    def acquire(self) -> DirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise HapoError(f"{self.path.parent} is in use by {holder}: wait for it to finish or stop it "
                            f"(one {self.what} per directory)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} ({self.what}, since {time.strftime('%H:%M:%S')})\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
