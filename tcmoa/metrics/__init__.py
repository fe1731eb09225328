"""Fusion quality metrics with explicit conventions.

    from tcmoa.metrics import evaluate, list_metrics
    scores = evaluate(fused, vis, ir, metrics=["Qabf", "SSIM"], preset="vifb")

Images are HxW or HxWxC arrays (uint8 0..255, uint16, or floats in [0, 1]). A preset
(`standard`, `vifb`, `mefb`) or a `Convention` fixes how they are prepared and how each formula is
read; `vifb` and `mefb` reproduce those benchmarks' MATLAB toolboxes. See docs/metrics.md.
"""
from __future__ import annotations

import contextvars
import importlib
import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Literal

from tcmoa.metrics.prepare import prepare
from tcmoa.metrics.shared import sharing
from tcmoa.metrics.registry import (
    PRESETS,
    REGISTRY,
    Convention,
    MetricSpec,
    canonical_name,
    get_convention,
    register,
)

# Metric families: each module registers its metrics on import. The optional ones are imported when
# present, and then any import error they raise is a real error.
_FAMILIES = ("basic", "information", "structural", "gradient", "perception")
_OPTIONAL_FAMILIES = ("information_ext", "structural_ext", "perceptual", "feature")

for _family in _FAMILIES:
    importlib.import_module(f"tcmoa.metrics.{_family}")
for _family in _OPTIONAL_FAMILIES:
    if importlib.util.find_spec(f"tcmoa.metrics.{_family}") is not None:
        importlib.import_module(f"tcmoa.metrics.{_family}")

# The preparation fields a metric may override through Convention.extra.
_PREPARATION_KEYS = ("quantize", "color", "fused_rgb_grey_sources")


def list_metrics() -> list[MetricSpec]:
    """Every registered metric, sorted by name (name, direction, description, aliases)."""
    return [REGISTRY[name] for name in sorted(REGISTRY, key=str.lower)]


def resolve_metrics(metrics: Iterable[str] | str | None) -> list[str]:
    """Canonical names for user-given names or aliases ('Qabf,SSIM' or a list); None = all."""
    if metrics is None:
        return [spec.name for spec in list_metrics()]
    if isinstance(metrics, str):
        metrics = [m for m in (part.strip() for part in metrics.split(",")) if m]
    names: list[str] = []
    for m in metrics:
        name = canonical_name(m)
        if name not in names:
            names.append(name)
    return names


# Relative cost of the expensive metrics (640x480, bench/metrics_speed.py): the longest start first
# when metrics run on several threads, so that no long one is left running alone at the end.
_RELATIVE_COST = {"Qp": 17, "FMI_w": 16, "FMI_dct": 11, "FMI_pixel": 10, "Qe": 6, "VIFP": 4, "VIFF": 4,
                  "Qcb": 3, "MS_SSIM": 3, "FMI": 3, "Qw": 2, "Qy": 2, "Qs": 2, "Qc": 2, "MEF_SSIM": 2}


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def evaluate(
    fused: Any,
    a: Any,
    b: Any,
    metrics: Iterable[str] | str | None = None,
    preset: str | Convention = "standard",
    names: Literal["canonical", "table"] = "canonical",
    threads: int | None = None,
) -> dict[str, float]:
    """Score one fused image against its two sources.

    metrics: names or aliases (default: all registered). preset: a preset name or a Convention.
    names: 'canonical' keys the result by canonical metric names, 'table' by the column names of
    the preset's benchmark tables (e.g. 'Variance' for SD under `vifb`).
    threads: metrics computed at once (default: the cores, at most 4; 1 in worker processes that
    already run one image per core). Intermediates that several metrics share are computed once.
    """
    conv = get_convention(preset)
    requested = resolve_metrics(metrics)
    prepared: dict[tuple, tuple] = {}
    inputs: dict[str, tuple] = {}
    for name in requested:
        key = tuple(conv.param(name, k) for k in _PREPARATION_KEYS)
        if key not in prepared:
            prepared[key] = prepare(fused, a, b, conv, name)
        inputs[name] = prepared[key]

    def score(name: str) -> float:
        return float(REGISTRY[name].fn(*inputs[name], conv))

    threads = default_threads() if threads is None else max(1, threads)
    with sharing():
        if threads == 1 or len(requested) == 1:
            values = {name: score(name) for name in requested}
        else:
            order = sorted(requested, key=lambda n: -_RELATIVE_COST.get(n, 1))
            context = contextvars.copy_context()  # the sharing block, in every worker thread
            with ThreadPoolExecutor(max_workers=threads) as pool:
                futures = {name: pool.submit(context.copy().run, score, name) for name in order}
                values = {name: futures[name].result() for name in requested}
    return {conv.table_name(n) if names == "table" else n: values[n] for n in requested}


__all__ = [
    "PRESETS",
    "REGISTRY",
    "Convention",
    "MetricSpec",
    "canonical_name",
    "evaluate",
    "get_convention",
    "list_metrics",
    "prepare",
    "register",
    "resolve_metrics",
]
