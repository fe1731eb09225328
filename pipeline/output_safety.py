"""Which output paths a run may write: never an input, never something the run did not create
(unless the job says `overwrite`, and then only a thing of the same kind).

The run's own outputs are the paths its run directory recorded: claimed before an export starts
(so a kill between renames still leaves them the run's own) or recorded in an item's done record.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Iterable

from pipeline import urls
from pipeline.errors import JobError

CLAIM = "claim"  # status record kind: output paths an item's export is about to write
# files a Zarr store (v2 or v3) holds: metadata documents and chunk keys, at any group depth
ZARR_FILE = re.compile(r"(?:[^/]+/)*(?:zarr\.json|\.zarray|\.zgroup|\.zattrs|c(?:/\d+)+|\d+(?:\.\d+)*)")


class OutputRefused(JobError):
    """An output path that must not be written (the message names it and why)."""


def kind_of(path) -> str:
    """What is at `path`: missing, file, zarr store, folder, symlink or other (an object path:
    missing, file, zarr store or folder)."""
    from pipeline import runstore

    if runstore.is_remote(path):
        return runstore.kind_of(runstore.location(path))
    if path.is_symlink():
        return "symlink"
    if not path.exists():
        return "missing"
    if path.is_file():
        return "file"
    if path.is_dir():
        if any((path / marker).is_file() for marker in ("zarr.json", ".zgroup", ".zarray")):
            return "zarr store"
        files = [p.relative_to(path).as_posix() for p in path.rglob("*") if not p.is_dir()]
        if not files:
            return "empty folder"
        # a store that lost its top metadata (damaged): still nothing but zarr's own files
        return "zarr store" if all(ZARR_FILE.fullmatch(f) for f in files) else "folder"
    return "other"


def same_path(a: pathlib.Path, b: pathlib.Path) -> bool:
    """True when a and b name the same file: equal after resolving links, or the same inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def input_collisions(outputs: Iterable[pathlib.Path | str], inputs: Iterable[str | pathlib.Path]) -> list[str]:
    """Reasons an output would replace an input: the same file (or object), or a folder (prefix)
    output holding an input. URLs are compared as URLs (never through realpath, which would read
    's3://b/k' as a local relative path)."""
    inputs = list(inputs)
    remote = [urls.normalise(p) for p in inputs if urls.is_url(p)]
    inputs = [pathlib.Path(os.path.realpath(p)) for p in inputs if not urls.is_url(p)]
    problems = []
    for output in map(str, outputs):  # (an object output may come as a runstore.ObjectPath)
        if urls.is_url(output):
            target = urls.normalise(output)
            for source in remote:
                if source == target:
                    problems.append(f"output {output} is the input object {source}: refusing to replace an input")
                elif source.startswith(target + "/"):
                    problems.append(f"output {output} is a prefix holding the input {source}: refusing to replace it")
            continue
        real = pathlib.Path(os.path.realpath(output))
        for source in inputs:
            if real == source or same_path(output, source):
                problems.append(f"output {output} is the input file {source}: refusing to replace an input")
            elif real in source.parents:
                problems.append(f"output {output} is a folder holding the input {source}: refusing to replace it")
    return problems


def owned_paths(latest: dict, run_dir) -> set[str]:
    """Output paths this run directory created: claimed by an export or recorded in a done item
    (recorded relative to the run directory, or absolute in older runs)."""
    from pipeline import runstore

    owned: set[str] = set()
    for (kind, _), record in latest.items():
        if kind == CLAIM and record.get("info"):
            owned.update(json.loads(record["info"])["paths"])
        elif kind == "item" and record.get("status") == "done" and record.get("info"):
            owned.update(a["path"] for a in json.loads(record["info"])["assets"].values())
    return {runstore.normalise(runstore.resolve(p, run_dir)) for p in owned}


def check_output(path, expected: str, *, owned: set[str], overwrite: bool) -> None:
    """Raise OutputRefused unless `path` may be written: nothing there, or a `expected` ('file' or
    'zarr store') that this run created or that the job allows to overwrite."""
    from pipeline import runstore

    found = kind_of(path)
    if found == "missing":
        return
    if found != expected and not (found == "empty folder" and expected == "zarr store"):
        raise OutputRefused(f"output {path}: a {found} is already there and this output is a {expected}: "
                            f"refusing to replace it (move it away or change output.name)")
    if runstore.normalise(path) in owned or overwrite:
        return
    raise OutputRefused(f"output {path}: a {found} that this run did not create is already there: "
                        "refusing to replace it (set overwrite: true in the job, or `tcmoa fuse --overwrite`, to replace it)")
