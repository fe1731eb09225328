"""Burt & Adelson image pyramids on (N, H, W, C) float arrays, the two ways of mixing two images
over them (a weighted blend, and a weighted choose-max selection), and the grey / colour helpers
the pyramid fusers share (classical baselines in `tcmoa.baselines`, prompt-guided reconstruction in
`tcmoa.guided`)."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

# Burt & Adelson's generating kernel (a = 0.375).
_PYRAMID_KERNEL = np.array([0.0625, 0.25, 0.375, 0.25, 0.0625])

# BT.601 full-range RGB <-> YCbCr (JPEG).
_RGB_TO_YCBCR = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
)
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR)


def _blur(x: np.ndarray) -> np.ndarray:
    """Separable 5-tap smoothing of (N, H, W, C) over H and W, symmetric borders."""
    x = ndimage.correlate1d(x, _PYRAMID_KERNEL, axis=1, mode="reflect")
    return ndimage.correlate1d(x, _PYRAMID_KERNEL, axis=2, mode="reflect")


def _downsample(x: np.ndarray) -> np.ndarray:
    return _blur(x)[:, ::2, ::2]


def _upsample(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Expand to (H, W) = shape: zero insertion and the 5-tap kernel (x4), on an edge-padded copy
    so that the borders are interpolated like the interior."""
    n, h, w, c = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    up = np.zeros((n, 2 * (h + 2), 2 * (w + 2), c), dtype=x.dtype)
    up[:, ::2, ::2] = 4 * padded
    up = _blur(up)
    return up[:, 2 : 2 + shape[0], 2 : 2 + shape[1]]


def pyramid_levels(shape: tuple[int, int], wanted: int | None = None) -> int:
    """Number of pyramid levels for an (H, W) image: `wanted`, or as deep as the image allows."""
    deepest = max(1, int(np.floor(np.log2(max(1, min(shape))))))
    return deepest if wanted is None else max(1, min(wanted, deepest))


def gaussian_pyramid(x: np.ndarray, levels: int) -> list[np.ndarray]:
    pyr = [x]
    for _ in range(levels - 1):
        pyr.append(_downsample(pyr[-1]))
    return pyr


def laplacian_pyramid(x: np.ndarray, levels: int) -> list[np.ndarray]:
    return _laplacian_of(gaussian_pyramid(x, levels))


def _laplacian_of(gauss: list[np.ndarray]) -> list[np.ndarray]:
    """The Laplacian pyramid of a Gaussian pyramid: each level minus the next one expanded."""
    details = [g - _upsample(g_next, g.shape[1:3]) for g, g_next in zip(gauss[:-1], gauss[1:])]
    return details + [gauss[-1]]


def collapse(pyr: list[np.ndarray]) -> np.ndarray:
    out = pyr[-1]
    for detail in reversed(pyr[:-1]):
        out = detail + _upsample(out, detail.shape[1:3])
    return out


def rgb_to_ycbcr(x: np.ndarray) -> np.ndarray:
    out = x @ _RGB_TO_YCBCR.T
    out[..., 1:] += 0.5
    return out


def ycbcr_to_rgb(x: np.ndarray) -> np.ndarray:
    shifted = x.copy()
    shifted[..., 1:] -= 0.5
    return shifted @ _YCBCR_TO_RGB.T


def blend(a: np.ndarray, b: np.ndarray, weight_a: np.ndarray, levels: int) -> np.ndarray:
    """Laplacian-pyramid blend: each detail level of a and b (N, H, W, C) mixed by the Gaussian-
    pyramid level of A's weight (N, H, W, 1) in [0, 1] (B's is 1 - weight_a), then collapsed."""
    weights = gaussian_pyramid(weight_a, levels)
    la, lb = laplacian_pyramid(a, levels), laplacian_pyramid(b, levels)
    return collapse([w * xa + (1 - w) * xb for w, xa, xb in zip(weights, la, lb)])


