"""Output stores and files: Zarr blocks, COG / TIFF / PNG exports, atomic renames, checksums.

Every item is first assembled in a Zarr store in the run directory: created once (arrays,
coordinates, attributes) before any unit runs, then each unit writes only its own chunk-aligned
block, so each chunk has exactly one writer. When all blocks of an item are done, the files are
exported from that store once: a tiled GeoTIFF written window by window, given average overviews
and copied to a COG by GDAL (overviews, CRS, tags), or to PNG/TIFF for photos. Every file appears
under a temporary name and is renamed into place; the Zarr store is renamed into the outputs as a
whole.
"""
from __future__ import annotations

import functools
import hashlib
import math
import mmap
import pathlib
import struct
import warnings
from typing import Any

import numpy as np

from pipeline.fsio import atomic_path, fsync_files, remove, temporary_sibling
from pipeline import crs_forms, runstore
from pipeline.creation_options import for_driver as creation_options_for
from pipeline.errors import one_line
from pipeline.sources import Grid
from pipeline.tiling import Block

FUSED = "fused"
PROMPTS = "prompt_share"
GDAL_ENV = {"GDAL_PAM_ENABLED": "NO", "GDAL_CACHEMAX": 256, "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


class ExportError(OSError):
    """An export that failed: names the store, the target files and GDAL's or the file system's reason."""

    def __str__(self) -> str:
        return self.args[0]


# ----------------------------------------------------------------------------- zarr
def json_safe(value: Any) -> Any:
    """Strict-JSON form: NaN and infinities (a float nodata value) become the strings "NaN", "Infinity"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _geo_attributes(grid: Grid) -> dict:
    """CRS and transform in the GeoZarr (proj:/spatial:) convention."""
    if not grid.georeferenced:
        return {}
    return crs_forms.geozarr_attributes(grid.crs, grid.transform, grid.height, grid.width)


def create_store(
    path: pathlib.Path, *, grid: Grid, channels: int, dtype: np.dtype, nodata: float | None, chunk: int,
    band_names: list[str], prompt_names: list[str] | None, attributes: dict, zarr_format: int = 3,
) -> None:
    """Create the item's store once, before any block is written (workers only write regions)."""
    import zarr

    fill = nodata if nodata is not None else 0
    path = runstore.zarr_store(path)  # a folder, or zarr's FsspecStore for a prefix in an object store
    group = zarr.open_group(path, mode="w", zarr_format=zarr_format,
                            attributes=json_safe({**attributes, **_geo_attributes(grid)}))

    def create(name: str, *, dimension_names: tuple[str, ...], attributes: dict, **kwargs):
        """Dimension names the format's way: a v3 field, or xarray's `_ARRAY_DIMENSIONS` in v2,
        where GDAL also wants the CRS as `_CRS` (with it and the x/y arrays, GDAL/QGIS read the grid)."""
        if zarr_format == 2:
            crs = {"_CRS": {"wkt": crs_forms.wkt2(grid.crs)}} if grid.georeferenced and len(dimension_names) == 3 else {}
            attributes = {**attributes, "_ARRAY_DIMENSIONS": list(dimension_names), **crs}
            return group.create_array(name, attributes=attributes, **kwargs)
        return group.create_array(name, dimension_names=dimension_names, attributes=attributes, **kwargs)

    fused_attrs = {"band_names": band_names, "nodata": nodata, "long_name": "fused image"}
    if grid.georeferenced:
        fused_attrs.update(grid_mapping="spatial_ref", coordinates="spatial_ref", **_geo_attributes(grid))
    if nodata is not None:
        fused_attrs["_FillValue"] = nodata
    create(
        FUSED, shape=(channels, grid.height, grid.width), chunks=(channels, chunk, chunk), dtype=dtype,
        fill_value=fill, dimension_names=("band", "y", "x"), attributes=json_safe(fused_attrs),
    )
    if prompt_names:
        create(
            PROMPTS, shape=(len(prompt_names), grid.height, grid.width), chunks=(len(prompt_names), chunk, chunk),
            dtype="float32", fill_value=float("nan"), dimension_names=("source", "y", "x"),
            attributes={"source_names": prompt_names, "long_name": "share of each source per pixel (TC-MoA prompts)",
                        **({"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"} if grid.georeferenced else {})},
        )
    band = create("band", shape=(channels,), dtype="int32", dimension_names=("band",), attributes={"band_names": band_names})
    band[:] = np.arange(1, channels + 1, dtype=np.int32)
    if grid.georeferenced:
        a, b, c, d, e, f = grid.transform
        axes = crs_forms.axis_attributes(grid.crs)
        x = create("x", shape=(grid.width,), dtype="float64", dimension_names=("x",), attributes=axes["x"])
        x[:] = c + a * (np.arange(grid.width) + 0.5)
        y = create("y", shape=(grid.height,), dtype="float64", dimension_names=("y",), attributes=axes["y"])
        y[:] = f + e * (np.arange(grid.height) + 0.5)
        # CF / rioxarray grid mapping: a scalar variable holding the CRS and the GDAL geotransform
        create("spatial_ref", shape=(), dtype="int32", dimension_names=(),
                           attributes=crs_forms.grid_mapping_attributes(grid.crs, grid.transform))
    with warnings.catch_warnings():
        # zarr-python warns that consolidated metadata is not in the v3 spec yet; xarray reads it
        # (.zmetadata in format 2)
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(path)  # metadata is final here: workers only write chunks


def block_checksum(fused: np.ndarray, prompts: np.ndarray | None) -> str:
    digest = hashlib.sha256(np.ascontiguousarray(fused).tobytes())
    if prompts is not None:
        digest.update(np.ascontiguousarray(prompts).tobytes())
    return digest.hexdigest()


def block_chunk_files(path: pathlib.Path, block: Block, arrays: tuple[str, ...]) -> list[pathlib.Path]:
    """The chunk files holding `block` in the store's arrays (absent where a chunk is all fill value)."""
    import zarr

    group = zarr.open_group(path, mode="r")
    files = []
    for name in arrays:
        array = group[name]
        _, ch, cw = array.chunks
        for row in range(block.y0 // ch, -(-block.y1 // ch)):
            for col in range(block.x0 // cw, -(-block.x1 // cw)):
                files.append(path / name / array.metadata.encode_chunk_key((0, row, col)))
    return files


def read_block_checksum(path: pathlib.Path, block: Block, zarr_format: int | None = None) -> str:
    """The checksum of what the store holds for `block` now (as `write_block` recorded it).
    `zarr_format`, where known, spares zarr probing for the other format's metadata (requests,
    in an object store)."""
    import zarr

    group = zarr.open_group(runstore.zarr_store(path, read_only=True), mode="r", zarr_format=zarr_format)
    region = (slice(None), slice(block.y0, block.y1), slice(block.x0, block.x1))
    return block_checksum(group[FUSED][region], group[PROMPTS][region] if PROMPTS in group else None)


def write_block(path: pathlib.Path, block: Block, fused: np.ndarray, prompts: np.ndarray | None,
                zarr_format: int | None = None) -> str:
    """Write one unit's block, read it back and fsync its chunks: the checksum is of what the
    store durably holds, so a block recorded done survives a crash of the machine. (In an object
    store each chunk is one PUT, durable once answered, and the block is read back from the store.)"""
    import zarr

    group = zarr.open_group(runstore.zarr_store(path), mode="r+", zarr_format=zarr_format)
    region = (slice(None), slice(block.y0, block.y1), slice(block.x0, block.x1))
    group[FUSED][region] = fused
    if prompts is not None:
        group[PROMPTS][region] = prompts
    back = group[FUSED][region]
    back_prompts = group[PROMPTS][region] if prompts is not None else None
    if not np.array_equal(back, fused, equal_nan=fused.dtype.kind == "f") or (
        prompts is not None and not np.array_equal(back_prompts, prompts, equal_nan=True)
    ):
        raise OSError(f"{path}: block {block.row},{block.col} reads back different from what was written")
    if not runstore.is_remote(path):
        fsync_files(block_chunk_files(path, block, (FUSED, PROMPTS) if prompts is not None else (FUSED,)))
    return block_checksum(back, back_prompts)


# ----------------------------------------------------------------------------- file exports
def _gtiff_from_store(
    store: pathlib.Path, array: str, dst: pathlib.Path, *, grid: Grid, nodata: float | None, band_names: list[str],
    tags: dict, blocksize: int, compress: str, rows: int, zarr_format: int | None = None,
) -> None:
    """Copy one store array into a tiled GeoTIFF, a band of rows at a time (bounded memory)."""
    import rasterio
    import zarr
    from rasterio.transform import Affine
    from rasterio.windows import Window

    data = zarr.open_group(runstore.zarr_store(store, read_only=True), mode="r", zarr_format=zarr_format)[array]
    channels = data.shape[0]
    profile = {
        "driver": "GTiff", "width": grid.width, "height": grid.height, "count": channels, "dtype": data.dtype.name,
        "tiled": True, "blockxsize": blocksize, "blockysize": blocksize, "compress": compress, "bigtiff": "IF_SAFER",
        "nodata": nodata,
    }
    if channels == 3 and data.dtype == np.uint8:
        profile["photometric"] = "RGB"
    if grid.georeferenced:
        profile.update(crs=grid.crs, transform=Affine(*grid.transform))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # photos have no CRS
        out = rasterio.open(dst, "w", **profile)
    with out:
        out.update_tags(**{k: str(v) for k, v in tags.items()})
        for i, name in enumerate(band_names, start=1):
            out.set_band_description(i, name)
        for y0 in range(0, grid.height, rows):
            y1 = min(y0 + rows, grid.height)
            out.write(data[:, y0:y1, :], window=Window(0, y0, grid.width, y1 - y0))


def overview_factors(width: int, height: int, blocksize: int) -> list[int]:
    """The COG driver's levels: halve until the image fits one block (2, 4, 8, ...)."""
    factors: list[int] = []
    while (width >> len(factors)) > blocksize or (height >> len(factors)) > blocksize:
        factors.append(2 ** (len(factors) + 1))
    return factors


def _build_overviews(path: pathlib.Path, blocksize: int) -> None:
    """Average overviews inside the uncompressed intermediate. The COG driver would compute them
    itself, but into a compressed temporary file: measured on a 2016^2 3-band uint16 export, 0.29 s
    for the whole COG copy against 0.21 s when it copies these (nodata is honoured the same way)."""
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(path, "r+") as ds:
        factors = overview_factors(ds.width, ds.height, blocksize)
        if factors:
            ds.build_overviews(factors, Resampling.average)


def export_files(
    store: pathlib.Path, targets: dict[str, pathlib.Path], *, array: str, grid: Grid, nodata: float | None,
    band_names: list[str], tags: dict, blocksize: int, compress: str, rows: int, zarr_format: int | None = None,
    creation_options: dict | None = None,
) -> dict[str, pathlib.Path]:
    """Write the requested files (cog, tiff, png) of one store array, each atomically. The COG and
    TIFF get `compress` with the predictor of the data type, and the user's `creation_options`
    (checked when the job was read) over those defaults."""
    import rasterio
    import rasterio.shutil
    import zarr

    written: dict[str, pathlib.Path] = {}
    dtype = zarr.open_group(runstore.zarr_store(store, read_only=True), mode="r", zarr_format=zarr_format)[array].dtype
    gdal_options = functools.partial(creation_options_for, dtype=dtype, compress=compress, user=creation_options or {})
    with rasterio.Env(**GDAL_ENV):
        for dst in targets.values():
            dst.parent.mkdir(parents=True, exist_ok=True)
        first = next(iter(targets.values()))
        intermediate = temporary_sibling(first, ".tif")  # named after an output: cleaned with its temporaries
        try:
            # the intermediate is read right away and deleted: compressing it would only cost time
            _gtiff_from_store(store, array, intermediate, grid=grid, nodata=nodata, band_names=band_names, tags=tags,
                              blocksize=blocksize, compress="none", rows=rows, zarr_format=zarr_format)
            if "cog" in targets:
                _build_overviews(intermediate, blocksize)
            for fmt, dst in targets.items():
                with atomic_path(dst) as tmp:
                    if fmt == "cog":
                        rasterio.shutil.copy(intermediate, tmp, driver="COG", **gdal_options("COG", defaults={
                            "BLOCKSIZE": blocksize, "OVERVIEWS": "FORCE_USE_EXISTING", "BIGTIFF": "IF_SAFER",
                            "NUM_THREADS": "ALL_CPUS"}))
                    elif fmt == "png":
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                            rasterio.shutil.copy(intermediate, tmp, driver="PNG")
                    else:
                        rasterio.shutil.copy(intermediate, tmp, driver="GTiff", **gdal_options("GTiff", defaults={
                            "TILED": "YES", "BLOCKXSIZE": blocksize, "BLOCKYSIZE": blocksize, "BIGTIFF": "IF_SAFER"}))
                written[fmt] = dst
        except Exception as exc:
            for dst in written.values():
                remove(dst)
            # GDAL's reason is in the cause ("Write failed. See previous exception" alone says nothing)
            raise ExportError(f"{store} -> {', '.join(map(str, targets.values()))}: export failed: {one_line(exc)}") from exc
        finally:
            remove(intermediate)
    return written


# ----------------------------------------------------------------------------- COG check
def validate_cog(path: str | pathlib.Path) -> list[str]:
    """Problems that make `path` not a valid Cloud-Optimized GeoTIFF (empty list: valid).

    The checks of GDAL's validate_cloud_optimized_geotiff.py (what `rio cogeo validate` runs), done
    with rasterio and tifffile: tiled, internal overviews by decreasing size (required above one
    block), main IFD right after GDAL's structural metadata, IFDs before the image data, data of the
    smallest overview first and of the full resolution last, tiles in row-major order, leader and
    trailer bytes as declared.
    """
    import rasterio

    path = pathlib.Path(path)
    errors: list[str] = []
    with rasterio.open(path) as ds:
        if ds.driver != "GTiff":
            return [f"{path}: not a GeoTIFF ({ds.driver})"]
        block_h, block_w = ds.block_shapes[0]
        big = ds.width > 512 or ds.height > 512
        if big and (block_w == ds.width or not ds.profile.get("tiled")):
            errors.append("larger than 512 pixels but not tiled")
        overview_factors = ds.overviews(1)
        if (ds.width > block_w or ds.height > block_h) and not overview_factors:
            errors.append("larger than one block but has no internal overviews")
        if any(f.name.endswith(".ovr") for f in map(pathlib.Path, ds.files)):
            errors.append("overviews are in an external .ovr file")

    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as raw:
        errors += _layout_problems(path, raw, big)
    return errors


def _layout_problems(path: pathlib.Path, raw, big: bool) -> list[str]:
    """IFD and data layout checks on the file's bytes (raw: bytes-like)."""
    import tifffile

    errors: list[str] = []
    bigtiff = raw[:4] in (b"II+\x00", b"MM\x00+")
    expected_ifd = 16 if bigtiff else 8
    structural = ""
    marker = b"GDAL_STRUCTURAL_METADATA_SIZE="
    if raw[expected_ifd:expected_ifd + len(marker)] == marker:
        size = int(raw[expected_ifd + len(marker):expected_ifd + len(marker) + 6])
        header_len = len("GDAL_STRUCTURAL_METADATA_SIZE=000000 bytes\n")
        structural = raw[expected_ifd + header_len:expected_ifd + header_len + size].decode("latin1")
        expected_ifd += header_len + size
        expected_ifd += expected_ifd % 2
    if "KNOWN_INCOMPATIBLE_EDITION=YES" in structural:
        errors.append("KNOWN_INCOMPATIBLE_EDITION=YES is declared in the file")

    with tifffile.TiffFile(path) as tif:
        images = [p for p in tif.pages if not (int(p.subfiletype) & 4)]  # drop mask IFDs
        main, overviews = images[0], images[1:]
        if main.offset != expected_ifd:
            errors.append(f"main IFD at byte {main.offset}, expected {expected_ifd}")
        if main.is_tiled is False and big:
            errors.append("main image is not tiled")
        previous = main
        for i, page in enumerate(overviews):
            if page.shape[0] > previous.shape[0] or page.shape[1] > previous.shape[1]:
                errors.append(f"overview {i} is larger than the level before it")
            if page.offset < previous.offset:
                errors.append(f"IFD of overview {i} comes before the IFD of the level before it")
            if not page.is_tiled:
                errors.append(f"overview {i} is not tiled")
            previous = page
        first_data = [min(o for o in p.dataoffsets if o) if any(p.dataoffsets) else None for p in images]
        last_ifd = max(p.offset for p in tif.pages)
        if first_data[-1] is not None and first_data[-1] < last_ifd:
            errors.append("image data starts before the last IFD (IFDs must come first)")
        for i in range(len(first_data) - 1, 0, -1):
            if first_data[i] is not None and first_data[i - 1] is not None and first_data[i - 1] < first_data[i]:
                level = "the full-resolution image" if i == 1 else f"overview {i - 2}"
                errors.append(f"data of {level} comes before the data of overview {i - 1} (smallest must come first)")
        for index, page in enumerate(images):
            name = "main image" if index == 0 else f"overview {index - 1}"
            offsets = [o for o in page.dataoffsets if o]
            counts = [c for o, c in zip(page.dataoffsets, page.databytecounts) if o]
            if "BLOCK_ORDER=ROW_MAJOR" in structural and any(b < a for a, b in zip(offsets, offsets[1:])):
                errors.append(f"{name}: tiles are not in row-major order")
            if "BLOCK_LEADER=SIZE_AS_UINT4" in structural:
                for offset, count in zip(offsets, counts):
                    if struct.unpack("<I", raw[offset - 4:offset])[0] != count:
                        errors.append(f"{name}: a tile's leader bytes differ from its size")
                        break
            if "BLOCK_TRAILER=LAST_4_BYTES_REPEATED" in structural:
                for offset, count in zip(offsets, counts):
                    if count >= 4 and raw[offset + count - 4:offset + count] != raw[offset + count:offset + count + 4]:
                        errors.append(f"{name}: a tile's trailer bytes are invalid")
                        break
    return errors
