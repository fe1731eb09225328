"""Reading sources onto the reference grid.

Three readers, chosen by content (not by file name):
- rasters through rasterio/GDAL (GeoTIFF and any GDAL format; one multi-band file or one file per
  band; any numeric dtype; nodata); a source whose CRS, transform or size differs from the reference
  grid is warped onto it with a `WarpedVRT` whose alpha band carries the footprint and nodata mask;
- TIFF / OME-TIFF z-stacks through tifffile: every plane is one source of the item (a focus stack
  is an item with N sources), read window by window through tifffile's zarr view;
- photos (JPEG, PNG, BMP, WebP; 8 or 16 bit) through Pillow with EXIF orientation applied
  (16-bit colour PNG, which Pillow reduces to 8 bit, goes through GDAL's PNG driver).

A reader returns raw values (C, h, w) in the source dtype and a validity mask (h, w) for any
window of the reference grid. Readers open their files when entered and close them on exit:
handles never travel between threads or processes.
"""
from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import pathlib
import warnings
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np

from pipeline import urls
from pipeline.errors import one_line
from pipeline.ome import PixelSize, pixel_size_of
from pipeline.spec import NormaliseSpec

PLANE_AXES = "ZITQ"
CHANNEL_AXES = "CS"
PHOTO_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"BM", b"GIF8")
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class SourceError(Exception):
    """A source that cannot be used: the message names the file and what is wrong."""

    def __init__(self, path: str | pathlib.Path, message: str):
        super().__init__(f"{path}: {message}")
        self.path = str(path)


@dataclass(frozen=True)
class SourceRef:
    """One source of an item: its files and how to read them. Plain data: it travels in work units."""

    role: str
    kind: str  # raster | stack | photo
    files: tuple[str, ...]  # one file, or one single-band file per band
    bands: tuple[int, ...] | None = None  # 1-based, within the single file; None: all
    plane: int | None = None  # stack plane
    nodata: float | None = None  # overrides the file's nodata
    resampling: str = "bilinear"
    normalise: NormaliseSpec = NormaliseSpec()

    @property
    def label(self) -> str:
        return f"{self.role} ({self.files[0]}{' ...' if len(self.files) > 1 else ''})"


@dataclass(frozen=True)
class Grid:
    """The reference grid every source of an item is read on."""

    width: int
    height: int
    crs: str | None = None  # WKT
    transform: tuple[float, ...] | None = None  # affine a, b, c, d, e, f

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None and self.transform is not None


@dataclass(frozen=True)
class SourceInfo:
    width: int
    height: int
    channels: int
    dtype: str
    crs: str | None
    transform: tuple[float, ...] | None
    nodata: float | None
    planes: int = 1
    band_names: tuple[str, ...] = ()
    pixel_size: PixelSize | None = None  # stacks: the microscope's physical pixel size, when the file declares it

    @property
    def grid(self) -> Grid:
        return Grid(self.width, self.height, self.crs, self.transform)


