"""GDAL creation options for the GeoTIFF / COG outputs: defaults, the user's own, and their check.

The defaults: the job's `output.compress` (DEFLATE unless told otherwise) with the predictor that
suits the data: horizontal differencing (2, STANDARD) for integers, floating-point (3) for floats.
Options the user gives (`tcmoa fuse --co KEY=VALUE`, `output.creation_options` in a job) replace
the defaults of the same name. They are checked, before anything runs, against the option list the
GDAL driver itself publishes (name, and value for integer, number, boolean and choice options):
GDAL only warns about an unknown option, and some bad values (`BLOCKSIZE=abc` for COG) crash it.
rasterio does not expose that list, so it is read from the GDAL library rasterio has loaded.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
import xml.etree.ElementTree as ET

import numpy as np

DRIVERS = {"cog": "COG", "tiff": "GTiff"}  # output format -> GDAL driver the options go to
PREDICTED = ("DEFLATE", "ZSTD", "LZW", "LZMA")  # compressions a TIFF predictor applies to
BOOLEAN = ("YES", "NO", "TRUE", "FALSE", "ON", "OFF", "1", "0")


def parse_pairs(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """KEY=VALUE strings (`--co`) as a mapping with upper-case keys; ValueError names a bad one."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"creation option {pair!r} is not KEY=VALUE")
        options[key.strip().upper()] = value.strip()
    return options


@functools.lru_cache(maxsize=None)
def _gdal_library() -> ctypes.CDLL:
    """The libgdal rasterio uses (already loaded: this returns the same handle)."""
    import rasterio._base  # noqa: F401  (loads libgdal into the process)

    candidates = []
    try:
        with open("/proc/self/maps") as maps:
            candidates += [line.split()[-1] for line in maps if "libgdal" in line.split()[-1]]
    except OSError:
        pass
    here = os.path.dirname(os.path.dirname(rasterio._base.__file__))
    candidates += glob.glob(os.path.join(here, "rasterio.libs", "libgdal*")) + glob.glob(os.path.join(here, "rasterio", ".dylibs", "libgdal*"))
    candidates += [p for p in [ctypes.util.find_library("gdal")] if p]
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        lib.GDALAllRegister()
        lib.GDALGetDriverByName.restype = ctypes.c_void_p
        lib.GDALGetDriverByName.argtypes = [ctypes.c_char_p]
        lib.GDALGetMetadataItem.restype = ctypes.c_char_p
        lib.GDALGetMetadataItem.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
        return lib
    raise OSError("cannot find the GDAL library rasterio uses, to check creation options against")


@functools.lru_cache(maxsize=None)
def driver_options(driver: str) -> dict[str, ET.Element]:
    """The creation options GDAL's `driver` accepts: upper-case name -> its <Option> element."""
    lib = _gdal_library()
    handle = lib.GDALGetDriverByName(driver.encode())
    text = lib.GDALGetMetadataItem(handle, b"DMD_CREATIONOPTIONLIST", None) if handle else None
    if not text:
        raise OSError(f"GDAL driver {driver} is not available or publishes no creation options")
    return {o.get("name").upper(): o for o in ET.fromstring(text.decode()).iter("Option")}


def _value_problem(option: ET.Element, value: str) -> str | None:
    kind = option.get("type", "string")
    if kind == "int":
        try:
            number = int(value)
        except ValueError:
            return "an integer"
    elif kind == "float":
        try:
            number = float(value)
        except ValueError:
            return "a number"
    elif kind == "boolean":
        return None if value.upper() in BOOLEAN else "YES or NO"
    elif kind == "string-select":
        allowed = [v.text.strip() for v in option.iter("Value") if v.text] + [v.get("alias") for v in option.iter("Value") if v.get("alias")]
        return None if value.upper() in (a.upper() for a in allowed) else f"one of {', '.join(allowed)}"
    else:
        return None
    low, high = option.get("min"), option.get("max")
    if (low is not None and number < float(low)) or (high is not None and number > float(high)):
        return f"{'at least ' + low if low else ''}{' and ' if low and high else ''}{'at most ' + high if high else ''}"
    return None


def check(options: dict[str, str], formats) -> None:
    """ValueError, one line naming the option, the driver and what it accepts, for the first
    option a GDAL driver of `formats` (cog, tiff) does not take as given."""
    drivers = [DRIVERS[f] for f in formats if f in DRIVERS]
    if options and not drivers:
        raise ValueError(f"creation options apply to COG and GeoTIFF outputs, and none is written (formats {', '.join(formats)})")
    for driver in drivers:
        known = driver_options(driver)
        for key, value in options.items():
            if key not in known:
                raise ValueError(f"creation option {key}={value}: GDAL's {driver} driver has no option {key}")
            wanted = _value_problem(known[key], str(value))
            if wanted:
                raise ValueError(f"creation option {key}={value}: GDAL's {driver} driver wants {wanted}")


def predictor(dtype: str | np.dtype, compress: str) -> str | None:
    """The TIFF predictor for this data and compression: 2 for integers, 3 for floats, none otherwise."""
    if compress.upper() not in PREDICTED:
        return None
    return "3" if np.dtype(dtype).kind == "f" else "2"


def for_driver(driver: str, *, dtype: str | np.dtype, compress: str, defaults: dict, user: dict) -> dict:
    """The options one export passes to GDAL: `defaults`, the compression and its predictor, then
    the user's options over them (the predictor follows the user's COMPRESS when given)."""
    options = {**defaults, "COMPRESS": compress.upper()}
    options.update({k.upper(): v for k, v in user.items()})
    if "PREDICTOR" not in {k.upper() for k in user}:
        chosen = predictor(dtype, options["COMPRESS"])
        if chosen:
            # COG names the predictors (it also takes YES, "2 for integers, 3 for floats");
            # GTiff takes the numbers
            options["PREDICTOR"] = {"2": "STANDARD", "3": "FLOATING_POINT"}[chosen] if driver == "COG" else chosen
    return options
