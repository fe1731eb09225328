"""Reconstruction fidelity of a pre-trained backbone alone (encoder + pixel decoder, nothing masked),
on the path TC-MoA feeds it: 112 px tiles (one attention window) enlarged 2x, the decoder's
output area-shrunk back. The measure of the training notes (../shared/docs/training-notes.md).

    python bench/backbone_reconstruction.py runs/pretrain_small/mae_backbone.pth \
        [--images ../shared/data/mef/MEFB-dev/over] [--count 10] [--config small]

Takes the first COUNT images of the folder (by name), their central 448 x 448 crop (or the largest
multiple of 112 that fits), and prints PSNR (dB, on [0, 1]) and SSIM (scikit-image, RGB) against
the crop, with two references on the same crops: the image through a half- and a quarter-
resolution round trip (area down, bilinear up), i.e. what a blurry decoder would give.
"""
from __future__ import annotations

import argparse
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tcmoa.data import list_images, read_image01
from tcmoa.model import denormalize, normalize
from tcmoa.pretrain import MaskedAutoencoder

TILE = 112


def central_crop(image: np.ndarray, side: int = 448) -> np.ndarray:
    h, w = image.shape[:2]
    side = min(side, (min(h, w) // TILE) * TILE)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top:top + side, left:left + side]


@torch.inference_mode()
def reconstruct(model: MaskedAutoencoder, image: np.ndarray) -> np.ndarray:
    """(S, S, 3) -> (S, S, 3): every 112 px tile through the backbone."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    s = x.shape[-1] // TILE
    tiles = x.unfold(2, TILE, TILE).unfold(3, TILE, TILE).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, TILE, TILE)
    _, pred, _ = model(normalize(tiles), 0.0, "all")
    p, grid = model.config.patch_size, 2 * TILE // model.config.patch_size
    out = pred.reshape(-1, grid, grid, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(-1, 3, grid * p, grid * p)
    out = denormalize(F.interpolate(out, size=(TILE, TILE), mode="area")).clamp(0, 1)
    out = out.reshape(s, s, 3, TILE, TILE).permute(2, 0, 3, 1, 4).reshape(3, s * TILE, s * TILE)
    return out.permute(1, 2, 0).numpy()


def round_trip(image: np.ndarray, factor: int) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    small = F.interpolate(x, scale_factor=1 / factor, mode="area")
    return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()


def scores(reference: np.ndarray, image: np.ndarray) -> tuple[float, float]:
    return (peak_signal_noise_ratio(reference, image, data_range=1.0),
            structural_similarity(reference, image, channel_axis=-1, data_range=1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backbone", type=pathlib.Path, help="MAE-layout checkpoint from tcmoa pretrain (.pth)")
    parser.add_argument("--images", type=pathlib.Path, default=pathlib.Path("../shared/data/mef/MEFB-dev/over"))
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--config", default="small")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = MaskedAutoencoder(args.config, upsample=True).eval()
    state = torch.load(args.backbone, map_location="cpu", weights_only=True)
    model.load_state_dict(state.get("model", state))
    rows = []
    for path in list_images(args.images)[: args.count]:
        crop = central_crop(read_image01(path)).astype(np.float32)
        rows.append([*scores(crop, reconstruct(model, crop)), *scores(crop, round_trip(crop, 2)),
                     *scores(crop, round_trip(crop, 4))])
    mean = np.mean(rows, axis=0)
    print(f"{len(rows)} crops of {args.images}")
    print(f"backbone {args.backbone}: PSNR {mean[0]:.2f} dB, SSIM {mean[1]:.3f}")
    print(f"half-resolution round trip:    PSNR {mean[2]:.2f} dB, SSIM {mean[3]:.3f}")
    print(f"quarter-resolution round trip: PSNR {mean[4]:.2f} dB, SSIM {mean[5]:.3f}")


if __name__ == "__main__":
    main()