# ----------------------------------------------------------------------------- detection
def _missing_reason(path: pathlib.Path) -> str:
    """Why `path` cannot be opened though it may be named in a folder: a link loop, a dangling link..."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (the link points back to itself)"
        if path.is_symlink():
            return f"broken symbolic link (to {os.readlink(path)}, which does not exist)"
        if exc.errno == errno.ENOENT:
            return "file does not exist"
        return f"cannot open ({exc.strerror})"
    return "file does not exist"


def _head(path: str | pathlib.Path, size: int) -> bytes:
    """The first `size` bytes of a file or object (one ranged GET for a URL)."""
    if urls.is_url(path):
        return urls.read_bytes(str(path), 0, size)
    with open(path, "rb") as fh:
        return fh.read(size)


def _magic(path: str | pathlib.Path) -> bytes:
    if urls.is_url(path):
        try:
            head = _head(path, 16)
        except Exception as exc:  # botocore, aiohttp and fsspec raise many kinds
            raise SourceError(path, urls.describe(exc)) from None
        if not head:
            raise SourceError(path, "object is empty (0 bytes)")
        return head
    path = pathlib.Path(path)
    if not path.exists():
        raise SourceError(path, _missing_reason(path))
    if path.is_dir():
        raise SourceError(path, "is a directory, not an image file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise SourceError(path, f"cannot read: {exc.strerror or exc}") from None
    if not head:
        raise SourceError(path, "file is empty (0 bytes)")
    return head


def detect_kind(path: str | pathlib.Path) -> str:
    head = _magic(path)
    if head.startswith(PHOTO_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "photo"
    if head.startswith(TIFF_MAGIC):
        return "stack" if _plane_axis(_tiff_series(path).axes) is not None else "raster"
    return "raster"


class _TiffDamage(logging.Handler):
    """Collects what tifffile logs (and then works around) about offsets past the end of the file."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "offset" in record.getMessage():
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def _tiff_file(path: str | pathlib.Path, block_size: int = 256 << 10) -> Iterator:
    """A tifffile.TiffFile of a local file or an object (read through fsspec in `block_size`
    ranges: small for headers, larger for the planes of a stack)."""
    import tifffile

    with urls.opened(path, block_size) as file, tifffile.TiffFile(file, name=urls.name(path)) as tif:
        yield tif


def _file_size(path: str | pathlib.Path) -> int:
    return int(urls.info(str(path))["size"]) if urls.is_url(path) else pathlib.Path(path).stat().st_size


def _tiff_series(path: str | pathlib.Path):
    import tifffile

    _magic(path)  # a missing file, a link loop, an empty file: said as such
    damage = _TiffDamage()
    log = logging.getLogger("tifffile")
    log.addHandler(damage)
    try:
        with _tiff_file(path) as tif:
            series = tif.series[0]
            size = _file_size(path)
            # a truncated file: tifffile drops the pages (and OME planes) it cannot reach and says so
            # only in its log; image data past the end would read as garbage
            beyond = any(o + c > size for page in tif.pages for o, c in zip(page.dataoffsets, page.databytecounts))
            if damage.messages or beyond:
                detail = damage.messages[-1] if damage.messages else "image data past the end of the file"
                raise SourceError(path, f"truncated or damaged TIFF ({size:,} bytes; {detail})")
            # keep what we need after the file closes
            return _SeriesShape(series.axes, tuple(series.shape), np.dtype(series.dtype), pixel_size_of(tif))
    except SourceError:
        raise
    except Exception as exc:  # tifffile raises many kinds on damaged files
        if urls.is_url(path) and not isinstance(exc, (ValueError, tifffile.TiffFileError)):
            raise SourceError(path, urls.describe(exc)) from None  # the store, not the file
        raise SourceError(path, f"not a readable TIFF ({type(exc).__name__}: {exc})") from None
    finally:
        log.removeHandler(damage)


@dataclass(frozen=True)
class _SeriesShape:
    axes: str
    shape: tuple[int, ...]
    dtype: np.dtype
    pixel_size: PixelSize | None = None


def _plane_axis(axes: str) -> int | None:
    for i, axis in enumerate(axes):
        if axis in PLANE_AXES:
            return i
    return None


def expand_sources(
    role: str, files: list[str], *, kind: str, bands: tuple[int, ...] | None, band_files: bool, multiple: bool,
    nodata: float | None, resampling: str, normalise: NormaliseSpec,
) -> list[SourceRef]:
    """The sources one role contributes to an item: one, one per file (multiple), or one per plane."""
    def make(role_name: str, file_group: list[str], plane: int | None, file_kind: str) -> SourceRef:
        return SourceRef(
            role=role_name, kind=file_kind, files=tuple(file_group), bands=None if band_files else bands,
            plane=plane, nodata=nodata, resampling=resampling, normalise=normalise,
        )

    if band_files or (len(files) == 1 and not multiple):
        file_kind = kind if kind != "auto" else detect_kind(files[0])
        if file_kind == "stack" and not band_files:
            planes = _stack_layout(files[0])[1]
            return [make(f"{role}[{z}]", files, z, "stack") for z in range(planes)]
        return [make(role, files, None, file_kind)]
    refs = []
    for i, file in enumerate(files):
        file_kind = kind if kind != "auto" else detect_kind(file)
        if file_kind == "stack":
            raise SourceError(file, f"role {role!r} matches several files and this one is a stack: use one or the other")
        refs.append(make(f"{role}[{i}]", [file], None, file_kind))
    return refs


