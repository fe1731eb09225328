"""Never destroy a user's data; resume only from verified outputs (issue 11).

One test per case found (numbered as in the issue), then `tcmoa verify`, exit codes and the
property: any sequence of kills, damaged outputs and chunks and resumes ends with the outputs of
an undisturbed run and a manifest that agrees with the disk (test_pipeline_safety_property.py).
"""
from __future__ import annotations

import errno
import os
import pathlib
import shutil
import signal
import tracemalloc
import unicodedata
import zlib

import numpy as np
import yaml
import zarr
from click.testing import CliRunner

from pipeline import fsio
from pipeline.cli import main
from pipeline.discover import _safe_id
from pipeline.items import store_path
from pipeline.runners.local import run_job
from pipeline.manifest import RunDir
from pipeline.spec import parse_job
from pipeline.status import run_status
from pipeline_support import ContextFuser, SourceAFuser, output_files, pair_job, plan_with, tcmoa_stand_in, write_pair_archive

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _archive(root: pathlib.Path, scenes=("s1", "s2"), shape=(96, 130)) -> None:
    write_pair_archive(root, scenes, shape)


def _job(root: pathlib.Path, **changes):
    return parse_job(pair_job(root, block=64, chunk=32, **changes), base=root)


def _cli(*args, env=None):
    """Invoke `tcmoa` in-process (`run` with the in-process runner: the monkeypatches here act in
    this process); stdout and stderr apart (errors go to stderr)."""
    args = [str(a) for a in args]
    if args[0] == "run":
        args.insert(1, "--local")
    return CliRunner().invoke(main, args, catch_exceptions=False, env=env)


