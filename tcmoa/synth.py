"""Synthetic source pairs for self-supervised fusion training from sharp, well-exposed photos.

- MFF: a random smooth depth mask splits the scene into a far and a near layer; each source is
  the photo with one layer defocused by a lens (disc) point-spread function, blurred in linear
  light, and the two sources are complementary (A = far in focus, B = near in focus).
- MEF: the photo is taken back to scene radiance, exposed up and down by a few stops, given
  shot and read noise, clipped by the sensor and sent through a random camera response curve,
  then quantised to 8 bits (A = over-exposed, B = under-exposed).

Every pair is a pure function of (photo, seed), so a dataset of synthetic pairs is reproducible.
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.signal import fftconvolve
from skimage.transform import resize

# Photos bundled with scikit-image (no download): natural scenes with sharp detail.
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick", "grass", "gravel", "coins", "clock")

# sRGB-like encoding used to go between stored values and linear light.
_DISPLAY_GAMMA = 2.2


@dataclass(frozen=True)
class SynthPair:
    """a, b: (H, W, 3) float32 in [0, 1]; target: the photo they came from; mask: per-pixel share of A's
    in-focus layer (MFF) or None."""

    a: np.ndarray
    b: np.ndarray
    target: np.ndarray
    mask: np.ndarray | None = None


@dataclass(frozen=True)
class MFFSettings:
    blur_radius: tuple[float, float] = (2.0, 7.0)  # disc PSF radius in pixels, drawn per layer
    mask_cells: tuple[int, int] = (2, 6)  # coarse noise grid cells along the short side
    edge_softness: tuple[float, float] = (1.0, 4.0)  # width (px) of the depth transition


@dataclass(frozen=True)
class MEFSettings:
    stops: tuple[float, float] = (1.0, 3.0)  # exposure change of each source, in EV
    response_gamma: tuple[float, float] = (1.8, 2.6)  # camera response curve exponent
    response_contrast: tuple[float, float] = (0.0, 0.5)  # S-curve strength of the response
    shot_noise: tuple[float, float] = (1e-4, 2e-3)  # variance per unit of linear signal
    read_noise: tuple[float, float] = (1e-3, 5e-3)  # standard deviation in linear units


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def to_rgb01(image: np.ndarray) -> np.ndarray:
    """Any grey/RGB/RGBA uint8, uint16, bool or float image -> (H, W, 3) float32 in [0, 1]."""
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32) / np.iinfo(arr.dtype).max
    else:
        arr = np.clip(arr.astype(np.float32), 0.0, 1.0)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {arr.shape}")
    arr = arr[..., :3]
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else np.ascontiguousarray(arr)


# --- multi-focus ---------------------------------------------------------------------------------
def disc_psf(radius: float, supersample: int = 8) -> np.ndarray:
    """Normalised lens-aperture (pillbox) PSF with anti-aliased edges."""
    half = int(np.ceil(radius))
    fine = (np.arange((2 * half + 1) * supersample) + 0.5) / supersample - (half + 0.5)
    yy, xx = np.meshgrid(fine, fine, indexing="ij")
    inside = (yy**2 + xx**2 <= radius**2).astype(np.float64)
    psf = inside.reshape(2 * half + 1, supersample, 2 * half + 1, supersample).mean(axis=(1, 3))
    return psf / psf.sum()


def defocus(image01: np.ndarray, radius: float) -> np.ndarray:
    """Blur by a disc PSF in linear light (defocus integrates radiance, not encoded values)."""
    psf = disc_psf(radius)
    pad = psf.shape[0] // 2
    linear = np.power(image01.astype(np.float64), _DISPLAY_GAMMA)
    padded = np.pad(linear, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    blurred = fftconvolve(padded, psf[:, :, None], mode="valid", axes=(0, 1))
    return np.power(np.clip(blurred, 0.0, 1.0), 1.0 / _DISPLAY_GAMMA).astype(np.float32)


def smooth_depth_mask(shape: tuple[int, int], rng: np.random.Generator, settings: MFFSettings = MFFSettings()) -> np.ndarray:
    """(H, W) in [0, 1]: 1 = far layer. Smooth random regions with a soft, blur-sized transition."""
    height, width = shape
    cells = int(rng.integers(settings.mask_cells[0], settings.mask_cells[1] + 1))
    coarse_shape = (max(2, round(cells * height / min(shape))), max(2, round(cells * width / min(shape))))
    field = resize(rng.standard_normal(coarse_shape), shape, order=3, mode="reflect", anti_aliasing=False)
    # Threshold at a random quantile so both layers always cover a fair share of the frame.
    level = np.quantile(field, rng.uniform(0.3, 0.7))
    hard = (field > level).astype(np.float64)
    return np.clip(gaussian_filter(hard, _uniform(rng, settings.edge_softness)), 0.0, 1.0).astype(np.float32)


def synth_mff_pair(image: np.ndarray, rng: np.random.Generator, settings: MFFSettings = MFFSettings()) -> SynthPair:
    """A = far layer in focus, near layer defocused; B = the complement."""
    sharp = to_rgb01(image)
    far = smooth_depth_mask(sharp.shape[:2], rng, settings)[..., None]
    near_blurred = defocus(sharp, _uniform(rng, settings.blur_radius))
    far_blurred = defocus(sharp, _uniform(rng, settings.blur_radius))
    a = far * sharp + (1 - far) * near_blurred
    b = far * far_blurred + (1 - far) * sharp
    return SynthPair(a.astype(np.float32), b.astype(np.float32), sharp, far[..., 0])


# --- multi-exposure ------------------------------------------------------------------------------
def camera_response(gamma: float, contrast: float) -> Callable[[np.ndarray], np.ndarray]:
    """Monotone response f: [0, 1] irradiance -> [0, 1] value: a power law blended with an S-curve."""

    def respond(irradiance: np.ndarray) -> np.ndarray:
        y = np.power(np.clip(irradiance, 0.0, 1.0), 1.0 / gamma)
        return (1 - contrast) * y + contrast * y * y * (3 - 2 * y)

    return respond


def expose(radiance: np.ndarray, stops: float, rng: np.random.Generator, respond: Callable[[np.ndarray], np.ndarray],
           shot_noise: float, read_noise: float) -> np.ndarray:
    """One capture: scale by 2**stops, add signal-dependent noise, clip at the sensor, respond, quantise."""
    signal = radiance * 2.0**stops
    noise_std = np.sqrt(shot_noise * np.clip(signal, 0.0, None) + read_noise**2)
    captured = np.clip(signal + rng.standard_normal(signal.shape) * noise_std, 0.0, 1.0)
    return (np.round(respond(captured) * 255.0) / 255.0).astype(np.float32)


def synth_mef_pair(image: np.ndarray, rng: np.random.Generator, settings: MEFSettings = MEFSettings()) -> SynthPair:
    """A = over-exposed, B = under-exposed capture of the scene the photo shows."""
    reference = to_rgb01(image)
    radiance = np.power(reference.astype(np.float64), _DISPLAY_GAMMA)
    respond = camera_response(_uniform(rng, settings.response_gamma), _uniform(rng, settings.response_contrast))
    shot, read = _uniform(rng, settings.shot_noise), _uniform(rng, settings.read_noise)
    over = expose(radiance, _uniform(rng, settings.stops), rng, respond, shot, read)
    under = expose(radiance, -_uniform(rng, settings.stops), rng, respond, shot, read)
    return SynthPair(over, under, reference)


SYNTHESISERS: dict[str, Callable[[np.ndarray, np.random.Generator], SynthPair]] = {
    "mff": synth_mff_pair,
    "mef": synth_mef_pair,
}


# --- photo collections ---------------------------------------------------------------------------
def skimage_photos(names: Sequence[str] = SKIMAGE_PHOTOS) -> list[np.ndarray]:
    import skimage.data

    return [to_rgb01(getattr(skimage.data, name)()) for name in names]


def folder_photos(folder: "str | pathlib.Path", max_side: int | None = 1024) -> list[np.ndarray]:
    """Every readable image in a folder (read by content), shrunk so the long side is <= max_side."""
    from tcmoa.data import list_images, read_image01

    paths = list_images(pathlib.Path(folder))
    if not paths:
        raise ValueError(f"{folder}: no image files found for synthetic pairs")
    photos = []
    for path in paths:
        photo = read_image01(path)
        long_side = max(photo.shape[:2])
        if max_side and long_side > max_side:
            scale = max_side / long_side
            shape = (round(photo.shape[0] * scale), round(photo.shape[1] * scale))
            photo = resize(photo, shape, order=1, anti_aliasing=True).astype(np.float32)
        photos.append(photo)
    return photos


class SyntheticPairs:
    """A fixed, reproducible set of `count` synthetic pairs drawn from a list of photos.

    Pair i uses photo i % len(photos) and the random stream (seed, i); it is made on demand.
    Implements the pair-source protocol of `tcmoa.data` (`__len__`, `load`).
    """

    def __init__(self, task: str, photos: Sequence[np.ndarray], count: int | None = None, seed: int = 0):
        if task not in SYNTHESISERS:
            raise ValueError(f"synthetic pairs exist for {sorted(SYNTHESISERS)}, not {task!r}")
        if not photos:
            raise ValueError("synthetic pairs need at least one photo")
        self.task = task
        self.photos = list(photos)
        self.count = len(self.photos) if count is None else int(count)
        if self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")
        self.seed = seed

    def __len__(self) -> int:
        return self.count

    def pair(self, index: int) -> SynthPair:
        if not 0 <= index < self.count:
            raise IndexError(f"synthetic pair {index} out of range [0, {self.count})")
        rng = np.random.default_rng([self.seed, index])
        return SYNTHESISERS[self.task](self.photos[index % len(self.photos)], rng)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        pair = self.pair(index)
        return pair.a, pair.b, f"synthetic-{self.task}-{index:05d}"
