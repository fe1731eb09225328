"""Per-item work around the units: prepare (stretch statistics, the item's work store) before them,
export (COG / TIFF / PNG files, the Zarr store, a STAC Item) after them.

Both are plain functions of plain data (an `ItemPlan`, the run's `RunInfo`, the run directory's
path), so a runner calls them in-process or as Ray tasks; neither writes status records.
"""
from __future__ import annotations

import contextlib
import json
import pathlib

import numpy as np

from pipeline import fsio, ome, output_safety, radiometry, runstore, verify, writers
from pipeline.manifest import canonical_json
from pipeline.stac import stac_item
from pipeline.plan import ItemPlan, RunInfo
from pipeline.radiometry import Stretch
from pipeline.sources import SourceError, open_reader

FILE_SUFFIXES = {"cog": ".tif", "tiff": ".tiff", "png": ".png"}  # exported through GDAL
OME_SUFFIXES = {"ome-tiff": ".ome.tif", "ome-zarr": ".ome.zarr"}  # exported by pipeline.ome
STORE_ID_ATTR = "tcmoa:prepare_id"


def store_path(work_dir, item: ItemPlan) -> runstore.Location:
    """The item's work store (in the run directory's work/ folder) while its blocks are written:
    a folder, or a prefix in an object store."""
    return runstore.location(work_dir) / item.collection / f"{item.item_id}.zarr"


def remove_store(work_dir, item: ItemPlan) -> None:
    """Delete the item's work store (if still there) and the folders it leaves empty."""
    store = store_path(work_dir, item)
    runstore.remove_tree(store)
    if runstore.is_remote(store):
        return  # a prefix without objects is gone by itself
    for folder in (store.parent, pathlib.Path(work_dir)):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty


def store_matches(path: pathlib.Path, prepare_id: str) -> bool:
    import zarr

    try:
        return zarr.open_group(runstore.zarr_store(path, read_only=True), mode="r").attrs.get(STORE_ID_ATTR) == prepare_id
    except Exception:  # missing or damaged store: not ours
        return False


# ----------------------------------------------------------------------------- prepare
def compute_stretches(item: ItemPlan) -> list[Stretch]:
    """Per-source radiometry from a decimated read of each source on the reference grid."""
    stretches = []
    for ref, info in zip(item.sources, item.infos):
        with open_reader(ref, item.grid) as reader:
            raw, valid, factor = reader.read_decimated(ref.normalise.decimate_to)
        if not valid.any():
            raise SourceError(ref.files[0], f"source {ref.role!r}: every pixel is nodata (or outside the file's footprint) on the reference grid")
        try:
            stretches.append(radiometry.compute_stretch(raw, valid, ref.normalise, np.dtype(info.dtype), decimation=factor))
        except ValueError as exc:
            raise SourceError(ref.files[0], f"source {ref.role!r}: {exc}") from None
    return stretches


def provenance(run: RunInfo, item: ItemPlan, stretches: list[Stretch]) -> dict:
    import rasterio
    import zarr

    from tcmoa import __version__ as tcmoa_version

    return {
        "job": run.job_name, "job_fingerprint": run.fingerprint, "collection": item.collection, "item": item.item_id,
        "task": item.task, "model": {**run.model_key, "config": run.model_config}, "tiling": run.tiling,
        "sources": [{"role": s.role, "files": list(s.files), "bands": s.bands, "plane": s.plane} for s in item.sources],
        "radiometry": {s.role: st.to_dict() for s, st in zip(item.sources, stretches)},
        "output": {"dtype": item.output_dtype, "scale": item.scale, "nodata": item.output_nodata, "valid": item.valid_rule},
        "reduction": "pairwise left fold in source order" if len(item.sources) > 2 else "pair",
        "versions": {"tcmoa": tcmoa_version, "numpy": np.__version__, "rasterio": rasterio.__version__,
                     "gdal": rasterio.__gdal_version__, "zarr": zarr.__version__},
    }


