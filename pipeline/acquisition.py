"""When a source was acquired, from the file's own metadata (for the STAC `datetime`).

Read where the formats keep it: EXIF DateTimeOriginal (with OffsetTimeOriginal) or DateTime in
photos, an OME-TIFF's Image/AcquisitionDate, the TIFF DateTime tag and GDAL metadata items that
products use for the acquisition (ACQUISITIONDATETIME, DATE_ACQUIRED + SCENE_CENTER_TIME, ...).
A time without a zone is taken as UTC. None when the file says nothing: the time is never guessed
from the file system.
"""
from __future__ import annotations

import datetime as dt
import pathlib
import re
from typing import Iterable

from pipeline import urls

EXIF_IFD = 0x8769
EXIF_DATETIME = 0x0132
EXIF_DATETIME_ORIGINAL = 0x9003
EXIF_OFFSET_TIME_ORIGINAL = 0x9011
# GDAL metadata items (upper-cased) that hold an acquisition time, most specific first
GDAL_ITEMS = ("ACQUISITIONDATETIME", "ACQUISITION_DATETIME", "ACQUISITION_TIME", "DATETIME_ORIGINAL", "TIFFTAG_DATETIME")

_TIFF_FORMAT = re.compile(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})$")


def parse_time(text: str, offset: str | None = None) -> dt.datetime | None:
    """'2024:05:01 10:30:00' (TIFF/EXIF) or ISO 8601; a naive time is UTC unless `offset` ('+02:00')."""
    text = str(text).strip().rstrip("\x00").strip()
    match = _TIFF_FORMAT.match(text)
    if match:
        text = "{}-{}-{}T{}:{}:{}".format(*match.groups())
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        zone = dt.timezone.utc
        if offset:
            try:
                zone = dt.datetime.fromisoformat(f"2000-01-01T00:00:00{offset.strip()}").tzinfo or zone
            except ValueError:
                pass
        value = value.replace(tzinfo=zone)
    return value.astimezone(dt.timezone.utc)


def _from_gdal_metadata(tags: dict[str, str]) -> dt.datetime | None:
    upper = {k.upper(): v for k, v in tags.items()}
    if "DATE_ACQUIRED" in upper:  # Landsat MTL style: a date and a separate centre time
        found = parse_time(f"{upper['DATE_ACQUIRED']}T{upper.get('SCENE_CENTER_TIME', '00:00:00').strip(chr(34))[:15]}")
        if found:
            return found
    for key in GDAL_ITEMS:
        if key in upper and (found := parse_time(upper[key])):
            return found
    return None


def _raster_time(path: str) -> dt.datetime | None:
    import rasterio

    with urls.gdal_env([path]), rasterio.open(path) as ds:
        return _from_gdal_metadata(ds.tags())


def _photo_time(path: str) -> dt.datetime | None:
    from PIL import Image

    with urls.opened(path) as file, Image.open(file) as im:
        exif = im.getexif()
        sub = exif.get_ifd(EXIF_IFD)
        if EXIF_DATETIME_ORIGINAL in sub:
            return parse_time(sub[EXIF_DATETIME_ORIGINAL], sub.get(EXIF_OFFSET_TIME_ORIGINAL))
        return parse_time(exif[EXIF_DATETIME]) if EXIF_DATETIME in exif else None


def _stack_time(path: str) -> dt.datetime | None:
    import xml.etree.ElementTree as ET

    import tifffile

    with urls.opened(path) as file, tifffile.TiffFile(file, name=urls.name(path)) as tif:
        if tif.ome_metadata:
            for element in ET.fromstring(tif.ome_metadata).iter():
                if element.tag.endswith("}AcquisitionDate") and element.text:
                    return parse_time(element.text)
        tag = tif.pages[0].tags.get("DateTime")
        return parse_time(tag.value) if tag is not None else None


READERS = {"raster": _raster_time, "photo": _photo_time, "stack": _stack_time}


def acquisition_time(path: str, kind: str) -> dt.datetime | None:
    """The acquisition time the file records, or None (also when the metadata cannot be read:
    the time is descriptive, a file that fused correctly is not failed over it)."""
    if not urls.is_url(path) and "://" not in path and not pathlib.Path(path).exists():
        return None
    try:
        return READERS[kind](path)
    except Exception:  # noqa: BLE001 - unreadable metadata means "unknown", nothing more
        return None


def acquisition_range(files: Iterable[tuple[str, str]]) -> tuple[dt.datetime | None, dt.datetime | None]:
    """(earliest, latest) acquisition time over (path, kind) pairs; (None, None) when none is known."""
    times = [t for path, kind in dict.fromkeys(files) if (t := acquisition_time(path, kind)) is not None]
    return (min(times), max(times)) if times else (None, None)
