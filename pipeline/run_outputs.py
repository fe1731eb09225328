"""A run's outputs for notebooks: `open_run(RUN_DIR)` (also `tcmoa.open_run`).

Every done item as a lazily read xarray Dataset: `fused` (band, y, x) and, where written,
`prompt_share` (source, y, x), from the item's Zarr store (xarray's Zarr reader) or else its
COG / TIFF / PNG (rioxarray), georeferenced wherever the output is (`ds.fused.rio.crs`); the run's
STAC catalog (pystac) and its status (items, failures).
"""
from __future__ import annotations

import pathlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

FILE_FORMATS = ("cog", "tiff", "png", "ome-tiff")


@dataclass
class RunOutputs:
    path: pathlib.Path
    datasets: dict[str, Any]  # "collection/item" -> xarray.Dataset
    catalog: Any  # pystac.Catalog, or None before any item is done
    status: dict = field(repr=False, default_factory=dict)

    def __getitem__(self, key: str):
        """A dataset by "collection/item", or by item id alone when that is unambiguous."""
        if key in self.datasets:
            return self.datasets[key]
        matches = [k for k in self.datasets if k.split("/", 1)[1] == key]
        if len(matches) != 1:
            raise KeyError(f"{key!r}: {'ambiguous, one of ' + str(matches) if matches else 'no such done item'}"
                           f" in {self.path} (items: {', '.join(self.datasets)})")
        return self.datasets[matches[0]]

    def __iter__(self) -> Iterator[str]:
        return iter(self.datasets)

    def __len__(self) -> int:
        return len(self.datasets)

    def keys(self):
        return self.datasets.keys()

    @property
    def failures(self) -> list[dict]:
        return self.status.get("failures", [])


def _open_file(path, name: str, dim: str):
    import rasterio
    import rioxarray

    from pipeline import urls

    with warnings.catch_warnings(), urls.gdal_env([str(path)]):  # an object: GDAL's remote-read options
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # photos
        array = rioxarray.open_rasterio(str(path), mask_and_scale=True).load()
    return array.rename({"band": dim}).rename(name) if dim != "band" else array.rename(name)


def _open_ome_zarr(path: pathlib.Path):
    """Level 0 of an OME-Zarr image (read into memory: xarray's Zarr reader cannot open one level
    of a multiscale group), with the physical y/x coordinates of its pixels (OME-Zarr puts pixel
    centres at index x scale)."""
    import numpy as np
    import xarray as xr
    import zarr

    group = zarr.open_group(path, mode="r")
    level = group[group.attrs["ome"]["multiscales"][0]["datasets"][0]["path"]]
    scale = group.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    _, height, width = level.shape
    coords = {"y": np.arange(height) * scale[1], "x": np.arange(width) * scale[2]}
    fused = xr.DataArray(level[...], dims=("band", "y", "x"), coords=coords, name="fused")
    return xr.Dataset({"fused": fused}, attrs=dict(group.attrs["tcmoa"]))


def open_item(assets: dict):
    """One item's outputs (its recorded assets) as an xarray Dataset."""
    import xarray as xr

    from pipeline import runstore

    if "zarr" in assets:  # a folder, or zarr's FsspecStore for a store in a bucket
        return xr.open_zarr(runstore.zarr_store(assets["zarr"]["path"], read_only=True))
    fmt = next((f for f in FILE_FORMATS if f in assets), None)
    if fmt is None and "ome-zarr" in assets:
        return _open_ome_zarr(pathlib.Path(assets["ome-zarr"]["path"]))
    if fmt is None:
        raise ValueError(f"no raster output among {sorted(assets)}")
    parts = [_open_file(assets[fmt]["path"], "fused", "band")]
    if "prompts" in assets:
        parts.append(_open_file(assets["prompts"]["path"], "prompt_share", "source"))
    return xr.merge(parts, combine_attrs="drop_conflicts", compat="override", join="override")


def open_run(path: str | pathlib.Path) -> RunOutputs:
    """The done outputs of the run in `path` as xarray Datasets, with its STAC catalog and status."""
    from pipeline.stac import CATALOG_FILE
    from pipeline.status import done_outputs, run_status

    from pipeline import runstore

    path = runstore.location(path)
    status = run_status(path)  # raises FileNotFoundError for a folder that is not a run directory
    datasets = {key: open_item(assets) for key, assets in done_outputs(path).items()}
    catalog = None
    if runstore.exists(path / CATALOG_FILE):
        import pystac

        catalog = pystac.Catalog.from_file(str(path / CATALOG_FILE), stac_io=_stac_io())
    return RunOutputs(path, datasets, catalog, status)


def _stac_io():
    """pystac's I/O, reading object-store URLs (s3://...) through fsspec as well."""
    import pystac

    from pipeline import urls

    class FsspecStacIO(pystac.stac_io.DefaultStacIO):
        def read_text_from_href(self, href: str) -> str:
            if urls.is_url(href) and not href.startswith(("http://", "https://")):
                return urls.read_bytes(href).decode("utf-8")
            return super().read_text_from_href(href)

    return FsspecStacIO()
