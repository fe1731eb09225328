"""Where a run's state lives: a POSIX folder (as always) or a prefix in an object store (S3).

One module for every storage operation whose mechanism differs between the two, so the engine
reads the same either way:

                        POSIX folder                          object store (s3://bucket/prefix)
  single-run lock       flock on RUN/.lock                    a lease object RUN/.lock: created with
                                                              If-None-Match: *, renewed with If-Match
                                                              while the run lives, taken over (If-Match
                                                              on the stale ETag) only once expired
  job.json claim        atomic rename                         PutObject with If-None-Match: *
  tables, status parts  temporary name, fsync, rename         one PutObject each (atomic for readers);
                                                              parts merged in groups, as on disk
  Zarr work stores      zarr's LocalStore on the path         zarr's FsspecStore (one writer per chunk)
  COG / TIFF / PNG      temporary name, fsync, rename         written in a local temp dir, uploaded once
                                                              (one PUT or one multipart complete: readers
                                                              never see a partial object)
  Zarr outputs          the work store renamed into place     objects copied server-side, metadata last
  checks (verify)       size, sha256 of the files             size, sha256 of the objects read back
                                                              (an ETag is not a sha256)

Paths: a local location is a `pathlib.Path`; a remote one an `ObjectPath` (a URL with the few
pathlib operations the engine uses: `/`, name, parent, with_name), so item paths are built the same
way for both. Which strings are URLs, and the filesystem and credentials for one, come from
`pipeline.urls` (shared with the input side).

Parquet goes through fsspec (s3fs) too, not pyarrow.fs: the tables are small and written whole
(one PUT each), and one S3 client configuration (endpoint, credentials, retries) then serves the
tables, the Zarr stores and the uploads alike.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import pathlib
import posixpath
import socket
import tempfile
import threading
import uuid
from dataclasses import dataclass
from typing import Iterator, Union

from pipeline import fsio, urls

LEASE_SECONDS_ENV = "TCMOA_LEASE_SECONDS"  # how long a run's lease lasts without renewal (default 120 s)
DEFAULT_LEASE_SECONDS = 120.0


@dataclass(frozen=True)
class ObjectPath:
    """An object or prefix in an object store, by URL ('s3://bucket/key'), with pathlib's join
    and name operations (no I/O)."""

    url: str

    def __post_init__(self):
        object.__setattr__(self, "url", urls.normalise(self.url))

    def __truediv__(self, other: str) -> "ObjectPath":
        return ObjectPath(f"{self.url}/{str(other).strip('/')}")

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        return posixpath.basename(self.url)

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def parent(self) -> "ObjectPath":
        scheme, rest = self.url.split("://", 1)
        return ObjectPath(f"{scheme}://{posixpath.dirname(rest)}") if "/" in rest else self

    def with_name(self, name: str) -> "ObjectPath":
        return self.parent / name

    @property
    def fs(self):
        return urls.filesystem(self.url)[0]

    @property
    def key(self) -> str:
        """The path without the scheme ('bucket/key'), as fsspec's methods take it."""
        return self.url.split("://", 1)[1]


Location = Union[pathlib.Path, ObjectPath]


def location(value: "str | os.PathLike | ObjectPath") -> Location:
    """A run directory, output or store path as given: a URL becomes an ObjectPath."""
    if isinstance(value, (ObjectPath, pathlib.Path)):
        return value
    return ObjectPath(str(value)) if urls.is_url(str(value)) else pathlib.Path(value)


def is_remote(path) -> bool:
    return isinstance(location(path), ObjectPath)


def normalise(path) -> str:
    """The form output paths are compared in (the run's own outputs): absolute, or the URL."""
    path = location(path)
    return path.url if isinstance(path, ObjectPath) else os.path.abspath(path)


# ----------------------------------------------------------------------------- manifest paths
def relative(path, run_dir) -> str:
    """A path as the manifest records it: relative to the run directory when inside it (the run
    directory can be moved or copied), as given (absolute, or a URL) otherwise."""
    text, base = normalise(path), normalise(run_dir)
    if text == base:
        return "."
    if text.startswith(base.rstrip("/") + "/"):
        return text[len(base.rstrip("/")) + 1:]
    return text