def select(a: np.ndarray, b: np.ndarray, weight_a: np.ndarray, levels: int, window: int = 1,
           base_by_activity: bool = False, detail_gain: float = 0.0, base_power: float = 1.0,
           detail_power: float = 0.0) -> np.ndarray:
    """Weighted choose-max over Laplacian pyramids of a and b (N, H, W, C): at each detail level a
    pixel takes all its channels from A where w act(dA) > (1 - w) act(dB) (a tie: the source with
    the larger share, A at w = 0.5), act(d) being |d| summed over channels and averaged over a
    `window` x `window` box of that level (1: the pixel alone),
    w that level of the Gaussian pyramid of A's weight (N, H, W, 1) in [0, 1]; the base level is
    mixed by w as a spline that keeps agreeing regions (`_spline_base`). With w = 0.5 and window 1
    this is the classical Laplacian-pyramid fusion (max-abs details, averaged base); with w = 1
    (or 0) everywhere, the result is A (or B); over a region, A's details there and its pixels up
    to the lowest frequencies of the spline. A window > 1 is the area-based activity of
    multi-focus fusion: focus is a property of a region, so neighbouring coefficients follow one
    source instead of flipping with noise and texture. base_by_activity: the base level's weight
    is itself a prompt-weighted choice of the locally more active base (`_base_choice`) instead of
    w, as the pyramid + sparse-representation fusions of infrared and visible images choose their
    low-pass band: a thermal target or a textured visible region keeps its contrast instead of
    being averaged with the other source's flat base (`base_power`: how sharply the choice
    follows the contrasts). detail_gain p > 0: a chosen detail is scaled by (the shares'
    brightness there / its source's brightness) ** p (`_detail_gains`), so a detail taken from a
    dark exposure onto a brighter fused base keeps (p = 1) or partly keeps its contrast relative
    to the local brightness; 1 wherever a source has the full share. detail_power k > 0: the
    choice is soft, A's coefficient weighted by score_A ^ k / (score_A ^ k + score_B ^ k)
    (`_soft_choice`; k -> infinity is the hard choice): where both sources have similar detail
    both keep some of it, as activity-weighted averaging does."""
    weights = gaussian_pyramid(weight_a, levels)
    ga, gb = gaussian_pyramid(a, levels), gaussian_pyramid(b, levels)
    la, lb = _laplacian_of(ga), _laplacian_of(gb)
    fused = []
    for i, (w, da, db) in enumerate(zip(weights[:-1], la[:-1], lb[:-1])):
        score_a, score_b = w * _activity(da, window), (1 - w) * _activity(db, window)
        # A on a tie where its share is at least half: with w = 0.5 the classical >= of max-abs,
        # with w = 0 B even where both scores are 0 (B flat: A's detail must not leak in)
        take_a = (score_a > score_b) | ((score_a == score_b) & (w >= 0.5))
        if detail_gain:
            gain_a, gain_b = _detail_gains(ga[i + 1], gb[i + 1], w, da.shape[1:3], detail_gain)
            da, db = da * gain_a, db * gain_b
        if detail_power:
            share_a = _soft_choice(score_a, score_b, take_a, detail_power)
            fused.append(share_a * da + (1 - share_a) * db)
        else:
            fused.append(np.where(take_a, da, db))
    base_weight = _base_choice(la[-1], lb[-1], weights[-1], base_power) if base_by_activity else weights[-1]
    fused.append(_spline_base(la[-1], lb[-1], base_weight))
    return collapse(fused)


# The base choice's local contrast: over 3 x 3 base pixels (24 x 24 source pixels at 4 levels).
_BASE_WINDOW = 3


def _base_choice(a: np.ndarray, b: np.ndarray, w: np.ndarray, power: float = 1.0) -> np.ndarray:
    """A's weight on the base level (N, h, w, 1): (w sA) ^ k / ((w sA) ^ k + ((1 - w) sB) ^ k), s
    the local standard deviation of a base's channel mean over 3 x 3, k = `power`; w itself where
    neither base has any (so a share of 1 still gives A exactly); smoothed twice by the pyramid
    kernel so the choice has no hard edges. (The VIF rule uses k = 1: sharper powers raised Qcb
    and VIFF and cost SSIM on RoadScene, and the settings rule of docs/model-card.md chose 1.)"""
    def local_std(x: np.ndarray) -> np.ndarray:
        y = x.mean(axis=-1, keepdims=True)
        mean = _box(y, _BASE_WINDOW)
        return np.sqrt(np.maximum(_box(y * y, _BASE_WINDOW) - mean * mean, 0.0))
    ca, cb = (w * local_std(a)) ** power, ((1 - w) * local_std(b)) ** power
    total = ca + cb
    choice = np.where(total > 1e-12, ca / np.maximum(total, 1e-12), w)
    return _blur(_blur(choice))


def _soft_choice(score_a: np.ndarray, score_b: np.ndarray, take_a: np.ndarray, power: float) -> np.ndarray:
    """A's weight in a soft choice: score_A ^ k / (score_A ^ k + score_B ^ k), the hard choice
    `take_a` where both scores are 0 (so a full share still gives exactly one source)."""
    xa, xb = score_a ** power, score_b ** power
    total = xa + xb
    return np.where(total > 0, xa / np.where(total > 0, total, 1.0), take_a.astype(np.float64))


# Brightness floor and gain range of the contrast-preserving detail transfer: no division by a
# black region's near-zero mean, and no detail amplified or attenuated by more than 4x.
_GAIN_FLOOR, _GAIN_RANGE = 0.02, (0.25, 4.0)


