"""Mutual information between the fused image and the sources (Qu et al. 2002)."""
from __future__ import annotations

import numpy as np

from tcmoa.metrics.basic import LEVELS, entropy_of
from tcmoa.metrics.prepare import planes, reduce_sources, round_half_up
from tcmoa.metrics.registry import Convention, register


def minmax_levels(stack: np.ndarray) -> np.ndarray:
    """VIFB's normalisation: each plane to [0, 1] by its min and max, then int16(x * 255).

    A constant plane becomes all zeros.
    """
    lo = stack.min(axis=(1, 2), keepdims=True)
    span = stack.max(axis=(1, 2), keepdims=True) - lo
    span[span == 0] = np.inf  # (x - lo) / inf = 0 for a constant plane
    # Same operation order as MATLAB ((x - lo) / span, then * 255), so that ties round alike.
    unit = (stack - lo) / span
    unit *= 255
    return round_half_up(unit)


def joint_histograms(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(K, H, W) integer levels 0..255 -> (K, 256, 256) joint probabilities."""
    k = x.shape[0]
    xi = np.clip(x, 0, LEVELS - 1).astype(np.int64).reshape(k, -1)
    yi = np.clip(y, 0, LEVELS - 1).astype(np.int64).reshape(k, -1)
    idx = (np.arange(k)[:, None] * LEVELS + xi) * LEVELS + yi
    counts = np.bincount(idx.ravel(), minlength=k * LEVELS * LEVELS).reshape(k, LEVELS, LEVELS)
    return counts / xi.shape[1]


def mutual_information(x: np.ndarray, y: np.ndarray, log) -> np.ndarray:
    """Per-plane I(X; Y) = H(X) + H(Y) - H(X, Y) from the 256x256 joint histogram."""
    pxy = joint_histograms(x, y)
    k = pxy.shape[0]
    h_xy = entropy_of(pxy.reshape(k, -1), log)
    return entropy_of(pxy.sum(axis=2), log) + entropy_of(pxy.sum(axis=1), log) - h_xy


@register(
    "MI",
    higher_is_better=True,
    description="Mutual information I(A;F) and I(B;F), summed (Qu et al.) or averaged over the sources",
    aliases=("Mutinf", "MI_sum"),
)
def mutual_info(fused, a, b, conv: Convention) -> float:
    f, x, y = planes(fused), planes(a), planes(b)
    if conv.param("MI", "mi_minmax"):
        f, x, y = minmax_levels(f), minmax_levels(x), minmax_levels(y)
    else:
        f, x, y = (np.floor(s) for s in (f, x, y))
    log = conv.log("MI")
    values = reduce_sources(
        mutual_information(x, f, log), mutual_information(y, f, log), conv.param("MI", "source_reduce")
    )
    return float(values.mean())
