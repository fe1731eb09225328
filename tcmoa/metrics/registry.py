"""Metric registry, conventions and presets.

Every fusion metric is registered once with its canonical name, the direction in which it
improves and a one-line description. Conventions (bit depth, colour handling, log base, PSNR
form, sum vs mean over sources) are explicit parameters gathered in a `Convention`; named
presets reproduce the published toolboxes (`vifb`, `mefb`) or follow textbook definitions
(`standard`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np


@dataclass(frozen=True)
class Convention:
    """How images are prepared and how metric formulas are read.

    quantize:   round images to uint8 levels (0..255) before any metric, as the MATLAB toolboxes do.
    color:      'average' computes a metric per RGB channel and averages (VIFB, MEFB); a grey source
                is then used against every channel of an RGB fused image;
                'grey' converts RGB images to luminance first (MATLAB rgb2gray weights, BT.601).
    log_base:   base of logarithms in entropy / mutual information ('e' = nats, 2 = bits).
    mi_minmax:  min-max normalise images before the MI joint histogram (VIFB).
    psnr:       'benchmark' uses the toolboxes' mse = sqrt(sum((a-b)^2)) / (M N) (why PSNR is ~57 dB);
                'standard' uses mse = mean((a-b)^2).
    source_reduce: 'sum' or 'mean' over the two sources for the metrics the toolboxes sum (MI, SSIM);
                CE, PSNR and RMSE always average the two sources.
    fused_rgb_grey_sources: what an RGB fused image is compared as when both sources are grey:
                'per_channel' (each channel against the grey sources, VIFB), 'first_channel' (MEFB keeps
                channel 1 only) or 'luma' (rgb2gray of the fused image).
    table_names: canonical metric name -> the column name the preset's benchmark tables use.
    extra:      per-metric overrides keyed 'Metric.param', e.g. {'MI.log_base': 'e'}; any field above
                can be overridden for one metric this way (see `param`), plus metric-specific switches
                such as 'SF.layout'.
    """

    name: str
    quantize: bool = True
    color: Literal["average", "grey"] = "average"
    log_base: float | Literal["e"] = 2
    mi_minmax: bool = False
    psnr: Literal["benchmark", "standard"] = "standard"
    source_reduce: Literal["sum", "mean"] = "mean"
    fused_rgb_grey_sources: Literal["per_channel", "first_channel", "luma"] = "luma"
    table_names: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def replace(self, **changes) -> "Convention":
        return dataclasses.replace(self, **changes)

    def param(self, metric: str, key: str, default=None):
        """The value of `key` for `metric`: extra['Metric.key'] if set, else the field, else default."""
        override = f"{metric}.{key}"
        if override in self.extra:
            return self.extra[override]
        return getattr(self, key, default)

    def log(self, metric: str):
        """The logarithm function the convention uses for `metric` (natural log for base 'e')."""
        base = self.param(metric, "log_base")
        if base == "e":
            return np.log
        scale = 1.0 / np.log(float(base))
        return lambda x: np.log(x) * scale

    def table_name(self, canonical: str) -> str:
        """The preset's table column for a canonical name (also found through the aliases)."""
        if canonical in self.table_names:
            return self.table_names[canonical]
        for key, column in self.table_names.items():
            if _ALIASES.get(key.lower()) == canonical or _ALIASES.get(column.lower()) == canonical:
                return column
        return canonical

    def table_metrics(self) -> list[str]:
        """Canonical names of the registered metrics the preset's tables hold, in table order."""
        names = []
        for key, column in self.table_names.items():
            name = _ALIASES.get(key.lower()) or _ALIASES.get(column.lower())
            if name and name not in names:
                names.append(name)
        return names


# fused, a, b are float64 arrays on the 0..255 scale after the convention's preparation
# (`tcmoa.metrics.prepare.prepare`): all three (H, W) when the metric sees grey images, or all three
# (H, W, 3) when it averages over colour channels (a grey source is broadcast to the three channels).
# A metric function receives them with the Convention and returns one float.
MetricFn = Callable[[np.ndarray, np.ndarray, np.ndarray, Convention], float]


@dataclass(frozen=True)
class MetricSpec:
    name: str  # canonical name, as in the benchmark tables where they have one (e.g. 'Qabf', 'MEF_SSIM')
    fn: MetricFn
    higher_is_better: bool
    description: str
    aliases: tuple[str, ...] = ()  # other names the tables use, e.g. 'Cross_entropy' for 'CE'


