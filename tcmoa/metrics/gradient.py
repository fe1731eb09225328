"""Edge-based metrics: Qabf (Xydeas & Petrovic 2000) and Nabf (fusion artefacts, Shreyamsha Kumar 2013)."""
from __future__ import annotations

import numpy as np

from tcmoa.metrics.prepare import planes
from tcmoa.metrics.registry import Convention, register

SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
SOBEL_Y = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])


# scipy.ndimage border mode -> numpy.pad mode (1-pixel extension for a 3x3 operator).
_PAD_MODES = {"constant": "constant", "nearest": "edge", "mirror": "reflect"}


def sobel(stack: np.ndarray, mode: str = "constant", scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Responses of a (K, H, W) stack to the correlations SOBEL_X and SOBEL_Y.

    mode: 'constant' (zeros, conv2/filter2 'same'), 'nearest' (imfilter 'replicate') or 'mirror'
    (edge pixel not repeated). Computed separably on a padded copy; correlation and convolution
    differ only in the sign of both responses, which no metric here depends on.
    """
    p = np.pad(stack, ((0, 0), (1, 1), (1, 1)), mode=_PAD_MODES[mode])
    rows = p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:]  # [1 2 1] down the columns
    cols = p[:, :, :-2] + 2 * p[:, :, 1:-1] + p[:, :, 2:]  # [1 2 1] along the rows
    gx = rows[:, :, 2:] - rows[:, :, :-2]
    gy = cols[:, :-2, :] - cols[:, 2:, :]
    if scale != 1.0:
        gx *= scale
        gy *= scale
    return gx, gy


def _edge_strength_orientation(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # conv2(..., 'same') pads with zeros; orientation atan(y/x) with pi/2 where x == 0.
    gx, gy = sobel(stack, mode="constant")
    g = np.sqrt(gx**2 + gy**2)
    with np.errstate(divide="ignore", invalid="ignore"):
        angle = np.where(gx == 0, np.pi / 2, np.arctan(gy / np.where(gx == 0, 1.0, gx)))
    return g, angle


def _qabf_preservation(g_src, a_src, g_f, a_f) -> np.ndarray:
    tg, kg, dg, ta, ka, da = 0.9994, -15.0, 0.5, 0.9879, -22.0, 0.8
    with np.errstate(divide="ignore", invalid="ignore"):
        # The MATLAB code sets the ratio to gF itself (not 1) where the strengths are equal.
        rel = np.where(g_src > g_f, g_f / g_src, np.where(g_src == g_f, g_f, g_src / g_f))
    orient = 1 - np.abs(a_src - a_f) / (np.pi / 2)
    return tg / (1 + np.exp(kg * (rel - dg))) * ta / (1 + np.exp(ka * (orient - da)))


@register(
    "Qabf",
    higher_is_better=True,
    description="Edge information transferred from the sources to the fused image, weighted by edge strength (0..1)",
    aliases=("Q_ABF", "QABF"),
)
def qabf(fused, a, b, conv: Convention) -> float:
    g_f, a_f = _edge_strength_orientation(planes(fused))
    g_a, a_a = _edge_strength_orientation(planes(a))
    g_b, a_b = _edge_strength_orientation(planes(b))
    q_af = _qabf_preservation(g_a, a_a, g_f, a_f)
    q_bf = _qabf_preservation(g_b, a_b, g_f, a_f)
    num = (q_af * g_a + q_bf * g_b).sum(axis=(1, 2))
    den = (g_a + g_b).sum(axis=(1, 2))
    return float((num / den).mean())


def _kumar_edges(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # sobel_fn of Shreyamsha Kumar's code: kernels / 8 on a mirror-extended image.
    gv, gh = sobel(stack, mode="mirror", scale=1 / 8)
    g = np.sqrt(gv**2 + gh**2)
    both_zero = (gv == 0) & (gh == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        angle = np.where(both_zero, 0.0, np.arctan(gv / np.where(gh == 0, 0.0, gh)))
    return g, angle


def _kumar_preservation(g_src, a_src, g_f, a_f) -> np.ndarray:
    nrg, kg, sg, nra, ka, sa = 0.9999, 19.0, 0.5, 0.9995, 22.0, 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(
            (g_src == 0) | (g_f == 0), 0.0, np.where(g_src > g_f, g_f / g_src, g_src / g_f)
        )
    orient = np.abs(np.abs(a_src - a_f) - np.pi / 2) * 2 / np.pi
    return np.sqrt(nrg / (1 + np.exp(-kg * (rel - sg))) * nra / (1 + np.exp(-ka * (orient - sa))))


@register(
    "Nabf",
    higher_is_better=False,
    description="Fusion artefacts: edge-weighted loss of preservation where the fused edges exceed both sources",
    aliases=("N_ABF", "NABF"),
)
def nabf(fused, a, b, conv: Convention) -> float:
    g_f, a_f = _kumar_edges(planes(fused))
    g_a, a_a = _kumar_edges(planes(a))
    g_b, a_b = _kumar_edges(planes(b))
    q_af = _kumar_preservation(g_a, a_a, g_f, a_f)
    q_bf = _kumar_preservation(g_b, a_b, g_f, a_f)
    td, wt_min, lg = 2.0, 0.001, 1.5
    w_a = np.where(g_a >= td, g_a**lg, wt_min)
    w_b = np.where(g_b >= td, g_b**lg, wt_min)
    artefact = (g_f > g_a) & (g_f > g_b)
    num = np.where(artefact, (1 - q_af) * w_a + (1 - q_bf) * w_b, 0.0).sum(axis=(1, 2))
    return float((num / (w_a + w_b).sum(axis=(1, 2))).mean())
