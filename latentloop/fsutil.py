"""Atomic writes: an interrupted save leaves the previous file or directory intact."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _default_mode(directory: bool) -> int:
    """The mode a plain open()/mkdir() would give: mkstemp/mkdtemp make private 0600/0700 files."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode(directory=False))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_directory(target: str | Path, keep: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces `target` only when the block succeeds.

    Files of an existing `target` whose names match a glob in `keep` (a tokenizer beside the
    weights, say) are carried over unless the block wrote its own.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    os.chmod(tmp, _default_mode(directory=True))
    try:
        yield tmp
        for written in tmp.rglob("*"):
            os.chmod(written, _default_mode(directory=written.is_dir()))
        if target.is_dir():
            for pattern in keep:
                for old in target.glob(pattern):
                    if old.is_file() and not (tmp / old.name).exists():
                        shutil.copy2(old, tmp / old.name)
        backup = None
        if target.exists():
            backup = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, backup)
        os.replace(tmp, target)
        if backup is not None:
            shutil.rmtree(backup) if backup.is_dir() else backup.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
