"""STAC: the run catalog and the Items validate against the STAC 1.1 core schema and the extension
schemas they declare (offline), carry acquisition times, bands, sources and relative hrefs."""
from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import shutil

import numpy as np
import pystac
import pytest
import rasterio
import tifffile
from PIL import Image

from outputs_support import demo_run  # noqa: F401  (session fixture)
from pipeline.acquisition import acquisition_time, parse_time
from pipeline.runners.local import run_job
from pipeline.sources import SourceRef
from pipeline.spec import parse_job
from pipeline.stac import acquisition_properties
from pipeline.fsio import sha256_output
from pipeline_support import SourceAFuser, pair_job, random_raster, write_geotiff
from stac_support import OfflineValidator, use_offline_validator


@pytest.fixture(autouse=True)
def _offline_validation():
    use_offline_validator()
    yield
    pystac.validation.set_validator(pystac.validation.JsonSchemaSTACValidator())


def _all_hrefs(document: dict) -> list[tuple[str, str]]:
    links = [(link["rel"], link["href"]) for link in document.get("links", [])]
    return links + [("asset", a["href"]) for a in document.get("assets", {}).values()]


def test_demo_run_catalog_loads_whole_and_validates(demo_run):
    catalog = pystac.Catalog.from_file(str(demo_run / "catalog.json"))
    assert catalog.validate_all() == 6  # every item, against core + projection/file/raster/processing
    collections = {c.id: c for c in catalog.get_children()}
    assert set(collections) == {"brackets", "focus", "geo"}
    items = {i.id: i for i in catalog.get_items(recursive=True)}
    assert set(items) == {"astronaut", "chelsea", "coffee", "camera", "coins", "scene1"}

    geo = items["scene1"]
    assert geo.datetime == dt.datetime(2024, 6, 1, 10, 30, 12, tzinfo=dt.timezone.utc)  # TIFF DateTime
    assert geo.properties["proj:code"] == "EPSG:32633" and geo.properties["proj:shape"] == [427, 640]
    assert geo.common_metadata.created > geo.datetime  # processing time, not acquisition
    with rasterio.open(geo.assets["cog"].get_absolute_href()) as ds:
        assert list(ds.transform)[:6] == geo.properties["proj:transform"]
        bands = geo.assets["cog"].extra_fields["bands"]
        assert [b["data_type"] for b in bands] == list(ds.dtypes) and [b.get("nodata") for b in bands] == [ds.nodata] * 3
    bracket = items["astronaut"]  # EXIF DateTimeOriginal 09:15:01..03 at +02:00: a range
    assert bracket.datetime is None and bracket.to_dict()["properties"]["datetime"] is None
    assert (bracket.common_metadata.start_datetime, bracket.common_metadata.end_datetime) == (
        dt.datetime(2024, 6, 1, 7, 15, 1, tzinfo=dt.timezone.utc), dt.datetime(2024, 6, 1, 7, 15, 3, tzinfo=dt.timezone.utc))
    assert items["camera"].datetime == dt.datetime(2024, 6, 1, 8, tzinfo=dt.timezone.utc)  # OME AcquisitionDate
    assert collections["brackets"].extent.temporal.intervals[0][0] == bracket.common_metadata.start_datetime

    for item in items.values():
        assert item.get_single_link("root") and item.get_single_link("parent") and item.collection_id in collections
        sources = [pathlib.Path(link.href) for link in item.get_links("derived_from")]
        assert sources and all(p.is_absolute() and p.exists() for p in sources)
        for key, asset in item.assets.items():
            path = pathlib.Path(asset.get_absolute_href())
            assert asset.extra_fields["file:checksum"] == "1220" + sha256_output(path), key
            assert asset.extra_fields["bands"] and all("data_type" in b for b in asset.extra_fields["bands"])
    # relative hrefs everywhere inside the run (sources outside it keep absolute paths)
    for document_path in [demo_run / "catalog.json", *sorted((demo_run / "stac").rglob("*.json"))]:
        for rel, href in _all_hrefs(json.loads(document_path.read_text())):
            assert rel == "derived_from" or not pathlib.PurePath(href).is_absolute(), (document_path, rel, href)


def test_standalone_items_beside_the_outputs_validate(demo_run):
    for path in sorted((demo_run / "outputs").glob("*.stac.json")):
        document = json.loads(path.read_text())
        assert "collection" not in document and document["properties"]["tcmoa:collection"]
        pystac.Item.from_dict(document).validate()
        item = pystac.Item.from_file(str(path))
        assert all(pathlib.Path(a.get_absolute_href()).exists() for a in item.assets.values())


