"""Finding the items of a collection and the files of each of their sources.

Three ways, named by `discover.type`:
- glob: each source has a path pattern relative to `root` with {placeholders} and * wildcards.
  The reference source's matches define the items; `group_by` (default: every placeholder of the
  reference pattern except {band}) names the placeholders that identify an item, and the other
  sources' patterns are filled in with the item's values. {band} makes one file per listed band.
- csv: one row per item, an `item` column and one column per source (default: the role); a cell
  may list several paths separated by ';' (band files, or several sources with multiple: true).
- stac: an ItemCollection (or one Item), or the items a STAC API search returns (`discover.api`
  with `discover.search`, through pystac-client); each source names asset keys (several = band files).
- list: rows like the CSV's written in the job itself (`discover.items`), paths relative to `root`.
Relative paths in a CSV or STAC file are resolved against that file's folder.

Every location may be a URL (s3://, gs://, az://, https://; pipeline.urls): a glob root is a
prefix listed with fsspec, CSV and STAC files are read through fsspec, and URLs stay strings.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import pathlib
import re
import unicodedata
from dataclasses import dataclass, field

from pipeline import urls
from pipeline.spec import CollectionSpec, SourceSpec

PLACEHOLDER = re.compile(r"\{(\w+)\}")
BAND = "band"


@dataclass(frozen=True)
class RoleFiles:
    files: tuple[str, ...]
    band_files: bool  # one single-band file per band (else: one file, or several sources)


@dataclass(frozen=True)
class DiscoveredItem:
    collection: str
    item_id: str
    roles: dict[str, RoleFiles] = field(default_factory=dict)
    error: str | None = None  # why the item cannot be planned (a missing source...)


def natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _safe_id(text: str) -> str:
    """An item id that is safe as a file name and keeps names readable: letters and digits of any
    script are kept (NFC-normalised); where anything else had to change (spaces, slashes, a leading
    dot, another normalisation form), a short hash of the original name is appended after '~', a
    character no unchanged id contains, so two different names never share an id."""
    if not text:
        return "item"
    safe = re.sub(r"[^\w.-]+", "_", unicodedata.normalize("NFC", text)).strip("_").lstrip(".")
    if safe == text and safe:
        return safe
    return f"{safe or 'item'}~{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"


def _pattern_regex(pattern: str) -> re.Pattern:
    out, seen = [], set()
    for token in re.split(r"(\{\w+\}|\*|\?)", pattern):
        if token == "*":
            out.append(r"[^/]*")
        elif token == "?":
            out.append(r"[^/]")
        elif PLACEHOLDER.fullmatch(token):
            name = token[1:-1]
            out.append(f"(?P={name})" if name in seen else f"(?P<{name}>[^/]+?)")
            seen.add(name)
        else:
            out.append(re.escape(token))
    return re.compile("".join(out) + r"\Z")


def _fill(pattern: str, values: dict[str, str]) -> str:
    """Placeholders with a value become that (glob-escaped) value, the others a wildcard."""
    return PLACEHOLDER.sub(lambda m: glob.escape(values[m.group(1)]) if m.group(1) in values else "*", pattern)


def _glob(root: pathlib.Path | str, pattern: str) -> list[str]:
    """Matches of `pattern` relative to `root` (a folder, or a prefix in object storage)."""
    if urls.is_url(root):
        try:
            return sorted(urls.glob(root, pattern), key=natural_key)
        except Exception as exc:  # noqa: BLE001 - fsspec/botocore raise many kinds
            raise ValueError(f"{urls.join(root, pattern)}: cannot list ({urls.describe(exc)})") from None
    return sorted(glob.glob(pattern, root_dir=root), key=natural_key)


def _discover_glob(collection: CollectionSpec) -> list[DiscoveredItem]:
    root = collection.discover.root
    reference = next(s for s in collection.sources if s.role == collection.reference)
    names = PLACEHOLDER.findall(reference.pattern)
    group_by = collection.discover.group_by or tuple(dict.fromkeys(n for n in names if n != BAND))
    unknown = [g for g in group_by if g not in names]
    if unknown:
        raise ValueError(f"collection {collection.name!r}: group_by {unknown} not in the reference pattern {reference.pattern!r}")
    regex = _pattern_regex(reference.pattern)
    keys: dict[tuple[str, ...], None] = {}
    for rel in _glob(root, _fill(reference.pattern, {})):
        match = regex.match(pathlib.PurePath(rel).as_posix())
        if match:
            keys[tuple(match.group(g) for g in group_by)] = None
    items = []
    for key in sorted(keys, key=lambda k: natural_key("/".join(k))):
        values = dict(zip(group_by, key))
        item_id = _safe_id("_".join(key)) if key else _safe_id(collection.name)
        roles, problems = {}, []
        for source in collection.sources:
            try:
                roles[source.role] = _glob_role(root, source, values)
            except LookupError as exc:
                problems.append(str(exc))
        items.append(DiscoveredItem(collection.name, item_id, roles, "; ".join(problems) or None))
    return items


def _glob_role(root: pathlib.Path | str, source: SourceSpec, values: dict[str, str]) -> RoleFiles:
    if BAND in PLACEHOLDER.findall(source.pattern):
        files = [_one(root, _fill(source.pattern, {**values, BAND: str(b)}), source) for b in source.bands]
        return RoleFiles(tuple(files), band_files=True)
    pattern = _fill(source.pattern, values)
    if source.multiple:
        matches = _glob(root, pattern)
        if not matches:
            raise LookupError(f"source {source.role!r}: no file matches {urls.join(root, pattern)}")
        return RoleFiles(tuple(str(urls.join(root, m)) for m in matches), band_files=False)
    return RoleFiles((_one(root, pattern, source),), band_files=False)


def _one(root: pathlib.Path | str, pattern: str, source: SourceSpec) -> str:
    matches = _glob(root, pattern)
    if not matches:
        raise LookupError(f"source {source.role!r}: no file matches {urls.join(root, pattern)}")
    if len(matches) > 1:
        raise LookupError(
            f"source {source.role!r}: {len(matches)} files match {urls.join(root, pattern)} ({', '.join(matches[:3])}...); "
            "refine the pattern, add group_by placeholders or set multiple: true"
        )
    return str(urls.join(root, matches[0]))


def _resolve(base: pathlib.Path | str, href: str) -> str:
    """A path from a CSV cell or STAC href: URLs and GDAL /vsi names as written, a relative path
    under `base` (the file's folder or prefix), an absolute path as it is."""
    if href.startswith("file://"):
        href = href[len("file://"):]
    if re.match(r"^[a-z][a-z0-9+.-]*://", href) or href.startswith("/vsi"):
        return href
    if urls.is_url(base) and pathlib.PurePosixPath(href).is_absolute():
        return href  # a local path written in a remote file
    return str(urls.join(base, href))


def _read_text(path: pathlib.Path | str) -> str:
    """A CSV or STAC file's text, local or an object (UTF-8)."""
    if urls.is_url(path):
        try:
            return urls.read_bytes(path).decode("utf-8")
        except UnicodeDecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - botocore, aiohttp, fsspec raise many kinds
            raise OSError(urls.describe(exc)) from None
    with open(path, newline="", encoding="utf-8") as fh:  # newline="": the csv module's own line handling
        return fh.read()


def _role_from_cells(base: pathlib.Path | str, source: SourceSpec, cells: list[str]) -> RoleFiles:
    files = tuple(_resolve(base, c) for c in cells)
    return RoleFiles(files, band_files=len(files) > 1 and not source.multiple)


def _discover_csv(collection: CollectionSpec) -> list[DiscoveredItem]:
    path = collection.discover.file
    try:
        rows = list(csv.DictReader(io.StringIO(_read_text(path), newline="")))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the item CSV ({exc})") from None
    return _items_from_rows(collection, rows, urls.parent(path), str(path), first_line=2)


def _discover_list(collection: CollectionSpec) -> list[DiscoveredItem]:
    rows = [dict(r) for r in collection.discover.items]
    return _items_from_rows(collection, rows, collection.discover.root, "the job's discover.items", first_line=1)


def _items_from_rows(
    collection: CollectionSpec, rows: list[dict], base: pathlib.Path | str, where: str, first_line: int
) -> list[DiscoveredItem]:
    header = list(rows[0].keys()) if rows else []
    id_column = "item" if "item" in header else "id"
    needed = [id_column] + [s.column or s.role for s in collection.sources]
    missing = [c for c in needed if c not in header]
    if rows and missing:
        raise ValueError(f"{where}: missing column(s) {missing}; columns are {header}")
    items, seen = [], set()
    for line, row in enumerate(rows, start=first_line):
        item_id = _safe_id((row.get(id_column) or "").strip() or f"row{line}")
        if item_id in seen:
            raise ValueError(f"{where}: row {line}: item {item_id!r} appears twice")
        seen.add(item_id)
        roles, problems = {}, []
        for source in collection.sources:
            cells = [c.strip() for c in (row.get(source.column or source.role) or "").split(";") if c.strip()]
            if not cells:
                problems.append(f"source {source.role!r}: empty cell in row {line} of {where}")
                continue
            roles[source.role] = _role_from_cells(base, source, cells)
        items.append(DiscoveredItem(collection.name, item_id, roles, "; ".join(problems) or None))
    return items


def _stac_api_features(collection: CollectionSpec) -> list[dict]:
    """The items a STAC API search returns (every page), as plain dicts."""
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    api, search = collection.discover.api, dict(collection.discover.search)
    try:
        return list(Client.open(api).search(**search).items_as_dicts())
    except (APIError, OSError, ValueError, NotImplementedError) as exc:
        raise ValueError(f"{api}: STAC API search {search} failed ({urls.describe(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - requests' errors (connection refused...) and the like
        raise ValueError(f"{api}: STAC API search {search} failed ({urls.describe(exc)})") from None


def _discover_stac(collection: CollectionSpec) -> list[DiscoveredItem]:
    if collection.discover.api:
        path, features = collection.discover.api, _stac_api_features(collection)
        base = path  # API items carry absolute hrefs; a relative one is taken against the API's root
    else:
        path = collection.discover.file
        try:
            document = json.loads(_read_text(path))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read the STAC file ({exc})") from None
        features = document.get("features") if document.get("type") == "FeatureCollection" else [document]
        base = urls.parent(path)
    if not isinstance(features, list):
        raise ValueError(f"{path}: expected a STAC ItemCollection or Item")
    items = []
    for i, feature in enumerate(features):
        item_id = _safe_id(str(feature.get("id") or f"feature{i}"))
        assets = feature.get("assets") or {}
        roles, problems = {}, []
        for source in collection.sources:
            absent = [a for a in source.assets if a not in assets or "href" not in assets[a]]
            if absent:
                problems.append(f"source {source.role!r}: item {item_id!r} in {path} has no asset(s) {absent}")
                continue
            roles[source.role] = _role_from_cells(base, source, [assets[a]["href"] for a in source.assets])
        items.append(DiscoveredItem(collection.name, item_id, roles, "; ".join(problems) or None))
    return items


def discover(collection: CollectionSpec) -> list[DiscoveredItem]:
    """Items of a collection, sorted; items with a missing source carry an error instead of failing all."""
    finders = {"glob": _discover_glob, "csv": _discover_csv, "stac": _discover_stac, "list": _discover_list}
    return finders[collection.discover.type](collection)
