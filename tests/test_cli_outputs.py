"""CLI details users expect: GDAL creation options (`fuse --co`, `output.creation_options`), the
compression predictor of the data type by default (COGs still valid for rio-cogeo), errors as one
JSON object with --json, and a progress bar only when stderr is a terminal."""
from __future__ import annotations

import fcntl
import json
import os
import pathlib
import pty
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest
import rasterio
import tifffile
from click.testing import CliRunner
from rio_cogeo.cogeo import cog_validate

from pipeline.cli import main
from pipeline_support import ContextFuser, pair_job, random_raster, write_geotiff

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture()
def pair(tmp_path) -> pathlib.Path:
    rng = np.random.default_rng(11)
    for name in ("s1_a.tif", "s1_b.tif"):
        write_geotiff(tmp_path / name, random_raster(rng, (600, 700), "uint16"))
    return tmp_path


def _fuse(folder: pathlib.Path, *args: str):
    return CliRunner().invoke(main, ["fuse", str(folder / "s1_a.tif"), str(folder / "s1_b.tif"),
                                     "--weights", "baseline:average", *args])


def _compression(path: pathlib.Path) -> list[tuple[str, int]]:
    with tifffile.TiffFile(path) as tif:
        return [(page.compression.name, int(page.predictor)) for page in tif.pages]


def test_predictor_follows_the_data_type_and_cogs_stay_valid(pair):
    """uint16 fused image: DEFLATE with predictor 2; float32 prompt shares: predictor 3 (every level)."""
    from pipeline.runners.local import run_job
    from pipeline.spec import parse_job
    from pipeline.writers import validate_cog

    doc = pair_job(pair, formats=("cog", "tiff"), extra_output={"prompt_maps": True})
    summary = run_job(parse_job(doc, base=pair), fuser=ContextFuser(), progress=False)
    assert summary.items_done == 1, summary.failures
    out = pair / "out"
    assert set(_compression(out / "s1.tif")) == {("ADOBE_DEFLATE", 2)} and len(_compression(out / "s1.tif")) > 1
    assert set(_compression(out / "s1.prompts.tif")) == {("ADOBE_DEFLATE", 3)}
    assert set(_compression(out / "s1.tiff")) == {("ADOBE_DEFLATE", 2)}
    for cog in (out / "s1.tif", out / "s1.prompts.tif"):
        valid, errors, _ = cog_validate(str(cog), strict=True)
        assert valid and not errors and validate_cog(cog) == [], (cog, errors)
    with rasterio.open(out / "s1.tif") as cog, rasterio.open(out / "s1.tiff") as tiff:
        np.testing.assert_array_equal(cog.read(), tiff.read())  # the predictor is lossless


def test_fuse_creation_options_reach_the_cog(pair):
    plain = _fuse(pair, "-o", str(pair / "plain.tif"), "-q")
    zstd = _fuse(pair, "-o", str(pair / "zstd.tif"), "-q", "--co", "COMPRESS=ZSTD", "--co", "level=9",
                 "--co", "BLOCKSIZE=256")
    assert plain.exit_code == 0 and zstd.exit_code == 0, (plain.output, zstd.output)
    assert set(_compression(pair / "zstd.tif")) == {("ZSTD", 2)}  # the predictor follows the user's COMPRESS
    with rasterio.open(pair / "zstd.tif") as ds, rasterio.open(pair / "plain.tif") as reference:
        assert ds.block_shapes[0] == (256, 256) and reference.block_shapes[0] == (512, 512)
        np.testing.assert_array_equal(ds.read(), reference.read())
    assert cog_validate(str(pair / "zstd.tif"), strict=True)[0]
    no_predictor = _fuse(pair, "-o", str(pair / "lzw.tif"), "-q", "--co", "COMPRESS=LZW", "--co", "PREDICTOR=NO")
    assert no_predictor.exit_code == 0 and set(_compression(pair / "lzw.tif")) == {("LZW", 1)}


@pytest.mark.parametrize("option, expected", [
    ("FOO=BAR", "GDAL's COG driver has no option FOO"),
    ("BLOCKSIZE=abc", "GDAL's COG driver wants an integer"),  # GDAL itself crashes on this one
    ("COMPRESS=NOPE", "GDAL's COG driver wants one of NONE, LZW"),
    ("BLOCKSIZE=64", "wants at least 128"),
    ("COMPRESS", "is not KEY=VALUE"),
])
def test_fuse_refuses_bad_creation_options_in_one_line(pair, option, expected):
    result = _fuse(pair, "-o", str(pair / "x.tif"), "--co", option)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: --co: ") and expected in result.stderr
    assert not (pair / "x.tif").exists()


