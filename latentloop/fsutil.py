"""Atomic writes: an interrupted save leaves the previous file or directory intact (or recoverably so).

Directory replacement is journaled in names beside the target, all carrying the writer's pid:

    .NAME.tmp-PID-XXXX    being written (incomplete: a stray once PID is gone; deleted)
    .NAME.journal-PID     what the replacement owns, written before the commit
    .NAME.new-PID         committed: complete, waiting to become NAME (rolled forward)
    .NAME.old-PID         the previous NAME moved aside (deleted once NAME is the new one)

`recover_directory(NAME)` finishes or rolls back what a killed process left: the next save and every
loader call it, so a kill between any two renames never leaves NAME missing for good.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Test hook: called between moving the old directory aside and moving the new one in (a kill there
# used to leave the target absent). Tests set it to SIGKILL the process.
_between_renames: Callable[[Path], None] | None = None


def _default_mode(directory: bool) -> int:
    """The mode a plain open()/mkdir() would give: mkstemp/mkdtemp make private 0600/0700 files."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return False
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_stray_files(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
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


def _clean_stray_files(path: Path) -> None:
    """Temporary files of `path` left by killed writers: `.NAME.PID-XXXX.tmp` of a dead PID, and
    `.NAME.XXXXXXXX.tmp` (no pid) from earlier versions."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)-[^/]*|[a-z0-9_]{{8}})\.tmp$")
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry.name)
        if match and (match.group(1) is None or not pid_alive(int(match.group(1)))) and entry.is_file():
            entry.unlink(missing_ok=True)


# --- directories -----------------------------------------------------------------------------------------
def _leftovers(target: Path) -> dict[str, dict[int, list[Path]]]:
    """Journal entries of `target` by kind ('tmp', 'journal', 'new', 'old') and pid."""
    name = re.escape(target.name)
    patterns = {
        "tmp": re.compile(rf"\.{name}\.tmp-(\d+)-.+$"),
        "journal": re.compile(rf"\.{name}\.journal-(\d+)$"),
        "new": re.compile(rf"\.{name}\.new-(\d+)$"),
        "old": re.compile(rf"\.{name}\.old-(\d+)$"),
        # what earlier versions left: `.NAME.XXXXXXXX.tmp` (no pid: nothing can still be writing it
        # once this version runs) and `.NAME.old-PID` (above)
        "legacy": re.compile(rf"\.{name}\.[a-z0-9_]{{8}}\.tmp$"),
    }
    found: dict[str, dict[int, list[Path]]] = {kind: {} for kind in patterns}
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return found
    for entry in entries:
        for kind, pattern in patterns.items():
            match = pattern.match(entry.name)
            if match:
                pid = int(match.group(1)) if match.groups() else -1
                found[kind].setdefault(pid, []).append(entry)
                break
    return found


def recover_directory(target: str | Path) -> None:
    """Finish (or roll back) a replacement of `target` that a killed process left half done, and
    delete its strays. Entries of live processes are left alone. Best effort: errors are ignored."""
    try:
        target = Path(target).expanduser().resolve()  # a save through a link journals beside its directory
        found = _leftovers(target)
        dead = {pid for kind in found.values() for pid in kind if pid == -1 or not pid_alive(pid)}
        for pid in sorted(dead):
            if pid in found["new"]:  # committed: roll forward
                journal = target.parent / f".{target.name}.journal-{pid}"
                owned = _read_journal(journal)
                _finish(target, found["new"][pid][0], target.parent / f".{target.name}.old-{pid}", owned)
            elif pid in found["old"] and not target.exists() and not target.is_symlink():
                os.rename(found["old"][pid][0], target)  # moved aside, nothing to replace it: roll back
            for kind in ("tmp", "journal", "old", "legacy"):
                for path in found[kind].get(pid, []):
                    _remove(path)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        pass


def _read_journal(path: Path) -> tuple[str, ...]:
    try:
        return tuple(json.loads(path.read_text())["owned"])
    except (OSError, ValueError, KeyError, TypeError):
        return ()


def _owned(name: str, owned: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in owned)


def _finish(target: Path, new: Path, old: Path, owned: tuple[str, ...]) -> None:
    """Steps after the commit; each is idempotent, so recovery can run them again from any point."""
    try:
        inside = Path.cwd() == target  # saving into "." replaces the directory the process stands in
    except OSError:
        inside = False
    if target.is_dir():
        # carry over everything the new directory did not write and does not own (a run's
        # checkpoints/, metrics.jsonl, a tokenizer, a README): renames, so nothing is copied or lost
        for entry in list(target.iterdir()):
            if not (new / entry.name).exists() and not (new / entry.name).is_symlink() \
                    and not _owned(entry.name, owned):
                os.rename(entry, new / entry.name)
        os.replace(target, old)
        if _between_renames is not None:
            _between_renames(target)
    os.rename(new, target)
    if inside:
        os.chdir(target)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_directory(target: str | Path, owned: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces `target` only when the block succeeds.

    Nothing of an existing `target` is lost: entries the block did not write are moved into the new
    directory, except those whose names match a glob in `owned` (files of the block's own format that
    the new version no longer has, e.g. the shards of an earlier sharded save). A symlink is followed
    (its directory is replaced, the link stays); a regular file at `target` is refused.
    """
    target = Path(target).expanduser().resolve()  # a symlink's directory, and "." as a named directory
    if target.exists() and not target.is_dir():
        raise FileExistsError(errno.EEXIST, f"{target} is a file, not a directory; pass a directory to save into")
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)
    pid = os.getpid()
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-{pid}-"))
    journal = target.parent / f".{target.name}.journal-{pid}"
    new = target.parent / f".{target.name}.new-{pid}"
    old = target.parent / f".{target.name}.old-{pid}"
    os.chmod(tmp, _default_mode(directory=True))
    try:
        yield tmp
        for written in tmp.rglob("*"):
            os.chmod(written, _default_mode(directory=written.is_dir()))
        atomic_write_text(journal, json.dumps({"target": str(target), "owned": list(owned)}))
        for leftover in (new, old):
            _remove(leftover)
        os.rename(tmp, new)  # the commit point: from here on, recovery rolls forward
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        journal.unlink(missing_ok=True)
        raise
    _finish(target, new, old, owned)
    journal.unlink(missing_ok=True)


