"""The evaluation harness: score folders of fused images (or a fuser run on the sources) against the
two source folders, and write long-form results, per-method means, a ranking and a chart.

Pairs are matched by file stem; files are read by content (two MEFB '.png' files hold JPEG data),
any of JPEG/PNG/BMP/TIFF, grey or RGB. Metric names in the outputs are those of the preset's
benchmark tables (e.g. 'Variance' for SD under `vifb`), canonical names otherwise.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import pathlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from pipeline import runtime
from pipeline.fsio import atomic_path
from tcmoa.metrics import REGISTRY, canonical_name, evaluate, get_convention, resolve_metrics
from tcmoa.metrics.registry import Convention

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
COLUMNS = ["image", "method", "metric", "value"]


class EvaluationError(ValueError):
    """Bad input for the harness (unreadable image, unmatched pairs, size mismatch...)."""


# ---------------------------------------------------------------------------------------------
# Reading images


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 (or uint16) HxW or HxWx3, whatever its extension says.

    Palette, alpha, CMYK and two-channel images are converted to grey or RGB; an unreadable file
    raises EvaluationError naming it.
    """
    path = pathlib.Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return _pil_to_array(im, path)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        if path.suffix.lower() in {".tif", ".tiff"}:
            return _read_tiff(path, err)
        raise EvaluationError(f"{path}: not a readable image ({err})") from err


def _pil_to_array(im: Image.Image, path: pathlib.Path) -> np.ndarray:
    if im.mode in ("L", "RGB"):
        return np.asarray(im)
    if im.mode in ("1", "LA", "La") or (im.mode == "P" and _palette_is_grey(im)):
        return np.asarray(im.convert("L"))
    if im.mode in ("P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(im.convert("RGB"))
    if im.mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    arr = np.asarray(im)
    raise EvaluationError(f"{path}: unsupported pixel format {im.mode!r} (dtype {arr.dtype}); use 8/16-bit grey or RGB")


def _palette_is_grey(im: Image.Image) -> bool:
    rgb = np.asarray(im.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _read_tiff(path: pathlib.Path, pil_error: Exception) -> np.ndarray:
    import tifffile

    try:
        arr = tifffile.imread(path)
    except Exception as err:  # tifffile raises several types for broken files
        raise EvaluationError(f"{path}: not a readable image ({pil_error}; tifffile: {err})") from err
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) storage
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3)):
        raise EvaluationError(f"{path}: expected a grey or RGB image, got array shape {arr.shape}")
    if arr.dtype not in (np.uint8, np.uint16):
        raise EvaluationError(f"{path}: unsupported sample type {arr.dtype}; use 8- or 16-bit images")
    return arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr


def to_uint8(img: np.ndarray) -> np.ndarray:
    """A fuser's float [0, 1] output as the 8-bit image it would be saved as."""
    return np.clip(np.floor(np.asarray(img, dtype=np.float64) * 255 + 0.5), 0, 255).astype(np.uint8)


def write_image_atomic(path: pathlib.Path, img: np.ndarray) -> None:
    """Save a uint8 HxW or HxWxC image as PNG, atomically."""
    arr = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
    with atomic_path(path, suffix=path.suffix) as tmp:  # writers go by the extension
        Image.fromarray(arr).save(tmp, format="PNG")


def write_table_atomic(df: pd.DataFrame, path: pathlib.Path, fmt: str) -> None:
    with atomic_path(path, suffix=path.suffix) as tmp:  # writers go by the extension
        if fmt == "csv":
            df.to_csv(tmp, index=False)
        elif fmt == "parquet":
            df.to_parquet(tmp, index=False, engine="pyarrow")
        else:
            raise ValueError(f"unknown table format {fmt!r}")


# ---------------------------------------------------------------------------------------------
# Pairing


