"""Tiling, blending and the dtype round trip lose nothing: a stand-in fuser that returns source A
gives back A bit for bit, for every tile size, overlap and block size, non-divisible sizes included."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import zarr

from pipeline import radiometry
from pipeline.runners.local import run_job
from pipeline.spec import NormaliseSpec, parse_job
from pipeline.tiling import Block, BlockAccumulator, axis_origins, blend_window, block_grid, make_grid, reflect_index, tiles_for_block
from pipeline_support import ContextFuser, SourceAFuser, pair_job, random_raster, write_geotiff

SIZES = [(300, 257), (41, 41), (113, 500)]
GEOMETRIES = [(112, 0, 64), (112, 32, 128), (112, 56, 1024), (224, 112, 64), (224, 16, 192), (448, 112, 256)]
DTYPES = ["uint16", "uint8", "int16", "float32"]
CASES = [(size, geometry, DTYPES[i % len(DTYPES)]) for i, (size, geometry) in enumerate(itertools.product(SIZES, GEOMETRIES))]


@pytest.mark.parametrize("size,geometry,dtype", CASES, ids=[f"{s[0]}x{s[1]}-t{g[0]}o{g[1]}b{g[2]}-{d}" for s, g, d in CASES])
def test_source_a_comes_back_bit_for_bit(tmp_path, size, geometry, dtype):
    tile, overlap, block = geometry
    rng = np.random.default_rng(sum(size) + tile + overlap)
    a = random_raster(rng, (3, *size), dtype)
    b = random_raster(rng, size, dtype)
    write_geotiff(tmp_path / "s_a.tif", a)
    write_geotiff(tmp_path / "s_b.tif", b)
    norm = {"method": "fixed", "min": -200, "max": 800} if dtype == "float32" else "dtype"
    doc = pair_job(tmp_path, tile=tile, overlap=overlap, block=block, chunk=64, formats=["zarr"], normalise_a=norm, normalise_b=norm)
    summary = run_job(parse_job(doc, base=tmp_path), fuser=SourceAFuser(), progress=False)
    assert summary.items_done == 1 and not summary.failures
    out = zarr.open_group(tmp_path / "out" / "s.zarr", mode="r")["fused"][:]
    if dtype == "float32":  # the float round trip through [0, 1] float32 is the reference
        stretch = radiometry.Stretch("fixed", (-200.0,), (800.0,))
        a = radiometry.to_output(radiometry.normalise(a, stretch).astype(np.float64), np.ones(size, bool), stretch, np.dtype(dtype), "reference", None)
    assert out.dtype == a.dtype
    np.testing.assert_array_equal(out, a)


def test_cog_and_nodata_round_trip(tmp_path):
    """int16 with nodata pixels in A: with the intersection rule the COG equals A, nodata included."""
    rng = np.random.default_rng(1)
    a = random_raster(rng, (1, 150, 131), "int16")
    a[a == -32768] = 0
    a[0, 10:20, 30:90] = -32768
    write_geotiff(tmp_path / "s_a.tif", a, nodata=-32768)
    write_geotiff(tmp_path / "s_b.tif", random_raster(rng, (150, 131), "int16"))
    doc = pair_job(tmp_path, tile=112, overlap=32, block=64, formats=["cog"], extra_output={"valid": "intersection"})
    summary = run_job(parse_job(doc, base=tmp_path), fuser=SourceAFuser(), progress=False)
    assert summary.items_done == 1
    import rasterio

    with rasterio.open(tmp_path / "out" / "s.tif") as ds:
        assert ds.nodata == -32768
        np.testing.assert_array_equal(ds.read(), a)


def test_blocks_are_independent_of_block_size(tmp_path):
    """A fuser whose output depends on tile context gives the same bits whatever the block size:
    each block equals the same region of a whole-image run."""
    rng = np.random.default_rng(2)
    write_geotiff(tmp_path / "s_a.tif", random_raster(rng, (3, 260, 300), "uint16"))
    write_geotiff(tmp_path / "s_b.tif", random_raster(rng, (260, 300), "uint16"))
    outputs = []
    for block in (64, 1024):
        doc = pair_job(tmp_path, tile=112, overlap=32, block=block, formats=["zarr"], run_dir=str(tmp_path / f"run{block}"),
                       extra_output={"dir": str(tmp_path / f"out{block}"), "prompt_maps": True})
        assert run_job(parse_job(doc, base=tmp_path), fuser=ContextFuser(), progress=False).items_done == 1
        group = zarr.open_group(tmp_path / f"out{block}" / "s.zarr", mode="r")
        outputs.append((group["fused"][:], group["prompt_share"][:]))
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])
    np.testing.assert_allclose(outputs[0][1].sum(axis=0), 1.0, atol=1e-5)  # shares of the sources sum to 1


# ----------------------------------------------------------------------------- tiling unit checks
@pytest.mark.parametrize("pad", [0, 56])
@pytest.mark.parametrize("length,tile,overlap", [(41, 224, 112), (300, 112, 32), (1000, 448, 112), (448, 448, 0), (449, 448, 0), (2048, 448, 112)])
def test_tile_origins_cover_the_padded_axis(length, tile, overlap, pad):
    origins = axis_origins(length, tile, overlap, pad)
    if length + 2 * pad <= tile:  # one tile, centred on the axis
        assert origins == (-((tile - length) // 2),)
        return
    assert origins[0] == -pad
    assert origins[-1] + tile == length + pad  # last tile flush with the padded edge
    steps = np.diff(origins)
    assert (steps <= tile - overlap).all() and (steps > 0).all()
    # the fewest tiles: one fewer could not keep the overlap
    assert (len(origins) - 2) * (tile - overlap) < length + 2 * pad - tile
    assert steps.max() - steps.min() <= 1  # evenly spaced


def test_blocks_tile_the_image_and_see_their_tiles():
    grid = make_grid(300, 257, 112, 32, 112)
    blocks = block_grid(300, 257, 128)
    cover = np.zeros((300, 257), int)
    for b in blocks:
        cover[b.y0:b.y1, b.x0:b.x1] += 1
        ys, xs = tiles_for_block(grid, b)
        assert ys[0] <= b.y0 and ys[-1] + grid.tile_h >= b.y1
        assert xs[0] <= b.x0 and xs[-1] + grid.tile_w >= b.x1
    assert (cover == 1).all()


def test_reflect_index_mirrors_without_repeating_the_edge():
    np.testing.assert_array_equal(reflect_index(-3, 7, 4), [3, 2, 1, 0, 1, 2, 3, 2, 1, 0])
    np.testing.assert_array_equal(reflect_index(-2, 2, 1), [0, 0, 0, 0])
    padded = np.pad(np.arange(5), (9, 9), mode="reflect")
    np.testing.assert_array_equal(reflect_index(-9, 14, 5), padded)


@pytest.mark.parametrize("kind", ["hann", "tukey", "flat"])
def test_blend_windows_are_positive_and_symmetric(kind):
    w = blend_window(112, 224, 32, kind)
    assert w.shape == (112, 224) and (w > 0).all()
    np.testing.assert_allclose(w, w[::-1, ::-1])


def test_accumulator_normalises_by_summed_weights():
    grid = make_grid(100, 100, 112, 32, 112)
    block = block_grid(100, 100, 100)[0]
    acc = BlockAccumulator(block, 1)
    rng = np.random.default_rng(0)
    for y in grid.ys:
        for x in grid.xs:
            acc.add(np.full((grid.tile_h, grid.tile_w, 1), 0.25, np.float32), y, x, rng.random((grid.tile_h, grid.tile_w)) + 0.1)
    values, covered = acc.result()
    assert covered.all()
    np.testing.assert_array_equal(values.astype(np.float32), 0.25)


def test_percentile_stretch_ignores_invalid_pixels():
    sample = np.concatenate([np.full((1, 10, 10), 100, np.uint16), np.full((1, 10, 10), 60000, np.uint16)], axis=2)
    valid = np.zeros((10, 20), bool)
    valid[:, :10] = True
    valid[0, 0] = False
    sample[0, 0, 0] = 0
    stretch = radiometry.compute_stretch(sample, valid, NormaliseSpec(method="percentile", low=0, high=100), np.dtype("uint16"))
    assert stretch.lo == (100.0,) and stretch.hi == (101.0,)  # constant valid data: hi = lo + 1
    with pytest.raises(ValueError, match="no valid pixel"):
        radiometry.compute_stretch(sample, np.zeros_like(valid), NormaliseSpec(method="percentile"), np.dtype("uint16"))


# ----------------------------------------------------------------------------- compiled kernels
@pytest.mark.parametrize("dtype,nodata", [("uint8", 0.0), ("uint16", 65535.0), ("int16", -32768.0), ("uint16", None), ("uint8", 7.0)])
def test_compiled_output_conversion_equals_the_numpy_form(dtype, nodata):
    from pipeline.radiometry import INTEGER_RANGES, _to_integer_compiled, _to_output_numpy

    rng = np.random.default_rng(1)
    values = rng.random((37, 53, 3), dtype=np.float32)
    values[0, :5] = np.array([0.0, 1.0, 0.5, 7 / 255, 1e-9], np.float32)[:, None]  # range ends, ties, the nodata level
    valid = rng.random((37, 53)) > 0.2
    lo_d, hi_d = INTEGER_RANGES[np.dtype(dtype)]
    for lo, hi in ((np.full(3, float(lo_d)), np.full(3, float(hi_d))), (np.array([3.0, 10.0, 0.0]), np.array([200.0, 250.0, 255.0]))):
        np.testing.assert_array_equal(
            _to_integer_compiled(values, valid, lo, hi, np.dtype(dtype), nodata),
            _to_output_numpy(values, valid, lo, hi, np.dtype(dtype), nodata),
        )


def test_compiled_blend_equals_the_numpy_form():
    rng = np.random.default_rng(2)
    block = Block(0, 0, 10, 90, 5, 75)
    acc = BlockAccumulator(block, 3)
    values, weights = np.zeros((80, 70, 3)), np.zeros((80, 70))
    window = blend_window(48, 48, 16, "hann")
    for oy, ox in ((0, 0), (30, 20), (60, 50), (-10, 40)):
        tile = rng.random((48, 48, 3), dtype=np.float32)
        valid = rng.random((48, 48)) > 0.1
        acc.add(tile, oy, ox, window, valid)
        y0, y1, x0, x1 = max(oy, 10), min(oy + 48, 90), max(ox, 5), min(ox + 48, 75)
        w = (window * valid)[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        values[y0 - 10:y1 - 10, x0 - 5:x1 - 5] += w[..., None] * tile[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        weights[y0 - 10:y1 - 10, x0 - 5:x1 - 5] += w
    np.testing.assert_array_equal(acc.values, values)
    np.testing.assert_array_equal(acc.weights, weights)
    blended, covered = acc.result()
    np.testing.assert_array_equal(covered, weights > 0)
    expected = np.where(covered[..., None], values / np.where(covered, weights, 1.0)[..., None], 0.0).astype(np.float32)
    np.testing.assert_array_equal(blended, expected)