# --- reading text files with errors that name the file and line --------------------------------------
def read_text(path: str | Path, what: str = "") -> str:
    """A UTF-8 text file; bad bytes are reported with the file and line (ValueError)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        label = f" ({what})" if what else ""
        raise ValueError(f"{path}:{line}{label} is not valid UTF-8 text (byte {data[err.start]:#04x} "
                         f"at offset {err.start})") from None


def read_json(path: str | Path, what: str = "") -> Any:
    """A JSON file; bad UTF-8 or bad JSON is reported with the file and line (ValueError)."""
    path = Path(path)
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        label = f" ({what})" if what else ""
        raise ValueError(f"{path}:{err.lineno}{label} is not valid JSON: {err.msg} (column {err.colno})") from None


def read_jsonl(path: str | Path, what: str = "") -> Iterator[tuple[int, Any]]:
    """(line number, record) of each non-blank line; errors name the file and line (ValueError)."""
    path = Path(path)
    label = f" ({what})" if what else ""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{number}{label} is not valid UTF-8 text (byte {raw[err.start]:#04x} "
                                 f"at column {err.start + 1})") from None
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}{label} is not valid JSON: {err.msg} "
                                 f"(column {err.colno})") from None


# --- an exclusive advisory lock on a directory ---------------------------------------------------------
LOCK_FILE = ".latentloop.lock"


class DirectoryLocked(ValueError):
    """Another live process holds the directory's lock."""


class DirectoryLock:
    """`flock(LOCK_EX | LOCK_NB)` on DIR/.latentloop.lock, holding the owner's pid. The kernel drops the
    lock when the holder exits, however it exits (a SIGKILLed run leaves no stale lock)."""

    def __init__(self, directory: str | Path, purpose: str = "a run") -> None:
        import fcntl

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, _default_mode(directory=False))
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            pid, _, what = os.pread(self._fd, 256, 0).decode("utf-8", "replace").strip().partition("\n")
            os.close(self._fd)
            self._fd = None
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                mine = " (this process: close the earlier one first)" if pid == str(os.getpid()) else ""
                raise DirectoryLocked(f"{self.directory} is in use by {what or 'another process'} in process "
                                      f"{pid or 'unknown'}{mine} "
                                      f"(lock {self.path}); wait for it to finish or stop it, "
                                      "or choose another --out") from None
            raise
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n{purpose}\n".encode(), 0)

    def release(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.ftruncate(fd, 0)
            os.close(fd)  # closing drops the flock

    def __del__(self) -> None:
        self.release()

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