def _detail_gains(next_a: np.ndarray, next_b: np.ndarray, w: np.ndarray, shape: tuple[int, int],
                  power: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 1) gains of A's and B's details at one level: (m / m_src) ** power, m_src a
    source's local brightness (its next, coarser Gaussian level upsampled, channel mean) and m =
    w m_A + (1 - w) m_B the brightness the shares give the fused image there."""
    ma = np.maximum(_upsample(next_a, shape).mean(axis=-1, keepdims=True), _GAIN_FLOOR)
    mb = np.maximum(_upsample(next_b, shape).mean(axis=-1, keepdims=True), _GAIN_FLOOR)
    mixed = w * ma + (1 - w) * mb
    return tuple(np.clip(mixed / m, *_GAIN_RANGE) ** power for m in (ma, mb))


def _activity(detail: np.ndarray, window: int) -> np.ndarray:
    """|detail| summed over channels, box-averaged over window x window."""
    return _box(np.abs(detail).sum(axis=-1, keepdims=True), window)


def _box(x: np.ndarray, window: int) -> np.ndarray:
    """Mean over a window x window box of (N, H, W, C) over H and W, edge-replicated borders."""
    return x if window == 1 else ndimage.uniform_filter(x, (1, window, window, 1), mode="nearest")


# Where the sources' bases differ by this much (summed over channels), the base is mostly the spline.
_AGREEMENT_SCALE = 0.02


def _spline_base(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The base level of select(): the directly mixed base w a + (1 - w) b, corrected towards a
    full-depth multiresolution spline of a and b (`blend`) in proportion d / (d + 0.02), d = |a - b|
    summed over channels. The spline keeps weights that change between regions from drawing steps
    and halos where the sources' brightness differs (an exposure bracket); the proportion keeps
    regions where the sources agree (a background black in both) exactly as they are, which the
    spline alone, sharing its coarsest bands over the whole image, would not."""
    direct = w * a + (1 - w) * b
    spline = blend(a, b, w, pyramid_levels(a.shape[1:3]))
    d = np.abs(a - b).sum(axis=-1, keepdims=True)
    return direct + (spline - direct) * d / (d + _AGREEMENT_SCALE)


def is_grey(image: np.ndarray) -> bool:
    """One (H, W, C) image with one channel, or three equal ones (grey stored as RGB)."""
    return image.shape[-1] == 1 or bool(np.array_equal(image[..., 0], image[..., 1])
                                        and np.array_equal(image[..., 0], image[..., 2]))


# --- the differentiable twin of select(), for training the prompts through the guided output ---------
def _symmetric_pad(x: "torch.Tensor", dim: int, width: int) -> "torch.Tensor":
    """scipy's 'reflect' (d c b a | a b c d) padding along dim of a torch tensor."""
    n = x.shape[dim]
    head, tail = x.narrow(dim, 0, width).flip(dim), x.narrow(dim, n - width, width).flip(dim)
    return torch.cat([head, x, tail], dim=dim)


def _blur_t(x: "torch.Tensor") -> "torch.Tensor":
    c = x.shape[1]
    k = torch.as_tensor(_PYRAMID_KERNEL, dtype=x.dtype, device=x.device)
    x = torch.nn.functional.conv2d(_symmetric_pad(x, 2, 2), k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)
    return torch.nn.functional.conv2d(_symmetric_pad(x, 3, 2), k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)


def _upsample_t(x: "torch.Tensor", shape: tuple[int, int]) -> "torch.Tensor":
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    up = x.new_zeros(n, c, 2 * (h + 2), 2 * (w + 2))
    up[:, :, ::2, ::2] = 4 * padded
    return _blur_t(up)[:, :, 2:2 + shape[0], 2:2 + shape[1]]