def list_images(folder: str | os.PathLike) -> dict[str, pathlib.Path]:
    """stem -> path of the image files (by extension) directly in `folder`."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: not a folder")
    found: dict[str, pathlib.Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            if path.stem in found:
                raise EvaluationError(f"{folder}: two images share the stem {path.stem!r}: {found[path.stem].name}, {path.name}")
            found[path.stem] = path
    if not found:
        raise EvaluationError(f"{folder}: no JPEG/PNG/BMP/TIFF images found")
    return found


def match_pairs(a_dir: str | os.PathLike, b_dir: str | os.PathLike) -> dict[str, tuple[pathlib.Path, pathlib.Path]]:
    """stem -> (source A, source B) for the stems present in both folders (an error if none)."""
    a, b = list_images(a_dir), list_images(b_dir)
    stems = sorted(set(a) & set(b))
    if not stems:
        raise EvaluationError(f"no file stem is common to {a_dir} and {b_dir}")
    return {s: (a[s], b[s]) for s in stems}


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass
class Method:
    """A named thing to score: a folder of fused images, or a fuser run on the sources."""

    name: str
    folder: pathlib.Path | None = None
    fuser: Any = None
    images: dict[str, pathlib.Path] = field(default_factory=dict)


def default_metrics(conv: Convention) -> list[str]:
    """The preset's benchmark-table metrics that are registered, else every registered metric."""
    return conv.table_metrics() or sorted(REGISTRY, key=str.lower)


SIZE_MISMATCH = ("error", "skip", "resize")


def resize_to(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample an 8/16-bit image to (H, W): PIL's box filter when shrinking, bicubic otherwise."""
    h, w = shape
    shrinking = img.shape[0] >= h and img.shape[1] >= w
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
    if img.dtype == np.uint8:
        return np.asarray(Image.fromarray(img).resize((w, h), resample))
    stack = img[..., None] if img.ndim == 2 else img
    channels = [Image.fromarray(stack[..., c].astype(np.float32)).resize((w, h), resample) for c in range(stack.shape[-1])]
    out = np.clip(np.rint(np.stack([np.asarray(c) for c in channels], axis=-1)), 0, 65535).astype(np.uint16)
    return out if img.ndim == 3 else out[..., 0]


def _score_image(job: tuple) -> tuple[list[tuple[str, str, str, float]], list[str]]:
    """All methods on one pair (runs in a worker process when jobs > 1): (rows, notes)."""
    stem, a_path, b_path, fused_inputs, metrics, conv, size_mismatch, threads = job
    a, b = read_image(a_path), read_image(b_path)
    if a.shape[:2] != b.shape[:2]:
        raise EvaluationError(f"{stem}: sources differ in size: {a_path} {a.shape[:2]}, {b_path} {b.shape[:2]}")
    rows, notes = [], []
    for method, fused in fused_inputs:
        where = fused if isinstance(fused, (str, os.PathLike)) else method
        if isinstance(fused, (str, os.PathLike)):
            fused = read_image(fused)
        if fused.shape[:2] != a.shape[:2]:
            problem = f"{where}: fused image is {fused.shape[:2]}, its sources {a.shape[:2]} (H, W)"
            if size_mismatch == "error":
                raise EvaluationError(problem + "; use size_mismatch 'skip' or 'resize'")
            if size_mismatch == "skip":
                notes.append(problem + ": skipped")
                continue
            notes.append(problem + ": fused image resampled to the sources' size")
            fused = resize_to(fused, a.shape[:2])
        scores = evaluate(fused, a, b, metrics=metrics, preset=conv, threads=threads)
        rows.extend((stem, method, conv.table_name(m), v) for m, v in scores.items())
    return rows, notes


def score(
    pairs: dict[str, tuple[pathlib.Path, pathlib.Path]],
    methods: list[Method],
    conv: Convention,
    metrics: list[str],
    *,
    task: str = "vif",
    fused_dir: pathlib.Path | None = None,
    jobs: int = 1,
    size_mismatch: str = "error",
    progress: Callable[[Iterable, int], Iterable] | None = None,
    notes: list[str] | None = None,
) -> pd.DataFrame:
    """Long-form scores (image, method, metric, value) of every method on every pair.

    Folder methods must hold every stem of `pairs`. Fuser methods are run on the sources first;
    their 8-bit outputs are what is scored and, when `fused_dir` is given, saved as
    fused_dir/<method>/<stem>.png. A fused image of another size than its sources is an error,
    skipped or resampled to the sources' size (`size_mismatch`); `notes` collects what was done.
    """
    if size_mismatch not in SIZE_MISMATCH:
        raise ValueError(f"size_mismatch must be one of {SIZE_MISMATCH}, got {size_mismatch!r}")
    # The metrics allocate and free large maps in turn: without this, all metrics on a 2048^2 pair
    # per channel took 66 s (36 s of it system time, page faults) instead of 40 s (metrics_speed.py).
    runtime.tune_allocator()
    for m in methods:
        if m.folder is not None:
            missing = sorted(set(pairs) - set(m.images))
            if missing:
                raise EvaluationError(
                    f"{m.folder}: no fused image for {len(missing)} pair(s): {', '.join(missing[:5])}"
                    + (" ..." if len(missing) > 5 else "")
                )

    def jobs_iter():
        for stem, (a_path, b_path) in pairs.items():
            inputs = []
            for m in methods:
                if m.fuser is None:
                    inputs.append((m.name, m.images[stem]))
                    continue
                fused = m.fuser.fuse(_unit(read_image(a_path)), _unit(read_image(b_path)), task=task)
                fused = to_uint8(fused)
                fused = fused[..., 0] if fused.shape[-1] == 1 else fused
                if fused_dir is not None:
                    write_image_atomic(fused_dir / m.name / f"{stem}.png", fused)
                inputs.append((m.name, fused))
            # one image per worker process already fills the cores: metrics in turn there
            yield (stem, a_path, b_path, inputs, metrics, conv, size_mismatch, 1 if jobs > 1 else None)

    def wrap(iterable):
        return progress(iterable, len(pairs)) if progress else iterable

    rows: list = []
    collected: list[str] = []
    if jobs > 1:
        # Fresh worker processes, not forks: a fork of a process whose numba kernels have started
        # their worker threads (an earlier scoring in it) dies in those kernels.
        context = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=runtime.tune_allocator) as pool:
            for part, part_notes in wrap(pool.map(_score_image, jobs_iter())):
                rows.extend(part)
                collected.extend(part_notes)
    else:
        for job in wrap(jobs_iter()):
            part, part_notes = _score_image(job)
            rows.extend(part)
            collected.extend(part_notes)
    if notes is not None:
        notes.extend(collected)
    return pd.DataFrame(rows, columns=COLUMNS)


