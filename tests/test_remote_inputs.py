"""Inputs in object storage (issue 15, read side): sources, CSV and STAC files and glob prefixes in a
bucket on the local moto server (the `s3_server` fixture), read through GDAL's /vsis3/ and fsspec.

The run directory and the outputs stay local here; a job on the bucket must give, pixel for pixel,
what the same job gives on the local copies of the files, and each way a remote input can fail
(missing bucket or key, access denied, a truncated object, an endpoint that stops answering) must
fail that item alone with a one-line error naming the URL, leaving nothing of it behind.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline import urls
from pipeline.runners.local import run_job
from pipeline.spec import parse_job
from pipeline_support import (ContextFuser, assert_only_the_bad_item_failed, output_pixels, random_raster, write_geotiff,
                              write_pair_archive)
from s3_server import Relay

pytest.importorskip("moto.server")


def _write_archive(root: pathlib.Path) -> None:
    """Three kinds of input, each found its own way: GeoTIFF pairs (glob), photo pairs (CSV with
    relative paths), a focus stack (STAC ItemCollection with a relative href)."""
    write_pair_archive(root / "geo", scenes=("s1", "s2"), shape=(120, 150))
    rng = np.random.default_rng(3)
    (root / "photos").mkdir()
    rows = ["item,dark,bright"]
    for scene in ("p1", "p2"):
        for role in ("dark", "bright"):
            image = Image.fromarray(rng.integers(0, 255, (90, 130, 3), dtype=np.uint8))
            exif = image.getexif()
            exif[0x0112] = 6  # rotated: the EXIF orientation must be applied to the remote photo too
            image.save(root / "photos" / f"{scene}_{role}.jpg", exif=exif, quality=90)
        rows.append(f"{scene},{scene}_dark.jpg,{scene}_bright.jpg")
    (root / "photos" / "items.csv").write_text("\n".join(rows) + "\n")
    (root / "stacks").mkdir()
    stack = random_raster(rng, (3, 100, 120), "uint16")
    tifffile.imwrite(root / "stacks" / "cells.ome.tif", stack, ome=True, metadata={"axes": "ZYX"}, tile=(64, 64))
    collection = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "cells", "geometry": None, "properties": {}, "assets": {"stack": {"href": "cells.ome.tif"}}}]}
    (root / "stacks" / "items.json").write_text(json.dumps(collection))


def _upload(server, bucket: str, folder: pathlib.Path, prefix: str) -> None:
    client = server.client()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


def _job(root: str, out: pathlib.Path, run: pathlib.Path) -> dict:
    """The same job over an archive at `root` (a folder or an s3:// prefix)."""
    where = lambda *parts: str(urls.join(root, *parts))  # noqa: E731
    return {
        "name": "remote",
        "tiling": {"tile": 112, "overlap": 32, "block": 128},
        "model": {"weights": "random:tiny", "batch_size": 4},
        "run_dir": str(run),
        "collections": [
            {"name": "geo", "task": "vif", "discover": {"type": "glob", "root": where("geo")},
             "sources": [{"role": "a", "pattern": "{scene}_a.tif", "normalise": "dtype"},
                         {"role": "b", "pattern": "{scene}_b.tif", "normalise": "dtype"}],
             "output": {"formats": ["cog", "zarr"], "chunk": 64, "dir": str(out / "geo")}},
            {"name": "photos", "task": "mef", "discover": {"type": "csv", "file": where("photos", "items.csv")},
             "sources": [{"role": "dark", "normalise": "dtype"}, {"role": "bright", "normalise": "dtype"}],
             "output": {"formats": ["png"], "chunk": 64, "dir": str(out / "photos")}},
            {"name": "stacks", "task": "mff", "discover": {"type": "stac", "file": where("stacks", "items.json")},
             "sources": [{"role": "plane", "assets": ["stack"], "normalise": {"method": "fixed", "min": 0, "max": 65535}}],
             "output": {"formats": ["tiff"], "chunk": 64, "dir": str(out / "stacks")}},
        ],
    }


def test_a_job_on_a_bucket_equals_the_same_job_on_local_files(tmp_path, s3_server):
    local_root = tmp_path / "archive"
    _write_archive(local_root)
    bucket = s3_server.bucket()
    _upload(s3_server, bucket, local_root, "archive")

    local = run_job(parse_job(_job(str(local_root), tmp_path / "out_local", tmp_path / "run_local"), base=tmp_path), progress=False)
    remote = run_job(parse_job(_job(f"s3://{bucket}/archive", tmp_path / "out_s3", tmp_path / "run_s3"), base=tmp_path), progress=False)
    assert local.failures == [] and remote.failures == [], (local.failures, remote.failures)
    assert local.items_done == remote.items_done == 5

    expected, got = output_pixels(tmp_path / "out_local"), output_pixels(tmp_path / "out_s3")
    assert sorted(got) == sorted(expected) and len(got) >= 5
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    # the provenance names the objects by URL, intact (never 's3:/bucket/...')
    stac = json.loads((tmp_path / "out_s3" / "photos" / "p1.stac.json").read_text())
    sources = sorted(link["href"] for link in stac["links"] if link["rel"] == "derived_from")
    assert sources == [f"s3://{bucket}/archive/photos/p1_bright.jpg", f"s3://{bucket}/archive/photos/p1_dark.jpg"]

    # a second run finds every item unchanged (object size + ETag) and redoes nothing
    again = run_job(parse_job(_job(f"s3://{bucket}/archive", tmp_path / "out_s3", tmp_path / "run_s3"), base=tmp_path), progress=False)
    assert again.items_skipped == 5 and again.units_run == 0 and again.failures == [], again


# ----------------------------------------------------------------------------- failures
GOOD = ("good1", "good2")


def _pair(folder: pathlib.Path, scene: str, shape=(70, 90), seed: int = 0) -> tuple[pathlib.Path, pathlib.Path]:
    rng = np.random.default_rng(seed)
    a = write_geotiff(folder / f"{scene}_a.tif", random_raster(rng, (3, *shape), "uint16"))
    b = write_geotiff(folder / f"{scene}_b.tif", random_raster(rng, shape, "uint16"))
    return a, b


def _bucket_archive(server, tmp_path: pathlib.Path, bucket: str | None = None) -> tuple[str, dict[str, tuple[str, str]]]:
    """good1/good2 pairs uploaded to a bucket: (bucket, {item: (url_a, url_b)})."""
    bucket = bucket or server.bucket()
    rows = {}
    for i, scene in enumerate(GOOD):
        files = _pair(tmp_path / "local", scene, seed=i)
        for path in files:
            server.client().upload_file(str(path), bucket, f"archive/{path.name}")
        rows[scene] = tuple(f"s3://{bucket}/archive/{p.name}" for p in files)
    return bucket, rows


def _run_items(tmp_path: pathlib.Path, rows: dict[str, tuple[str, str]], fuser=None):
    """A job listing its items (discover: list), outputs and run directory local."""
    doc = {
        "name": "test", "task": "vif",
        "discover": {"type": "list", "items": [{"item": k, "a": a, "b": b} for k, (a, b) in rows.items()]},
        "sources": [{"role": "a", "normalise": "dtype"}, {"role": "b", "normalise": "dtype"}],
        "reference": "a",
        "tiling": {"tile": 112, "overlap": 32, "block": 64},
        "output": {"formats": ["cog", "zarr"], "chunk": 64, "dir": str(tmp_path / "out")},
        "run_dir": str(tmp_path / "run"),
    }
    return run_job(parse_job(doc, base=tmp_path), fuser=fuser or ContextFuser(), progress=False)


def _check(tmp_path: pathlib.Path, summary, url: str, *words: str) -> None:
    """The bad item alone failed, with a one-line error naming the URL intact (never pathlib's
    's3:/b/k'); the others are done; nothing of the bad item is left."""
    error = summary.failures[0]["error"] if summary.failures else ""
    assert "s3:/" + url[len("s3://"):] not in error.replace(url, ""), error
    assert_only_the_bad_item_failed(summary, tmp_path, url, *words)


def test_missing_bucket(tmp_path, s3_server):
    _, rows = _bucket_archive(s3_server, tmp_path)
    url = "s3://no-such-bucket-tcmoa/archive/bad_a.tif"
    rows["bad"] = (url, rows["good1"][1])
    _check(tmp_path, _run_items(tmp_path, rows), url, "bucket does not exist")


def test_missing_key(tmp_path, s3_server):
    bucket, rows = _bucket_archive(s3_server, tmp_path)
    url = f"s3://{bucket}/archive/bad_b.tif"
    rows["bad"] = (rows["good1"][0], url)
    _check(tmp_path, _run_items(tmp_path, rows), url, "no such object")


def test_truncated_object(tmp_path, s3_server):
    bucket, rows = _bucket_archive(s3_server, tmp_path)
    a, _ = _pair(tmp_path / "local", "bad", seed=5)
    data = a.read_bytes()
    s3_server.client().put_object(Bucket=bucket, Key="archive/bad_a.tif", Body=data[: len(data) // 2])  # the upload was cut
    url = f"s3://{bucket}/archive/bad_a.tif"
    rows["bad"] = (url, rows["good1"][1])
    _check(tmp_path, _run_items(tmp_path, rows), url, "truncated")


@pytest.fixture
def iam_mode(s3_server, monkeypatch):
    """Switches the moto server to IAM mode (its /moto-api/reset-auth switch) with the
    environment's credentials those of a user allowed to read one bucket only; back to no
    authentication after the test. Yields enforce(allowed_bucket)."""
    import urllib.request

    import boto3
    import s3fs

    def switch_auth(count: bytes) -> None:
        request = urllib.request.Request(f"{s3_server.endpoint}/moto-api/reset-auth", data=count, method="POST",
                                         headers={"Content-Type": "text/plain"})  # a form body would not reach moto
        urllib.request.urlopen(request, timeout=10).close()

    def enforce(allowed: str) -> None:
        iam = boto3.client("iam", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        user = f"reader-{allowed}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="read-one-bucket", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            # HEAD needs s3:GetObject on AWS; moto 5.2 checks it as "s3:HeadObject" (no such IAM
            # action on AWS), so the user gets both: reading the allowed bucket works on either
            "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:HeadObject", "s3:ListBucket"],
                           "Resource": [f"arn:aws:s3:::{allowed}", f"arn:aws:s3:::{allowed}/*"]}],
        }))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        s3fs.S3FileSystem.clear_instance_cache()  # instances made with the other credentials
        switch_auth(b"0")

    try:
        yield enforce
    finally:
        switch_auth(b"inf")
        s3fs.S3FileSystem.clear_instance_cache()