def test_creation_options_in_a_job(pair):
    from pipeline.spec import SpecError, parse_job

    job = parse_job(pair_job(pair, formats=("cog",), extra_output={"creation_options": {"compress": "zstd", "LEVEL": 3}}), base=pair)
    assert job.collections[0].output.creation_options == (("COMPRESS", "zstd"), ("LEVEL", "3"))
    with pytest.raises(SpecError, match=r"output.creation_options: creation option ZLEVEL=3: GDAL's COG driver has no option ZLEVEL"):
        parse_job(pair_job(pair, formats=("cog",), extra_output={"creation_options": {"ZLEVEL": 3}}), base=pair)
    with pytest.raises(SpecError, match="creation options apply to COG and GeoTIFF outputs"):
        parse_job(pair_job(pair, formats=("zarr",), extra_output={"creation_options": {"COMPRESS": "ZSTD"}}), base=pair)


def _json_error(result) -> dict:
    assert result.stderr == "", result.stderr  # nothing but the JSON object, on stdout
    document = json.loads(result.stdout)
    assert set(document) == {"message", "file", "cause", "exit_code", "error_type"}
    assert document["exit_code"] == result.exit_code
    return document


def test_json_mode_reports_every_error_as_one_json_object(pair, tmp_path):
    runner = CliRunner()
    bad_co = _json_error(_fuse(pair, "-o", str(pair / "x.tif"), "--co", "FOO=1", "--json"))
    assert bad_co["exit_code"] == 2 and "no option FOO" in bad_co["cause"]

    usage = _json_error(runner.invoke(main, ["fuse", str(pair / "s1_a.tif"), "--json"]))  # click's own usage error
    assert usage["exit_code"] == 2 and "--output" in usage["message"] and usage["error_type"] == "MissingParameter"

    (tmp_path / "bad.yaml").write_text("name: x\ntask: nope\n")
    spec = _json_error(runner.invoke(main, ["run", str(tmp_path / "bad.yaml"), "--local", "--json"]))
    assert spec["exit_code"] == 2 and spec["file"] == str(tmp_path / "bad.yaml") and "invalid job" in spec["cause"]

    missing = _json_error(runner.invoke(main, ["run", str(tmp_path / "absent.yaml"), "--json"]))
    assert missing["exit_code"] == 2 and missing["file"] == str(tmp_path / "absent.yaml")

    (tmp_path / "out.txt").write_text("not an image")
    refused = _json_error(_fuse(pair, "-o", str(tmp_path / "out.txt"), "--json"))
    assert refused["file"] == str(tmp_path / "out.txt") and "unsupported output suffix" in refused["cause"]

    status = _json_error(runner.invoke(main, ["status", str(tmp_path / "no-run"), "--json"]))
    assert status["exit_code"] == 2

    evaluate = _json_error(runner.invoke(main, ["eval", "--json"]))  # a command with its own --json flag
    assert evaluate["exit_code"] == 2 and "missing" in evaluate["message"]

    plain = runner.invoke(main, ["run", str(tmp_path / "absent.yaml")])
    assert plain.exit_code == 2 and plain.stdout == "" and plain.stderr.startswith("Error: ")


def _fuse_in_a_process(folder: pathlib.Path, output: str, *, tty: bool) -> str:
    """stderr of `tcmoa fuse` run in a child process, given a terminal (a pty) or a pipe."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "COLUMNS": "100"}
    command = [sys.executable, "-m", "pipeline.cli", "fuse", str(folder / "s1_a.tif"), str(folder / "s1_b.tif"),
               "-o", str(folder / output), "--weights", "baseline:average"]
    if not tty:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=True).stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    try:
        process = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=follower, timeout=300, check=True)
        os.close(follower)
        follower = None
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the pty is drained once the child's end is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.returncode == 0
        return b"".join(chunks).decode(errors="replace")
    finally:
        os.close(leader)
        if follower is not None:
            os.close(follower)


def test_progress_bar_only_on_a_terminal(pair):
    on_terminal = _fuse_in_a_process(pair, "tty.tif", tty=True)
    on_pipe = _fuse_in_a_process(pair, "pipe.tif", tty=False)
    assert "block/s" in on_terminal or "s/block" in on_terminal, on_terminal
    assert "block/s" not in on_pipe and "s/block" not in on_pipe and "|" not in on_pipe, on_pipe