# ----------------------------------------------------------------------------- inspection
def inspect(ref: SourceRef) -> SourceInfo:
    """Header facts of a source (no pixel reads). Raises SourceError naming the file."""
    for file in ref.files:
        _magic(file)
    if ref.kind == "raster":
        return _inspect_raster(ref)
    if ref.kind == "stack":
        return _inspect_stack(ref)
    return _inspect_photo(ref)


def _check_channels(path: str, count: int, bands: tuple[int, ...] | None) -> tuple[int, ...]:
    if bands is None:
        if count not in (1, 3):
            raise SourceError(path, f"has {count} bands; the model takes 1 or 3 channels: choose them with `bands:`")
        return tuple(range(1, count + 1))
    missing = [b for b in bands if b > count]
    if missing:
        raise SourceError(path, f"band(s) {missing} requested but the file has {count} band{'s' * (count != 1)}")
    if len(bands) not in (1, 3):
        raise SourceError(path, f"{len(bands)} bands selected; the model takes 1 or 3 channels")
    return bands


def _open_raster(path: str):
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with urls.gdal_env([path]):
            return rasterio.open(path)
    except RasterioIOError as exc:
        if urls.is_url(path):
            raise SourceError(path, f"cannot open ({urls.describe(exc)})") from None
        raise SourceError(path, f"not an image or raster GDAL can read ({exc})") from None


def _inspect_raster(ref: SourceRef) -> SourceInfo:
    first = None
    names: list[str] = []
    channel_count = 0
    for i, file in enumerate(ref.files):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning: plain images are fine
            with _open_raster(file) as ds:
                if len(ref.files) > 1 and ds.count != 1:
                    raise SourceError(file, f"expected a single-band file (one file per band), it has {ds.count} bands")
                bands = _check_channels(file, ds.count, ref.bands) if len(ref.files) == 1 else (1,)
                if ds.dtypes[0] not in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"):
                    raise SourceError(file, f"unsupported data type {ds.dtypes[0]}")
                channel_count += len(bands)
                names += [ds.descriptions[b - 1] or f"band{b}" for b in bands] if len(ref.files) == 1 else [pathlib.PurePosixPath(urls.name(file)).stem]
                if i == 0:
                    geo = ds.crs is not None and not ds.transform.is_identity
                    first = SourceInfo(
                        width=ds.width, height=ds.height, channels=0, dtype=ds.dtypes[0],
                        crs=ds.crs.to_wkt() if geo else None, transform=tuple(ds.transform)[:6] if geo else None,
                        nodata=ref.nodata if ref.nodata is not None else ds.nodata,
                    )
    if channel_count not in (1, 3):
        raise SourceError(ref.files[0], f"{channel_count} band files given; the model takes 1 or 3 channels")
    return replace(first, channels=channel_count, band_names=tuple(names))


def _stack_layout(path: str | pathlib.Path) -> tuple[_SeriesShape, int]:
    series = _tiff_series(path)
    axis = _plane_axis(series.axes)
    planes = series.shape[axis] if axis is not None else 1
    for i, (name, size) in enumerate(zip(series.axes, series.shape)):
        if i != axis and name not in "YX" + CHANNEL_AXES and size != 1:
            raise SourceError(path, f"stack axes {series.axes} {series.shape}: more than one non-spatial axis ({name}={size})")
    return series, planes


def _inspect_stack(ref: SourceRef) -> SourceInfo:
    path = ref.files[0]
    series, planes = _stack_layout(path)
    shape = dict(zip(series.axes, series.shape))
    channels_in_file = next((shape[a] for a in CHANNEL_AXES if a in shape), 1)
    bands = _check_channels(str(path), channels_in_file, ref.bands)
    if ref.plane is not None and not 0 <= ref.plane < planes:
        raise SourceError(path, f"plane {ref.plane} requested but the stack has {planes}")
    return SourceInfo(
        width=shape["X"], height=shape["Y"], channels=len(bands), dtype=str(series.dtype), crs=None, transform=None,
        nodata=ref.nodata, planes=planes, band_names=tuple(f"c{b}" for b in bands), pixel_size=series.pixel_size,
    )


