"""`tcmoa samples DIR`: a small sample archive the project makes itself (no download).

- brackets/: exposure brackets (EV -2, 0, +2, JPEG) of scikit-image's bundled photos; the
  `chelsea` brackets are stored rotated with an EXIF orientation tag, as cameras do;
- focus/: focus stacks as 16-bit OME-TIFF z-stacks (3 planes), each plane sharp at another depth;
- geo/: a georeferenced optical (3-band uint16, 30 m) + thermal infrared (1-band uint16, 60 m,
  shifted extent, nodata collar) GeoTIFF pair in EPSG:32633.
Acquisition times are recorded as cameras, microscopes and products do (EXIF DateTimeOriginal one
second apart per bracket, OME AcquisitionDate, the TIFF DateTime tag of the GeoTIFFs), so the STAC
Items carry them.
The fused results of `jobs/demo.yaml` over this archive show the plumbing of every use case.
"""
from __future__ import annotations

import pathlib
import warnings

import numpy as np

EXPOSURES = (-2.0, 0.0, 2.0)
BRACKET_SCENES = ("astronaut", "coffee", "chelsea")
ROTATED_SCENE = "chelsea"
FOCUS_SCENES = ("camera", "coins")
FOCUS_PLANES = 3
GEO_CRS = "EPSG:32633"
BRACKET_TIME = "2024:06:01 09:15:{second:02d}"  # EXIF form; the offset is OffsetTimeOriginal
GEO_TIME = "2024:06:01 10:30:12"  # TIFF DateTime (UTC)
STACK_TIME = "2024-06-01T08:00:00"  # OME Image/AcquisitionDate


def _photo(name: str) -> np.ndarray:
    import skimage.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(skimage.data, name)()


def exposure_bracket(image: np.ndarray, ev: float) -> np.ndarray:
    """Re-expose an sRGB-ish uint8 photo by `ev` stops in linear light."""
    linear = (image.astype(np.float64) / 255.0) ** 2.2
    return np.round(np.clip(linear * 2.0**ev, 0, 1) ** (1 / 2.2) * 255).astype(np.uint8)


def focus_stack(image: np.ndarray, planes: int) -> np.ndarray:
    """(planes, H, W): plane k is sharp where the (left-to-right) depth is k, blurred elsewhere."""
    from scipy.ndimage import gaussian_filter

    h, w = image.shape
    depth = np.broadcast_to(np.linspace(0, planes - 1, w)[None, :], (h, w))
    sigmas = np.arange(planes) * 2.0
    blurred = [gaussian_filter(image.astype(np.float64), s) if s else image.astype(np.float64) for s in sigmas]
    stack = np.empty((planes, h, w))
    for k in range(planes):
        level = np.clip(np.rint(np.abs(depth - k)), 0, planes - 1).astype(int)
        stack[k] = np.choose(level, blurred)
    return np.round(stack * 257).astype(np.uint16)  # 8 -> 16 bit


def _write_brackets(root: pathlib.Path) -> list[pathlib.Path]:
    from PIL import Image

    written = []
    for scene in BRACKET_SCENES:
        upright = _photo(scene)
        for index, ev in enumerate(EXPOSURES, start=1):
            image = exposure_bracket(upright, ev)
            path = root / "brackets" / f"{scene}_{index}_ev{ev:+.0f}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            exif = Image.Exif()
            exif.get_ifd(0x8769).update({0x9003: BRACKET_TIME.format(second=index), 0x9011: "+02:00"})
            if scene == ROTATED_SCENE:
                exif[0x0112] = 6  # display rotated 90 degrees clockwise: store it turned the other way
                Image.fromarray(np.rot90(image, 1)).save(path, quality=95, exif=exif)
            else:
                Image.fromarray(image).save(path, quality=95, exif=exif)
            written.append(path)
    return written


def _write_focus(root: pathlib.Path) -> list[pathlib.Path]:
    import tifffile

    written = []
    for scene in FOCUS_SCENES:
        stack = focus_stack(_photo(scene), FOCUS_PLANES)
        path = root / "focus" / f"{scene}.ome.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, stack, ome=True, photometric="minisblack",
                         metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0,
                                   "AcquisitionDate": STACK_TIME})
        written.append(path)
    return written


def _write_geo(root: pathlib.Path) -> list[pathlib.Path]:
    import rasterio
    from rasterio.transform import from_origin

    rgb = _photo("rocket").astype(np.float64)  # 427 x 640
    height, width = rgb.shape[:2]
    optical = np.round(5000 + rgb.transpose(2, 0, 1) * 60).astype(np.uint16)
    west, north = 500000.0, 5000000.0
    # thermal: 60 m, a cooler sky and a warm launch site, shifted 600 m east and 900 m south
    luma = rgb.mean(axis=2)
    coarse = luma[: height // 2 * 2, : width // 2 * 2].reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))
    yy, xx = np.mgrid[: coarse.shape[0], : coarse.shape[1]]
    heat = np.exp(-(((yy - 0.75 * coarse.shape[0]) / 25) ** 2 + ((xx - 0.5 * coarse.shape[1]) / 40) ** 2))
    thermal = np.round(20000 + 40 * (255 - coarse) + 8000 * heat).astype(np.uint16)
    thermal[yy + xx < 40] = 0  # a nodata collar, as in Landsat scenes
    files = {
        "scene1_optical.tif": (optical, from_origin(west, north, 30, 30), None),
        "scene1_thermal.tif": (thermal[None], from_origin(west + 600, north - 900, 60, 60), 0),
    }
    written = []
    for name, (data, transform, nodata) in files.items():
        path = root / "geo" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                           dtype="uint16", crs=GEO_CRS, transform=transform, nodata=nodata, tiled=True,
                           blockxsize=256, blockysize=256, compress="deflate") as ds:
            ds.write(data)
            ds.update_tags(TIFFTAG_DATETIME=GEO_TIME)
        written.append(path)
    return written


def write_samples(root: str | pathlib.Path) -> list[pathlib.Path]:
    """Write the sample archive under root; returns the files written."""
    root = pathlib.Path(root)
    written = _write_brackets(root) + _write_focus(root) + _write_geo(root)
    readme = root / "README.txt"
    readme.write_text(__doc__.split("\n", 1)[1].strip() + "\n\nPhotos: scikit-image's bundled data (skimage.data); the rest is derived from them.\n")
    return written + [readme]