def prepare_item(run: RunInfo, item: ItemPlan, work_dir) -> str:
    """Compute the item's radiometry and create its work store afresh (arrays, coordinates,
    attributes, all before any unit writes). Returns what its prepare record keeps (JSON): the
    stretches, one per source, and the checksum of what no block writes in the store."""
    store = store_path(work_dir, item)
    if not runstore.is_remote(item.output_base):
        fsio.check_writable(pathlib.Path(item.output_base).parent)
    if not runstore.is_remote(store):
        fsio.remove_stale_temporaries(store)
    stretches = compute_stretches(item)
    attributes = {
        STORE_ID_ATTR: item.prepare_id,
        "title": f"{item.collection}/{item.item_id} fused by TC-MoA",
        "provenance": json.loads(canonical_json(provenance(run, item, stretches))),
    }
    prompt_names = [f"share:{role}" for role in item.roles] if item.prompt_maps else None
    create = dict(grid=item.grid, channels=item.out_channels, dtype=np.dtype(item.output_dtype), nodata=item.output_nodata,
                  chunk=item.chunk, band_names=list(item.band_names), prompt_names=prompt_names, attributes=attributes,
                  zarr_format=item.zarr_format)
    if runstore.is_remote(store):
        # no rename in an object store: the store is made in place, after clearing what a killed
        # preparation left; it is trusted only through its prepare record, written after this
        # returns, with the digest of what was made
        runstore.remove_tree(store)
        writers.create_store(store, **create)
    else:
        with fsio.atomic_path(store, replace_dir=True) as tmp:  # the work store is the run's own
            writers.create_store(tmp, **create)
    return canonical_json({"radiometry": [s.to_dict() for s in stretches], "store": verify.store_static_digest(store)})


# ----------------------------------------------------------------------------- export
def output_paths(item: ItemPlan) -> dict[str, runstore.Location]:
    base = runstore.location(item.output_base)
    paths = {fmt: base.with_name(base.name + FILE_SUFFIXES[fmt]) for fmt in item.formats if fmt in FILE_SUFFIXES}
    paths.update({fmt: base.with_name(base.name + OME_SUFFIXES[fmt]) for fmt in item.formats if fmt in OME_SUFFIXES})
    if "zarr" in item.formats:
        paths["zarr"] = base.with_name(base.name + ".zarr")
    if item.prompt_maps and any(f in FILE_SUFFIXES or f in OME_SUFFIXES for f in item.formats):  # zarr holds its own
        suffix = ".prompts.tif" if "cog" in item.formats else ".prompts.tiff"
        paths["prompts"] = base.with_name(base.name + suffix)
    paths["stac"] = base.with_name(base.name + ".stac.json")
    return paths


OUTPUT_KINDS = {"zarr": "zarr store", "ome-zarr": "zarr store"}  # every other output is a file


def check_item_outputs(run: RunInfo, item: ItemPlan, owned: set[str]) -> dict[str, runstore.Location]:
    """The item's output paths, after refusing (OutputRefused) any that holds something this run
    did not create, unless the job says overwrite (and then only a thing of the same kind)."""
    paths = output_paths(item)
    for fmt, path in paths.items():
        output_safety.check_output(path, OUTPUT_KINDS.get(fmt, "file"), owned=owned, overwrite=run.overwrite)
    return paths