def resolve(recorded: str, run_dir) -> Location:
    """A recorded path made usable: relative ones against the run directory; absolute paths and
    URLs (older run directories recorded absolute paths) as they are."""
    if urls.is_url(recorded) or os.path.isabs(recorded):
        return location(recorded)
    base = location(run_dir)
    return base / recorded if recorded != "." else base


# ----------------------------------------------------------------------------- objects
def exists(path) -> bool:
    path = location(path)
    return bool(_contents(path)) if isinstance(path, ObjectPath) else path.exists()


def _object_files(path: ObjectPath) -> dict[str, int]:
    """Relative key -> size of every object under a prefix (none: an empty dict)."""
    found = path.fs.find(path.key, detail=True, withdirs=False)
    return {k[len(path.key) + 1:]: info["size"] for k, info in found.items() if k.startswith(path.key + "/")}


def _contents(path: ObjectPath) -> dict[str, int]:
    """What is at an object path, read fresh: {'': size} for an object, {relative key: size} for
    the objects under a prefix, {} for nothing (one HEAD, and a LIST when it is no object)."""
    fs = path.fs
    fs.invalidate_cache(path.key)
    try:
        info = fs.info(path.key)
    except FileNotFoundError:
        return {}
    return {"": info["size"]} if info["type"] == "file" else _object_files(path)


def kind_of(path: Location) -> str:
    """What is at an object path: missing, file, zarr store or folder (a prefix holding objects)."""
    files = _contents(path)
    if not files:
        return "missing"
    if "" in files:
        return "file"
    from pipeline.output_safety import ZARR_FILE

    if any(name in files for name in ("zarr.json", ".zgroup", ".zarray")) or all(ZARR_FILE.fullmatch(f) for f in files):
        return "zarr store"
    return "folder"


def output_size(path) -> int:
    path = location(path)
    if not isinstance(path, ObjectPath):
        return fsio.output_size(path)
    files = _contents(path)
    if not files:
        raise FileNotFoundError(f"{path}: no such object")
    return sum(files.values())


