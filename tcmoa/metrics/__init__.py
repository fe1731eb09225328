"""Fusion quality metrics with explicit conventions.

    from tcmoa.metrics import evaluate, list_metrics
    scores = evaluate(fused, vis, ir, metrics=["Qabf", "SSIM"], preset="vifb")

Images are HxW or HxWxC arrays (uint8 0..255, uint16, or floats in [0, 1]). A preset
(`standard`, `vifb`, `mefb`) or a `Convention` fixes how they are prepared and how each formula is
read; `vifb` and `mefb` reproduce those benchmarks' MATLAB toolboxes. See docs/metrics.md.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Iterable, Literal

from tcmoa.metrics.prepare import prepare
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


def evaluate(
    fused: Any,
    a: Any,
    b: Any,
    metrics: Iterable[str] | str | None = None,
    preset: str | Convention = "standard",
    names: Literal["canonical", "table"] = "canonical",
) -> dict[str, float]:
    """Score one fused image against its two sources.

    metrics: names or aliases (default: all registered). preset: a preset name or a Convention.
    names: 'canonical' keys the result by canonical metric names, 'table' by the column names of
    the preset's benchmark tables (e.g. 'Variance' for SD under `vifb`).
    """
    conv = get_convention(preset)
    prepared: dict[tuple, tuple] = {}
    scores: dict[str, float] = {}
    for name in resolve_metrics(metrics):
        key = tuple(conv.param(name, k) for k in _PREPARATION_KEYS)
        if key not in prepared:
            prepared[key] = prepare(fused, a, b, conv, name)
        value = float(REGISTRY[name].fn(*prepared[key], conv))
        scores[conv.table_name(name) if names == "table" else name] = value
    return scores


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
