"""Writing a file so that a reader sees either the old file or the whole new one, never a part:
write beside the target, then rename over it (a rename within one directory is atomic on POSIX
and Windows). A crash, an exception or two processes writing the same path at once leave no
half-written target and no temp file behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temp path beside `path` for the caller to write; on a normal exit rename it onto
    `path`, on an exception remove it. `durable` also flushes the data to disk before the
    rename, for files whose loss after a power cut would cost hours (a finished trial).

    The temp name starts with "." and ends in ".tmp", so directory readers that skip hidden
    files or glob by suffix never see it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
