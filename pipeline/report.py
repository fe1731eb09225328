"""`tcmoa report RUN_DIR`: one static HTML page of a run, with PNG quicklooks it links to.

Per item: the sources (read with the engine's own readers, on the output grid, so a warped thermal
band lines up with the optical one), the fused output and the prompt map (the share of the first
source per pixel) side by side; blocks, timings (prepare, blocks, export) and the error of a failed
item; metrics where a `tcmoa eval` table is given (rows whose `image` is the item id). Everything
lands in RUN_DIR/report/ (index.html, quicklooks/): the page has no script, no external resource,
and opens from the file system or any static web server.
"""
from __future__ import annotations

import datetime as dt
import html
import json
import pathlib
import warnings
from dataclasses import dataclass, field

import numpy as np

from pipeline.manifest import RunDir
from pipeline.status import run_status
from pipeline.fsio import atomic_path

THUMB = 320  # longest side of a quicklook, pixels
REPORT_DIR = "report"


@dataclass
class Panel:
    title: str
    href: str | None  # relative to the report page; None when it could not be drawn
    note: str = ""


@dataclass
class ItemView:
    key: str
    status: str
    units: str
    error: str | None
    panels: list[Panel] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (format, href)


# ----------------------------------------------------------------------------- pixels -> quicklooks
def to_display(raw: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """(C, h, w) any dtype -> (h, w, 4) uint8 RGBA: a 2-98 % stretch over valid pixels (the dtype's
    range for 8-bit data), invalid pixels transparent; 1 band grey, 2 bands the first, 3+ RGB."""
    data = raw[:3].astype(np.float64) if raw.shape[0] >= 3 else raw[:1].astype(np.float64)
    valid = np.ones(data.shape[1:], bool) if valid is None else valid.copy()
    valid &= np.isfinite(data).all(axis=0)
    if raw.dtype == np.uint8:
        low, high = 0.0, 255.0
    elif valid.any():
        low, high = np.percentile(data[:, valid], [2, 98])
    else:
        low, high = 0.0, 1.0
    scaled = np.clip((np.nan_to_num(data) - low) / max(high - low, 1e-12), 0, 1)
    rgb = np.repeat(scaled, 3, axis=0) if scaled.shape[0] == 1 else scaled
    rgba = np.concatenate([rgb, valid[None].astype(np.float64)], axis=0)
    return np.round(rgba.transpose(1, 2, 0) * 255).astype(np.uint8)


def share_display(share: np.ndarray) -> np.ndarray:
    """(h, w) share in [0, 1] (NaN: no data) -> RGBA with matplotlib's viridis (0 dark, 1 yellow)."""
    from matplotlib import colormaps

    rgba = colormaps["viridis"](np.nan_to_num(np.clip(share, 0, 1)))
    rgba[..., 3] = np.isfinite(share)
    return np.round(rgba * 255).astype(np.uint8)


def read_output(path: pathlib.Path, array: str, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """A decimated read of an output file (overviews used) or Zarr array -> (raw, valid)."""
    if path.suffix == ".zarr":
        import zarr

        data = zarr.open_group(path, mode="r")[array]
        step = max(1, -(-max(data.shape[1:]) // max_side))
        raw = data[:, ::step, ::step]
        nodata = data.attrs.get("nodata")
        valid = np.ones(raw.shape[1:], bool) if nodata is None else ~(raw == nodata).all(axis=0)
        return raw, valid
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            step = max(1, -(-max(ds.width, ds.height) // max_side))
            shape = (ds.count, -(-ds.height // step), -(-ds.width // step))
            raw = ds.read(out_shape=shape)
            valid = ds.read_masks(1, out_shape=shape[1:]) > 0 if ds.nodata is not None else np.ones(shape[1:], bool)
    return raw, valid


def _save_png(rgba: np.ndarray, path: pathlib.Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgba, "RGBA").save(tmp, format="PNG")


# ----------------------------------------------------------------------------- what the run says
def _sources_of(items_row: dict):
    """SourceRefs and the output Grid of a planned item, from items.parquet."""
    from pipeline.sources import SourceRef
    from pipeline.spec import NormaliseSpec

    refs = []
    for identity in json.loads(items_row["sources"]):
        fields = {k: identity[k] for k in ("role", "kind", "bands", "plane", "nodata", "resampling")}
        fields["bands"] = tuple(fields["bands"]) if fields["bands"] else None
        refs.append(SourceRef(files=tuple(f["path"] for f in identity["files"]),
                              normalise=NormaliseSpec(**identity["normalise"]), **fields))
    return refs


def _grid_of(items_row: dict, stac: dict):
    from pipeline.sources import Grid

    transform = stac["properties"].get("proj:transform")
    return Grid(items_row["width"], items_row["height"], items_row["crs"] if transform else None,
                tuple(transform) if transform else None)


def _timings(records: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for record in records:
        if record and record.get("seconds") is not None:
            name = {"prepare": "prepare", "unit": "blocks", "item": "export"}[record["kind"]]
            out[name] = out.get(name, 0.0) + float(record["seconds"])
    return out


def _metrics_by_image(path: pathlib.Path | None) -> dict[str, list[dict]]:
    if path is None:
        return {}
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)
    by_image: dict[str, list[dict]] = {}
    for row in table.select(["image", "method", "metric", "value"]).to_pylist():
        by_image.setdefault(pathlib.Path(str(row["image"])).stem, []).append(row)
    return by_image


def _panels(out_dir: pathlib.Path, key: str, items_row: dict, assets: dict) -> list[Panel]:
    from pipeline.sources import open_reader

    stac = json.loads(pathlib.Path(assets["stac"]["path"]).read_text())
    grid = _grid_of(items_row, stac)
    folder = out_dir / "quicklooks" / key
    panels: list[Panel] = []

    def draw(title: str, name: str, make) -> None:
        target = folder / f"{name}.png"
        try:
            _save_png(make(), target)
            panels.append(Panel(title, target.relative_to(out_dir).as_posix()))
        except Exception as exc:  # noqa: BLE001 - one unreadable picture must not lose the page
            panels.append(Panel(title, None, f"{type(exc).__name__}: {exc}"))

    refs = _sources_of(items_row)
    for index, ref in enumerate(refs):
        def source(ref=ref):
            with open_reader(ref, grid) as reader:
                raw, valid, _ = reader.read_decimated(THUMB)
            return to_display(raw, valid)
        draw(f"source {ref.role}", f"source-{index}", source)  # a stack's roles name their plane: plane[2]
    fused = next((pathlib.Path(assets[f]["path"]) for f in ("cog", "tiff", "png", "ome-tiff", "zarr") if f in assets), None)
    if fused is not None:
        draw("fused", "fused", lambda: to_display(*read_output(fused, "fused", THUMB)))
    prompts = pathlib.Path(assets["prompts"]["path"]) if "prompts" in assets else (fused if fused and fused.suffix == ".zarr" else None)
    if prompts is not None:
        def share():
            raw, _ = read_output(prompts, "prompt_share", THUMB)
            return share_display(raw[0].astype(np.float64))
        draw(f"prompt map: share of {refs[0].role if refs else 'source 1'}", "prompts", share)
    return panels


def build_views(run_path: pathlib.Path, out_dir: pathlib.Path, metrics: pathlib.Path | None = None) -> tuple[dict, list[ItemView]]:
    status = run_status(run_path)
    run_dir = RunDir(run_path)
    latest = run_dir.latest()
    rows = {f"{r['collection']}/{r['item_id']}": r for r in run_dir.read_table("items.parquet").to_pylist()}
    units_of: dict[str, list[str]] = {}
    plan = run_dir.read_table("plan.parquet")
    for row in plan.to_pylist() if plan is not None else []:
        units_of.setdefault(row["item"], []).append(row["unit_id"])
    scores = _metrics_by_image(metrics)
    views = []
    for entry in status["items"]:
        key, row = entry["item"], rows[entry["item"]]
        records = [latest.get(("prepare", row["prepare_id"])), *(latest.get(("unit", u)) for u in units_of.get(key, [])),
                   latest.get(("item", row["finalize_id"]))]
        view = ItemView(key, entry["status"], f"{entry['units_done']}/{entry['units']}", entry["error"],
                        timings=_timings([r for r in records if r]), metrics=scores.get(row["item_id"], []))
        finished = records[-1]
        if finished and finished["status"] == "done":
            assets = {fmt: {**a, "path": str(run_dir.resolve(a["path"]))}  # recorded relative to the run directory
                      for fmt, a in json.loads(finished["info"])["assets"].items()}
            view.outputs = [(fmt, _href(pathlib.Path(a["path"]), out_dir)) for fmt, a in assets.items()]
            view.panels = _panels(out_dir, key, row, assets)
        views.append(view)
    return status, views


def _href(path: pathlib.Path, out_dir: pathlib.Path) -> str:
    import os

    return pathlib.Path(os.path.relpath(path.absolute(), out_dir.absolute())).as_posix()


# ----------------------------------------------------------------------------- the page
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse}td,th{padding:.2rem .6rem;text-align:left;border-bottom:1px solid #ddd}
section{margin:1.2rem 0;padding:.8rem;border:1px solid #ccc;border-radius:6px}
.done{border-left:6px solid #2a7}.failed{border-left:6px solid #c33}.pending{border-left:6px solid #aaa}
.panels{display:flex;flex-wrap:wrap;gap:.8rem}figure{margin:0}figcaption{font-size:.85rem;color:#555}
img{max-width:320px;max-height:320px;background:repeating-conic-gradient(#eee 0 25%,#fff 0 50%) 0 0/16px 16px}
pre{white-space:pre-wrap;background:#fff4f4;padding:.5rem}
"""


def render_html(status: dict, views: list[ItemView], run_path: pathlib.Path) -> str:
    e = html.escape
    counts = ", ".join(f"{n} {k}" for k, n in status["counts"].items())
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>tcmoa run {e(str(status['job']))}</title><style>{STYLE}</style></head><body>",
        f"<h1>Run of job {e(str(status['job']))}</h1>",
        f"<p>run directory <code>{e(str(run_path))}</code>, fingerprint <code>{e(status['fingerprint'][:12])}</code>; "
        f"{e(counts)}; report written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.</p>",
    ]
    if (run_path / "catalog.json").exists():
        parts.append(f"<p>STAC catalog: <a href='{e(_href(run_path / 'catalog.json', run_path / REPORT_DIR))}'>catalog.json</a></p>")
    parts.append("<table><tr><th>item</th><th>status</th><th>blocks</th><th>seconds</th><th>error</th></tr>")
    for view in views:
        total = sum(view.timings.values())
        parts.append(f"<tr><td><a href='#{e(view.key)}'>{e(view.key)}</a></td><td>{e(view.status)}</td><td>{e(view.units)}</td>"
                     f"<td>{total:.2f}</td><td>{e((view.error or '').splitlines()[0][:120] if view.error else '')}</td></tr>")
    parts.append("</table>")
    for view in views:
        parts.append(f"<section id='{e(view.key)}' class='{e(view.status)}'><h2>{e(view.key)} &mdash; {e(view.status)}</h2>")
        if view.timings:
            parts.append("<p>" + ", ".join(f"{e(k)} {v:.2f} s" for k, v in view.timings.items()) + f"; blocks {e(view.units)}</p>")
        if view.error:
            parts.append(f"<pre>{e(view.error)}</pre>")
        if view.panels:
            parts.append("<div class='panels'>")
            for panel in view.panels:
                body = (f"<a href='{e(panel.href)}'><img src='{e(panel.href)}' alt='{e(panel.title)}'></a>" if panel.href
                        else f"<p>(not drawn: {e(panel.note)})</p>")
                parts.append(f"<figure>{body}<figcaption>{e(panel.title)}</figcaption></figure>")
            parts.append("</div>")
        if view.outputs:
            parts.append("<p>outputs: " + ", ".join(f"<a href='{e(h)}'>{e(f)}</a>" for f, h in view.outputs) + "</p>")
        if view.metrics:
            parts.append("<table><tr><th>method</th><th>metric</th><th>value</th></tr>")
            parts += [f"<tr><td>{e(str(m['method']))}</td><td>{e(str(m['metric']))}</td><td>{float(m['value']):.4g}</td></tr>"
                      for m in view.metrics]
            parts.append("</table>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_path: str | pathlib.Path, metrics: str | pathlib.Path | None = None) -> pathlib.Path:
    """Write RUN_DIR/report/index.html and its quicklooks; returns the page's path."""
    run_path = pathlib.Path(run_path)
    out_dir = run_path / REPORT_DIR
    status, views = build_views(run_path, out_dir, pathlib.Path(metrics) if metrics else None)
    page = out_dir / "index.html"
    with atomic_path(page) as tmp:
        tmp.write_text(render_html(status, views, run_path.absolute()))
    return page
