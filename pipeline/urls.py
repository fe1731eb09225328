"""Inputs named by URL (s3://, gs://, az://, https://): the one place that knows about them.

A location in a job is either a local path (`pathlib.Path`) or a URL kept as a plain string:
`pathlib.Path("s3://b/k")` would collapse the '//' into 's3:/b/k'. Everything that takes a path
asks `is_url` first and keeps URLs as strings (joined with `join`, never through pathlib).

Two readers of remote objects:
- GDAL rasters: rasterio turns s3:// into /vsis3/, gs:// into /vsigs/, az:// into /vsiaz/ and
  https:// into /vsicurl/; `gdal_env` holds the options that keep those reads to a few large
  range requests (no directory listing, no sidecar probes, merged ranges, a cache, retries).
- everything else (TIFF stacks, photos, CSV / STAC files, prefix listings): fsspec
  (`filesystem`), with s3fs for s3://, gcsfs for gs://, adlfs for az:// (the last two optional).

Credentials come only from the environment and the providers' own config files (AWS_* variables,
~/.aws/credentials, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*), never from the job file.
An S3-compatible store (MinIO, Ceph, a local test server) is named once, by the standard
AWS_ENDPOINT_URL (boto3 / s3fs read it themselves); GDAL's spelling of the same endpoint
(AWS_S3_ENDPOINT, AWS_HTTPS, AWS_VIRTUAL_HOSTING) is derived from it unless set explicitly.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import posixpath
import re
from typing import Iterable, Iterator
from urllib.parse import urlsplit

# scheme -> the fsspec implementation package (None: built into fsspec, with aiohttp)
SCHEMES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs",
           "http": None, "https": None}
EXTRAS = {"gcsfs": "gcs", "adlfs": "azure"}  # pyproject extras that install the optional packages
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


class MissingPackage(ImportError):
    """A URL scheme whose fsspec implementation is not installed (the message says what to install)."""


def is_url(path: object) -> bool:
    """True for a URL of a scheme we read (s3, gs, az, http(s)...); False for local paths and
    GDAL's own /vsi... names."""
    match = _URL.match(str(path)) if isinstance(path, str) else None
    return bool(match) and match.group(1).lower() in SCHEMES


def split(url: str) -> tuple[str, str]:
    """('s3', 'bucket/key') for 's3://bucket/key'."""
    scheme, rest = url.split("://", 1)
    return scheme.lower(), rest


def normalise(url: str | pathlib.Path) -> str:
    """A URL in one spelling for comparisons: scheme in lower case, no '.' or '//' segments,
    no trailing slash."""
    scheme, rest = split(str(url))
    return f"{scheme}://{posixpath.normpath(rest).lstrip('/')}".rstrip("/")


def join(base: str | pathlib.Path, *parts: str) -> str | pathlib.Path:
    """`parts` under `base`: a URL joined with '/', a local path with pathlib. A part that is itself
    a URL (or an absolute local path under a local base) replaces what came before."""
    for i, part in enumerate(parts):
        if is_url(part):  # restart from the last URL among the parts
            return join(part, *parts[i + 1:])
    if not is_url(base):
        return pathlib.Path(base).joinpath(*parts)
    scheme, rest = split(str(base))
    for part in parts:
        if part.startswith("/") and scheme in ("http", "https"):
            rest = rest.split("/", 1)[0] + part  # absolute path on the same host
        else:
            rest = posixpath.normpath(posixpath.join(rest, part))
    return f"{scheme}://{rest}"


def parent(path: str | pathlib.Path) -> str | pathlib.Path:
    """The folder (prefix) holding `path`."""
    if not is_url(path):
        return pathlib.Path(path).parent
    scheme, rest = split(str(path))
    return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"


def name(path: str | pathlib.Path) -> str:
    """The last component of a path or URL (no query string)."""
    return posixpath.basename(urlsplit(str(path)).path.rstrip("/")) if is_url(path) else pathlib.Path(path).name


def location(base: pathlib.Path | str, value: str) -> pathlib.Path | str:
    """A location written in a job, CSV or STAC file: a URL as it is, a local path made absolute
    against `base` (a folder or a URL prefix) and resolved."""
    if is_url(value):
        return value
    if value.startswith("file://"):
        value = value[len("file://"):]
    if is_url(base) and not pathlib.PurePosixPath(value).is_absolute():
        return join(base, value)
    path = pathlib.Path(value).expanduser()
    return (path if path.is_absolute() else pathlib.Path(base) / path).resolve()