def select_torch(a: "torch.Tensor", b: "torch.Tensor", weight_a: "torch.Tensor", levels: int,
                 temperature: float = 0.05, window: int = 1, base_by_activity: bool = False,
                 detail_gain: float = 0.0, base_power: float = 1.0, detail_power: float = 0.0) -> "torch.Tensor":
    """select() on (N, C, H, W) torch tensors with a soft, differentiable choice: the detail
    coefficients mixed by sigmoid((w|dA| - (1-w)|dB|) / (temperature * mean(w|dA| + (1-w)|dB|))),
    which tends to select()'s hard choice as the temperature goes to 0 (same kernel, borders and
    upsampling). The training twin of the guided output: the task losses reach the weights."""
    ga, gb, gw, details = a, b, weight_a, []
    for _ in range(levels - 1):
        na, nb = _blur_t(ga)[:, :, ::2, ::2], _blur_t(gb)[:, :, ::2, ::2]
        size = tuple(ga.shape[-2:])
        da, db = ga - _upsample_t(na, size), gb - _upsample_t(nb, size)
        sa, sb = gw * _activity_t(da, window), (1 - gw) * _activity_t(db, window)
        if detail_power:  # the soft choice is differentiable as it is: select()'s own weights
            xa, xb = sa ** detail_power, sb ** detail_power
            take_a = torch.where(xa + xb > 0, xa / (xa + xb).clamp_min(1e-30), (gw >= 0.5).to(xa.dtype))
        else:
            scale = temperature * (sa + sb).detach().mean() + 1e-6
            take_a = torch.sigmoid((sa - sb) / scale)
        if detail_gain:
            gain_a, gain_b = _detail_gains_t(na, nb, gw, size, detail_gain)
            da, db = da * gain_a, db * gain_b
        details.append(take_a * da + (1 - take_a) * db)
        ga, gb, gw = na, nb, _blur_t(gw)[:, :, ::2, ::2]
    out = _spline_base_t(ga, gb, _base_choice_t(ga, gb, gw, base_power) if base_by_activity else gw)
    return _collapse_t(out, details)


def _base_choice_t(a: "torch.Tensor", b: "torch.Tensor", w: "torch.Tensor", power: float = 1.0) -> "torch.Tensor":
    """_base_choice() on (N, C, h, w) torch tensors."""
    def local_std(x: "torch.Tensor") -> "torch.Tensor":
        y = x.mean(1, keepdim=True)
        mean = _box_t(y, _BASE_WINDOW)
        return (_box_t(y * y, _BASE_WINDOW) - mean * mean).clamp_min(0.0).sqrt()
    ca, cb = (w * local_std(a)) ** power, ((1 - w) * local_std(b)) ** power
    total = ca + cb
    choice = torch.where(total > 1e-12, ca / total.clamp_min(1e-12), w)
    return _blur_t(_blur_t(choice))


def _detail_gains_t(next_a: "torch.Tensor", next_b: "torch.Tensor", w: "torch.Tensor", shape: tuple[int, int],
                    power: float) -> tuple:
    """_detail_gains() on (N, C, h, w) torch tensors."""
    ma = _upsample_t(next_a, shape).mean(1, keepdim=True).clamp_min(_GAIN_FLOOR)
    mb = _upsample_t(next_b, shape).mean(1, keepdim=True).clamp_min(_GAIN_FLOOR)
    mixed = w * ma + (1 - w) * mb
    return tuple((mixed / m).clamp(*_GAIN_RANGE) ** power for m in (ma, mb))


def _activity_t(detail: "torch.Tensor", window: int) -> "torch.Tensor":
    """_activity() on (N, C, H, W) torch tensors."""
    return _box_t(detail.abs().sum(1, keepdim=True), window)


def _box_t(x: "torch.Tensor", window: int) -> "torch.Tensor":
    """_box() on (N, C, H, W) torch tensors (scipy's origin for even windows too)."""
    if window == 1:
        return x
    half = window // 2
    padded = torch.nn.functional.pad(x, (half, window - 1 - half, half, window - 1 - half), mode="replicate")
    return torch.nn.functional.avg_pool2d(padded, window, stride=1)


def _collapse_t(base: "torch.Tensor", details: list) -> "torch.Tensor":
    for detail in reversed(details):
        base = detail + _upsample_t(base, tuple(detail.shape[-2:]))
    return base


def _blend_t(a: "torch.Tensor", b: "torch.Tensor", weight_a: "torch.Tensor", levels: int) -> "torch.Tensor":
    """blend() on (N, C, H, W) torch tensors."""
    ga, gb, gw, bands = a, b, weight_a, []
    for _ in range(levels - 1):
        na, nb = _blur_t(ga)[:, :, ::2, ::2], _blur_t(gb)[:, :, ::2, ::2]
        size = tuple(ga.shape[-2:])
        bands.append(gw * (ga - _upsample_t(na, size)) + (1 - gw) * (gb - _upsample_t(nb, size)))
        ga, gb, gw = na, nb, _blur_t(gw)[:, :, ::2, ::2]
    return _collapse_t(gw * ga + (1 - gw) * gb, bands)


def _spline_base_t(a: "torch.Tensor", b: "torch.Tensor", w: "torch.Tensor") -> "torch.Tensor":
    """_spline_base() on (N, C, h, w) torch tensors."""
    direct = w * a + (1 - w) * b
    spline = _blend_t(a, b, w, pyramid_levels(tuple(a.shape[-2:])))
    d = (a - b).abs().sum(1, keepdim=True)
    return direct + (spline - direct) * d / (d + _AGREEMENT_SCALE)