def _unit(img: np.ndarray) -> np.ndarray:
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    return img.astype(np.float32) / scale


# ---------------------------------------------------------------------------------------------
# Summaries


def directions(conv: Convention, names: Iterable[str]) -> dict[str, bool]:
    """output metric name -> higher is better."""
    return {n: REGISTRY[canonical_name(n)].higher_is_better for n in names}


def method_means(long: pd.DataFrame) -> pd.DataFrame:
    """Per-method means over the images: one row per method, one column per metric (table order)."""
    order = list(dict.fromkeys(long["metric"]))
    wide = long.pivot_table(index="method", columns="metric", values="value", aggfunc="mean", sort=False)
    return wide[order].reindex(list(dict.fromkeys(long["method"])))


def ranking(means: pd.DataFrame, conv: Convention) -> pd.DataFrame:
    """Rank of each method per metric (1 = best, by the metric's direction) and the mean rank."""
    up = directions(conv, means.columns)
    ranks = pd.DataFrame(
        {m: means[m].rank(ascending=not up[m], method="min") for m in means.columns}, index=means.index
    )
    ranks["mean_rank"] = ranks.mean(axis=1)
    return ranks.sort_values("mean_rank")


def plot_chart(means: pd.DataFrame, conv: Convention, path: pathlib.Path, title: str = "") -> None:
    """One bar panel per metric comparing the methods' means; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    up = directions(conv, means.columns)
    n = len(means.columns)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows + 0.6), squeeze=False)
    colors = plt.get_cmap("tab20")(np.arange(len(means.index)) % 20)
    for ax, metric in zip(axes.flat, means.columns):
        values = means[metric].to_numpy(dtype=float)
        ax.bar(range(len(means.index)), values, color=colors)
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() > 0 and np.ptp(finite) < 0.2 * finite.max():
            # A narrow range far from zero (PSNR ~57 dB): zoom so the differences show.
            pad = max(np.ptp(finite), 1e-3 * finite.max())
            ax.set_ylim(finite.min() - pad, finite.max() + pad)
        ax.set_title(f"{metric} ({'higher' if up[metric] else 'lower'} is better)", fontsize=8)
        ax.set_xticks(range(len(means.index)))
        ax.set_xticklabels(means.index, rotation=60, ha="right", fontsize=6)
        ax.tick_params(axis="y", labelsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title or f"mean over images, preset {conv.name}", fontsize=10)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=path.suffix) as tmp:  # writers go by the extension
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)


@dataclass
class EvaluationOutputs:
    long: pd.DataFrame
    means: pd.DataFrame
    ranks: pd.DataFrame | None
    files: dict[str, pathlib.Path]
    notes: list[str] = field(default_factory=list)


def write_outputs(long: pd.DataFrame, conv: Convention, out_dir: pathlib.Path) -> EvaluationOutputs:
    """per_image.csv / .parquet, means.csv, ranking.csv (2+ methods) and chart.png under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    means = method_means(long)
    files = {
        "per_image_csv": out_dir / "per_image.csv",
        "per_image_parquet": out_dir / "per_image.parquet",
        "means_csv": out_dir / "means.csv",
        "chart_png": out_dir / "chart.png",
    }
    write_table_atomic(long, files["per_image_csv"], "csv")
    write_table_atomic(long, files["per_image_parquet"], "parquet")
    write_table_atomic(means.reset_index(), files["means_csv"], "csv")
    ranks = None
    if len(means.index) > 1:
        ranks = ranking(means, conv)
        files["ranking_csv"] = out_dir / "ranking.csv"
        write_table_atomic(ranks.reset_index(), files["ranking_csv"], "csv")
    plot_chart(means, conv, files["chart_png"])
    return EvaluationOutputs(long, means, ranks, files)