# ----------------------------------------------------------------------------- fsspec
def filesystem(url: str):
    """(fsspec filesystem, path inside it) for a URL. Instances are fsspec's cached ones; S3 picks
    its endpoint and credentials from the environment (AWS_ENDPOINT_URL, AWS_*, ~/.aws)."""
    import fsspec

    scheme, _ = split(url)
    package = SCHEMES.get(scheme)
    if package:
        try:
            __import__(package)
        except ImportError:
            extra = EXTRAS.get(package)
            hint = f"pip install 'tcmoa[{extra}]'" if extra else f"pip install {package}"
            raise MissingPackage(f"{url}: reading {scheme}:// URLs needs the {package} package ({hint})") from None
    options = {}
    if scheme == "s3" and (endpoint := os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")):
        # passed explicitly (s3fs would find it too) so that fsspec's cache of filesystem
        # instances, keyed by these options, never serves one made for another endpoint
        options["endpoint_url"] = endpoint
    return fsspec.core.url_to_fs(url, **options)


def modified(url: str):
    """When the object was last written (a timezone-aware datetime), or None when the store does
    not say or cannot be asked."""
    import datetime as dt

    try:
        meta = info(url)
    except Exception:  # noqa: BLE001 - descriptive only
        return None
    value = meta.get("LastModified") or meta.get("last_modified") or meta.get("mtime")
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    return value if isinstance(value, dt.datetime) and value.tzinfo else None


def read_bytes(url: str, start: int | None = None, end: int | None = None) -> bytes:
    """Bytes [start, end) of an object in one request (no HEAD, no read-ahead)."""
    fs, path = filesystem(url)
    return fs.cat_file(path, start=start, end=end)


def info(url: str) -> dict:
    """The object's size and version marks (ETag, LastModified...) as the store reports them."""
    fs, path = filesystem(url)
    return fs.info(path)


def open_binary(url: str, block_size: int = 4 << 20):
    """A seekable read-only file object for an object (reads in `block_size` ranges, cached)."""
    fs, path = filesystem(url)
    return fs.open(path, "rb", block_size=block_size)


@contextlib.contextmanager
def opened(path: str | pathlib.Path, block_size: int = 256 << 10) -> Iterator:
    """For libraries that take a path or a file object (tifffile, Pillow): a local path as it is,
    an object as a seekable file object reading `block_size` ranges (closed on exit)."""
    if not is_url(path):
        yield path
        return
    with open_binary(str(path), block_size) as handle:
        yield handle


def glob(root: str, pattern: str) -> list[str]:
    """Matches of `pattern` (relative, with * ? wildcards) under the prefix `root`, relative to it.
    The listing cache is dropped first: a scheduled run must see objects added since the last one."""
    fs, base = filesystem(root)
    fs.invalidate_cache()
    base = base.rstrip("/")
    found = fs.glob(f"{base}/{pattern}" if base else pattern)
    return [p[len(base) + 1:] if base else p for p in found]


def describe(exc: BaseException) -> str:
    """What went wrong reading a remote object, in words (a missing bucket or key, access denied,
    an endpoint that does not answer) from the errors botocore, s3fs, aiohttp and GDAL raise."""
    from pipeline.errors import one_line

    text = one_line(exc)
    lower = text.lower()
    if "bucket does not exist" in lower or "nosuchbucket" in lower:
        return "the bucket does not exist"
    if "key does not exist" in lower or "nosuchkey" in lower or "404" in lower or isinstance(exc, FileNotFoundError):
        return "no such object (the key does not exist)"
    if isinstance(exc, PermissionError) or "403" in lower or "access denied" in lower or "accessdenied" in lower \
            or "signature" in lower or "invalidaccesskeyid" in lower:
        code = re.search(r"An error occurred \((\w+)\)", text)
        return f"access denied ({code.group(1) if code else 'HTTP 403'}; check the credentials in the environment or ~/.aws)"
    if re.search(r"got \d+ bytes, expected \d+", lower) or "read error" in lower:
        return f"short read: the object ends early or the endpoint stopped answering ({text})"
    if any(s in lower for s in ("connect", "timed out", "timeout", "connection", "curl error", "could not resolve")):
        return f"the endpoint does not answer ({text})"
    return text


# ----------------------------------------------------------------------------- GDAL
# Why each option (GDAL 3.10 "Virtual file systems" and "Configuration options"):
REMOTE_GDAL_DEFAULTS = {
    # Opening a file would list its folder (a LIST of the whole prefix) to look for sidecar files
    # (.aux.xml, .ovr, .msk); EMPTY_DIR says "nothing else is there" without asking.
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    # The first GET at open takes this many bytes: a COG's header and tile index in one request
    # (GDAL's default, 16 KB, needs a second read for larger tile indexes).
    "GDAL_INGESTED_BYTES_AT_OPEN": "65536",
    # Adjacent tiles of one window become one range request instead of one per tile.
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    # Several ranges in flight over one HTTP/2 connection where the server speaks HTTP/2.
    "GDAL_HTTP_MULTIPLEX": "YES",
    # A per-file cache of the ranges already fetched (a unit's halo rereads its neighbours' edges).
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(64 << 20),
    # Transient failures (429, 5xx) are retried with back-off; a dead endpoint fails in bounded time.
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_CONNECTTIMEOUT": "15",
    "GDAL_HTTP_LOW_SPEED_LIMIT": "1",  # bytes/s: a transfer that stalls for LOW_SPEED_TIME is abandoned
    "GDAL_HTTP_LOW_SPEED_TIME": "30",
}


def endpoint_options() -> dict[str, str]:
    """GDAL's S3 endpoint options from AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), the variable
    boto3 and s3fs read, so one setting points both at an S3-compatible store. Variables set
    explicitly (AWS_S3_ENDPOINT, AWS_HTTPS, AWS_VIRTUAL_HOSTING) win."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint or "AWS_S3_ENDPOINT" in os.environ:
        return {}
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    options = {"AWS_S3_ENDPOINT": parts.netloc + parts.path.rstrip("/"),
               "AWS_HTTPS": "NO" if parts.scheme == "http" else "YES"}
    # a custom endpoint usually serves path-style URLs (bucket in the path, not the host name)
    options["AWS_VIRTUAL_HOSTING"] = os.environ.get("AWS_VIRTUAL_HOSTING", "FALSE")
    return {k: v for k, v in options.items() if k not in os.environ}


def gdal_options(files: Iterable[str | pathlib.Path] = ()) -> dict[str, str]:
    """GDAL configuration for reading `files`: the remote-read options when any is a URL (each
    default yields to the same variable set in the environment), else nothing."""
    files = [str(f) for f in files]
    remote = [f for f in files if is_url(f)]
    if not remote:
        return {}
    options = {k: os.environ.get(k, v) for k, v in REMOTE_GDAL_DEFAULTS.items()}
    # only these files' own extensions may be probed (GDAL treats any other name as absent)
    # (a name without an extension would be refused: then no list at all)
    suffixes = {posixpath.splitext(urlsplit(f).path)[1] for f in remote}
    if "" not in suffixes:
        options["CPL_VSIL_CURL_ALLOWED_EXTENSIONS"] = os.environ.get("CPL_VSIL_CURL_ALLOWED_EXTENSIONS", ",".join(sorted(suffixes)))
    options.update(endpoint_options())
    # One decoding thread, whatever the caller asked: with GDAL_NUM_THREADS > 1, GDAL 3.10 returns
    # zeros without an error when a range request fails (the endpoint went away mid-read) and skips
    # its retries (OSGeo/gdal#11552, #12426; reproduced here by tests/test_remote_inputs.py:
    # test_endpoint_that_stops_answering_mid_run). A remote read waits on the network anyway.
    options["GDAL_NUM_THREADS"] = "1"
    return options


def gdal_env(files: Iterable[str | pathlib.Path] = (), **extra):
    """A rasterio.Env for reading `files` (remote options only where one is a URL) with `extra`
    options, which the remote-read options override where both name one."""
    import rasterio

    return rasterio.Env(**{**extra, **gdal_options(files)})
