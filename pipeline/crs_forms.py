"""A grid's CRS and transform in the forms other tools read, all derived by pyproj from one WKT.

- CF / xarray / rioxarray: a `spatial_ref` grid-mapping variable (`CRS.to_cf()`: grid_mapping_name
  and its parameters, `crs_wkt`; plus GDAL's `spatial_ref` and `GeoTransform`), `x`/`y` coordinate
  attributes from the CRS's coordinate system (`CRS.cs_to_cf()`), and `grid_mapping` +
  `coordinates` on each data variable, so `xr.open_zarr` + rioxarray see the CRS with defaults;
- GeoZarr (`proj:code`, `proj:wkt2` in WKT2:2019, `spatial:transform` in rasterio Affine order);
- STAC projection (`proj:code`, or `proj:wkt2` when there is no authority code).
"""
from __future__ import annotations

from functools import lru_cache

GRID_MAPPING = "spatial_ref"


@lru_cache(maxsize=64)
def _crs(wkt: str):
    from pyproj import CRS

    return CRS.from_wkt(wkt)


def authority_code(wkt: str) -> str | None:
    """'EPSG:32633' when the CRS is exactly an authority's definition, else None."""
    found = _crs(wkt).to_authority(min_confidence=100)
    return ":".join(found) if found else None


def wkt2(wkt: str) -> str:
    """WKT2:2019 (GDAL writes WKT1 by default; GeoZarr and STAC want WKT2)."""
    return _crs(wkt).to_wkt()


def geotransform(transform) -> str:
    """GDAL's GeoTransform text from a rasterio-order affine (a, b, c, d, e, f)."""
    a, b, c, d, e, f = transform[:6]
    return " ".join(repr(float(v)) for v in (c, a, b, f, d, e))


def grid_mapping_attributes(wkt: str, transform) -> dict:
    """Attributes of the CF grid-mapping variable."""
    attributes = dict(_crs(wkt).to_cf())
    attributes["crs_wkt"] = wkt2(wkt)
    attributes["spatial_ref"] = attributes["crs_wkt"]  # what GDAL's netCDF/Zarr drivers look for
    attributes["GeoTransform"] = geotransform(transform)
    return attributes


def axis_attributes(wkt: str) -> dict[str, dict]:
    """{'x': {...}, 'y': {...}} CF attributes of the coordinate arrays (standard_name, units, axis)."""
    by_axis = {entry.get("axis"): entry for entry in _crs(wkt).cs_to_cf()}
    return {name: dict(by_axis.get(name.upper(), {"axis": name.upper()})) for name in ("x", "y")}


def geozarr_attributes(wkt: str, transform, height: int, width: int) -> dict:
    return {
        "proj:code": authority_code(wkt),
        "proj:wkt2": wkt2(wkt),
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": [float(v) for v in transform[:6]],
        "spatial:shape": [height, width],
        "spatial:registration": "pixel",
    }