def test_the_validator_rejects_a_broken_item(demo_run):
    """The offline schemas really apply: a wrong field type in each extension fails."""
    document = json.loads((demo_run / "outputs" / "scene1.stac.json").read_text())
    breakages = [
        lambda d: d["properties"].update({"proj:shape": "427x640"}),
        lambda d: d["assets"]["cog"].update({"file:size": "big"}),
        lambda d: d["assets"]["cog"]["bands"][0].update({"raster:bits_per_sample": "sixteen"}),
        lambda d: d["properties"].update({"processing:software": "tcmoa"}),
        lambda d: d["properties"].pop("datetime"),
    ]
    OfflineValidator()  # loads
    for breakage in breakages:
        broken = json.loads(json.dumps(document))
        breakage(broken)
        with pytest.raises(pystac.errors.STACValidationError):
            pystac.validation.validate_dict(broken)


def test_catalog_survives_moving_the_run_and_follows_resume(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "a"
    for scene, times in {"s1": ("2024:06:01 10:00:00", "2024:06:01 10:00:00"), "s2": ("2024:06:02 10:00:00", "2024:06:03 11:00:00")}.items():
        for role, data, when in (("a", random_raster(rng, (3, 90, 100), "uint16"), times[0]), ("b", random_raster(rng, (90, 100), "uint16"), times[1])):
            path = write_geotiff(root / f"{scene}_{role}.tif", data)
            with rasterio.open(path, "r+") as ds:
                ds.update_tags(TIFFTAG_DATETIME=when)
    job = parse_job(pair_job(root), base=root)
    run_job(job, fuser=SourceAFuser(), progress=False)
    run_job(job, fuser=SourceAFuser(), progress=False)  # rebuilt, same content
    moved = tmp_path / "b"
    shutil.move(root, moved)
    catalog = pystac.Catalog.from_file(str(moved / "run" / "catalog.json"))
    assert catalog.validate_all() == 2
    items = {i.id: i for i in catalog.get_items(recursive=True)}
    assert items["s1"].datetime == dt.datetime(2024, 6, 1, 10, tzinfo=dt.timezone.utc)
    assert items["s2"].datetime is None and items["s2"].common_metadata.end_datetime == dt.datetime(2024, 6, 3, 11, tzinfo=dt.timezone.utc)
    for item in items.values():
        assert all(pathlib.Path(a.get_absolute_href()).is_relative_to(moved) and pathlib.Path(a.get_absolute_href()).exists()
                   for a in item.assets.values())
    assert len(list((moved / "run" / "stac").rglob("*.json"))) == 3


def test_acquisition_times_from_file_metadata(tmp_path):
    assert parse_time("2024:05:01 10:30:00", "-05:00") == dt.datetime(2024, 5, 1, 15, 30, tzinfo=dt.timezone.utc)
    assert parse_time("not a time") is None
    exif = Image.Exif()
    exif[0x0132] = "2023:01:02 03:04:05"  # only the IFD0 DateTime
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "p.jpg", exif=exif)
    assert acquisition_time(str(tmp_path / "p.jpg"), "photo") == dt.datetime(2023, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "none.png")
    assert acquisition_time(str(tmp_path / "none.png"), "photo") is None
    path = write_geotiff(tmp_path / "l8.tif", np.zeros((16, 16), np.uint16))
    with rasterio.open(path, "r+") as ds:  # Landsat MTL items copied into GDAL metadata
        ds.update_tags(DATE_ACQUIRED="2021-07-14", SCENE_CENTER_TIME='"09:58:43.1234560Z"')
    assert acquisition_time(str(path), "raster") == dt.datetime(2021, 7, 14, 9, 58, 43, 123456, tzinfo=dt.timezone.utc)
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((2, 8, 8), np.uint16), datetime="2022:02:03 04:05:06")
    assert acquisition_time(str(tmp_path / "s.tif"), "stack") == dt.datetime(2022, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)
    assert acquisition_time(str(tmp_path / "missing.tif"), "raster") is None
    # no source records a time: a range of the files' modification times, labelled as such
    untimed = SourceRef(role="a", kind="photo", files=(str(tmp_path / "none.png"),))
    os.utime(tmp_path / "none.png", (1_700_000_000, 1_700_000_000))
    properties, single = acquisition_properties([untimed])
    assert single == dt.datetime.fromtimestamp(1_700_000_000, dt.timezone.utc)
    assert properties["tcmoa:datetime_from"].startswith("file modification times")
