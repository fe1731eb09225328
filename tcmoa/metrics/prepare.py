"""Image preparation for the metrics: scale, quantisation and colour handling per convention.

Every metric sees its three images on the 0..255 scale as float64. With colour handling 'average'
an RGB fused image is compared channel by channel (a grey source against each channel), as the
VIFB/MEFB toolboxes loop `for k = 1 : b`; with 'grey' RGB images become luminance first.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from tcmoa.metrics.registry import Convention

# MATLAB rgb2gray: the first row of inv([1 .956 .621; 1 -.272 -.647; 1 -1.106 1.703]) (BT.601 luma).
RGB_TO_GREY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])


def round_half_up(x: np.ndarray) -> np.ndarray:
    """MATLAB round() for non-negative values (halves away from zero; numpy rounds them to even)."""
    return np.floor(x + 0.5)


def to_levels(img: Any, what: str = "image") -> np.ndarray:
    """An image as float64 (H, W, C), C in {1, 3}, on the 0..255 scale.

    uint8 is taken as is, uint16 is rescaled, floats are read as [0, 1] (the `Fuser` range);
    an alpha channel is dropped.
    """
    if hasattr(img, "detach"):
        img = img.detach().cpu().numpy()
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"{what}: expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {arr.shape}")
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        return arr.astype(np.float64)
    if arr.dtype == np.uint16:
        return arr.astype(np.float64) * (255.0 / 65535.0)
    if np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float64)
        if not np.all(np.isfinite(out)):
            raise ValueError(f"{what}: contains NaN or infinite values")
        lo, hi = float(out.min()), float(out.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(
                f"{what}: float images must lie in [0, 1] (found {lo:.4g}..{hi:.4g}); "
                "pass uint8 for 0..255 data"
            )
        return np.clip(out, 0.0, 1.0) * 255.0
    raise ValueError(f"{what}: unsupported dtype {arr.dtype} (use uint8, uint16 or float in [0, 1])")


def rgb_to_grey(x: np.ndarray, quantize: bool) -> np.ndarray:
    """(H, W, 3) -> (H, W, 1) with MATLAB's rgb2gray weights (rounded as rgb2gray does on uint8)."""
    grey = x @ RGB_TO_GREY
    if quantize:
        grey = round_half_up(grey)
    return grey[:, :, None]


def prepare(
    fused: Any, a: Any, b: Any, conv: Convention, metric: str = ""
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three images as the convention's metric sees them: all (H, W) or all (H, W, 3), float64."""
    f, a, b = to_levels(fused, "fused image"), to_levels(a, "source A"), to_levels(b, "source B")
    if not (f.shape[:2] == a.shape[:2] == b.shape[:2]):
        raise ValueError(
            f"image sizes differ: fused {f.shape[:2]}, source A {a.shape[:2]}, source B {b.shape[:2]}"
        )
    quantize = conv.param(metric, "quantize")
    if quantize:
        f, a, b = (np.clip(round_half_up(x), 0, 255) for x in (f, a, b))
    color = conv.param(metric, "color")
    if color == "grey":
        f, a, b = (rgb_to_grey(x, quantize) if x.shape[2] == 3 else x for x in (f, a, b))
    elif f.shape[2] == 1:
        # A grey fused image: the toolboxes run their grey branch, where RGB sources pass rgb2gray.
        a, b = (rgb_to_grey(x, quantize) if x.shape[2] == 3 else x for x in (a, b))
    elif a.shape[2] == 1 and b.shape[2] == 1:
        policy = conv.param(metric, "fused_rgb_grey_sources")
        if policy == "first_channel":
            f = f[:, :, :1]
        elif policy == "luma":
            f = rgb_to_grey(f, False)
        elif policy != "per_channel":
            raise ValueError(f"unknown fused_rgb_grey_sources {policy!r}")
    if f.shape[2] == 1:
        return f[:, :, 0], a[:, :, 0], b[:, :, 0]
    # (H, W, 3) views of channel-contiguous (3, H, W) arrays, so that `planes` is contiguous.
    stacks = [np.ascontiguousarray(np.moveaxis(x, -1, 0)) for x in (f, a, b)]
    stacks = [np.broadcast_to(x, stacks[0].shape) for x in stacks]
    return tuple(np.moveaxis(x, 0, -1) for x in stacks)


def planes(x: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, K) -> a (K, H, W) view: the planes a metric is computed on."""
    return x[None] if x.ndim == 2 else np.moveaxis(x, -1, 0)


def once_per_plane(compute: Callable[[np.ndarray], Any]) -> Callable[[np.ndarray], Any]:
    """compute(plane), memoised on the plane's contents for as long as the returned function lives:
    a grey source repeats one plane in every RGB channel, so per-channel metrics compute its maps
    once."""
    computed: dict[tuple, Any] = {}

    def cached(plane: np.ndarray) -> Any:
        key = (plane.shape, plane.dtype.str, np.ascontiguousarray(plane).tobytes())
        if key not in computed:
            computed[key] = compute(plane)
        return computed[key]

    return cached


def reduce_sources(values_a: np.ndarray, values_b: np.ndarray, how: str) -> np.ndarray:
    """Combine per-source values: 'sum' (toolboxes' MI/SSIM) or 'mean'."""
    if how == "sum":
        return values_a + values_b
    if how == "mean":
        return (values_a + values_b) / 2.0
    raise ValueError(f"source_reduce must be 'sum' or 'mean', got {how!r}")
