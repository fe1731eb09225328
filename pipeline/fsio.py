"""Durable file operations: the one place for atomic writes, fsync, removal of our temporaries and checksums.

Every file or store the engine writes appears under a temporary sibling name (`.NAME.tmp-XXXXXXXX`),
is flushed to disk (fsync of the data, then of the folder after the rename) and renamed into place,
so a reader (or a resume after a kill) sees either the old state or the complete new one. A
directory already at the destination is replaced only when the caller says so (`replace_dir`):
deciding whether it may be replaced is `pipeline.output_safety`'s job, not this module's.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import pathlib
import shutil
import uuid
from typing import Iterator

TEMP_MARK = ".tmp-"


class FileProblem(OSError):
    """An OSError whose text is 'PATH: cause' (the file first, no errno noise)."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def file_problem(exc: OSError, path: str | os.PathLike) -> OSError:
    """`exc` as an error naming `path` (kept as is when it already names a file or is ours)."""
    if isinstance(exc, FileProblem) or exc.filename:
        return exc
    return FileProblem(exc.errno or errno.EIO, exc.strerror or str(exc) or type(exc).__name__, str(path))


# ----------------------------------------------------------------------------- temporaries
def temporary_sibling(path: pathlib.Path, suffix: str = "") -> pathlib.Path:
    """A fresh hidden name beside `path` that `remove_stale_temporaries(path)` recognises."""
    return path.with_name(f".{path.name}{TEMP_MARK}{uuid.uuid4().hex[:8]}{suffix}")


def is_temporary(path: pathlib.Path) -> bool:
    return path.name.startswith(".") and TEMP_MARK in path.name


def remove_stale_temporaries(path: pathlib.Path) -> list[pathlib.Path]:
    """Delete temporaries of `path` left by a process that was killed while writing it."""
    removed = []
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{glob.escape(path.name)}{TEMP_MARK}*"):
            remove(stale)
            removed.append(stale)
    return removed


def remove(path: pathlib.Path) -> None:
    """Delete a file or folder this run created (never call it on a path the run did not make)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- fsync
def fsync_file(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: pathlib.Path) -> None:
    """Make the folder's entries (a rename into it) durable."""
    with contextlib.suppress(OSError):  # some file systems refuse fsync on folders; nothing more to do there
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(path: pathlib.Path) -> None:
    """fsync a file, or every file and folder under a directory."""
    if not path.is_dir():
        fsync_file(path)
        return
    for folder, _, files in os.walk(path):
        for name in files:
            fsync_file(pathlib.Path(folder, name))
        fsync_dir(pathlib.Path(folder))


def fsync_files(paths) -> None:
    """fsync the files that exist among `paths` and their folders (a zarr block's chunk files)."""
    folders = set()
    for path in paths:
        if path.is_file():
            fsync_file(path)
            folders.add(path.parent)
    for folder in folders:
        fsync_dir(folder)


# ----------------------------------------------------------------------------- atomic replacement
def replace_into_place(tmp: pathlib.Path, dst: pathlib.Path, *, replace_dir: bool = False) -> None:
    """Rename tmp onto dst. A directory at dst is replaced only with replace_dir (moved aside, then deleted)."""
    if dst.is_dir() and not dst.is_symlink():
        if not replace_dir:
            raise FileProblem(errno.EEXIST, "a folder is already there; refusing to replace it", str(dst))
        old = temporary_sibling(dst)
        os.replace(dst, old)
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dst)
    fsync_dir(dst.parent)


@contextlib.contextmanager
def _beside(dst: pathlib.Path, suffix: str = "") -> Iterator[pathlib.Path]:
    """A temporary name beside dst, deleted if still there at the end; OS errors name dst."""
    tmp = temporary_sibling(dst, suffix)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
    except OSError as exc:
        raise file_problem(exc, dst) from exc
    finally:
        if tmp.exists():
            remove(tmp)


def move_into_place(src: pathlib.Path, dst: pathlib.Path, *, replace_dir: bool = False) -> None:
    """Move a finished file or store to dst, durably: a rename, or a copy under a temporary name
    when dst is on another file system."""
    with _beside(dst) as tmp:
        try:
            os.replace(src, tmp)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp)
            remove(src)
        fsync_tree(tmp)
        replace_into_place(tmp, dst, replace_dir=replace_dir)


@contextlib.contextmanager
def atomic_path(dst: pathlib.Path, *, suffix: str = "", replace_dir: bool = False) -> Iterator[pathlib.Path]:
    """Yield a temporary name beside dst; on success fsync it and rename it into place, on failure
    delete it. `suffix` is added to the temporary name (for writers that go by the extension)."""
    with _beside(dst, suffix) as tmp:
        yield tmp
        fsync_tree(tmp)
        replace_into_place(tmp, dst, replace_dir=replace_dir)


def check_writable(directory: pathlib.Path) -> None:
    """Fail early, naming the folder, when outputs cannot be written there."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = temporary_sibling(directory / "probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"{directory}: output directory is not writable ({exc.strerror or exc})") from None


# ----------------------------------------------------------------------------- checksums
def sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_files(path: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def sha256_tree(path: pathlib.Path, exclude: tuple[str, ...] = ()) -> str:
    """A directory's checksum: sha256 over the sorted (relative path, file sha256) pairs, leaving
    out relative paths that start with one of `exclude`."""
    digest = hashlib.sha256()
    for file in tree_files(path):
        relative = file.relative_to(path).as_posix()
        if not relative.startswith(exclude):
            digest.update(f"{relative}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def sha256_output(path: pathlib.Path) -> str:
    return sha256_tree(path) if path.is_dir() else sha256_file(path)


def output_size(path: pathlib.Path) -> int:
    """Bytes of a file, or of every file under a directory (a cheap first check before the sha256)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in tree_files(path))
    return path.stat().st_size
