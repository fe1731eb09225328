"""The job file: its schema, defaults and validation.

A job names what to fuse (collections of items found by globs, a CSV or a STAC ItemCollection,
each item made of sources with roles), how (task, tiling, model) and where results go (outputs,
run directory). Relative paths are resolved against the job file's folder, so a job runs the same
from any working directory. Every problem is reported with the job file and the field's path.
"""
from __future__ import annotations

import difflib
import math
import pathlib
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from pipeline import urls

TASK_NAMES = ("vif", "mef", "mff")
NORMALISE_METHODS = ("auto", "dtype", "percentile", "fixed")
SOURCE_KINDS = ("auto", "raster", "stack", "photo")
DISCOVERY_TYPES = ("glob", "csv", "stac", "list")
WINDOWS = ("hann", "tukey", "flat")
OUTPUT_FORMATS = ("zarr", "cog", "png", "tiff", "ome-zarr", "ome-tiff")
OME_FORMATS = ("ome-zarr", "ome-tiff")  # microscopy (not georeferenced) items: OME-Zarr 0.5, OME-TIFF
OUTPUT_DTYPES = ("auto", "uint8", "uint16", "int16", "float32")
OUTPUT_SCALES = ("reference", "full")
VALID_RULES = ("union", "intersection")
PRECISIONS = ("auto", "fp32", "bf16")
RECONSTRUCTIONS = ("auto", "decoder", "guided")  # tcmoa.inference.RECONSTRUCTIONS (spec checks need no torch)
RESAMPLINGS = ("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average")
WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth")  # model.weights names a file (a path) with these


class SpecError(ValueError):
    """An invalid job file: every problem, each naming the file and the field."""


@dataclass(frozen=True)
class NormaliseSpec:
    """Source values -> [0, 1]. `auto`: the dtype's range for 8-bit data, else percentiles."""

    method: str = "auto"
    low: float = 0.5  # percentiles (method percentile)
    high: float = 99.5
    min: float | None = None  # method fixed
    max: float | None = None
    per_band: bool = False  # one stretch per band instead of one for all bands (keeps colour balance)
    decimate_to: int = 512  # longest side of the decimated read the percentiles come from


@dataclass(frozen=True)
class SourceSpec:
    role: str
    pattern: str | None = None  # glob discovery: path pattern with {placeholders} and * wildcards
    column: str | None = None  # csv discovery: column holding the path(s); default: the role
    assets: tuple[str, ...] = ()  # stac discovery: asset keys (several = separate band files)
    bands: tuple[int, ...] | None = None  # 1-based; with {band} in the pattern: one file per band
    kind: str = "auto"
    multiple: bool = False  # the role matches several files per item, each one source (sorted)
    nodata: float | None = None  # overrides the file's nodata value
    resampling: str = "bilinear"  # used when the source is warped onto the reference grid
    normalise: NormaliseSpec = NormaliseSpec()


@dataclass(frozen=True)
class DiscoverSpec:
    type: str
    root: pathlib.Path | str  # glob root; csv/stac: folder relative paths in the file are resolved against (str: a URL)
    file: pathlib.Path | str | None = None  # csv / stac file (str: a URL; stac: also a STAC API search URL)
    group_by: tuple[str, ...] | None = None  # glob placeholders identifying an item
    items: tuple[dict, ...] = ()  # list: rows written in the job itself, like the rows of a csv
    api: str | None = None  # stac: a STAC API's root URL, searched instead of reading a file
    search: dict = field(default_factory=dict)  # stac api: the search (collections, bbox, datetime, query, filter...)