def test_access_denied(tmp_path, s3_server, iam_mode):
    allowed, forbidden = s3_server.bucket("allowed"), s3_server.bucket("private")
    _, rows = _bucket_archive(s3_server, tmp_path, bucket=allowed)
    s3_server.client().upload_file(str(tmp_path / "local" / "good1_a.tif"), forbidden, "archive/bad_a.tif")
    url = f"s3://{forbidden}/archive/bad_a.tif"
    rows["bad"] = (url, rows["good1"][1])
    iam_mode(allowed)  # from here on, requests are checked against the user's policy
    _check(tmp_path, _run_items(tmp_path, rows), url, "access denied")


class _CutEndpointFuser(ContextFuser):
    """Cuts the endpoint on its first call: the run is under way (planned, first item started)."""

    def __init__(self, proxy: Relay):
        super().__init__()
        self.proxy = proxy

    def fuse_batch(self, a, b, task="vif", *, return_prompts=False):
        self.proxy.stop()
        return super().fuse_batch(a, b, task, return_prompts=return_prompts)


def test_endpoint_that_stops_answering_mid_run(tmp_path, s3_server, monkeypatch):
    import s3fs

    good = {scene: tuple(map(str, _pair(tmp_path / "local", scene, seed=i))) for i, scene in enumerate(GOOD)}
    bucket = s3_server.bucket()
    # large enough that planning (headers: the first 64 KB) leaves most of it unread
    bad_a, _ = _pair(tmp_path / "big", "bad", shape=(600, 700), seed=7)
    s3_server.client().upload_file(str(bad_a), bucket, "archive/bad_a.tif")
    proxy = Relay(s3_server.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    monkeypatch.setenv("AWS_S3_ENDPOINT", proxy.endpoint.split("://", 1)[1])
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "1")  # keep the test short: the endpoint is gone for good
    s3fs.S3FileSystem.clear_instance_cache()
    url = f"s3://{bucket}/archive/bad_a.tif"
    rows = {**good, "bad": (url, str(tmp_path / "big" / "bad_b.tif"))}
    try:
        summary = _run_items(tmp_path, rows, fuser=_CutEndpointFuser(proxy))
    finally:
        proxy.stop()
        s3fs.S3FileSystem.clear_instance_cache()
    _check(tmp_path, summary, url, "short read")


