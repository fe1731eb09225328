"""Figures of docs/model-card.md, from the sample archive (`tcmoa samples`, scikit-image photos).

    python tools/card_figures.py prompts samples docs/figures/prompt_controls.png
    python tools/card_figures.py demo samples runs/demo docs/figures/demo_outputs.png

prompts: one exposure bracket of the samples (ev-2 and ev+2) fused by the default model at several
prompt controls (alpha, beta of the paper's Eq. 8), each with its prompt map (the share of the
under-exposed source per pixel).
demo: what the README's main command (`tcmoa run jobs/demo.yaml`) wrote: per collection the first
item's sources and its fused output.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

SETTINGS = [(1.0, 0.0), (0.0, 0.0), (2.0, 0.0), (1.0, 0.15), (1.0, -0.15), (0.0, 0.5)]


def _read(path: pathlib.Path) -> np.ndarray:
    """An image as float in [0, 1], HxW or HxWxC: 8-bit by its range, rasters (first three bands)
    stretched between their 1st and 99th percentiles."""
    import tifffile
    from PIL import Image

    if path.suffix.lower() in (".tif", ".tiff"):
        data = tifffile.imread(path)
        if data.ndim == 3 and data.shape[0] <= 4 and data.shape[0] < data.shape[-1]:
            data = np.moveaxis(data, 0, -1)  # bands first (GeoTIFF) -> last
    else:
        from PIL import ImageOps

        data = np.asarray(ImageOps.exif_transpose(Image.open(path)))  # upright, as the engine reads it
    if data.dtype == np.uint8:  # photos: their own range, so exposures keep their differences
        return data.astype(np.float32) / 255
    data = data.astype(np.float32)
    if data.ndim == 3 and data.shape[-1] > 3:
        data = data[..., :3]
    finite = data[np.isfinite(data)]
    low, high = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    return np.clip((np.nan_to_num(data, nan=low) - low) / max(high - low, 1e-6), 0, 1)


def prompts_figure(samples: pathlib.Path, out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tcmoa import load_fuser

    under = _read(samples / "brackets" / "chelsea_1_ev-2.jpg")
    over = _read(samples / "brackets" / "chelsea_3_ev+2.jpg")
    fig, axes = plt.subplots(2, len(SETTINGS) + 2, figsize=(2.4 * (len(SETTINGS) + 2), 5.2))
    for ax, image, title in ((axes[0, 0], under, "source A (ev-2)"), (axes[0, 1], over, "source B (ev+2)")):
        ax.imshow(image)
        ax.set_title(title, fontsize=9)
    for ax in axes[1, :2]:
        ax.axis("off")
    for column, (alpha, beta) in enumerate(SETTINGS, start=2):
        fuser = load_fuser("default", alpha=alpha, beta=beta)
        fused, share = fuser.fuse(under, over, task="mef", return_prompts=True)
        axes[0, column].imshow(np.clip(fused, 0, 1))
        axes[0, column].set_title(f"alpha {alpha:g}, beta {beta:+g}", fontsize=9)
        shown = axes[1, column].imshow(share, cmap="coolwarm_r", vmin=0, vmax=1)
        axes[1, column].set_title(f"share of A: mean {share.mean():.2f}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(shown, ax=axes[1, 2:], fraction=0.02, label="share of source A")
    fig.suptitle("Default model, MEF task, guided output: prompt controls (paper Eq. 8) and prompt maps", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


def demo_figure(samples: pathlib.Path, run_dir: pathlib.Path, out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tifffile

    outputs = run_dir / "outputs"
    rows = [
        ("brackets: chelsea, 3 exposures (MEF)",
         [_read(samples / "brackets" / f"chelsea_{i}") for i in ("1_ev-2.jpg", "2_ev+0.jpg", "3_ev+2.jpg")],
         _read(outputs / "chelsea.png")),
        ("focus: coins, z-stack planes 1 and last (MFF)",
         [np.asarray(plane, np.float32) / 65535 for plane in (lambda s: (s[0], s[-1]))(tifffile.imread(samples / "focus" / "coins.ome.tif"))],
         _read(outputs / "coins.tiff")),
        ("geo: optical + thermal (VIF)",
         [_read(samples / "geo" / "scene1_optical.tif"), _read(samples / "geo" / "scene1_thermal.tif")],
         _read(outputs / "scene1.tif")),
    ]
    columns = 1 + max(len(sources) for _, sources, _ in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.8 * columns, 2.8 * len(rows)))
    for r, (title, sources, fused) in enumerate(rows):
        for c in range(columns):
            axes[r, c].axis("off")
        for c, image in enumerate(sources):
            axes[r, c].imshow(image, cmap="gray" if image.ndim == 2 else None)
            axes[r, c].set_title(f"source {c + 1}", fontsize=9)
        axes[r, columns - 1].imshow(fused, cmap="gray" if fused.ndim == 2 else None)
        axes[r, columns - 1].set_title("fused (default model)", fontsize=9)
        axes[r, 0].text(0, -0.18, title, transform=axes[r, 0].transAxes, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=70)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="figure", required=True)
    p = sub.add_parser("prompts")
    p.add_argument("samples", type=pathlib.Path)
    p.add_argument("out", type=pathlib.Path)
    d = sub.add_parser("demo")
    d.add_argument("samples", type=pathlib.Path)
    d.add_argument("run_dir", type=pathlib.Path)
    d.add_argument("out", type=pathlib.Path)
    args = parser.parse_args()
    if args.figure == "prompts":
        prompts_figure(args.samples, args.out)
    else:
        demo_figure(args.samples, args.run_dir, args.out)


if __name__ == "__main__":
    sys.exit(main())