@dataclass(frozen=True)
class OutputSpec:
    dir: pathlib.Path | str  # str: a prefix in an object store
    formats: tuple[str, ...] = ("zarr",)
    dtype: str = "auto"  # auto: the reference source's dtype (float32 for other dtypes)
    scale: str = "reference"  # reference: back to the reference's values; full: [0,1] -> dtype range
    prompt_maps: bool = False
    nodata: float | None = None
    valid: str = "union"  # output pixels valid where any (union) or all (intersection) sources are
    chunk: int = 512
    name: str = "{item}"  # output path (without suffix) relative to dir; {item}, {collection}
    cog_blocksize: int = 512
    compress: str = "deflate"
    zarr_format: int = 3  # 2: Zarr v2 stores with the attributes GDAL (QGIS) reads, CRS included
    creation_options: tuple[tuple[str, str], ...] = ()  # GDAL options for the cog / tiff outputs (KEY, VALUE)


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    task: Any  # 'vif' | 'mef' | 'mff' | {task: weight}
    discover: DiscoverSpec
    sources: tuple[SourceSpec, ...]
    reference: str
    output: OutputSpec


@dataclass(frozen=True)
class TilingSpec:
    tile: int = 448
    overlap: int = 112
    block: int = 2048
    window: str = "hann"
    border_pad: int = 0  # mirrored context added at image borders (costs tiles; 0 = tiles end flush)


@dataclass(frozen=True)
class ModelSpec:
    weights: str = "default"
    precision: str = "auto"
    batch_size: int = 8
    alpha: float = 1.0
    beta: float = 0.0
    device: str = "auto"
    reconstruction: str = "auto"  # decoder: the paper's output; guided: prompt-weighted pyramid of the sources; auto: the weights' choice


@dataclass(frozen=True)
class JobSpec:
    name: str
    collections: tuple[CollectionSpec, ...]
    tiling: TilingSpec
    model: ModelSpec
    run_dir: pathlib.Path | str  # str: a prefix in an object store (s3://bucket/prefix), pipeline.runstore
    max_pixels: int  # per item: guards against headers claiming enormous images
    path: pathlib.Path | None  # the job file
    document: dict = field(default_factory=dict, compare=False)  # the parsed YAML, for the record
    overwrite: bool = False  # outputs may replace files (and zarr stores) the run did not create; never inputs