def _sha256_object(fs, key: str, size: int | None = None) -> str:
    """sha256 of an object read back in 8 MiB ranges (its size, where the listing gave it, spares
    a HEAD)."""
    digest = hashlib.sha256()
    with fs.open(key, "rb", block_size=8 << 20, cache_type="none", size=size) as fh:
        for chunk in iter(lambda: fh.read(8 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_output(path, exclude: tuple[str, ...] = ()) -> str:
    """The sha256 of a file or object, or of a tree (a Zarr store) as `fsio.sha256_tree` computes it:
    the same value for the same content on disk or in a bucket."""
    path = location(path)
    if not isinstance(path, ObjectPath):
        return fsio.sha256_tree(path, exclude) if path.is_dir() else fsio.sha256_file(path)
    fs = path.fs
    files = _contents(path)
    if not files:
        raise FileNotFoundError(f"{path}: no such object")
    if "" in files:
        return _sha256_object(fs, path.key, files[""])
    digest = hashlib.sha256()
    for relative_key in sorted(files):
        if not relative_key.startswith(exclude):
            digest.update(f"{relative_key}\0{_sha256_object(fs, f'{path.key}/{relative_key}', files[relative_key])}\n".encode())
    return digest.hexdigest()


def is_dir(path) -> bool:
    """A folder on disk, or a prefix holding objects."""
    path = location(path)
    if isinstance(path, ObjectPath):
        return bool(_object_files(path))
    return path.is_dir()


def remove_tree(path) -> None:
    """Delete a file, folder, object or prefix this run created (never one it did not)."""
    path = location(path)
    if not isinstance(path, ObjectPath):
        fsio.remove(path)
        return
    fs = path.fs
    keys = [f"{path.key}/{k}" for k in _object_files(path)]
    if fs.isfile(path.key):
        keys.append(path.key)
    if keys:
        fs.rm(keys)
    fs.invalidate_cache()


def upload(local: pathlib.Path, dst: ObjectPath) -> None:
    """Put a finished local file at dst: one PUT, or one multipart upload completed at the end (an
    upload that fails is aborted), so a reader sees the old object or the complete new one. The
    size is checked on the store afterwards."""
    fs = dst.fs
    try:
        fs.put_file(str(local), dst.key)
        fs.invalidate_cache(dst.key)
        size = fs.info(dst.key)["size"]
    except (OSError, ValueError) as exc:
        raise fsio.FileProblem(getattr(exc, "errno", None) or 5, f"upload failed ({exc})", str(dst)) from exc
    if size != local.stat().st_size:
        raise fsio.FileProblem(5, f"uploaded object is {size} bytes, {local.stat().st_size} written", str(dst))


def _tree_files(path: Location) -> list[str]:
    if isinstance(path, ObjectPath):
        return list(_object_files(path))
    return [p.relative_to(path).as_posix() for p in fsio.tree_files(path)]


def copy_tree(src, dst) -> None:
    """Copy every file or object of a store to dst (server-side within one object store; a
    download or an upload between disk and bucket), the Zarr metadata documents last: a reader
    opening the store at dst finds its root metadata only once the chunks are there."""
    src, dst = location(src), location(dst)
    metadata = ("zarr.json", ".zmetadata", ".zgroup", ".zarray", ".zattrs")
    names = sorted(_tree_files(src), key=lambda n: (posixpath.basename(n) in metadata, -n.count("/"), n))
    for name in names:
        if isinstance(src, ObjectPath) and isinstance(dst, ObjectPath):
            src.fs.copy(f"{src.key}/{name}", f"{dst.key}/{name}")
        elif isinstance(src, ObjectPath):
            target = dst / name
            target.parent.mkdir(parents=True, exist_ok=True)
            src.fs.get_file(f"{src.key}/{name}", str(target))
        elif isinstance(dst, ObjectPath):
            dst.fs.put_file(str(src / name), f"{dst.key}/{name}")
        else:
            raise ValueError("copy_tree is for stores in an object store; on disk the store is renamed")
    if not isinstance(dst, ObjectPath):
        fsio.fsync_tree(dst)
    for path in (src, dst):
        if isinstance(path, ObjectPath):
            path.fs.invalidate_cache()


def zarr_store(path, *, read_only: bool = False):
    """What zarr opens for a store path: the path itself on disk, zarr's FsspecStore remotely."""
    path = location(path)
    if not isinstance(path, ObjectPath):
        return path
    from zarr.storage import FsspecStore

    # zarr wants an asynchronous filesystem: its own instance, made with the options of
    # pipeline.urls' filesystem for the URL (the endpoint)
    return FsspecStore.from_url(path.url, storage_options=path.fs.storage_options, read_only=read_only)


@contextlib.contextmanager
def staged(paths: dict[str, Location], uploaded: list | None = None) -> Iterator[dict[str, pathlib.Path]]:
    """Local paths to write the given outputs at: the paths themselves on disk; for objects, the
    same names in a temporary folder, uploaded when the block ends without error (each file upload
    atomic, a store's objects with its metadata last; `uploaded` gets each object or prefix put,
    for the caller to remove if a later one fails). The temporary folder is removed in every case."""
    remote = {k: p for k, p in paths.items() if isinstance(p, ObjectPath)}
    if not remote:
        yield dict(paths)
        return
    with tempfile.TemporaryDirectory(prefix="tcmoa-upload-") as tmp:
        local = {k: (pathlib.Path(tmp) / p.name if isinstance(p, ObjectPath) else p) for k, p in paths.items()}
        yield local
        for key, dst in remote.items():
            if local[key].is_dir():  # a store (OME-Zarr): its objects, the metadata last
                if uploaded is not None:
                    uploaded.append(dst)  # listed first: a failure part-way removes what was put
                copy_tree(local[key], dst)
            elif local[key].is_file():
                upload(local[key], dst)
                if uploaded is not None:
                    uploaded.append(dst)


# ----------------------------------------------------------------------------- run-directory backends
class RunDirUnavailable(RuntimeError):
    """The run directory's storage refused the lock or the claim (the message says why)."""


class LocalBackend:
    """A run directory on a POSIX disk: flock, temporary names, fsync and rename."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self._lock_fh = None

    def lock(self, now_text: str) -> None:
        import fcntl

        if self.path.exists() and not self.path.is_dir():
            raise RunDirUnavailable(f"{self.path}: run_dir is an existing file, not a folder: choose another run_dir")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fh = open(self.path / ".lock", "a+")
        except OSError as exc:
            raise RunDirUnavailable(f"{self.path}: cannot use as run directory: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunDirUnavailable(f"{self.path}: run directory is in use by another run ({holder})") from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} since {now_text} UTC")
            fh.flush()
        except OSError as exc:
            fh.close()
            raise RunDirUnavailable(f"{self.path / '.lock'}: cannot write the lock file: {exc.strerror or exc}") from None
        self._lock_fh = fh

    def unlock(self) -> None:
        import fcntl

        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def check_held(self) -> None:
        """Nothing to check: a flock lives as long as this process."""

    def read_bytes(self, name: str) -> bytes | None:
        path = self.path / name
        return path.read_bytes() if path.exists() else None

    def write_bytes(self, name: str, data: bytes) -> None:
        with fsio.atomic_path(self.path / name) as tmp:
            tmp.write_bytes(data)

    def write_parquet(self, name: str, table) -> None:
        import pyarrow.parquet as pq

        with fsio.atomic_path(self.path / name) as tmp:
            pq.write_table(table, tmp)

    def create(self, name: str, data: bytes) -> bool:
        """Write `name` only if nothing is there (under the lock: a plain check suffices)."""
        if (self.path / name).exists():
            return False
        self.write_bytes(name, data)
        return True

    def list(self, folder: str, prefix: str) -> list[str]:
        """Names (relative to the run directory) in `folder` starting with `prefix`, sorted."""
        where = self.path / folder
        return sorted(f"{folder}/{p.name}" for p in where.glob(f"{prefix}*")) if where.is_dir() else []

    def delete(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)


class ObjectBackend:
    """A run directory under a prefix of an S3-compatible store. Every write is one PutObject
    (readers see the old object or the new one); the lock is a lease (see `Lease`)."""

    def __init__(self, path: ObjectPath):
        self.path = path
        self.fs = path.fs
        self.lease: Lease | None = None

    def _key(self, name: str) -> str:
        return f"{self.path.key}/{name}"

    def lock(self, now_text: str) -> None:
        bucket = self.path.key.split("/", 1)[0]
        try:
            self.fs.invalidate_cache()
            if not self.fs.exists(bucket):
                raise RunDirUnavailable(f"{self.path}: cannot use as run directory: bucket {bucket!r} does not exist "
                                        f"(or is not visible with these credentials)")
        except PermissionError as exc:
            raise RunDirUnavailable(f"{self.path}: cannot use as run directory: access denied ({exc})") from None
        if self.fs.isfile(self.path.key):
            raise RunDirUnavailable(f"{self.path}: run_dir is an existing object, not a prefix: choose another run_dir")
        self.lease = Lease(self, ".lock")
        self.lease.acquire()

    def unlock(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def check_held(self) -> None:
        if self.lease is not None and self.lease.lost:
            raise RunDirUnavailable(f"{self.path}: this run lost its lease on the run directory ({self.lease.lost}); "
                                    "stopped so that two runs never write it at once")

    def read_bytes(self, name: str) -> bytes | None:
        try:
            return self.fs.cat_file(self._key(name))
        except FileNotFoundError:
            return None

    def write_bytes(self, name: str, data: bytes) -> None:
        self._put(name, data)

    def write_parquet(self, name: str, table) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self._put(name, sink.getvalue().to_pybytes())

    def _put(self, name: str, data: bytes, **conditions) -> dict:
        try:
            return self.fs.call_s3("put_object", Bucket=self._key(name).split("/", 1)[0],
                                   Key=self._key(name).split("/", 1)[1], Body=data, **conditions)
        finally:
            self.fs.invalidate_cache(self._key(name))

    def create(self, name: str, data: bytes) -> bool:
        """PutObject with If-None-Match: * (False when the object is already there)."""
        try:
            self._put(name, data, IfNoneMatch="*")
            return True
        except Exception as exc:
            if _precondition_failed(exc):
                return False
            raise

    def head(self, name: str) -> dict | None:
        try:
            return self.fs.call_s3("head_object", Bucket=self._key(name).split("/", 1)[0], Key=self._key(name).split("/", 1)[1])
        except FileNotFoundError:
            return None

    def list(self, folder: str, prefix: str) -> list[str]:
        self.fs.invalidate_cache(self._key(folder))
        try:
            names = self.fs.ls(self._key(folder), detail=False)
        except FileNotFoundError:
            return []
        return sorted(f"{folder}/{posixpath.basename(n)}" for n in names if posixpath.basename(n).startswith(prefix))

    def delete(self, name: str) -> None:
        self.fs.rm_file(self._key(name))
        self.fs.invalidate_cache(self._key(name))


def _precondition_failed(exc: BaseException) -> bool:
    """S3 answered 412 (or 409: a conditional write racing another one)."""
    text = f"{type(exc).__name__} {exc} {getattr(exc, '__cause__', '')}"
    return "PreconditionFailed" in text or "412" in text or "ConditionalRequestConflict" in text


def backend(path: Location):
    return ObjectBackend(path) if isinstance(path, ObjectPath) else LocalBackend(path)


# ----------------------------------------------------------------------------- the lease
class Lease:
    """The single-run lock of a run directory in an object store.

    The lease object holds its owner (a random id, host, pid) and its duration. It is created with
    If-None-Match: * (exactly one of two racing runs succeeds) and renewed by a thread every third
    of its duration with If-Match on the ETag this run last wrote: a renewal fails only when another
    run took the lease over, and then this run stops writing (`lost`). An existing lease is taken
    over only when expired, judged on the store's clock (its LastModified against the Date of the
    answer, so the clocks of the machines do not matter), and with If-Match on the stale ETag, so
    two runs cannot both take over the same stale lease. A run killed without releasing its lease
    blocks the run directory until the lease expires (TCMOA_LEASE_SECONDS, default 120 s)."""

    def __init__(self, store: ObjectBackend, name: str):
        self.store, self.name = store, name
        self.seconds = float(os.environ.get(LEASE_SECONDS_ENV, DEFAULT_LEASE_SECONDS))
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.etag: str | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewals = 0

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "lease_seconds": self.seconds,
                           "renewed": dt.datetime.now(dt.timezone.utc).isoformat()}).encode()

    def acquire(self) -> None:
        where = f"{self.store.path}/{self.name}"
        for _ in range(3):
            try:
                answer = self.store._put(self.name, self._body(), IfNoneMatch="*")
                self.etag = answer["ETag"]
                break
            except Exception as exc:
                if not _precondition_failed(exc):
                    raise RunDirUnavailable(f"{where}: cannot write the run's lease: {exc}") from None
            head = self.store.head(self.name)
            if head is None:
                continue  # released in between: try to create it again
            held = json.loads(self.store.read_bytes(self.name) or b"{}")
            server_now = _server_time(head)
            age = (server_now - head["LastModified"]).total_seconds()
            seconds = float(held.get("lease_seconds", self.seconds))
            if age < seconds:
                raise RunDirUnavailable(
                    f"{self.store.path}: run directory is in use by another run ({held.get('owner', 'unknown owner')}, "
                    f"lease renewed {age:.0f} s ago; if that run is gone, the lease expires in {seconds - age:.0f} s)")
            try:  # expired: take it over, unless another run just did
                answer = self.store._put(self.name, self._body(), IfMatch=head["ETag"])
                self.etag = answer["ETag"]
                break
            except Exception as exc:
                if not _precondition_failed(exc):
                    raise RunDirUnavailable(f"{where}: cannot write the run's lease: {exc}") from None
        else:
            raise RunDirUnavailable(f"{self.store.path}: run directory is in use by another run (its lease changed while "
                                    "this run tried to take it)")
        self._thread = threading.Thread(target=self._renew, name="tcmoa-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.etag = self.store._put(self.name, self._body(), IfMatch=self.etag)["ETag"]
                self.renewals += 1
            except Exception as exc:
                if _precondition_failed(exc):
                    self.lost = "another run took the lease over"
                    return
                # an unreachable store: try again at the next turn; the lease may expire meanwhile,
                # and then the If-Match of the next renewal tells

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost is None:
            with contextlib.suppress(Exception):
                head = self.store.head(self.name)
                if head is not None and head["ETag"] == self.etag:
                    self.store.delete(self.name)


def _server_time(answer: dict) -> dt.datetime:
    """The store's clock, from the Date header of an answer."""
    from email.utils import parsedate_to_datetime

    date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    return parsedate_to_datetime(date) if date else dt.datetime.now(dt.timezone.utc)