REGISTRY: dict[str, MetricSpec] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, *, higher_is_better: bool, description: str, aliases: tuple[str, ...] = ()):
    """Decorator: register a metric function under `name` (and its aliases)."""

    def wrap(fn: MetricFn) -> MetricFn:
        if name in REGISTRY:
            raise ValueError(f"metric {name!r} registered twice")
        REGISTRY[name] = MetricSpec(name, fn, higher_is_better, description, tuple(aliases))
        for alias in (name, *aliases):
            _ALIASES[alias.lower()] = name
        return fn

    return wrap


def canonical_name(name: str) -> str:
    try:
        return _ALIASES[name.lower()]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {sorted(REGISTRY)}") from None


# Column names of the benchmark tables (../shared/data/*/tables) for the canonical metric names.
_VIFB_TABLE_NAMES = {
    "CE": "Cross_entropy", "EN": "Entropy", "MI": "Mutinf", "PSNR": "Psnr", "AG": "Avg_gradient",
    "EI": "Edge_intensity", "Qabf": "Qabf", "SD": "Variance", "SF": "Spatial_frequency", "RMSE": "Rmse",
    "SSIM": "Ssim", "Qcb": "Qcb", "Qcv": "Qcv",
}
_MEFB_TABLE_NAMES = {
    "CE": "Cross_entropy", "EN": "Entropy", "FMI": "FMI", "NMI": "NMI", "PSNR": "Psnr", "Qncie": "Qncie",
    "TE": "TE", "AG": "Avg_gradient", "EI": "Edge_intensity", "Qabf": "Qabf", "Qp": "Qp", "SD": "SD",
    "SF": "Spatial_frequency", "Qc": "Qc", "Qw": "Qw", "Qy": "Qy", "MEF_SSIM": "MEF_SSIM", "Qcb": "Qcb",
    "Qcv": "Qcv", "VIFF": "VIF",
}

PRESETS: dict[str, Convention] = {
    # Textbook definitions: luminance images, 8-bit levels, logarithms in bits, PSNR/RMSE from the
    # mean squared error, SSIM averaged over the two sources, MI = I(A;F) + I(B;F) (Qu et al. 2002).
    "standard": Convention(
        name="standard",
        quantize=True,
        color="grey",
        log_base=2,
        mi_minmax=False,
        psnr="standard",
        source_reduce="mean",
        fused_rgb_grey_sources="luma",
        extra={"MI.source_reduce": "sum"},
    ),
    # VIFB toolbox (Zhang et al. 2020, MATLAB): per-channel averages, EN/CE in bits but MI in nats
    # after min-max normalisation, MI and SSIM summed over the two sources, the toolbox's PSNR/RMSE,
    # and SF computed on the channels laid side by side ([m, n] = size(fused) of an RGB array).
    "vifb": Convention(
        name="vifb",
        quantize=True,
        color="average",
        log_base=2,
        mi_minmax=True,
        psnr="benchmark",
        source_reduce="sum",
        fused_rgb_grey_sources="per_channel",
        table_names=_VIFB_TABLE_NAMES,
        extra={"MI.log_base": "e", "SF.layout": "concat", "TE.marginals": "swapped"},
    ),
    # MEFB toolbox (Zhang 2021, MATLAB): as VIFB for the shared metrics, except that SF is a true
    # per-channel average and an RGB fused image of grey sources is reduced to its first channel
    # (to rgb2gray for AG); Q_TE pairs the joint histogram with swapped marginals (Liu's tsallis.m)
    # and Q_W is computed on Prewitt edge images, as that toolbox's code does.
    "mefb": Convention(
        name="mefb",
        quantize=True,
        color="average",
        log_base=2,
        mi_minmax=True,
        psnr="benchmark",
        source_reduce="sum",
        fused_rgb_grey_sources="first_channel",
        table_names=_MEFB_TABLE_NAMES,
        extra={
            "MI.log_base": "e",
            "AG.fused_rgb_grey_sources": "luma",
            # MEFB's Liu-toolbox metrics (tcmoa.metrics.information_ext / structural_ext): tsallis.m
            # pairs p(x, f) with swapped marginals, and its "Qw" is Piella's index on edge images.
            "TE.marginals": "swapped",
            "Qw.domain": "edges",
            # metricsMEF_SSIM.m takes rgb2gray of an RGB fused image even for grey sources: keep the
            # three channels so that MEF_SSIM's own rounded rgb2gray sees them.
            "MEF_SSIM.fused_rgb_grey_sources": "per_channel",
        },
    ),
}


def get_convention(preset: "str | Convention") -> Convention:
    if isinstance(preset, Convention):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown metric preset {preset!r}; presets: {sorted(PRESETS)}") from None
