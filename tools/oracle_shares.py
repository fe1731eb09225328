"""What prompts could do: the guided selection driven by hand-made token shares, no model.

Each source's share per 8 x 8 pixel token (the model's token) is its share of the luminance
gradient energy (Gaussian derivative, sigma 1) in that token: `soft` as is, `hard` 0 or 1,
`relative` with each energy divided by (the token's mean luminance + 0.05) ** 0.5 (detail relative
to brightness: what the MEF prompts are trained towards, `focus_relative`). The shares are
bilinearly upsampled and fed to tcmoa.guided.guided_fusion, the guided mode's own selection (grey
+ colour pairs in luminance). Scored beside the Laplacian and Mertens baselines on the first N
pairs of each *training* split (MFIFB-train, RoadScene, MEFB-train) with each task's headline
metrics: what a model whose prompts had learnt such shares could reach, task by task.

    python tools/oracle_shares.py [N]        # default N = 10; results under runs/oracle_shares/
"""
from __future__ import annotations

import pathlib
import sys

import numpy as np
from scipy import ndimage

from tcmoa.guided import TASK_RULES, guided_fusion
from tcmoa.interface import as_nhwc
from training_splits import score

TOKEN = 8


def luminance(image: np.ndarray) -> np.ndarray:
    return image[..., 0] if image.shape[-1] == 1 else image @ np.array([0.299, 0.587, 0.114])


def token_mean(values: np.ndarray) -> np.ndarray:
    """Mean per TOKEN x TOKEN block of an (H, W) map (edge-padded to whole tokens)."""
    h, w = values.shape
    rows, cols = -(-h // TOKEN), -(-w // TOKEN)
    padded = np.pad(values, ((0, rows * TOKEN - h), (0, cols * TOKEN - w)), mode="edge")
    return padded.reshape(rows, TOKEN, cols, TOKEN).mean(axis=(1, 3))


def token_energy(grey: np.ndarray, relative: float = 0.0) -> np.ndarray:
    """Mean squared gradient magnitude per token, divided by (mean luminance + 0.05) ** relative."""
    energy = token_mean(ndimage.gaussian_gradient_magnitude(grey, 1.0) ** 2)
    return energy / (token_mean(grey) + 0.05) ** relative if relative else energy


class OracleShares:
    """A fuser whose 'prompts' are the sources' shares of gradient energy per token."""

    name = "oracle-shares"
    tile_multiple = 1

    def __init__(self, hard: bool = False, relative: float = 0.0):
        self.hard, self.relative = hard, relative

    def provenance(self) -> dict:
        return {"name": self.name, "hard": self.hard, "relative": self.relative}

    def share_of_a(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ea, eb = token_energy(luminance(a), self.relative), token_energy(luminance(b), self.relative)
        share = ea / (ea + eb + 1e-12)
        if self.hard:
            share = (share > 0.5).astype(np.float64)
        h, w = a.shape[:2]
        upsampled = ndimage.zoom(share, (h / share.shape[0], w / share.shape[1]), order=1)[:h, :w]
        return np.pad(upsampled, ((0, h - upsampled.shape[0]), (0, w - upsampled.shape[1])), mode="edge")

    def fuse(self, a, b, task: str = "vif") -> np.ndarray:
        a, b = (as_nhwc(x) for x in (a, b))
        # the guided mode's own selection, with the task's rule
        return guided_fusion(a, b, self.share_of_a(a[0], b[0])[None], rule=TASK_RULES[task])[0]


def main() -> None:
    from pipeline.evaluation import Method

    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    score(lambda task: [Method("oracle_soft", fuser=OracleShares()), Method("oracle_hard", fuser=OracleShares(hard=True)),
                        Method("oracle_relative", fuser=OracleShares(relative=0.5))],
          pathlib.Path("runs/oracle_shares"), limit)


if __name__ == "__main__":
    main()
