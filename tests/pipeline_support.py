"""Stand-in fusers and small raster builders for the pipeline tests (imported by tests/test_pipeline_*.py)."""
from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from tcmoa.interface import FusionResult


def _to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    return np.repeat(x, channels, axis=-1) if x.shape[-1] != channels else x


class SourceAFuser:
    """Returns source A unchanged (broadcast to the output channels): any job must give back A."""

    name = "stand-in:source-a"
    tile_multiple = 112

    def __init__(self, tile_multiple: int = 112):
        self.tile_multiple = tile_multiple
        self.calls = 0

    def fuse_batch(self, a, b, task="vif", *, return_prompts=False) -> FusionResult:
        self.calls += 1
        channels = 3 if max(a.shape[-1], b.shape[-1]) == 3 else 1
        prompts = np.ones(a.shape[:3], np.float32) if return_prompts else None
        return FusionResult(_to_channels(a, channels).astype(np.float32), prompts)

    def provenance(self) -> dict[str, Any]:
        return {"name": self.name}


class ContextFuser(SourceAFuser):
    """Output depends on the whole tile (its mean), like a real network's receptive field: tiles
    disagree where they overlap, so blending and block boundaries matter."""

    name = "stand-in:context"

    def fuse_batch(self, a, b, task="vif", *, return_prompts=False) -> FusionResult:
        channels = 3 if max(a.shape[-1], b.shape[-1]) == 3 else 1
        a3, b3 = _to_channels(a, channels), _to_channels(b, channels)
        context = a3.mean(axis=(1, 2), keepdims=True) - b3.mean(axis=(1, 2), keepdims=True)
        out = np.clip(0.5 * (a3 + b3) + 0.2 * context, 0, 1).astype(np.float32)
        prompts = np.clip(0.5 + 0.5 * (a3 - b3).mean(-1), 0, 1).astype(np.float32) if return_prompts else None
        return FusionResult(out, prompts)


class FailingFuser(SourceAFuser):
    name = "stand-in:failing"

    def fuse_batch(self, a, b, task="vif", *, return_prompts=False) -> FusionResult:
        raise RuntimeError("model exploded")


