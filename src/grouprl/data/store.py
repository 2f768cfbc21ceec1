"""A reasoning dataset parsed once per machine and shared by every process that uses it.

A process-backend env pool runs one :class:`~grouprl.envs.reasoning.ReasoningEnv` per worker
process; if each parsed the dataset file itself, 18 workers on a 43 MB JSONL file would hold 18
parsed copies (+2 GB).  :func:`shared_reasoning_dataset` instead parses a *file* source once and
writes the parsed examples to a store file; every process (the trainer, each worker) then opens
the store read-only with ``mmap``: the operating system's page cache holds one copy for all of
them, and an example is decoded only when it is read (``store[i]``).

* Which sources: local ``.jsonl``/``.json``/``.parquet`` files.  ``builtin:`` data (generated in
  milliseconds) and ``hf:`` datasets (Arrow files, already memory-mapped by ``datasets``) are
  loaded per process as before.
* Where: ``$GROUPRL_CACHE_DIR`` if set, else ``<tempdir>/grouprl-<uid>/datasets`` (created with
  mode 0700; a directory or store file owned by another user is never used).  The file name is a
  hash of the source path, the loading arguments and the file's (mtime, size, inode), so an
  edited file is parsed again; writing a new store removes the older stores of the same source
  and arguments.
* Parse once: a lock file (``fcntl.flock``) makes concurrent processes wait for the one that
  parses; the others open its store.
* Safe files: the store is written to a temporary name, fsynced and renamed into place
  (atomic); it records the SHA-256 of its contents, checked when a process opens it.  A store
  that fails the check is removed and the source parsed again.  The store is JSON (never
  unpickled).
* Exact: an example is stored only if its JSON round trip gives it back unchanged; otherwise
  (e.g. a Parquet column of dates), or when the cache directory cannot be written, the examples
  are kept in memory as a tuple, exactly as without a store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, overload

from ..cache import cache_dir
from .sources import load_reasoning_dataset
from .types import ReasoningExample

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock, the atomic rename still holds
    fcntl = None  # type: ignore[assignment]

__all__ = ["SharedExamples", "shared_reasoning_dataset", "dataset_cache_dir", "open_store",
           "STORE_SUFFIX"]

STORE_SUFFIX = ".examples"
_MAGIC = b"grouprl-examples 1\n"
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def dataset_cache_dir() -> Path | None:
    """The store directory (module docstring), created if needed; ``None`` when it cannot be
    created or is not owned by this user (:func:`grouprl.cache.cache_dir`)."""
    return cache_dir("datasets")


class SharedExamples(Sequence[ReasoningExample]):
    """Read-only examples of a store file (memory-mapped; an item is decoded when read).

    Raises ``ValueError`` on open when the file is not an intact store (wrong magic, sizes or
    checksum).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < len(_MAGIC) + 2:
                raise ValueError(f"{self.path}: not a grouprl example store (too short)")
            self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        mm = self._mm
        if mm[:len(_MAGIC)] != _MAGIC:
            raise ValueError(f"{self.path}: not a grouprl example store (bad magic)")
        end = mm.find(b"\n", len(_MAGIC))
        header = json.loads(mm[len(_MAGIC):end]) if end > 0 else {}
        if not isinstance(header, dict):
            raise ValueError(f"{self.path}: not a grouprl example store (bad header)")
        count, body = header.get("count"), header.get("body")
        self._start = end + 1
        if not (isinstance(count, int) and isinstance(body, int) and count >= 0 and body >= 0
                and header.get("byteorder") == sys.byteorder
                and self._start + body + 8 * (count + 1) == size):
            raise ValueError(f"{self.path}: store header does not match the file size")
        view = memoryview(mm)
        if hashlib.sha256(view[self._start:]).hexdigest() != header.get("sha256"):
            raise ValueError(f"{self.path}: store checksum mismatch (damaged file)")
        self._count = count
        self._offsets = view[self._start + body:].cast("Q")
        if self._offsets[0] != 0 or self._offsets[count] != body:
            raise ValueError(f"{self.path}: store offsets are inconsistent")

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> ReasoningExample: ...

    @overload
    def __getitem__(self, index: slice) -> list[ReasoningExample]: ...

    def __getitem__(self, index: int | slice) -> ReasoningExample | list[ReasoningExample]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        i = index.__index__()
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            raise IndexError(f"example index {index} out of range ({self._count} examples)")
        a, b = self._offsets[i], self._offsets[i + 1]
        return ReasoningExample(**json.loads(self._mm[self._start + a:self._start + b]))

    def __iter__(self) -> Iterator[ReasoningExample]:
        return (self[i] for i in range(self._count))

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return open_store, (str(self.path),)

    def __repr__(self) -> str:
        return f"SharedExamples({str(self.path)!r}, {self._count} examples)"