def run_evaluation(
    a_dir: str | os.PathLike,
    b_dir: str | os.PathLike,
    methods: list[Method],
    out_dir: str | os.PathLike,
    *,
    preset: str | Convention = "standard",
    metrics: Iterable[str] | str | None = None,
    task: str = "vif",
    jobs: int = 1,
    limit: int | None = None,
    size_mismatch: str = "error",
    progress: Callable[[Iterable, int], Iterable] | None = None,
) -> EvaluationOutputs:
    """Pair the sources, score every method and write the outputs (see `write_outputs`)."""
    conv = get_convention(preset)
    names = resolve_metrics(metrics) if metrics else default_metrics(conv)
    if not methods:
        raise EvaluationError("nothing to evaluate: give at least one fused folder or method")
    seen = set()
    for m in methods:
        if m.name in seen:
            raise EvaluationError(f"method name {m.name!r} given twice")
        seen.add(m.name)
        if m.folder is not None:
            m.images = list_images(m.folder)
    pairs = match_pairs(a_dir, b_dir)
    if limit is not None:
        pairs = dict(list(pairs.items())[:limit])
    out_dir = pathlib.Path(out_dir)
    notes: list[str] = []
    long = score(pairs, methods, conv, names, task=task, fused_dir=out_dir / "fused", jobs=jobs,
                 size_mismatch=size_mismatch, progress=progress, notes=notes)
    if long.empty:
        raise EvaluationError("no image was scored: " + "; ".join(notes[:5]))
    outputs = write_outputs(long, conv, out_dir)
    outputs.notes = notes
    return outputs