def export_item(run: RunInfo, item: ItemPlan, work_dir: pathlib.Path, stretches: list[Stretch],
                owned: set[str] = frozenset()) -> dict[str, dict]:
    """Export the files of a finished item and write its STAC Item (the Zarr asset's checksum is
    of the work store, which `place_store` then renames into place). Returns the assets with their
    checksums and sizes. `owned`: output paths this run created (they may be replaced). On failure
    everything this call wrote is removed again."""
    store = store_path(work_dir, item)
    paths = check_item_outputs(run, item, owned)
    tags = {
        "TCMOA_JOB": run.job_name, "TCMOA_ITEM": item.key, "TCMOA_TASK": json.dumps(item.task),
        "TCMOA_PROVENANCE": canonical_json(provenance(run, item, stretches)),
    }
    common = dict(grid=item.grid, blocksize=item.cog_blocksize, compress=item.compress, rows=item.chunk, tags=tags,
                  zarr_format=item.zarr_format, creation_options=dict(item.creation_options))
    uploaded: list = []
    assets: dict[str, dict] = {}
    try:
        # files are written on this machine (local paths: in place; objects: in a temporary folder,
        # each uploaded once when the block ends without error)
        with runstore.staged({fmt: p for fmt, p in paths.items() if fmt != "zarr"}, uploaded) as local:
            written: list[pathlib.Path] = []
            try:
                targets = {fmt: local[fmt] for fmt in item.formats if fmt in FILE_SUFFIXES}
                if targets:
                    written += writers.export_files(store, targets, array=writers.FUSED, nodata=item.output_nodata,
                                                    band_names=list(item.band_names), **common).values()
                ome_targets = {fmt: local[fmt] for fmt in item.formats if fmt in OME_SUFFIXES}
                if ome_targets:
                    written += ome.export(
                        store, ome_targets, array=writers.FUSED, name=item.key, chunk=item.chunk,
                        nodata=item.output_nodata, band_names=list(item.band_names),
                        size=item.infos[item.reference].pixel_size, compress=item.compress,
                        attributes={"title": f"{item.key} fused by TC-MoA", "job": run.job_name, "item": item.key},
                    ).values()
                if "prompts" in paths:
                    fmt = "cog" if "cog" in item.formats else "tiff"
                    written += writers.export_files(store, {fmt: local["prompts"]}, array=writers.PROMPTS, nodata=float("nan"),
                                                    band_names=[f"share:{r}" for r in item.roles], **common).values()
                for fmt, path in paths.items():
                    if fmt == "stac":
                        continue
                    source = store if fmt == "zarr" else local[fmt]
                    assets[fmt] = {"path": runstore.normalise(path),
                                   "format": "cog" if fmt == "prompts" and "cog" in item.formats else ("tiff" if fmt == "prompts" else fmt),
                                   "sha256": runstore.sha256_output(source), "size": runstore.output_size(source),
                                   "roles": ["data"] if fmt != "prompts" else ["metadata"]}
                # the Item's asset hrefs are relative to it: computed on the local names (the
                # outputs of an item are siblings wherever they are)
                beside = {fmt: {**a, "path": str(local["stac"].with_name(paths[fmt].name))} for fmt, a in assets.items()}
                with fsio.atomic_path(local["stac"]) as tmp:
                    stac = stac_item(item, beside,
                                     {"tcmoa:job": run.job_name, "tcmoa:task": item.task, "tcmoa:fuser": run.model_key.get("fuser", "")},
                                     local["stac"])
                    tmp.write_text(json.dumps(stac, indent=2))
                written.append(local["stac"])
                assets["stac"] = {"path": runstore.normalise(paths["stac"]), "format": "stac",
                                  "sha256": fsio.sha256_file(local["stac"]), "size": local["stac"].stat().st_size}
            except Exception:
                for path in written:
                    fsio.remove(path)
                raise
    except Exception:
        for path in uploaded:  # an upload failed: remove the objects this export already put
            with contextlib.suppress(Exception):
                runstore.remove_tree(path)
        raise
    return assets


def place_store(work_dir: pathlib.Path, item: ItemPlan) -> None:
    """The last step of an item, made by the driver right before it records the item done: the
    work store becomes the Zarr output (a rename), or is deleted when Zarr is not an output. Until
    then a driver lost after the export keeps the store, and a resume only exports again."""
    store = store_path(work_dir, item)
    paths = output_paths(item)
    if "zarr" in paths:  # checked by the export: nothing there, or a store this run made (or may overwrite)
        if runstore.is_remote(store) or runstore.is_remote(paths["zarr"]):
            _copy_store(store, paths["zarr"])
        else:
            fsio.move_into_place(store, paths["zarr"], replace_dir=True)
    remove_store(work_dir, item)


def _copy_store(store, dst) -> None:
    """The work store to the Zarr output where one of them is in an object store (no rename there):
    the old output (the run's own, checked by the export) is removed, then the objects copied with
    the metadata last, so the store opens only once complete."""
    runstore.remove_tree(dst)
    runstore.copy_tree(store, dst)


def stretches_from_json(info: str) -> list[Stretch]:
    return [Stretch.from_dict(s) for s in json.loads(info)["radiometry"]]



def interrupted_temporaries(items, work_dir: pathlib.Path) -> list[pathlib.Path]:
    """Remove the temporaries a killed run left (half-written exports and stores) of these items."""
    removed = []
    for item in items:  # (an object store holds no temporaries: uploads appear whole or not at all)
        for path in [*output_paths(item).values(), store_path(work_dir, item)]:
            if not runstore.is_remote(path):
                removed += fsio.remove_stale_temporaries(path)
    return removed
