"""File exports: the COG's overviews (built in the intermediate, copied by the COG driver)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
import rasterio.shutil

from pipeline import writers
from pipeline.sources import Grid
from pipeline.tiling import Block


@pytest.mark.parametrize("width,height", [(2041, 1500), (1025, 600), (513, 40), (512, 512), (300, 2100), (4096, 4097)])
def test_overview_levels_match_the_cog_driver(tmp_path, width, height):
    """As many levels as the COG driver makes when it computes overviews itself."""
    src = tmp_path / "src.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(src, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8",
                           tiled=True, blockxsize=256, blockysize=256) as ds:
            ds.write(np.zeros((1, height, width), np.uint8))
        rasterio.shutil.copy(src, tmp_path / "cog.tif", driver="COG", blocksize=512)
        with rasterio.open(tmp_path / "cog.tif") as cog:
            driver_levels = cog.overviews(1)
    assert writers.overview_factors(width, height, 512) == driver_levels


def test_cog_overviews_average_valid_pixels(tmp_path):
    """Level 1 of an exported COG is the mean of each 2x2 cell's valid pixels (nodata excluded)."""
    height, width = 1100, 1300
    rng = np.random.default_rng(3)
    data = rng.random((2, height, width), dtype=np.float32)
    data[:, :300, :200] = np.nan  # nodata corner
    data[:, 601, 801] = np.nan  # a lone nodata pixel inside a 2x2 cell
    grid = Grid(width, height, rasterio.crs.CRS.from_epsg(32633).to_wkt(), (10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0))
    store = tmp_path / "item.zarr"
    writers.create_store(store, grid=grid, channels=2, dtype=np.dtype("float32"), nodata=float("nan"), chunk=512,
                         band_names=["a", "b"], prompt_names=None, attributes={})
    for y0 in range(0, height, 512):
        for x0 in range(0, width, 512):
            block = Block(y0 // 512, x0 // 512, y0, min(y0 + 512, height), x0, min(x0 + 512, width))
            writers.write_block(store, block, data[:, block.y0:block.y1, block.x0:block.x1], None)
    cog = tmp_path / "item.tif"
    writers.export_files(store, {"cog": cog}, array=writers.FUSED, grid=grid, nodata=float("nan"), band_names=["a", "b"],
                         tags={}, blocksize=512, compress="deflate", rows=512)
    assert writers.validate_cog(cog) == []
    with rasterio.open(cog) as full:
        assert full.overviews(1) == [2, 4]
        np.testing.assert_array_equal(full.read(), data)
    with rasterio.open(cog, overview_level=0) as level:
        overview = level.read()
    cells = data.reshape(2, height // 2, 2, width // 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nodata cells
        expected = np.nanmean(cells, axis=(2, 4))
    np.testing.assert_allclose(overview, expected, rtol=1e-6, equal_nan=True)
    assert np.isnan(overview[:, :150, :100]).all() and np.isfinite(overview[:, 300, 400]).all()
