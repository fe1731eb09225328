"""Microscopy outputs: OME-Zarr 0.5 and OME-TIFF with the microscope's physical pixel size.

The physical pixel size comes from the input stack's own metadata: OME-XML (`PhysicalSizeX/Y` and
their units) or, for ImageJ/Fiji TIFFs, the resolution tags with ImageJ's `unit`. A stack without
either gets no physical scale: its outputs say the scale is in pixels instead of inventing one.

Both outputs are exported once from the item's finished work store, like the COG: a pyramid of
levels (each half the size of the one before, pixels averaged, nodata left out) is written level by
level a chunk at a time, into an OME-Zarr store (zarr format 3, as OME-Zarr 0.5 requires), and the
OME-TIFF is written tile by tile from those levels (the reduced levels as SubIFDs), so memory stays
bounded by a few chunks (a row of TIFF tiles of one channel while the OME-TIFF is written).
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

OME_ZARR_VERSION = "0.5"
# OME-XML length symbols -> (UDUNITS name that OME-Zarr axes use, metres per unit)
LENGTH_UNITS = {
    "Å": ("angstrom", 1e-10), "pm": ("picometer", 1e-12), "nm": ("nanometer", 1e-9), "µm": ("micrometer", 1e-6),
    "mm": ("millimeter", 1e-3), "cm": ("centimeter", 1e-2), "dm": ("decimeter", 1e-1), "m": ("meter", 1.0),
    "in": ("inch", 0.0254),
}
# other spellings found in the wild (ImageJ writes "micron" or "um"; some writers use "u" + the micro sign)
UNIT_ALIASES = {"micron": "µm", "microns": "µm", "um": "µm", "\u03bcm": "µm", "\\u00b5m": "µm", "angstrom": "Å",
                "nanometer": "nm", "micrometer": "µm", "millimeter": "mm", "centimeter": "cm", "meter": "m", "inch": "in"}
NO_SCALE = "none: the input has no physical pixel size (no OME PhysicalSizeX/Y, no ImageJ unit); scales are in pixels"


@dataclass(frozen=True)
class PixelSize:
    """The physical size of one pixel: y and x, in `unit` (an OME-XML length symbol such as µm)."""

    y: float
    x: float
    unit: str
    origin: str  # where it was read ("OME-XML", "ImageJ")

    @property
    def udunits(self) -> str:
        return LENGTH_UNITS[self.unit][0]

    def per_centimetre(self) -> tuple[float, float]:
        """Pixels per centimetre along x and y (the TIFF resolution tags)."""
        metres = LENGTH_UNITS[self.unit][1]
        return 0.01 / (self.x * metres), 0.01 / (self.y * metres)


def _unit_symbol(text: Any) -> str | None:
    text = str(text or "").strip()
    text = UNIT_ALIASES.get(text.lower(), text)
    return text if text in LENGTH_UNITS else None


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def pixel_size_of(tif) -> PixelSize | None:
    """The physical pixel size a tifffile.TiffFile declares (first image), or None."""
    import tifffile

    if tif.is_ome:
        try:
            image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
        except Exception:  # unreadable OME-XML: no physical size rather than a guess
            return None
        pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
        x, y = _positive(pixels.get("PhysicalSizeX")), _positive(pixels.get("PhysicalSizeY"))
        # OME's default unit for PhysicalSize is the micrometre
        ux, uy = (_unit_symbol(pixels.get(f"PhysicalSize{a}Unit", "µm")) for a in "XY")
        if x and y and ux and ux == uy:
            return PixelSize(y=y, x=x, unit=ux, origin="OME-XML")
        return None
    if tif.is_imagej:
        unit = _unit_symbol((tif.imagej_metadata or {}).get("unit"))
        tags = tif.pages[0].tags
        if unit and "XResolution" in tags and "YResolution" in tags:
            (xn, xd), (yn, yd) = tags["XResolution"].value, tags["YResolution"].value
            if xn and yn and xd and yd:
                return PixelSize(y=yd / yn, x=xd / xn, unit=unit, origin="ImageJ")
    return None


# ----------------------------------------------------------------------------- pyramid
def level_shapes(height: int, width: int, chunk: int) -> list[tuple[int, int]]:
    """Full resolution, then halved (rounding up) until the level fits one chunk."""
    shapes = [(height, width)]
    while shapes[-1][0] > chunk or shapes[-1][1] > chunk:
        h, w = shapes[-1]
        shapes.append((-(-h // 2), -(-w // 2)))
    return shapes


def halve(block: np.ndarray, nodata: float | None) -> np.ndarray:
    """2x2 mean of a (C, h, w) block (odd edges repeat their last row / column); nodata pixels are
    left out of the means, and a 2x2 cell of nodata only stays nodata."""
    c, h, w = block.shape
    block = np.pad(block, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")
    data = block.astype(np.float64)
    if nodata is None:
        valid = np.ones(data.shape, dtype=bool)
    elif np.isnan(nodata):
        valid = ~np.isnan(data)
    else:
        valid = data != nodata
    data = np.where(valid, data, 0.0)
    shape = (c, block.shape[1] // 2, 2, block.shape[2] // 2, 2)
    sums, counts = data.reshape(shape).sum(axis=(2, 4)), valid.reshape(shape).sum(axis=(2, 4))
    means = sums / np.maximum(counts, 1)
    if block.dtype.kind in "iu":
        info = np.iinfo(block.dtype)
        means = np.clip(np.rint(means), info.min, info.max)
    if nodata is not None:
        means[counts == 0] = nodata
    return means.astype(block.dtype)


def _multiscale(name: str, shapes: list[tuple[int, int]], size: PixelSize | None) -> dict:
    """The `ome` attribute of an OME-Zarr 0.5 image: axes c, y, x and a scale (and, for the reduced
    levels, the half-pixel shift of averaged 2x2 cells) per level, in physical units when known."""
    unit = {"unit": size.udunits} if size else {}
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]
    sy, sx = (size.y, size.x) if size else (1.0, 1.0)
    datasets = []
    for level in range(len(shapes)):
        factor = 2 ** level
        transforms: list[dict] = [{"type": "scale", "scale": [1.0, sy * factor, sx * factor]}]
        if level:
            transforms.append({"type": "translation", "translation": [0.0, sy * (factor - 1) / 2, sx * (factor - 1) / 2]})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    return {"version": OME_ZARR_VERSION, "multiscales": [{"name": name, "axes": axes, "datasets": datasets}]}


def write_pyramid(store: pathlib.Path, array: str, dst: pathlib.Path, *, name: str, chunk: int, nodata: float | None,
                  band_names: list[str], size: PixelSize | None, attributes: dict) -> list[tuple[int, int]]:
    """Write `store[array]` as an OME-Zarr 0.5 image at `dst` (a new folder). Returns the level shapes."""
    import zarr

    from pipeline.runstore import zarr_store

    source = zarr.open_group(zarr_store(store, read_only=True), mode="r")[array]  # the work store: on disk or in a bucket
    channels, height, width = source.shape
    shapes = level_shapes(height, width, chunk)
    physical = ({"origin": size.origin, "y": size.y, "x": size.x, "unit": size.unit} if size else NO_SCALE)
    group = zarr.open_group(dst, mode="w", zarr_format=3, attributes={
        "ome": _multiscale(name, shapes, size),
        "tcmoa": {**attributes, "band_names": band_names, "nodata": _json_number(nodata), "physical_pixel_size": physical},
    })
    levels = [
        group.create_array(str(i), shape=(channels, h, w), chunks=(channels, min(chunk, h), min(chunk, w)),
                           dtype=source.dtype, fill_value=nodata if nodata is not None else 0, dimension_names=("c", "y", "x"))
        for i, (h, w) in enumerate(shapes)
    ]
    # a chunk at a time: level 0 a copy, each next level the 2x2 means of 2x2 chunks of the one
    # before (only the image's last row / column of chunks can have an odd size)
    for y0, x0 in _chunk_origins(height, width, chunk):
        levels[0][:, y0:y0 + chunk, x0:x0 + chunk] = source[:, y0:y0 + chunk, x0:x0 + chunk]
    for previous, level in zip(levels, levels[1:]):
        for y0, x0 in _chunk_origins(level.shape[1], level.shape[2], chunk):
            level[:, y0:y0 + chunk, x0:x0 + chunk] = halve(previous[:, 2 * y0:2 * (y0 + chunk), 2 * x0:2 * (x0 + chunk)], nodata)
    return shapes


def _chunk_origins(height: int, width: int, chunk: int) -> Iterator[tuple[int, int]]:
    for y0 in range(0, height, chunk):
        for x0 in range(0, width, chunk):
            yield y0, x0


def _json_number(value: float | None) -> Any:
    return "NaN" if value is not None and np.isnan(value) else value


# ----------------------------------------------------------------------------- OME-TIFF
TIFF_COMPRESSION = {"deflate": "zlib", "zstd": "zstd", "lzw": "lzw", "none": None}
TIFF_TILE = 512  # multiple of 16, as TIFF tiles must be


def _tiles(level, tile: int) -> Iterator[np.ndarray]:
    """The tiles of a (C, h, w) array in TIFF order: a page per channel, its tiles row by row."""
    channels, height, width = level.shape
    for c in range(channels):
        for y0 in range(0, height, tile):
            strip = level[c, y0:y0 + tile, :]
            for x0 in range(0, width, tile):
                yield strip[:, x0:x0 + tile]


def write_ome_tiff(pyramid: pathlib.Path, dst: pathlib.Path, *, compress: str, band_names: list[str],
                   size: PixelSize | None) -> None:
    """Write the OME-Zarr image at `pyramid` as a tiled OME-TIFF: level 0 in the main IFD with the
    OME-XML (PhysicalSizeX/Y and units when known), the reduced levels as SubIFDs; resolution tags
    (pixels per centimetre) carry the pixel size for readers that ignore OME-XML."""
    import tifffile
    import zarr

    group = zarr.open_group(pyramid, mode="r")
    levels = [group[d["path"]] for d in group.attrs["ome"]["multiscales"][0]["datasets"]]
    base = levels[0]
    compression = TIFF_COMPRESSION[compress]
    metadata: dict[str, Any] = {"axes": "CYX", "Channel": {"Name": band_names}}
    resolution: dict[str, Any] = {}
    if size:
        metadata.update(PhysicalSizeX=size.x, PhysicalSizeXUnit=size.unit, PhysicalSizeY=size.y, PhysicalSizeYUnit=size.unit)
        resolution = {"resolution": size.per_centimetre(), "resolutionunit": "CENTIMETER"}
    common = dict(tile=(TIFF_TILE, TIFF_TILE), photometric="minisblack",  # one page per channel
                  compression=compression, predictor=compression is not None)  # 2 for integers, 3 for floats
    bigtiff = sum(int(np.prod(level.shape)) for level in levels) * base.dtype.itemsize > 2**31
    with tifffile.TiffWriter(dst, bigtiff=bigtiff, ome=True) as tif:
        tif.write(_tiles(base, TIFF_TILE), shape=base.shape, dtype=base.dtype, subifds=len(levels) - 1,
                  metadata=metadata, **resolution, **common)
        for i, level in enumerate(levels[1:], start=1):
            scaled = {"resolution": tuple(r / 2 ** i for r in resolution["resolution"]), "resolutionunit": "CENTIMETER"} if size else {}
            tif.write(_tiles(level, TIFF_TILE), shape=level.shape, dtype=level.dtype, subfiletype=1, **scaled, **common)


# ----------------------------------------------------------------------------- export
def export(store: pathlib.Path, targets: dict[str, pathlib.Path], *, array: str, name: str, chunk: int,
           nodata: float | None, band_names: list[str], size: PixelSize | None, compress: str,
           attributes: dict) -> dict[str, pathlib.Path]:
    """Write the requested OME outputs ("ome-zarr", "ome-tiff") of one store array, each under a
    temporary name renamed into place (the OME-TIFF alone builds its pyramid in a temporary store)."""
    from pipeline.fsio import atomic_path, move_into_place, remove, temporary_sibling

    for dst in targets.values():
        dst.parent.mkdir(parents=True, exist_ok=True)
    pyramid = temporary_sibling(targets.get("ome-zarr") or targets["ome-tiff"], ".zarr")
    written: dict[str, pathlib.Path] = {}
    try:
        write_pyramid(store, array, pyramid, name=name, chunk=chunk, nodata=nodata, band_names=band_names,
                      size=size, attributes=attributes)
        if "ome-tiff" in targets:
            with atomic_path(targets["ome-tiff"]) as tmp:
                write_ome_tiff(pyramid, tmp, compress=compress, band_names=band_names, size=size)
            written["ome-tiff"] = targets["ome-tiff"]
        if "ome-zarr" in targets:
            move_into_place(pyramid, targets["ome-zarr"], replace_dir=True)
            written["ome-zarr"] = targets["ome-zarr"]
    except Exception:
        for path in written.values():
            remove(path)
        raise
    finally:
        remove(pyramid)  # still there when only the OME-TIFF was asked for, or on failure
    return written