# --------------------------------------------------------------------------------------------
class _Fields:
    """Reads one mapping of the document, collecting problems with the field's path."""

    def __init__(self, data: Any, where: str, problems: list[str]):
        self.where = where
        self.problems = problems
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self.fail(f"expected a mapping, got {type(data).__name__}")
            data = {}
        self.data = dict(data)
        self.used: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, message: str, key: str | None = None) -> None:
        label = self.path(key) if key else (self.where or "job")
        self.problems.append(f"{label}: {message}")

    def raw(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.data.get(key, default)

    def has(self, key: str) -> bool:
        return key in self.data

    def str(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        value = self.raw(key, default)
        if value is None:
            if required:
                self.fail("is required", key)
            return default
        if not isinstance(value, str) or not value.strip():
            self.fail(f"expected a non-empty string, got {value!r}", key)
            return default
        return value

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = self.raw(key, default)
        if value not in options:
            self.fail(f"{value!r} is not one of {', '.join(options)}", key)
            return default
        return value

    def int(self, key: str, default: Any, *, minimum: int | None = None) -> Any:
        value = self.raw(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"expected an integer, got {value!r}", key)
            return default
        if minimum is not None and value < minimum:
            self.fail(f"{value} is below the minimum {minimum}", key)
            return default
        return value

    def float(self, key: str, default: Any, *, low: float | None = None, high: float | None = None) -> Any:
        value = self.raw(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(f"expected a number, got {value!r}", key)
            return default
        if (low is not None and value < low) or (high is not None and value > high):
            self.fail(f"{value} is outside [{low}, {high}]", key)
            return default
        return float(value)

    def bool(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            self.fail(f"expected true or false, got {value!r}", key)
            return default
        return value

    def list(self, key: str, default: Any = None) -> Any:
        value = self.raw(key, default)
        if value is None:
            return default
        if isinstance(value, (str, int)):
            return [value]
        if not isinstance(value, list):
            self.fail(f"expected a list, got {value!r}", key)
            return default
        return value

    def done(self) -> None:
        for key in sorted(set(self.data) - self.used):
            close = difflib.get_close_matches(str(key), sorted(self.used), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            self.fail(f"unknown field{hint}", str(key))


def _path(base: pathlib.Path, value: str) -> pathlib.Path | str:
    """A local path made absolute against `base` and resolved (so printed paths and the manifest
    read runs/x, not jobs/../runs/x); a URL (s3://, https://...) kept as written (pipeline.urls)."""
    return urls.location(base, value)


def _task(value: Any, where: str, problems: list[str]) -> Any:
    if isinstance(value, str) and value.lower() in TASK_NAMES:
        return value.lower()
    if isinstance(value, Mapping) and value:
        mix = {}
        for name, weight in value.items():
            if str(name).lower() not in TASK_NAMES:
                problems.append(f"{where}: unknown task {name!r} in the router mix; tasks are {', '.join(TASK_NAMES)}")
            elif isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                problems.append(f"{where}.{name}: router weight must be a number >= 0, got {weight!r}")
            else:
                mix[str(name).lower()] = float(weight)
        if mix and sum(mix.values()) <= 0:
            problems.append(f"{where}: router weights sum to 0")
        return mix
    problems.append(f"{where}: expected one of {', '.join(TASK_NAMES)} or a router mix like {{vif: 0.7, mef: 0.3}}, got {value!r}")
    return "vif"


def _normalise(data: Any, where: str, problems: list[str]) -> NormaliseSpec:
    if isinstance(data, str):
        data = {"method": data}
    f = _Fields(data, where, problems)
    spec = NormaliseSpec(
        method=f.choice("method", NORMALISE_METHODS, "auto"),
        low=f.float("low", 0.5, low=0, high=100),
        high=f.float("high", 99.5, low=0, high=100),
        min=f.float("min", None),
        max=f.float("max", None),
        per_band=f.bool("per_band", False),
        decimate_to=f.int("decimate_to", 512, minimum=16),
    )
    f.done()
    if spec.method == "percentile" and spec.low >= spec.high:
        f.fail(f"low ({spec.low}) must be below high ({spec.high})")
    if spec.method == "fixed":
        if spec.min is None or spec.max is None:
            f.fail("method fixed needs min and max")
        elif spec.min >= spec.max:
            f.fail(f"min ({spec.min}) must be below max ({spec.max})")
    return spec


def _source(data: Any, where: str, discover_type: str, problems: list[str]) -> SourceSpec:
    f = _Fields(data, where, problems)
    role = f.str("role", "source", required=True)
    bands = f.list("bands")
    if bands is not None:
        if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in bands) or not bands:
            f.fail(f"expected 1-based band numbers, got {bands!r}", "bands")
            bands = None
        elif len(bands) not in (1, 3):
            f.fail(f"the model takes 1 or 3 channels per source, got {len(bands)} bands {bands}", "bands")
    assets = tuple(str(a) for a in (f.list("assets") or []))
    spec = SourceSpec(
        role=role,
        pattern=f.str("pattern"),
        column=f.str("column"),
        assets=assets,
        bands=tuple(bands) if bands else None,
        kind=f.choice("kind", SOURCE_KINDS, "auto"),
        multiple=f.bool("multiple", False),
        nodata=f.float("nodata", None),
        resampling=f.choice("resampling", RESAMPLINGS, "bilinear"),
        normalise=_normalise(f.raw("normalise", {}), f.path("normalise"), problems),
    )
    f.done()
    if discover_type == "glob" and not spec.pattern:
        f.fail("glob discovery needs a pattern for every source", "pattern")
    if discover_type == "stac" and not spec.assets:
        f.fail("stac discovery needs the asset key(s) of every source", "assets")
    if spec.pattern and "{band}" in spec.pattern and not spec.bands:
        f.fail("the pattern has {band}: list the bands (one file per band)", "bands")
    return spec


def _discover(data: Any, where: str, base: pathlib.Path, problems: list[str]) -> DiscoverSpec:
    f = _Fields(data, where, problems)
    kind = f.choice("type", DISCOVERY_TYPES, "glob")
    root = _path(base, f.str("root", "."))
    api = f.str("api")
    search = f.raw("search", {}) or {}
    file_value = f.str("file", required=kind == "csv" or (kind == "stac" and not api))
    if api and (kind != "stac" or not urls.is_url(api)):
        f.fail("a STAC API search needs type: stac and the API's http(s) URL", "api")
    if file_value and api:
        f.fail("give either a STAC file or an API to search, not both", "api")
    if not isinstance(search, Mapping) or (search and not api):
        f.fail("a mapping of STAC API search parameters (collections, bbox, datetime, query...) with api:", "search")
        search = {}
    group_by = f.list("group_by")
    rows = f.list("items", [])
    if kind == "list" and (not rows or not all(isinstance(r, Mapping) for r in rows)):
        f.fail("list discovery needs items: a list of mappings like {item: a, optical: x.tif, thermal: y.tif}", "items")
        rows = []
    f.done()
    return DiscoverSpec(
        type=kind,
        root=root,
        file=_path(base, file_value) if file_value else None,
        group_by=tuple(str(g) for g in group_by) if group_by else None,
        items=tuple({str(k): "" if v is None else str(v) for k, v in r.items()} for r in rows),
        api=api,
        search=dict(search),
    )


def _output(data: Mapping, where: str, base: pathlib.Path, default_dir: pathlib.Path, problems: list[str]) -> OutputSpec:
    f = _Fields(data, where, problems)
    formats = f.list("formats", ["zarr"])
    bad = [x for x in formats if x not in OUTPUT_FORMATS]
    if bad or not formats:
        f.fail(f"unknown format(s) {bad}; choose from {', '.join(OUTPUT_FORMATS)}", "formats")
        formats = [x for x in formats if x in OUTPUT_FORMATS] or ["zarr"]
    dir_value = f.str("dir")
    spec = OutputSpec(
        dir=_path(base, dir_value) if dir_value else default_dir,
        formats=tuple(dict.fromkeys(formats)),
        dtype=f.choice("dtype", OUTPUT_DTYPES, "auto"),
        scale=f.choice("scale", OUTPUT_SCALES, "reference"),
        prompt_maps=f.bool("prompt_maps", False),
        nodata=f.float("nodata", None),
        valid=f.choice("valid", VALID_RULES, "union"),
        chunk=f.int("chunk", 512, minimum=16),
        name=f.str("name", "{item}"),
        cog_blocksize=f.int("cog_blocksize", 512, minimum=16),
        compress=f.choice("compress", ("deflate", "zstd", "lzw", "none"), "deflate"),
        zarr_format=_zarr_format(f),
        creation_options=_creation_options(f, formats),
    )
    f.done()
    if spec.chunk % 16:
        f.fail(f"{spec.chunk} must be a multiple of 16", "chunk")
    if spec.cog_blocksize % 16:
        f.fail(f"{spec.cog_blocksize} must be a multiple of 16", "cog_blocksize")
    try:
        spec.name.format(item="i", collection="c")
    except (KeyError, IndexError, ValueError) as exc:
        f.fail(f"only {{item}} and {{collection}} may appear in it ({exc})", "name")
    return spec


def _collection(
    f: _Fields, name: str, base: pathlib.Path, output_defaults: Mapping, default_dir: pathlib.Path, problems: list[str]
) -> CollectionSpec:
    task = _task(f.raw("task"), f.path("task"), problems) if f.has("task") else _missing(f, "task", "vif")
    discover = _discover(f.raw("discover"), f.path("discover"), base, problems) if f.has("discover") else None
    if discover is None:
        f.fail("is required (glob, csv or stac)", "discover")
        discover = DiscoverSpec(type="glob", root=base)
    raw_sources = f.list("sources", [])
    if not raw_sources:
        f.fail("is required: at least one source (two or more to fuse)", "sources")
    sources = tuple(_source(s, f"{f.path('sources')}[{i}]", discover.type, problems) for i, s in enumerate(raw_sources))
    roles = [s.role for s in sources]
    for role in {r for r in roles if roles.count(r) > 1}:
        f.fail(f"role {role!r} appears more than once", "sources")
    if len(sources) == 1 and not sources[0].multiple and sources[0].kind not in ("stack", "auto"):
        f.fail("only one source: fusion needs two or more (or a stack / multiple: true)", "sources")
    reference = f.str("reference", roles[0] if roles else None)
    if reference is not None and roles and reference not in roles:
        f.fail(f"{reference!r} is not one of the roles {roles}", "reference")
    overrides = f.raw("output", {}) or {}
    if not isinstance(overrides, Mapping):
        f.fail("expected a mapping", "output")
        overrides = {}
    output = _output({**output_defaults, **overrides}, f.path("output"), base, default_dir, problems)
    return CollectionSpec(name=name, task=task, discover=discover, sources=sources, reference=reference or "", output=output)


def _missing(f: _Fields, key: str, default: Any) -> Any:
    f.fail("is required", key)
    return default


def parse_job(
    document: Mapping, *, path: pathlib.Path | None = None, base: pathlib.Path | None = None, check_files: bool = True,
) -> JobSpec:
    """Validate a parsed job document; raise SpecError listing every problem.

    check_files=False skips checking that a weights file exists: for a job validated on one
    machine and run on another that mounts the file (`tcmoa submit`; the run checks it there)."""
    base = (base or (path.parent if path else pathlib.Path.cwd())).resolve()
    problems: list[str] = []
    top = _Fields(document, "", problems)
    name = top.str("name", required=True) or "job"
    run_dir = _path(base, top.str("run_dir", f"runs/{name}"))
    output_defaults = top.raw("output", {}) or {}
    if not isinstance(output_defaults, Mapping):
        top.fail("expected a mapping", "output")
        output_defaults = {}
    default_dir = urls.join(run_dir, "outputs")

    collections: list[CollectionSpec] = []
    if top.has("collections"):
        for key in ("task", "discover", "sources", "reference"):
            if top.has(key):
                top.fail("with collections, give it inside each collection", key)
        for i, raw in enumerate(top.list("collections", [])):
            f = _Fields(raw, f"collections[{i}]", problems)
            cname = f.str("name", f"collection{i}")
            collections.append(_collection(f, cname, base, output_defaults, default_dir, problems))
            f.done()
        names = [c.name for c in collections]
        if len(set(names)) != len(names):
            top.fail(f"collection names must differ: {names}", "collections")
    else:
        collections.append(_collection(top, name, base, output_defaults, default_dir, problems))
    if not collections:
        top.fail("no collections", "collections")

    tf = _Fields(top.raw("tiling", {}), "tiling", problems)
    tiling = TilingSpec(
        tile=tf.int("tile", 448, minimum=16),
        overlap=tf.int("overlap", 112, minimum=0),
        block=tf.int("block", 2048, minimum=16),
        window=tf.choice("window", WINDOWS, "hann"),
        border_pad=tf.int("border_pad", 0, minimum=0),
    )
    tf.done()
    if tiling.border_pad >= tiling.tile:
        tf.fail(f"border_pad {tiling.border_pad} must be smaller than the tile {tiling.tile}", "border_pad")
    if tiling.overlap > tiling.tile // 2:
        tf.fail(f"overlap {tiling.overlap} is more than half the tile {tiling.tile}: at most two tiles should overlap", "overlap")
    for c in collections:
        if tiling.block % c.output.chunk:
            tf.fail(f"block {tiling.block} must be a multiple of {c.name}'s output chunk {c.output.chunk} (one writer per chunk)", "block")

    mf = _Fields(top.raw("model", {}), "model", problems)
    model = ModelSpec(
        weights=mf.str("weights", "default"),
        precision=mf.choice("precision", PRECISIONS, "auto"),
        batch_size=mf.int("batch_size", 8, minimum=1),
        alpha=mf.float("alpha", 1.0),
        beta=mf.float("beta", 0.0),
        device=mf.str("device", "auto"),
        reconstruction=mf.choice("reconstruction", RECONSTRUCTIONS, "auto"),
    )
    mf.done()
    weights_path = _path(base, model.weights)
    if weights_path.suffix in WEIGHTS_SUFFIXES:
        model = ModelSpec(**{**model.__dict__, "weights": str(weights_path)})
        if check_files and not weights_path.exists():
            mf.fail(f"weights file {weights_path} does not exist", "weights")

    overwrite = top.bool("overwrite", False)
    lf = _Fields(top.raw("limits", {}), "limits", problems)
    max_pixels = lf.int("max_pixels", 2**32, minimum=1)
    lf.done()
    top.raw("collections")
    top.done()
    if problems:
        where = str(path) if path else "job"
        raise SpecError(f"{where}: invalid job ({len(problems)} problem{'s' * (len(problems) > 1)}):\n  - " + "\n  - ".join(problems))
    return JobSpec(
        name=name,
        collections=tuple(collections),
        tiling=tiling,
        model=model,
        run_dir=run_dir,
        max_pixels=max_pixels,
        path=path.resolve() if path else None,
        document=dict(document),
        overwrite=overwrite,
    )


def _creation_options(f: "_Fields", formats: list[str]) -> tuple[tuple[str, str], ...]:
    """`creation_options: {KEY: VALUE}`: checked against the GDAL drivers of the cog / tiff outputs."""
    raw = f.raw("creation_options", {}) or {}
    if not isinstance(raw, Mapping) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in raw.values()):
        f.fail(f"expected a mapping of GDAL creation options like {{COMPRESS: ZSTD, LEVEL: 9}}, got {raw!r}", "creation_options")
        return ()
    options = {str(k).upper(): str(v) for k, v in raw.items()}
    if options:
        from pipeline.creation_options import check

        try:
            check(options, formats)
        except (ValueError, OSError) as exc:
            f.fail(str(exc), "creation_options")
            return ()
    return tuple(sorted(options.items()))


def _zarr_format(f: "_Fields") -> int:
    value = f.int("zarr_format", 3)
    if value not in (2, 3):
        f.fail(f"{value!r} is not 2 (Zarr v2: GDAL and QGIS read it) or 3", "zarr_format")
        return 3
    return value


def load_job(path: str | pathlib.Path, *, check_files: bool = True) -> JobSpec:
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the job file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                        "save the job file as UTF-8") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, Mapping):
        raise SpecError(f"{path}: a job file must be a YAML mapping, got {type(document).__name__}")
    return parse_job(document, path=path, check_files=check_files)


def absolute_paths(document: Mapping, base: pathlib.Path) -> dict:
    """The job document with every path made absolute against `base`, and the defaults that
    depend on the job file's folder (run_dir, discover.root) written out: the result means the
    same job wherever the file is moved (a cluster submission ships a copy of it)."""
    base = base.resolve()
    doc = {**document}

    def absolute(mapping: Any, key: str, default: str | None = None) -> Any:
        if not isinstance(mapping, Mapping):
            return mapping
        mapping = dict(mapping)
        value = mapping.get(key, default)
        if isinstance(value, str) and value.strip():
            mapping[key] = str(_path(base, value))
        return mapping

    name = doc.get("name") if isinstance(doc.get("name"), str) else "job"
    doc = absolute(doc, "run_dir", f"runs/{name}")
    if "output" in doc:
        doc["output"] = absolute(doc["output"], "dir")
    if "discover" in doc:
        doc["discover"] = absolute(absolute(doc["discover"], "root", "."), "file")
    if isinstance(doc.get("collections"), list):
        collections = []
        for raw in doc["collections"]:
            if isinstance(raw, Mapping):
                raw = dict(raw)
                if "discover" in raw:
                    raw["discover"] = absolute(absolute(raw["discover"], "root", "."), "file")
                if "output" in raw:
                    raw["output"] = absolute(raw["output"], "dir")
            collections.append(raw)
        doc["collections"] = collections
    model = doc.get("model")
    if isinstance(model, Mapping) and isinstance(model.get("weights"), str) and pathlib.Path(model["weights"]).suffix in WEIGHTS_SUFFIXES:
        doc["model"] = absolute(model, "weights")
    return doc