def open_store(path: str | Path) -> SharedExamples:
    """Open a store file written by :func:`shared_reasoning_dataset`."""
    return SharedExamples(path)


def _encode(items: Sequence[ReasoningExample]) -> list[bytes] | None:
    """One JSON line per example, or ``None`` when an example does not round-trip exactly."""
    lines = []
    for item in items:
        record = dataclasses.asdict(item)
        try:
            line = json.dumps(record, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError):
            return None
        if json.loads(line) != record:
            return None
        lines.append(line)
    return lines


def _write_store(path: Path, lines: list[bytes]) -> None:
    """Write the store atomically: temporary file, fsync, rename, fsync of the directory."""
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    table = memoryview(bytearray(8 * len(offsets))).cast("Q")
    for i, off in enumerate(offsets):
        table[i] = off
    tail = b"".join(lines) + table.tobytes()
    header = {"count": len(lines), "body": offsets[-1], "byteorder": sys.byteorder,
              "sha256": hashlib.sha256(tail).hexdigest()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(_MAGIC + json.dumps(header).encode() + b"\n" + tail)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (no-op where ``fcntl`` is missing)."""
    if fcntl is None:
        yield
        return
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _store_names(kwargs: dict[str, Any], path: Path) -> tuple[str, str]:
    """(prefix for this source and these arguments, full store name with the file's stamp)."""
    st = path.stat()
    args = {k: v for k, v in sorted(kwargs.items()) if k != "source"}
    ident = json.dumps({"path": str(path), "args": args, "magic": _MAGIC.decode()},
                       sort_keys=True, default=repr)
    prefix = hashlib.sha256(ident.encode()).hexdigest()[:24]
    stamp = hashlib.sha256(f"{st.st_mtime_ns}:{st.st_size}:{st.st_ino}".encode()).hexdigest()
    return prefix, f"{prefix}-{stamp[:16]}{STORE_SUFFIX}"


def _owned(path: Path) -> bool:
    return not hasattr(os, "getuid") or path.stat().st_uid == os.getuid()


def shared_reasoning_dataset(kwargs: dict[str, Any]) -> Sequence[ReasoningExample]:
    """``load_reasoning_dataset(**kwargs)``, parsed once per machine for a file source.

    Returns a :class:`SharedExamples` backed by the store file (module docstring), or a tuple of
    the examples for ``builtin:``/``hf:`` sources and when no store can be used.  Errors are those
    of :func:`grouprl.data.load_reasoning_dataset` (a :class:`~grouprl.data.DataError` names the
    file, line and field).
    """
    source = kwargs.get("source")
    if not isinstance(source, str) or not source.lower().endswith(_FILE_SUFFIXES) or \
            source.startswith(("builtin:", "hf:")):
        return tuple(load_reasoning_dataset(**kwargs))
    path = Path(source).expanduser()
    directory = dataset_cache_dir() if path.is_file() else None
    if directory is None:
        return tuple(load_reasoning_dataset(**kwargs))
    path = path.resolve()
    prefix, name = _store_names(kwargs, path)
    store = directory / name
    with _locked(directory / f"{prefix}.lock"):
        if store.is_file() and _owned(store):
            try:
                return SharedExamples(store)
            except ValueError:
                store.unlink(missing_ok=True)  # damaged: parse again below
        items = tuple(load_reasoning_dataset(**kwargs))
        lines = _encode(items)
        if lines is None:
            return items
        try:
            _write_store(store, lines)
            for old in directory.glob(f"{prefix}-*{STORE_SUFFIX}"):
                if old != store:
                    old.unlink(missing_ok=True)
            return SharedExamples(store)
        except (OSError, ValueError):
            return items