# ----------------------------------------------------------------------------- STAC API search
class _StacApi:
    """A minimal STAC API on 127.0.0.1 (landing page + item search, GET and POST) over a fixed
    list of items; the searches it received are kept for the test to look at."""

    def __init__(self, features: list[dict]):
        import http.server
        import threading
        import urllib.parse

        api = self
        self.features, self.searches = features, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, document: dict) -> None:
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                if url.path.rstrip("/") == "/search":
                    query = urllib.parse.parse_qs(url.query)
                    self._search({"collections": query["collections"][0].split(",")} if "collections" in query else {})
                else:
                    self._send(api.landing())

            def do_POST(self):
                self._search(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

            def _search(self, params: dict) -> None:
                api.searches.append(params)
                wanted = params.get("collections")
                found = [f for f in api.features if not wanted or f["collection"] in wanted]
                self._send({"type": "FeatureCollection", "features": found, "links": []})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def landing(self) -> dict:
        return {
            "type": "Catalog", "id": "test-api", "description": "test", "stac_version": "1.0.0",
            "conformsTo": ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"],
            "links": [{"rel": "self", "href": self.url}, {"rel": "root", "href": self.url},
                      {"rel": "search", "href": f"{self.url}/search", "type": "application/geo+json", "method": "GET"},
                      {"rel": "search", "href": f"{self.url}/search", "type": "application/geo+json", "method": "POST"}],
        }

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_stac_api_search_discovers_items_in_a_bucket(tmp_path, s3_server):
    bucket, rows = _bucket_archive(s3_server, tmp_path)
    features = [
        {"type": "Feature", "stac_version": "1.0.0", "id": scene, "collection": "pairs", "geometry": None,
         "properties": {"datetime": "2024-05-01T10:00:00Z"}, "links": [],
         "assets": {"optical": {"href": a}, "thermal": {"href": b}}}
        for scene, (a, b) in rows.items()
    ]
    features.append({**features[0], "id": "elsewhere", "collection": "other"})  # the search must leave it out
    api = _StacApi(features)
    try:
        doc = {
            "name": "test", "task": "vif",
            "discover": {"type": "stac", "api": api.url, "search": {"collections": ["pairs"], "max_items": 10}},
            "sources": [{"role": "a", "assets": ["optical"], "normalise": "dtype"},
                        {"role": "b", "assets": ["thermal"], "normalise": "dtype"}],
            "tiling": {"tile": 112, "overlap": 32, "block": 64},
            "output": {"formats": ["cog"], "chunk": 64, "dir": str(tmp_path / "out")},
            "run_dir": str(tmp_path / "run"),
        }
        summary = run_job(parse_job(doc, base=tmp_path), fuser=ContextFuser(), progress=False)
    finally:
        api.stop()
    assert summary.failures == [] and summary.items_done == 2
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tif")) == ["good1.tif", "good2.tif"]
    assert api.searches and all(s.get("collections") == ["pairs"] for s in api.searches), api.searches


def test_stac_api_that_does_not_answer_is_a_collection_error(tmp_path):
    from s3_server import free_port

    doc = {
        "name": "test", "task": "vif",
        "discover": {"type": "stac", "api": f"http://127.0.0.1:{free_port()}", "search": {"collections": ["pairs"]}},
        "sources": [{"role": "a", "assets": ["optical"]}, {"role": "b", "assets": ["thermal"]}],
        "run_dir": str(tmp_path / "run"),
    }
    summary = run_job(parse_job(doc, base=tmp_path), fuser=ContextFuser(), progress=False)
    assert [f["item_id"] for f in summary.failures] == ["*"]
    error = summary.failures[0]["error"]
    assert doc["discover"]["api"] in error and "STAC API search" in error and "\n" not in error, error


def test_tcmoa_fuse_takes_urls(tmp_path, s3_server):
    from click.testing import CliRunner

    from pipeline.cli import main

    bucket, rows = _bucket_archive(s3_server, tmp_path)
    local = [str(tmp_path / "local" / f"good1_{r}.tif") for r in ("a", "b")]
    runner = CliRunner()
    for name, sources in (("from_disk", local), ("from_bucket", rows["good1"])):
        result = runner.invoke(main, ["fuse", *sources, "-o", str(tmp_path / name / "fused.tif"),
                                      "--weights", "baseline:average", "--tile", "112", "--overlap", "32", "--quiet"],
                               catch_exceptions=False)
        assert result.exit_code == 0, result.output
    pixels = output_pixels(tmp_path / "from_bucket")
    np.testing.assert_array_equal(pixels["fused.tif"], output_pixels(tmp_path / "from_disk")["fused.tif"])
    # and a URL that names nothing: one line naming it
    missing = f"s3://{bucket}/archive/nothing.tif"
    result = runner.invoke(main, ["fuse", missing, local[1], "-o", str(tmp_path / "x.tif"), "--weights", "baseline:average"])
    assert result.exit_code != 0 and missing in result.output, result.output