def _is_png16_colour(path: str | pathlib.Path) -> bool:
    head = _head(path, 26)
    return head.startswith(b"\x89PNG") and len(head) == 26 and head[24] == 16 and head[25] in (2, 6)


def _open_photo(path: str):
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # an object is fetched whole, in one request (photos are small next to a block)
            return Image.open(io.BytesIO(urls.read_bytes(path)) if urls.is_url(path) else path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SourceError(path, f"claims an image too large to decode safely ({exc})") from None
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
        raise SourceError(path, f"not an image Pillow can read ({type(exc).__name__}: {exc})") from None


def _decoded_shape(shape: tuple[int, ...], orientation: int) -> tuple[int, int, int]:
    """(height, width, channels) `_PhotoReader` will give for a TIFF page or PNG of this shape."""
    if len(shape) == 3 and shape[0] in (1, 2, 3, 4) and shape[-1] not in (1, 2, 3, 4):
        shape = (*shape[1:], shape[0])  # planar configuration
    height, width = shape[:2]
    channels = shape[2] if len(shape) == 3 else 1
    if orientation in (5, 6, 7, 8):
        height, width = width, height
    return height, width, channels - 1 if channels in (2, 4) else channels  # alpha becomes the mask


def _photo_header(path: str | pathlib.Path) -> tuple[int, int, int, np.dtype]:
    """Height, width, channels and dtype of a TIFF photo or 16-bit colour PNG from its header alone:
    nothing is decoded before limits.max_pixels is checked."""
    if _magic(path)[:4] in TIFF_MAGIC:
        try:
            with _tiff_file(path) as tif:
                page = tif.pages[0]
                orientation = int(page.tags["Orientation"].value) if "Orientation" in page.tags else 1
                shape, dtype = tuple(page.shape), np.dtype(page.dtype)
        except Exception as exc:  # tifffile raises many kinds on damaged files
            raise SourceError(path, f"not a readable TIFF ({type(exc).__name__}: {exc})") from None
        return (*_decoded_shape(shape, orientation), dtype)
    head = _head(path, 26)
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return height, width, 3, np.dtype("uint16")  # colour type 2 (RGB) or 6 (RGBA, alpha as the mask)


def _inspect_photo(ref: SourceRef) -> SourceInfo:
    path = ref.files[0]
    if _magic(path)[:4] in TIFF_MAGIC or _is_png16_colour(path):
        height, width, count, dtype = _photo_header(path)
    else:
        with _open_photo(path) as im:
            width, height = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                width, height = height, width
            count, dtype = _pil_channels_dtype(im)
    bands = _check_channels(path, count, ref.bands)
    return SourceInfo(
        width=width, height=height, channels=len(bands), dtype=str(dtype), crs=None, transform=None, nodata=ref.nodata,
        band_names=tuple(f"c{b}" for b in bands),
    )


def _pil_channels_dtype(im) -> tuple[int, np.dtype]:
    """Channels and dtype after the conversions `_PhotoReader._decode_pil` applies."""
    mode = im.mode
    if mode in ("1", "L", "LA"):
        return 1, np.dtype("uint8")
    if mode.startswith("I;16"):
        return 1, np.dtype("uint16")
    if mode == "I":
        return 1, np.dtype("int32")
    if mode == "F":
        return 1, np.dtype("float32")
    return 3, np.dtype("uint8")  # RGB, RGBA, palette, CMYK, YCbCr...


# ----------------------------------------------------------------------------- co-registration
def check_overlap(ref: SourceRef, info: SourceInfo, reference: SourceRef, grid: Grid) -> None:
    """Sources must cover part of the reference grid; non-georeferenced ones must match its size."""
    if not (grid.georeferenced and info.crs and info.transform):
        if (info.width, info.height) != (grid.width, grid.height):
            raise SourceError(
                ref.files[0],
                f"source {ref.role!r} is {info.width}x{info.height} but the reference {reference.role!r} "
                f"({reference.files[0]}) is {grid.width}x{grid.height}; sources without georeferencing must have the same size",
            )
        return
    from rasterio.crs import CRS
    from rasterio.transform import Affine, array_bounds
    from rasterio.warp import transform_bounds

    left, bottom, right, top = array_bounds(info.height, info.width, Affine(*info.transform))
    left, bottom, right, top = transform_bounds(CRS.from_wkt(info.crs), CRS.from_wkt(grid.crs), left, bottom, right, top)
    g_left, g_bottom, g_right, g_top = array_bounds(grid.height, grid.width, Affine(*grid.transform))
    if min(right, g_right) <= max(left, g_left) or min(top, g_top) <= max(bottom, g_bottom):
        raise SourceError(
            ref.files[0],
            f"source {ref.role!r} does not overlap the reference {reference.role!r} ({reference.files[0]}): "
            f"bounds {(round(left), round(bottom), round(right), round(top))} vs "
            f"{(round(g_left), round(g_bottom), round(g_right), round(g_top))} in the reference CRS",
        )


def _aligned(ds, grid: Grid) -> bool:
    if not grid.georeferenced or ds.crs is None or ds.transform.is_identity:
        return True  # sizes were checked: pixel-aligned by definition
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    return (
        (ds.width, ds.height) == (grid.width, grid.height)
        and ds.crs == CRS.from_wkt(grid.crs)
        and ds.transform.almost_equals(Affine(*grid.transform), precision=1e-9)
    )


# ----------------------------------------------------------------------------- readers
class Reader:
    """Context manager: read(y0, y1, x0, x1) -> (raw (C, h, w), valid (h, w)) on the reference grid."""

    def __init__(self, ref: SourceRef, grid: Grid):
        self.ref = ref
        self.grid = grid

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def read_decimated(self, max_side: int) -> tuple[np.ndarray, np.ndarray, int]:
        """A nearest-neighbour sample of the whole grid with its longest side <= max_side."""
        factor = max(1, -(-max(self.grid.width, self.grid.height) // max_side))
        raw, valid = self._decimated(factor)
        return raw, valid, factor

    def _decimated(self, factor: int) -> tuple[np.ndarray, np.ndarray]:
        raw, valid = self.read(0, self.grid.height, 0, self.grid.width)
        return raw[:, ::factor, ::factor], valid[::factor, ::factor]

    def _mask_values(self, raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if raw.dtype.kind == "f":
            valid &= np.isfinite(raw).all(axis=0)
        if self.ref.nodata is not None:
            valid &= (raw != self.ref.nodata).any(axis=0) if raw.shape[0] > 1 else raw[0] != self.ref.nodata
        return valid

    def _fail(self, exc: Exception, file: str | None = None) -> SourceError:
        file = file or self.ref.files[0]
        return SourceError(file, f"read failed ({urls.describe(exc) if urls.is_url(file) else one_line(exc)})")


STRIP_BYTES = 32 << 20  # memory for one strip of a decimated read
STRIP_CACHE_MB = 64  # GDAL block cache while the strips are read (they fit in it)


def nearest_samples(size: int, samples: int) -> np.ndarray:
    """The pixels GDAL's nearest-neighbour resampling picks when it reads `size` pixels into `samples`."""
    step = size / samples
    return np.minimum(((np.arange(samples) + 0.5) * step + 1e-10).astype(np.int64), size - 1)


@contextlib.contextmanager
def small_block_cache(megabytes: int) -> Iterator[None]:
    """GDAL's block cache limited to `megabytes` inside the block, restored after it. The limit is
    process-wide and a nested rasterio.Env does not restore it, hence set and reset explicitly.
    Only for reads that touch each block once: a small cache makes band-by-band reads of
    pixel-interleaved files and warps decode blocks again and again (100x slower, measured)."""
    from rasterio._env import get_gdal_config, set_gdal_config

    previous = get_gdal_config("GDAL_CACHEMAX")  # bytes
    set_gdal_config("GDAL_CACHEMAX", megabytes)  # GDAL reads values below 100000 as MB
    try:
        yield
    finally:
        set_gdal_config("GDAL_CACHEMAX", previous)


def _integer_nodata_mask(ds, bands: list[int], data: np.ndarray) -> np.ndarray | None:
    """The AND of the bands' masks GDAL would give, from the data already read, where those masks
    are just "value != the band's nodata" on integer bands (exact there); None otherwise. GDAL
    builds such masks by reading each band again: a decimated read of an 8192^2 3-band uint16
    file with a nodata value took 1.75 s that way and 0.5-0.8 s this way."""
    from rasterio.enums import MaskFlags

    if data.dtype.kind not in "iu" or not all(ds.mask_flag_enums[b - 1] == [MaskFlags.nodata] for b in bands):
        return None
    values = [ds.nodatavals[b - 1] for b in bands]
    if any(v is None or not float(v).is_integer() for v in values):
        return None  # GDAL casts a fractional nodata to the band type first: leave it to GDAL
    mask = np.ones(data.shape[1:], bool)
    for plane, value in zip(data, values):
        mask &= plane != int(value)
    return mask


class _RasterReader(Reader):
    def __enter__(self) -> "_RasterReader":
        self._opened: list = []
        # one read per dataset with all its bands, so GDAL decodes each block once, not per band:
        # (dataset, bands, alpha band, file)
        self._reads: list[tuple[object, list[int], int | None, str]] = []
        try:
            with self._env():
                datasets = {file: self._open_on_grid(file) for file in dict.fromkeys(self.ref.files)}
            if len(self.ref.files) > 1:
                plan = [(file, [1]) for file in self.ref.files]
            else:
                file = self.ref.files[0]
                plan = [(file, list(self.ref.bands or range(1, self._opened[0].count + 1)))]
            self._reads = [(datasets[file][0], bands, datasets[file][1], file) for file, bands in plan]
        except Exception:
            self.close()
            raise
        return self

    def _open_on_grid(self, file: str) -> tuple[object, int | None]:
        """The file itself when it lies on the grid, else a WarpedVRT onto it (alpha = footprint + nodata)."""
        import rasterio
        from rasterio.crs import CRS
        from rasterio.enums import Resampling
        from rasterio.transform import Affine
        from rasterio.vrt import WarpedVRT

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            src = rasterio.open(file)
        self._opened.append(src)
        if _aligned(src, self.grid):
            return src, None
        vrt = WarpedVRT(
            src, crs=CRS.from_wkt(self.grid.crs), transform=Affine(*self.grid.transform),
            width=self.grid.width, height=self.grid.height, resampling=Resampling[self.ref.resampling],
            src_nodata=self.ref.nodata if self.ref.nodata is not None else src.nodata, add_alpha=True,
        )
        self._opened.append(vrt)
        return vrt, vrt.count

    def close(self) -> None:
        for ds in reversed(getattr(self, "_opened", [])):
            ds.close()
        self._opened = []

    def _env(self):
        """GDAL decodes the blocks of a read on several threads: TCMOA_IO_THREADS (default all
        cores; set it lower where several workers share a machine); URLs get the remote-read
        options (pipeline.urls). Entered per call, not for the reader's life: readers stay open
        in a cache, and GDAL environments must nest."""
        return urls.gdal_env(self.ref.files, GDAL_NUM_THREADS=os.environ.get("TCMOA_IO_THREADS", "ALL_CPUS"))

    def _read(self, window, out_shape: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.enums import Resampling

        kwargs = {"window": window}
        if out_shape is not None:
            kwargs.update(out_shape=out_shape, resampling=Resampling.nearest)
        with self._env():
            return self._read_in_env(kwargs)

    def _read_in_env(self, kwargs: dict) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.enums import MaskFlags
        from rasterio.errors import RasterioIOError

        planes, valid = [], None  # planes: (bands, h, w) per dataset read
        for ds, bands, alpha, file in self._reads:
            try:
                data = ds.read(bands, **kwargs)
                planes.append(data)
                if alpha is not None:
                    mask = ds.read(alpha, **kwargs) > 0
                elif self.ref.nodata is not None or all(ds.mask_flag_enums[b - 1] == [MaskFlags.all_valid] for b in bands):
                    mask = np.ones(data.shape[1:], bool)  # nothing to read: every pixel is valid
                else:
                    mask = _integer_nodata_mask(ds, bands, data)
                    if mask is None:
                        mask = np.logical_and.reduce(ds.read_masks(bands, **kwargs) > 0)
            except RasterioIOError as exc:
                raise self._fail(exc, file) from None
            valid = mask if valid is None else valid & mask
        raw = planes[0] if len(planes) == 1 else np.concatenate(planes)
        return raw, self._mask_values(raw, valid)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.windows import Window

        return self._read(Window(x0, y0, x1 - x0, y1 - y0), None)

    def _decimated(self, factor: int) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.windows import Window

        height, width = self.grid.height, self.grid.width
        shape = (-(-height // factor), -(-width // factor))
        plain = all(alpha is None and not ds.overviews(bands[0]) for ds, bands, alpha, _ in self._reads)
        if factor == 1 or not plain:  # GDAL reads overviews, or warps at the low resolution
            return self._read(Window(0, 0, width, height), shape)
        # A plain file: GDAL's decimated read decodes every block on one thread. Full-resolution
        # strips decode on all cores (1.6-1.9x faster on 8192^2 and 2016^2 3-band DEFLATE GeoTIFFs
        # here), and taking GDAL's nearest-neighbour pixels gives the same sample.
        rows, cols = nearest_samples(height, shape[0]), nearest_samples(width, shape[1])
        block_h = max(ds.block_shapes[0][0] for ds, _, _, _ in self._reads)
        row_bytes = width * sum(len(bands) * np.dtype(ds.dtypes[0]).itemsize for ds, bands, _, _ in self._reads)
        strip = max(block_h, STRIP_BYTES // row_bytes // block_h * block_h)
        raws, valids = [], []
        # Each block is decoded once here, so GDAL's block cache (5% of RAM by default) would only
        # hold memory: a small one is faster too (8192^2: 0.48 s / +0.19 GB RSS against 0.74 s / +0.52 GB).
        with small_block_cache(STRIP_CACHE_MB):
            for y0 in range(0, height, strip):
                take = rows[(rows >= y0) & (rows < y0 + strip)]
                if take.size:
                    raw, valid = self.read(int(take[0]), int(take[-1]) + 1, 0, width)
                    raws.append(raw[:, take - take[0]][:, :, cols])
                    valids.append(valid[take - take[0]][:, cols])
        return np.concatenate(raws, axis=1), np.concatenate(valids)


STACK_BLOCK_BYTES = 8 << 20  # range size when a stack is read from object storage (planes are large)


class _StackReader(Reader):
    def __enter__(self) -> "_StackReader":
        import zarr

        path = self.ref.files[0]
        series, _ = _stack_layout(path)
        self._files = contextlib.ExitStack()
        try:
            self._tif = self._files.enter_context(_tiff_file(path, block_size=STACK_BLOCK_BYTES))
            self._array = zarr.open(self._tif.series[0].aszarr(), mode="r")
        except Exception as exc:
            self.close()
            raise self._fail(exc) from None
        self._axes = series.axes
        shape = dict(zip(series.axes, series.shape))
        self._channel_axis = next((a for a in CHANNEL_AXES if a in shape), None)
        count = shape.get(self._channel_axis, 1) if self._channel_axis else 1
        self._bands = [b - 1 for b in (self.ref.bands or range(1, count + 1))]
        return self

    def close(self) -> None:
        if getattr(self, "_files", None) is not None:
            self._files.close()
            self._files = self._tif = None

    def read(self, y0: int, y1: int, x0: int, x1: int, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
        index = []
        for axis in self._axes:
            if axis == "Y":
                index.append(slice(y0, y1, step))
            elif axis == "X":
                index.append(slice(x0, x1, step))
            elif axis in PLANE_AXES and axis == self._axes[_plane_axis(self._axes)]:
                index.append(self.ref.plane or 0)
            elif axis == self._channel_axis:
                index.append(slice(None))
            else:
                index.append(0)
        try:
            data = np.asarray(self._array[tuple(index)])
        except Exception as exc:
            raise self._fail(exc) from None
        kept = [a for a in self._axes if a in "YX" or a == self._channel_axis]
        if self._channel_axis is None:
            data = data[None]
        else:
            data = np.moveaxis(data, kept.index(self._channel_axis), 0)[self._bands]
        valid = np.ones(data.shape[1:], bool)
        return data, self._mask_values(data, valid)

    def _decimated(self, factor: int) -> tuple[np.ndarray, np.ndarray]:
        return self.read(0, self.grid.height, 0, self.grid.width, step=factor)  # strided: never the whole plane


class _PhotoReader(Reader):
    """Decodes the whole photo once (photos are small next to a block) with EXIF orientation."""

    def __init__(self, ref: SourceRef, grid: Grid | None = None):
        super().__init__(ref, grid)

    def __enter__(self) -> "_PhotoReader":
        path = self.ref.files[0]
        try:
            if _magic(path)[:4] in TIFF_MAGIC:
                image, alpha = self._decode_tiff(path)
            elif _is_png16_colour(path):
                image, alpha = self._decode_gdal(path)
            else:
                image, alpha = self._decode_pil(path)
        except SourceError:
            raise
        except Exception as exc:
            raise self._fail(exc) from None
        self.image = image if image.ndim == 3 else image[..., None]
        self.alpha = alpha
        return self

    @staticmethod
    def _split_alpha(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if image.ndim == 3 and image.shape[2] in (2, 4):
            return image[..., :-1], image[..., -1] > 0
        return image, None

    def _decode_pil(self, path: str) -> tuple[np.ndarray, np.ndarray | None]:
        from PIL import ImageOps

        with _open_photo(str(path)) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode == "1":
                im = im.convert("L")
            elif im.mode not in ("L", "LA", "RGB", "RGBA", "I", "F") and not im.mode.startswith("I;16"):
                im = im.convert("RGB")
            image = np.asarray(im)
        if image.dtype.byteorder == ">":
            image = image.astype(image.dtype.newbyteorder("="))
        return self._split_alpha(image)

    def _decode_tiff(self, path: str) -> tuple[np.ndarray, np.ndarray | None]:
        with _tiff_file(path, block_size=STACK_BLOCK_BYTES) as tif:
            page = tif.pages[0]
            image = page.asarray()
            orientation = int(page.tags["Orientation"].value) if "Orientation" in page.tags else 1
        if image.ndim == 3 and image.shape[0] in (1, 2, 3, 4) and image.shape[-1] not in (1, 2, 3, 4):
            image = np.moveaxis(image, 0, -1)  # planar configuration
        return self._split_alpha(_orient(image, orientation))

    def _decode_gdal(self, path: str) -> tuple[np.ndarray, np.ndarray | None]:
        import rasterio

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with urls.gdal_env([path]), rasterio.open(path) as ds:
                image = ds.read().transpose(1, 2, 0)
        return self._split_alpha(image)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        data = self.image[y0:y1, x0:x1].transpose(2, 0, 1)
        if self.ref.bands:
            data = data[[b - 1 for b in self.ref.bands]]
        valid = self.alpha[y0:y1, x0:x1].copy() if self.alpha is not None else np.ones(data.shape[1:], bool)
        return data, self._mask_values(data, valid)


def _orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Apply a TIFF/EXIF orientation tag (1-8) to an (h, w[, c]) array."""
    ops = {
        2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.swapaxes(a, 0, 1)[:, ::-1],
        7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1], 8: lambda a: np.swapaxes(a, 0, 1)[::-1],
    }
    return np.ascontiguousarray(ops[orientation](image)) if orientation in ops else image


def open_reader(ref: SourceRef, grid: Grid) -> Reader:
    readers = {"raster": _RasterReader, "stack": _StackReader, "photo": _PhotoReader}
    return readers[ref.kind](ref, grid)
