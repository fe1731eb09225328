"""Write 8-bit PNG "photos" made from the Landsat rasters in ../shared/data/satellite, for backbone
pre-training (`photos:` in jobs/pretrain_small.yaml): true- and false-colour composites and single
bands, each stretched between its 1st and 99th percentile (nodata and zero fill excluded).

    python tools/raster_photos.py ../shared/data/satellite runs/photos/rasters

Landsat data is public domain. The PNGs are derived data: they go to an ignored folder, never
into the repository.
"""
from __future__ import annotations

import pathlib
import sys

import numpy as np
import rasterio
from PIL import Image

# (file relative to the satellite folder, band indices 1-based, output name); 3 bands = colour.
COMPOSITES = [
    ("landsat7_etm/L7_ETMs.tif", (3, 2, 1), "l7_truecolour"),
    ("landsat7_etm/L7_ETMs.tif", (4, 5, 6), "l7_nir_swir"),
    ("landsat7_etm/L7_ETMs.tif", (4,), "l7_nir"),
    ("landsat7_etm/L7_ETMs.tif", (6,), "l7_swir2"),
    ("rgbn/rgbn.tif", (1, 2, 3), "rgbn_truecolour"),
    ("rgbn/rgbn.tif", (4,), "rgbn_nir"),
]
L8 = "landsat8_224077_224078/LC08_L1TP_224078_20200518_20200518_01_RT_{}.TIF"


def stretch(bands: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, C) uint8, per-band 1-99 percentile stretch over valid (non-zero) pixels."""
    out = np.zeros(bands.shape, dtype=np.uint8)
    for i, band in enumerate(bands.astype(np.float64)):
        valid = band[band != 0]
        if valid.size == 0:
            continue
        low, high = np.percentile(valid, [1, 99])
        out[i] = np.clip((band - low) / max(high - low, 1e-9) * 255, 0, 255).round().astype(np.uint8)
    return out.transpose(1, 2, 0)


def read_band(path: pathlib.Path) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read(1)


def main(satellite: pathlib.Path, target: pathlib.Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    jobs = [(satellite / f, idx, name) for f, idx, name in COMPOSITES]
    for name, file_bands in (("l8_truecolour", ("B4", "B3", "B2")), ("l8_blue", ("B2",))):
        jobs.append(([satellite / L8.format(b) for b in file_bands], None, name))
    for source, indices, name in jobs:
        if isinstance(source, list):
            bands = np.stack([read_band(p) for p in source])
        else:
            with rasterio.open(source) as dataset:
                bands = dataset.read(list(indices))
        image = stretch(bands)
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(target / f"{name}.png")
        print(target / f"{name}.png", image.shape)


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))
