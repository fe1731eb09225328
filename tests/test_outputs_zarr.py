"""Zarr outputs as xarray + rioxarray users open them (default arguments): the CRS, transform and
pixels equal the COG / TIFF of the same item; consolidated metadata; CF and GeoZarr attributes."""
from __future__ import annotations

import json
import pathlib
import warnings

import numpy as np
import pyproj
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

from outputs_support import demo_run  # noqa: F401  (session fixture)



def _stores(run: pathlib.Path) -> list[pathlib.Path]:
    stores = sorted((run / "outputs").glob("*.zarr"))
    assert [s.stem for s in stores] == ["camera", "coins", "scene1"]
    return stores


def _file_beside(store: pathlib.Path, prompts: bool = False) -> pathlib.Path:
    suffixes = [".prompts.tif", ".prompts.tiff"] if prompts else [".tif", ".tiff"]
    return next(p for s in suffixes if (p := store.with_name(store.stem + s)).exists())


def _masked(path: pathlib.Path) -> tuple[np.ndarray, rasterio.crs.CRS | None, object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            data = ds.read().astype(np.float64)
            if ds.nodata is not None and not np.isnan(ds.nodata):
                data[data == ds.nodata] = np.nan
            return data, ds.crs, ds.transform


@pytest.mark.parametrize("variable", ["fused", "prompt_share"])
def test_every_store_opens_like_its_file_in_xarray_and_rioxarray(demo_run, variable):
    for store in _stores(demo_run):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # e.g. "no consolidated metadata"
            ds = xr.open_zarr(store)
        array = ds[variable]
        expected, crs, transform = _masked(_file_beside(store, prompts=variable == "prompt_share"))
        np.testing.assert_array_equal(array.values.astype(np.float64), expected, err_msg=str(store))
        if crs is None:
            assert array.rio.crs is None, store
            continue
        assert array.rio.crs == crs and pyproj.CRS(array.rio.crs.to_wkt()) == pyproj.CRS(crs.to_wkt())
        assert array.rio.transform().almost_equals(transform, precision=1e-9)
        assert array.rio.shape == expected.shape[1:]
        assert ds.x.attrs["standard_name"] == "projection_x_coordinate" and ds.x.attrs["units"] == "metre"
        # the same grid as the COG through rioxarray's own GeoTIFF reader
        cog = rioxarray.open_rasterio(_file_beside(store, prompts=variable == "prompt_share"))
        np.testing.assert_allclose(cog.x.values, ds.x.values) and np.testing.assert_allclose(cog.y.values, ds.y.values)


def test_cf_and_geozarr_attributes(demo_run):
    store = demo_run / "outputs" / "scene1.zarr"
    root = json.loads((store / "zarr.json").read_text())
    assert "consolidated_metadata" in root and "fused" in root["consolidated_metadata"]["metadata"]
    grid_mapping = json.loads((store / "spatial_ref" / "zarr.json").read_text())["attributes"]
    assert grid_mapping["grid_mapping_name"] == "transverse_mercator" and grid_mapping["longitude_of_central_meridian"] == 15
    assert grid_mapping["crs_wkt"].startswith("PROJCRS[")  # WKT2, not GDAL's WKT1 (PROJCS[)
    assert grid_mapping["GeoTransform"].split() == ["500000.0", "30.0", "0.0", "5000000.0", "0.0", "-30.0"]
    fused = json.loads((store / "fused" / "zarr.json").read_text())["attributes"]
    assert fused["grid_mapping"] == fused["coordinates"] == "spatial_ref"
    assert fused["proj:code"] == "EPSG:32633" and fused["proj:wkt2"].startswith("PROJCRS[")
    assert pyproj.CRS(fused["proj:wkt2"]) == pyproj.CRS("EPSG:32633")
    assert fused["spatial:transform"] == [30.0, 0.0, 500000.0, 0.0, -30.0, 5000000.0]


def test_zarr_format_2_stores_open_in_gdal_and_xarray_like_the_cog(tmp_path):
    """output.zarr_format: 2 writes stores GDAL 3.10 (so QGIS) reads with their CRS and grid."""
    from pipeline.runners.local import run_job
    from pipeline.spec import SpecError, parse_job
    from pipeline_support import ContextFuser, pair_job, random_raster, write_geotiff

    rng = np.random.default_rng(5)
    write_geotiff(tmp_path / "s1_a.tif", random_raster(rng, (3, 100, 130), "uint16"), nodata=0)
    write_geotiff(tmp_path / "s1_b.tif", random_raster(rng, (100, 130), "uint16"), crs="EPSG:32632")
    doc = pair_job(tmp_path, extra_output={"prompt_maps": True, "zarr_format": 2})
    summary = run_job(parse_job(doc, base=tmp_path), fuser=ContextFuser(), progress=False)
    assert summary.items_done == 1, summary.failures
    store = tmp_path / "out" / "s1.zarr"
    assert (store / ".zmetadata").exists() and (store / "fused" / ".zarray").exists()
    for variable, file in (("fused", "s1.tif"), ("prompt_share", "s1.prompts.tif")):
        with rasterio.open(f'ZARR:"{store}":/{variable}') as gdal_view, rasterio.open(tmp_path / "out" / file) as cog:
            assert gdal_view.crs == cog.crs and gdal_view.transform.almost_equals(cog.transform, precision=1e-9)
            assert gdal_view.count == cog.count
            np.testing.assert_array_equal(gdal_view.nodata, cog.nodata)  # 0, or NaN for the prompt shares
            np.testing.assert_array_equal(gdal_view.read(), cog.read())
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            array = xr.open_zarr(store)[variable]
        expected, crs, transform = _masked(tmp_path / "out" / file)
        assert array.rio.crs == crs and array.rio.transform().almost_equals(transform, precision=1e-9)
        np.testing.assert_array_equal(array.values.astype(np.float64), expected)
    stac = json.loads((tmp_path / "out" / "s1.stac.json").read_text())
    assert stac["assets"]["zarr"]["type"] == "application/vnd.zarr; version=2"
    with pytest.raises(SpecError, match="zarr_format"):
        parse_job(pair_job(tmp_path, extra_output={"zarr_format": 4}), base=tmp_path)