def write_geotiff(
    path: pathlib.Path, data: np.ndarray, *, crs: str | None = "EPSG:32632", transform=None, nodata=None,
    tiled: bool = True, blocksize: int = 64,
) -> pathlib.Path:
    """data: (C, H, W) or (H, W)."""
    import rasterio
    from rasterio.transform import from_origin

    data = data[None] if data.ndim == 2 else data
    profile = {
        "driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
        "dtype": data.dtype.name, "nodata": nodata,
    }
    if tiled and min(data.shape[1:]) >= 16:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    if crs:
        profile.update(crs=crs, transform=transform or from_origin(500000.0, 5600000.0, 30.0, 30.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def random_raster(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return (rng.random(shape) * 1000 - 200).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


def write_pair_archive(root: pathlib.Path, scenes=("s1", "s2"), shape=(200, 230)) -> None:
    """{scene}_a.tif (3 bands) and {scene}_b.tif (1 band), uint16 noise, for `pair_job`."""
    rng = np.random.default_rng(0)
    for scene in scenes:
        write_geotiff(root / f"{scene}_a.tif", random_raster(rng, (3, *shape), "uint16"))
        write_geotiff(root / f"{scene}_b.tif", random_raster(rng, shape, "uint16"))


def output_files(folder: pathlib.Path) -> dict[str, bytes]:
    """Every file under folder, by relative path; a STAC Item without its processing times (`created`,
    `processing:datetime`: when it was written, so two runs never agree on them)."""
    import json

    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name.endswith(".stac.json"):
            stac = json.loads(data)
            for key in ("created", "processing:datetime"):
                stac["properties"].pop(key)
            data = json.dumps(stac, sort_keys=True).encode()
        out[path.relative_to(folder).as_posix()] = data
    return out


def pair_job(root: pathlib.Path, *, tile=112, overlap=32, block=128, chunk=64, formats=("zarr", "cog"),
             normalise_a: Any = "dtype", normalise_b: Any = "dtype", a_pattern="{scene}_a.tif", b_pattern="{scene}_b.tif",
             extra_output: dict | None = None, **top) -> dict:
    """A job document fusing {scene}_a.tif with {scene}_b.tif under root, A as reference."""
    doc = {
        "name": "test",
        "task": "vif",
        "discover": {"type": "glob", "root": str(root)},
        "sources": [
            {"role": "a", "pattern": a_pattern, "normalise": normalise_a},
            {"role": "b", "pattern": b_pattern, "normalise": normalise_b},
        ],
        "reference": "a",
        "tiling": {"tile": tile, "overlap": overlap, "block": block},
        "model": {"batch_size": 4},
        "output": {"formats": list(formats), "chunk": chunk, "dir": str(root / "out"), **(extra_output or {})},
        "run_dir": str(root / "run"),
    }
    doc.update(top)
    return doc


def plan_with(job, fuser):
    """The plan of `job` for a fuser already built (what the local runner plans with it)."""
    from pipeline.plan import plan_job
    from tcmoa.interface import Placement
    from tcmoa.interface import ModelInfo

    return plan_job(job, ModelInfo.of(fuser, job.model.weights), Placement("cpu", "fp32"))


class KillOnceFuser(ContextFuser):
    """Kills its own process (SIGKILL, like the OOM killer) in its first call of a test: the
    marker file makes the restarted worker carry on."""

    name = "stand-in:context"

    def __init__(self, marker: str):
        super().__init__()
        self.marker = pathlib.Path(marker)

    def fuse_batch(self, a, b, task="vif", *, return_prompts=False) -> FusionResult:
        import os
        import signal

        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().fuse_batch(a, b, task, return_prompts=return_prompts)


class SlowFuser(ContextFuser):
    """ContextFuser taking `delay` s per call; leaves a file named after its Ray node in `trace`
    (which nodes did model work)."""

    name = "stand-in:context"

    def __init__(self, delay: float, trace: str | None = None):
        super().__init__()
        self.delay, self.trace = delay, trace

    def fuse_batch(self, a, b, task="vif", *, return_prompts=False) -> FusionResult:
        import time

        if self.trace:
            import ray

            (pathlib.Path(self.trace) / f"node-{ray.get_runtime_context().get_node_id()}").touch()
        time.sleep(self.delay)
        return super().fuse_batch(a, b, task, return_prompts=return_prompts)


def slow_average(delay: float):
    """The 'average' baseline, `delay` s slower per call (same name: same job fingerprint)."""
    import time

    from tcmoa.baselines import AverageFuser

    class SlowAverage(AverageFuser):
        def fuse_batch(self, a, b, task="vif", *, return_prompts=False):
            time.sleep(delay)
            return super().fuse_batch(a, b, task, return_prompts=return_prompts)

    return SlowAverage()


def output_pixels(outputs: pathlib.Path) -> dict[str, np.ndarray]:
    """Every output under a run's outputs folder as arrays, keyed by relative path (and Zarr array
    name): PNG through Pillow, GeoTIFF/TIFF through rasterio, each array of each Zarr store."""
    import rasterio
    import zarr
    from PIL import Image

    pixels: dict[str, np.ndarray] = {}
    for path in sorted(outputs.rglob("*")):
        key = str(path.relative_to(outputs))
        if path.suffix == ".zarr" and path.is_dir():
            for name, array in zarr.open_group(path, mode="r").arrays():
                pixels[f"{key}/{name}"] = array[...]
        elif ".zarr" in key:
            continue
        elif path.suffix == ".png":
            pixels[key] = np.asarray(Image.open(path))
        elif path.suffix in (".tif", ".tiff"):
            with rasterio.open(path) as ds:
                pixels[key] = ds.read()
    return pixels



def assert_only_the_bad_item_failed(summary, root: pathlib.Path, named: str, *words: str,
                                    out_dir: pathlib.Path | None = None) -> None:
    """Items good1, good2 and bad: the bad item alone failed, with a one-line error naming `named`
    (a file or URL) and holding `words`; the others are done; no output, temporary or work store of
    the bad item is left (outputs in `out_dir`, default ROOT/out; the run directory ROOT/run)."""
    from pipeline.status import run_status

    assert summary.items_done == 2, summary.failures
    assert [f["item_id"] for f in summary.failures] == ["bad"], summary.failures
    error = summary.failures[0]["error"]
    assert named in error and "\n" not in error, error
    for word in words:
        assert word in error, error
    out_dir = out_dir or root / "out"
    for scene in ("good1", "good2"):
        assert (out_dir / f"{scene}.tif").is_file() and (out_dir / f"{scene}.zarr").is_dir()
    leftovers = [p.name for p in out_dir.rglob("*") if p.name.startswith("bad") or ".tmp-" in p.name]
    assert leftovers == [], leftovers
    work = root / "run" / "work"
    assert not work.exists() or not any(work.rglob("bad*")), list(work.rglob("*"))
    states = {i["item"]: i["status"] for i in run_status(root / "run")["items"]}
    assert states == {"test/bad": "failed", "test/good1": "done", "test/good2": "done"}

def write_fast_demo_job(jobs_dir: pathlib.Path, name: str = "demo", **overrides: Any) -> pathlib.Path:
    """jobs/demo.yaml written into jobs_dir (beside a `samples/` folder, as in the repository) with
    a fast baseline fuser instead of the model, and top-level overrides (e.g. run_dir)."""
    import yaml

    document = yaml.safe_load((pathlib.Path(__file__).resolve().parents[1] / "jobs" / "demo.yaml").read_text())
    document["model"]["weights"] = "baseline:average"
    for collection in document["collections"]:
        collection["output"]["prompt_maps"] = False  # the baseline has no prompts
    document.update(overrides)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    path = jobs_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


STAND_IN_CLI = """
import os, signal, sys
import pipeline.runners.local as local
from pipeline.cli import main
from pipeline_support import ContextFuser

class Fuser(ContextFuser):
    calls = 0
    def fuse_batch(self, a, b, task="vif", *, return_prompts=False):
        Fuser.calls += 1
        if Fuser.calls == int(sys.argv[3]):
            os.kill(os.getpid(), getattr(signal, sys.argv[4]))
        return super().fuse_batch(a, b, task, return_prompts=return_prompts)

run_job = local.run_job
local.run_job = lambda job, fuser=None, **kwargs: run_job(job, fuser=Fuser(), **kwargs)
main([sys.argv[1], sys.argv[2], "--local", "--quiet"], prog_name="tcmoa")
"""


def tcmoa_stand_in(command: str, target, call: int = 0, signal_name: str = "SIGKILL", env: dict | None = None):
    """`tcmoa COMMAND TARGET --local --quiet` (run JOB_FILE, resume RUN_DIR) in a subprocess with
    the ContextFuser stand-in, which sends itself `signal_name` in its `call`-th model call (0:
    never). Returns the CompletedProcess."""
    import os
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])}
    return subprocess.run([sys.executable, "-c", STAND_IN_CLI, command, str(target), str(call), signal_name],
                          capture_output=True, text=True, env=env, timeout=300)