def _one_line_error(result, *words) -> str:
    """The command failed with exactly one line on stderr, no traceback, naming every word."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.output + result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for word in words:
        assert str(word) in lines[0], lines[0]
    return lines[0]


def _reference_outputs(job, fuser) -> dict[str, bytes]:
    """The outputs of an undisturbed run of `job` (same paths: provenance tags name them), then
    its run directory and outputs removed again."""
    run_job(job, fuser=fuser, progress=False)
    out = job.collections[0].output.dir
    files = output_files(out)
    shutil.rmtree(out)
    shutil.rmtree(job.run_dir)
    return files


# ----------------------------------------------------------------------------- 1. folder at an output path
def test_case1_an_existing_folder_at_an_output_path_is_never_deleted(tmp_path):
    _archive(tmp_path)
    keep = tmp_path / "out" / "s1.tif" / "k" / "p"
    keep.parent.mkdir(parents=True)
    keep.write_text("x")
    summary = run_job(_job(tmp_path), fuser=SourceAFuser(), progress=False)
    assert summary.items_done == 1 and [f["item_id"] for f in summary.failures] == ["s1"]
    assert str(tmp_path / "out" / "s1.tif") in summary.failures[0]["error"] and "refusing" in summary.failures[0]["error"]
    assert keep.read_text() == "x"
    assert not (tmp_path / "out" / "s1.zarr").exists()  # nothing of the refused item was written

    # the command line, with and without --overwrite (a folder is not a file of the same kind)
    for extra in ((), ("--overwrite",)):
        result = _cli("fuse", tmp_path / "s1_a.tif", tmp_path / "s1_b.tif", "-o", tmp_path / "out" / "s1.tif",
                      "--weights", "baseline:average", "--quiet", *extra)
        assert result.exit_code == 1, result.output
        assert str(tmp_path / "out" / "s1.tif") in result.stderr and keep.read_text() == "x"


def test_case1_overwrite_replaces_only_a_thing_of_the_same_kind(tmp_path):
    _archive(tmp_path, scenes=("s1",))
    out = tmp_path / "out"
    out.mkdir()
    (out / "s1.tif").write_bytes(b"the user's own file")
    zarr.open_group(out / "s1.zarr", mode="w").attrs["owner"] = "user"  # someone else's zarr store

    refused = run_job(_job(tmp_path), fuser=SourceAFuser(), progress=False)
    assert refused.items_done == 0 and "did not create" in refused.failures[0]["error"]
    assert (out / "s1.tif").read_bytes() == b"the user's own file"

    replaced = run_job(_job(tmp_path, overwrite=True, run_dir=str(tmp_path / "run2")), fuser=SourceAFuser(), progress=False)
    assert replaced.items_done == 1, replaced.failures
    assert (out / "s1.tif").read_bytes()[:4] == b"II*\x00" and "owner" not in zarr.open_group(out / "s1.zarr").attrs

    # a plain folder where the store goes is not a zarr store: refused even with overwrite
    shutil.rmtree(out / "s1.zarr")
    (out / "s1.zarr" / "notes").mkdir(parents=True)
    (out / "s1.zarr" / "notes" / "readme.txt").write_text("mine")
    again = run_job(_job(tmp_path, overwrite=True, run_dir=str(tmp_path / "run3")), fuser=SourceAFuser(), progress=False)
    assert again.items_done == 0 and "a folder is already there" in again.failures[0]["error"]
    assert (out / "s1.zarr" / "notes" / "readme.txt").read_text() == "mine"

    # tcmoa fuse: refused without --overwrite (exit 1, the file named), replaced with it
    target = tmp_path / "fused.tif"
    target.write_bytes(b"keep me")
    args = ("fuse", tmp_path / "s1_a.tif", tmp_path / "s1_b.tif", "-o", target, "--weights", "baseline:average", "--quiet")
    result = _cli(*args)
    assert result.exit_code == 1 and str(target) in result.stderr and target.read_bytes() == b"keep me"
    assert _cli(*args, "--overwrite").exit_code == 0 and target.read_bytes()[:4] == b"II*\x00"


# ----------------------------------------------------------------------------- 2. output on an input
def test_case2_an_output_that_resolves_to_an_input_is_always_refused(tmp_path):
    _archive(tmp_path)
    source = tmp_path / "s1_a.tif"
    before = source.read_bytes()
    for extra in ((), ("--overwrite",)):
        result = _cli("fuse", source, tmp_path / "s1_b.tif", "-o", source, "--weights", "baseline:average", *extra)
        assert result.exit_code == 2
        _one_line_error(result, source, "input")
    os.symlink(source, tmp_path / "link.tif")  # through a link too
    result = _cli("fuse", source, tmp_path / "s1_b.tif", "-o", tmp_path / "link.tif", "--weights", "baseline:average")
    assert result.exit_code == 2 and source.read_bytes() == before

    # a job writing into its input folder under an input's name (even with overwrite: true)
    doc = pair_job(tmp_path, block=64, chunk=32, formats=["cog"], overwrite=True,
                   extra_output={"dir": str(tmp_path), "name": "{item}_b"})  # s1's output s1_b.tif is its input
    inputs = {p: p.read_bytes() for p in tmp_path.glob("*.tif")}
    for _ in range(2):  # the first run and each later --resume refuse again (nothing is fused twice)
        summary = run_job(parse_job(doc, base=tmp_path), fuser=SourceAFuser(), progress=False)
        assert summary.items_done == 0 and summary.units_run == 0
        assert all("is the input file" in f["error"] for f in summary.failures), summary.failures
    assert {p: p.read_bytes() for p in tmp_path.glob("*.tif")} == inputs


# ----------------------------------------------------------------------------- 3. outputs checked on resume and status
def test_case3_resume_and_status_check_the_recorded_outputs(tmp_path):
    _archive(tmp_path, scenes=("s1", "s2", "s3"))
    job = _job(tmp_path)
    run_job(job, fuser=ContextFuser(), progress=False)
    out = tmp_path / "out"
    reference = output_files(out)

    with open(out / "s1.tif", "r+b") as fh:
        fh.truncate(1000)
    chunk = next(p for p in sorted((out / "s2.zarr" / "fused").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.unlink()
    (out / "s3.tif").unlink()

    states = {i["item"]: (i["status"], i["error"]) for i in run_status(tmp_path / "run")["items"]}
    assert states["test/s1"][0] == "damaged" and "1000 bytes" in states["test/s1"][1]
    assert states["test/s2"][0] == "damaged" and str(out / "s2.zarr") in states["test/s2"][1]
    assert states["test/s3"][0] == "damaged" and "missing" in states["test/s3"][1]
    table = _cli("status", tmp_path / "run")
    assert "damaged" in table.output and "3 damaged" in table.output

    again = run_job(job, fuser=ContextFuser(), progress=False)
    assert again.items_skipped == 0 and again.items_done == 3, again
    redone = {r["path"]: r["reason"] for r in again.redone}
    assert set(redone) == {str(out / "s1.tif"), str(out / "s2.zarr"), str(out / "s3.tif")}, redone
    assert output_files(out) == reference
    assert {i["status"] for i in run_status(tmp_path / "run")["items"]} == {"done"}


# ----------------------------------------------------------------------------- 4. blocks checked, fsync before done
class CrashingFuser(ContextFuser):
    def __init__(self, budget: int):
        super().__init__()
        self.budget, self.calls = budget, 0

    def fuse_batch(self, a, b, task="vif", *, return_prompts=False):
        self.calls += 1
        if self.calls > self.budget:
            raise RuntimeError("worker lost")
        return super().fuse_batch(a, b, task, return_prompts=return_prompts)


def test_case4_blocks_are_fsynced_before_done_and_rechecked_before_export(tmp_path, monkeypatch):
    _archive(tmp_path, scenes=("s1",))
    job = _job(tmp_path, formats=["cog"], model={"batch_size": 64})  # one model call per block
    reference = _reference_outputs(job, ContextFuser())
    synced: set[str] = set()
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.add(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))[1])
    real_append = RunDir.append
    recorded_units = []

    def append(self, records):
        for record in records:
            if record["kind"] == "unit" and record["status"] == "done":
                store = self.path / "work" / record["collection"] / f"{record['item_id']}.zarr"
                chunks = [str(p) for p in sorted((store / "fused").rglob("*")) if p.is_file() and p.name != "zarr.json"]
                unsynced = [c for c in chunks if c not in synced]
                assert not unsynced, f"recorded done before these chunks were fsynced: {unsynced}"
                recorded_units.append(record["id"])
        real_append(self, records)

    monkeypatch.setattr(RunDir, "append", append)
    first = run_job(job, fuser=CrashingFuser(budget=4), progress=False)  # 4 of 6 blocks done, then a crash
    assert first.units_run == 4 and len(recorded_units) == 4

    store = store_path(RunDir(tmp_path / "run").work_dir, plan_with(job, ContextFuser()).items[0])
    (store / "fused" / "c" / "0" / "0" / "0").unlink()  # block 0,0 lost a chunk after a kill: silent zeros
    with open(store / "fused" / "c" / "0" / "0" / "2", "r+b") as fh:  # block 0,1: "Zstd decompression error", no path
        fh.truncate(10)
    second = run_job(job, fuser=ContextFuser(), retry_failed=True, progress=False)
    assert second.items_done == 1 and not second.failures, second.failures
    assert len(second.redone) == 2 and all(r["path"] == str(store) for r in second.redone)
    assert any("unreadable" in r["reason"] for r in second.redone) and any("differs" in r["reason"] for r in second.redone)
    assert second.units_run == 2 + 2  # the two damaged blocks and the two never run
    assert output_files(tmp_path / "out") == reference


# ----------------------------------------------------------------------------- 5. non-ASCII item names
def test_case5_non_ascii_item_names_stay_distinct_and_readable(tmp_path):
    nfd = unicodedata.normalize("NFD", "café")
    _archive(tmp_path, scenes=("café", "cafè", "日本", nfd, "a b", "a_b"))
    summary = run_job(_job(tmp_path, formats=["cog"]), fuser=SourceAFuser(), progress=False)
    assert summary.items_done == 6 and not summary.failures, summary.failures
    names = sorted(p.name for p in (tmp_path / "out").glob("*.tif"))
    assert {"café.tif", "cafè.tif", "日本.tif", "a_b.tif"} <= set(names) and len(names) == 6, names
    assert len({_safe_id(t) for t in ("café", "cafè", nfd, "a b", "a_b", "a/b", "a:b", "", "..")}) == 9
    assert all("/" not in _safe_id(t) and not _safe_id(t).startswith(".") for t in ("../x", ".hidden", "a/b"))


# ----------------------------------------------------------------------------- 6. one-line errors, exit codes
def _write_job(root: pathlib.Path, **changes) -> pathlib.Path:
    doc = pair_job(root, block=64, chunk=32, **changes)
    doc["model"]["weights"] = "baseline:average"
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


def test_case6_errors_are_one_line_with_documented_exit_codes(tmp_path, monkeypatch):
    _archive(tmp_path, scenes=("s1",))
    # run_dir is an existing file
    (tmp_path / "afile").write_text("x")
    result = _cli("run", _write_job(tmp_path, run_dir=str(tmp_path / "afile")), "--quiet")
    assert result.exit_code == 3 and (tmp_path / "afile").read_text() == "x"
    _one_line_error(result, tmp_path / "afile", "file")

    # a job file that is not UTF-8
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    result = _cli("run", bad)
    assert result.exit_code == 2
    _one_line_error(result, bad, "UTF-8")

    # run_dir on a read-only file system
    real_mkdir = pathlib.Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    result = _cli("run", _write_job(tmp_path, run_dir=str(tmp_path / "ro" / "run")), "--quiet")
    assert result.exit_code == 3
    _one_line_error(result, tmp_path / "ro" / "run", "Read-only file system")
    monkeypatch.undo()

    # the disk fills up while the status table is written
    import pyarrow.parquet as pq

    real_write = pq.write_table

    def disk_full(table, where, *args, **kwargs):
        if "part-" in str(where):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", disk_full)
    result = _cli("run", _write_job(tmp_path), "--quiet")
    assert result.exit_code == 3
    _one_line_error(result, tmp_path / "run" / "status", "No space left on device")
    monkeypatch.undo()
    # ... and --traceback shows where it happened
    monkeypatch.setattr(pq, "write_table", disk_full)
    assert "Traceback" in _cli("run", _write_job(tmp_path), "--resume", "--quiet", "--traceback").stderr
    monkeypatch.undo()

    # tcmoa status on a zero-byte status part, then on a corrupt job.json
    assert _cli("run", _write_job(tmp_path), "--resume", "--quiet").exit_code == 0
    part = tmp_path / "run" / "status" / "part-00000000T000000000000-zero00.parquet"
    part.write_bytes(b"")
    result = _cli("status", tmp_path / "run")
    assert result.exit_code == 3
    _one_line_error(result, part, "0 bytes")
    part.unlink()
    (tmp_path / "run" / "job.json").write_text('{\n  "fingerprint": ')
    result = _cli("status", tmp_path / "run")
    assert result.exit_code == 3
    _one_line_error(result, tmp_path / "run" / "job.json", "damaged")


# ----------------------------------------------------------------------------- 7. max_pixels before decoding
def _png16_rgb(path: pathlib.Path, width: int, height: int, alpha: bool = False) -> None:
    """A real 16-bit colour PNG of zeros, written row by row (a few hundred KB for a huge image)."""
    channels = 4 if alpha else 3
    chunk = lambda kind, data: len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    compressor, row, parts = zlib.compressobj(9), b"\0" * (1 + width * channels * 2), []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([16, 6 if alpha else 2, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def test_case7_max_pixels_is_checked_from_headers_before_decoding(tmp_path):
    for scene in ("big",):
        _png16_rgb(tmp_path / f"{scene}_a.png", 4000, 4000)
        _png16_rgb(tmp_path / f"{scene}_b.png", 4000, 4000)
    assert (tmp_path / "big_a.png").stat().st_size < 1_000_000  # 96 MB once decoded
    doc = pair_job(tmp_path, a_pattern="{scene}_a.png", b_pattern="{scene}_b.png", limits={"max_pixels": 1_000_000},
                   extra_output={"formats": ["png"]})
    tracemalloc.start()
    try:
        plan = plan_with(parse_job(doc, base=tmp_path), SourceAFuser())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [f["item_id"] for f in plan.failures] == ["big"] and "max_pixels" in plan.failures[0]["error"]
    assert peak < 20_000_000, f"{peak / 1e6:.0f} MB allocated: the image was decoded"

    # the header facts are what decoding gives (16-bit RGB and RGBA PNG, planar and rotated TIFF photos)
    import tifffile

    from pipeline.sources import SourceRef, _PhotoReader, inspect
    from pipeline.spec import NormaliseSpec

    _png16_rgb(tmp_path / "rgb.png", 30, 20)
    _png16_rgb(tmp_path / "rgba.png", 30, 20, alpha=True)
    tifffile.imwrite(tmp_path / "planar.tif", np.zeros((3, 20, 30), np.uint16), planarconfig="separate")
    tifffile.imwrite(tmp_path / "rotated.tif", np.zeros((20, 30, 4), np.uint8), extratags=[(274, 3, 1, 6, False)])
    for name in ("rgb.png", "rgba.png", "planar.tif", "rotated.tif"):
        ref = SourceRef(role="a", kind="photo", files=(str(tmp_path / name),), bands=None, plane=None, nodata=None,
                        resampling="bilinear", normalise=NormaliseSpec())
        info = inspect(ref)
        with _PhotoReader(ref) as reader:
            assert (info.height, info.width, info.channels, info.dtype) == (*reader.image.shape, str(reader.image.dtype)), name


# ----------------------------------------------------------------------------- 8. kills and SIGTERM
def _run_and_signal(tmp_path: pathlib.Path, job_file: pathlib.Path, call: int, signal_name: str):
    return tcmoa_stand_in("run", job_file, call, signal_name)


def _done_units(run: pathlib.Path) -> int:
    return sum(1 for (kind, _), r in RunDir(run).latest().items() if kind == "unit" and r["status"] == "done")


def test_case8_finished_blocks_are_recorded_before_a_kill_and_sigterm_stops_cleanly(tmp_path):
    _archive(tmp_path, scenes=("s1",))
    job_file = _write_job(tmp_path, formats=["cog", "zarr"], model={"batch_size": 64})  # one model call per block
    job = parse_job(yaml.safe_load(job_file.read_text()), base=tmp_path)
    reference = _reference_outputs(job, ContextFuser())
    killed = _run_and_signal(tmp_path, job_file, 4, "SIGKILL")
    assert killed.returncode == -signal.SIGKILL
    assert _done_units(tmp_path / "run") == 3  # every block finished before the kill is recorded

    stopped = _run_and_signal(tmp_path, job_file, 2, "SIGTERM")  # a resume (its 2nd block), stopped by SIGTERM
    assert stopped.returncode == 3, stopped.stderr
    lines = [line for line in stopped.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and "SIGTERM" in lines[-1] and "--resume" in lines[-1], stopped.stderr
    assert _done_units(tmp_path / "run") == 4

    summary = run_job(job, fuser=ContextFuser(), progress=False)
    assert summary.units_skipped == 4 and summary.units_run == 2 and summary.items_done == 1
    assert output_files(tmp_path / "out") == reference


def test_case8_temporaries_of_an_interrupted_export_are_removed_at_the_next_start(tmp_path):
    _archive(tmp_path, scenes=("s1", "s2"))
    job = _job(tmp_path)
    run_job(job, fuser=SourceAFuser(), progress=False)
    out = tmp_path / "out"
    # what a kill during s1's export leaves (s1 is done and will be skipped, not re-exported)
    (out / ".s1.tif.tmp-dead0001").write_bytes(b"half a COG")
    (out / ".s1.tif.tmp-dead0002.tif").write_bytes(b"the uncompressed intermediate")
    (out / ".s1.zarr.tmp-dead0003").mkdir()
    summary = run_job(job, fuser=SourceAFuser(), progress=False)
    assert summary.items_skipped == 2 and summary.temporaries_removed == 3
    assert not [p for p in out.iterdir() if fsio.is_temporary(p)]


# ----------------------------------------------------------------------------- 9. clear messages
def test_case9_messages_name_the_file_and_the_cause(tmp_path, monkeypatch):
    import rasterio.shutil
    import tifffile
    from rasterio._err import CPLE_FileIOError
    from rasterio.errors import RasterioIOError

    _archive(tmp_path, scenes=("s1",))

    # disk full during an export: GDAL says "Write failed. See previous exception"; we say the file and why
    def full(src, dst, **kwargs):
        try:
            raise CPLE_FileIOError(1, 3, f"{dst}: No space left on device")
        except CPLE_FileIOError as cause:
            raise RasterioIOError("Write failed. See previous exception for details.") from cause

    monkeypatch.setattr(rasterio.shutil, "copy", full)
    summary = run_job(_job(tmp_path, formats=["cog"]), fuser=SourceAFuser(), progress=False)
    error = summary.failures[0]["error"]
    assert str(tmp_path / "out" / "s1.tif") in error and "No space left on device" in error and "previous exception" not in error
    assert not [p for p in (tmp_path / "out").iterdir() if fsio.is_temporary(p)]
    monkeypatch.undo()

    # a truncated uncompressed OME-TIFF stack, a symlink loop
    stack = tmp_path / "stacks"
    stack.mkdir()
    tifffile.imwrite(stack / "z1.ome.tif", np.random.default_rng(0).integers(0, 255, (5, 64, 64), dtype=np.uint8),
                     metadata={"axes": "ZYX"}, ome=True)
    with open(stack / "z1.ome.tif", "r+b") as fh:
        fh.truncate((stack / "z1.ome.tif").stat().st_size // 2)
    os.symlink(stack / "z2.ome.tif", stack / "z2.ome.tif")
    doc = {"name": "stack", "task": "mff", "discover": {"type": "glob", "root": str(stack)},
           "sources": [{"role": "planes", "pattern": "{item}.ome.tif"}], "run_dir": str(tmp_path / "srun"),
           "output": {"dir": str(tmp_path / "sout"), "formats": ["tiff"]}}
    summary = run_job(parse_job(doc, base=tmp_path), fuser=SourceAFuser(), progress=False)
    errors = {f["item_id"]: f["error"] for f in summary.failures}
    assert "truncated" in errors["z1"] and "single source" not in errors["z1"], errors
    assert "symbolic link loop" in errors["z2"], errors

    # a missing discover.root is a bad job (exit 2), not a note and exit 0
    result = _cli("run", _write_job(tmp_path, discover={"type": "glob", "root": str(tmp_path / "nowhere")}))
    assert result.exit_code == 2
    _one_line_error(result, tmp_path / "nowhere", "does not exist")

    # tcmoa fuse: no temporary folder left behind, no hint pointing into one
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    (tmp_path / "empty.tif").write_bytes(b"")
    result = _cli("fuse", tmp_path / "s1_a.tif", tmp_path / "empty.tif", "-o", tmp_path / "f.tif", "--weights", "baseline:average")
    assert result.exit_code == 1 and "empty" in result.stderr
    assert "tcmoa-fuse-" not in result.output + result.stderr and "--run-dir" in result.output
    result = _cli("fuse", tmp_path / "s1_a.tif", tmp_path / "s1_b.tif", "-o", tmp_path / "f.tif", "--task", "bogus")
    assert result.exit_code == 2
    assert list(scratch.iterdir()) == []


# ----------------------------------------------------------------------------- tcmoa verify
def test_verify_passes_a_clean_run_and_names_any_single_corruption(tmp_path):
    _archive(tmp_path, scenes=("s1", "s2"))
    job = _job(tmp_path, formats=["cog", "zarr"], extra_output={"prompt_maps": True})
    run_job(job, fuser=ContextFuser(), progress=False)
    clean = _cli("verify", tmp_path / "run")
    assert clean.exit_code == 0 and "all as recorded" in clean.output
    files = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert len(files) > 10
    for i, path in enumerate(files):  # every single corruption is found and the file (or its store) named
        data = path.read_bytes()
        damage = ("flip", "truncate", "delete")[i % 3]
        if damage == "flip":
            path.write_bytes(bytes([data[0] ^ 1]) + data[1:] if data else b"x")
        elif damage == "truncate":
            path.write_bytes(data[: len(data) // 2])
        else:
            path.unlink()
        result = _cli("verify", tmp_path / "run", "--quiet")
        shown = str(path) if ".zarr" not in str(path) else str(path).split(".zarr")[0] + ".zarr"
        assert result.exit_code == 1 and shown in result.stderr, (path, damage, result.stderr)
        path.write_bytes(data)
    assert _cli("verify", tmp_path / "run").exit_code == 0

    # blocks of an unfinished item are checked too
    run = tmp_path / "run2"
    job2 = _job(tmp_path, run_dir=str(run), extra_output={"dir": str(tmp_path / "out2")}, model={"batch_size": 64})
    run_job(job2, fuser=CrashingFuser(budget=3), progress=False)
    assert _cli("verify", run).exit_code == 0
    store = run / "work" / "test" / "s1.zarr"
    next(p for p in sorted((store / "fused").rglob("*")) if p.is_file() and p.name != "zarr.json").unlink()
    result = _cli("verify", run, "--quiet")
    assert result.exit_code == 1 and str(store) in result.stderr and "block" in result.stderr


def test_status_parts_merge_in_groups_keeping_the_order(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    parts = [run_dir.append([{"kind": "unit", "id": f"u{i % 3}", "status": "done", "checksum": str(i)}]) for i in range(7)]
    before = run_dir.latest()
    run_dir.compact(parts[2:6])  # what the engine's recorder does every 64 appends
    assert len(list(run_dir.status_dir.iterdir())) == 4
    assert run_dir.latest() == before and before[("unit", "u0")]["checksum"] == "6"
    assert [r["checksum"] for r in run_dir.records().to_pylist()] == [str(i) for i in range(7)]
