"""Classical fusion baselines that implement the `Fuser` protocol.

    average    pixel average of the two sources
    laplacian  Laplacian-pyramid fusion: max-abs selection of detail coefficients, averaged base
    mertens    exposure fusion (Mertens, Kautz & Van Reeth 2007): contrast, saturation and
               well-exposedness weights blended over Gaussian/Laplacian pyramids

Any size, grey or RGB. Two RGB sources are fused in RGB; a grey and an RGB source are fused in
luminance (Y of BT.601 YCbCr) and the chroma of the RGB source is kept, the usual practice for
visible/infrared pairs.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

import tcmoa
from tcmoa.interface import FusionResult, RouterSpec, as_nhwc, check_pair, output_channels
from tcmoa.pyramid import blend, is_grey, pyramid_levels, rgb_to_ycbcr, select, ycbcr_to_rgb


class _PairFuser:
    """Shared batch handling: validation, grey/RGB mixing, clipping, provenance."""

    name = "baseline"
    tile_multiple = 1

    def fuse_batch(
        self, a: Any, b: Any, task: RouterSpec = "vif", *, return_prompts: bool = False
    ) -> FusionResult:
        a = as_nhwc(a, "source A").astype(np.float64)
        b = as_nhwc(b, "source B").astype(np.float64)
        check_pair(a, b)
        if a.shape[-1] == b.shape[-1]:
            fused = self._fuse(a, b)
        else:
            # One grey, one RGB source: fuse luminance, keep the chroma of the RGB source.
            rgb, grey, rgb_first = (a, b, True) if a.shape[-1] == 3 else (b, a, False)
            ycc = rgb_to_ycbcr(rgb)
            y = ycc[..., :1]
            y_fused = self._fuse(y, grey) if rgb_first else self._fuse(grey, y)
            fused = ycbcr_to_rgb(np.concatenate([y_fused, ycc[..., 1:]], axis=-1))
        assert fused.shape[-1] == output_channels(a, b)
        return FusionResult(image=np.clip(fused, 0.0, 1.0).astype(np.float32))

    def fuse(self, a: Any, b: Any, task: RouterSpec = "vif") -> np.ndarray:
        """One pair (HxW or HxWxC, values in [0, 1]) -> the fused HxWxC float32 image."""
        return self.fuse_batch(a, b, task).image[0]

    def options(self) -> dict[str, Any]:
        return {}

    def provenance(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "baseline", "options": self.options(), "tcmoa": tcmoa.__version__}

    def _fuse(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Fuse (N, H, W, C) float64 pairs with the same C."""
        raise NotImplementedError


class AverageFuser(_PairFuser):
    """Pixel average of the two sources."""

    name = "average"

    def _fuse(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a + b) / 2


class LaplacianFuser(_PairFuser):
    """Laplacian pyramid fusion: at each detail level the coefficient of larger magnitude (summed
    over colour channels, so a pixel takes all its channels from one source), base level averaged."""

    name = "laplacian"

    def __init__(self, levels: int = 4) -> None:
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.levels = levels

    def options(self) -> dict[str, Any]:
        return {"levels": self.levels}

    def _fuse(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # the equal-weight case of the weighted choose-max that prompt-guided reconstruction uses
        return select(a, b, np.full((*a.shape[:3], 1), 0.5), pyramid_levels(a.shape[1:3], self.levels))


class MertensFuser(_PairFuser):
    """Exposure fusion (Mertens et al. 2007) of the two sources.

    Weight per pixel = contrast^wc * saturation^ws * well-exposedness^we, normalised over the
    sources and blended on a Gaussian pyramid against the sources' Laplacian pyramids (full depth).
    Both sources of a pair are weighed by the same terms: where either is grey (visible + infrared),
    neither has a saturation term and exposedness is that of the luminance.
    """

    name = "mertens"

    def __init__(
        self, contrast: float = 1.0, saturation: float = 1.0, exposedness: float = 1.0, sigma: float = 0.2
    ) -> None:
        self.contrast, self.saturation, self.exposedness, self.sigma = contrast, saturation, exposedness, sigma

    def options(self) -> dict[str, Any]:
        return {
            "contrast": self.contrast,
            "saturation": self.saturation,
            "exposedness": self.exposedness,
            "sigma": self.sigma,
        }

    def weights(self, x: np.ndarray, *, grey: bool | None = None) -> np.ndarray:
        """(N, H, W, C) in [0, 1] -> (N, H, W, 1) unnormalised weights. `grey`: weigh as grey
        images (no saturation term, exposedness of the luminance); default: where an image is grey."""
        return np.concatenate([self._image_weights(image, is_grey(image) if grey is None else grey) for image in x])

    def _image_weights(self, x: np.ndarray, grey: bool) -> np.ndarray:
        """(H, W, C) -> (1, H, W, 1). A grey image's saturation is zero everywhere, which would zero
        its weights and reduce the method to the pixel average: grey weighing leaves that term out."""
        luminance = x @ np.array([0.299, 0.587, 0.114]) if x.shape[-1] == 3 else x[..., 0]
        laplace = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        w = np.abs(ndimage.correlate(luminance, laplace, mode="nearest")) ** self.contrast
        if grey:
            exposed = np.exp(-((luminance - 0.5) ** 2) / (2 * self.sigma**2))
        else:
            w = w * x.std(axis=-1) ** self.saturation
            exposed = np.exp(-((x - 0.5) ** 2) / (2 * self.sigma**2)).prod(axis=-1)
        w = w * exposed**self.exposedness
        return w[None, ..., None]

    def _fuse(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        weights = []
        for x_a, x_b in zip(a, b):  # one pair at a time: its sources weighed alike
            grey = is_grey(x_a) or is_grey(x_b)
            weights.append([self._image_weights(x, grey) + 1e-12 for x in (x_a, x_b)])
        wa, wb = (np.concatenate(w) for w in zip(*weights))
        return blend(a, b, wa / (wa + wb), pyramid_levels(a.shape[1:3]))


BASELINES: dict[str, type] = {"average": AverageFuser, "laplacian": LaplacianFuser, "mertens": MertensFuser}


def get_baseline(name: str, **options: Any) -> _PairFuser:
    """A baseline fuser by name ('average', 'laplacian', 'mertens'), with its options."""
    try:
        cls = BASELINES[name]
    except KeyError:
        raise ValueError(f"unknown baseline {name!r}; baselines: {sorted(BASELINES)}") from None
    return cls(**options)
