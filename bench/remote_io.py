"""Reading a scene from object storage against reading it from disk, in one run.

A 4096^2 uint16 COG (512^2 DEFLATE tiles, overviews) is written to a temporary folder and put
in a bucket of a local S3-compatible server (moto, on 127.0.0.1, as in the tests). The engine's
own raster reader (pipeline.sources) then reads the whole scene the way a job does: the decimated
read the stretch statistics come from, then every block of `--block` pixels. Three ways:

- local: the file on disk (GDAL decodes on all cores, as the engine does);
- s3, tuned: s3://bucket/key with the remote-read options of pipeline.urls (one decoding thread);
- s3, GDAL defaults: the same URL with only the endpoint set (what a bare rasterio.open gets).

Each remote pass reads a fresh copy of the object (new key), so GDAL's process-wide cache of
downloaded ranges never serves one pass from another. Requests and bytes are counted by a TCP
relay between GDAL and the server (request lines sent, bytes received). Also counted: the
requests a job's planning makes per scene (kind detection, header inspection, object identity).

    python bench/remote_io.py [--size 4096] [--block 2048] [--repeats 3]

Needs moto[server] and boto3 (the `test` extra).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def counted(relay) -> tuple[int, int]:
    """Requests sent and bytes received through the relay so far."""
    counts = relay.counts()
    return sum(counts["requests"].values()), counts["received"]


def make_cog(path: pathlib.Path, size: int) -> pathlib.Path:
    """A uint16 COG with the texture of a real scene (smooth fields plus noise: DEFLATE gets ~2x,
    as on real imagery, where pure noise would not compress at all)."""
    import rasterio
    from rasterio.shutil import copy
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    field = 20000 + 15000 * np.sin(7 * x + 3 * y) * np.cos(5 * y - 2 * x)
    data = (field + rng.normal(0, 40, (size, size))).clip(0, 65535).astype(np.uint16)
    plain = path.with_suffix(".plain.tif")
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint16",
               "crs": "EPSG:32632", "transform": from_origin(500000, 5600000, 10, 10)}
    with rasterio.open(plain, "w", **profile) as ds:
        ds.write(data, 1)
    copy(plain, path, driver="COG", compress="DEFLATE", predictor=2, blocksize=512, overviews="AUTO")
    plain.unlink()
    return path


def read_scene(location: str, block: int) -> tuple[float, int, int]:
    """Seconds to read the whole scene as a job does (decimated statistics read, then every block),
    the number of 512^2 COG tiles and of blocks that covers."""
    from pipeline.sources import SourceRef, inspect, open_reader

    start = time.perf_counter()
    ref = SourceRef(role="scene", kind="raster", files=(location,))
    grid = inspect(ref).grid
    with open_reader(ref, grid) as reader:
        reader.read_decimated(512)
        for y0 in range(0, grid.height, block):
            for x0 in range(0, grid.width, block):
                reader.read(y0, min(y0 + block, grid.height), x0, min(x0 + block, grid.width))
    tiles = -(-grid.height // 512) * -(-grid.width // 512)
    blocks = -(-grid.height // block) * -(-grid.width // block)
    return time.perf_counter() - start, tiles, blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--block", type=int, default=2048, help="the job's tiling.block")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--neighbours", type=int, default=1500,
                        help="other objects under the scene's prefix (an archive folder is never empty)")
    args = parser.parse_args()

    from s3_server import Relay, start_server

    from pipeline import plan, sources, urls

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="tcmoa-remote-io-"))
    cog = make_cog(tmp / "scene.tif", args.size)
    size_mb = cog.stat().st_size / 1e6
    server = start_server()
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's access log
    relay = Relay(server.endpoint)
    relay_host_port = relay.endpoint.split("://", 1)[1]
    os.environ.update(server.environment())
    bucket = server.bucket("bench")
    client = server.client()
    for i in range(args.neighbours):
        client.put_object(Bucket=bucket, Key=f"scenes/other{i:05d}.tif", Body=b"II*\x00")
    keys = iter(range(10**6))

    def fresh_url() -> str:
        key = f"scenes/scene{next(keys)}.tif"
        server.client().upload_file(str(cog), bucket, key)
        return f"s3://{bucket}/{key}"

    local = min(read_scene(str(cog), args.block)[0] for _ in range(args.repeats))
    os.environ["TCMOA_IO_THREADS"] = "1"
    local_one_thread = min(read_scene(str(cog), args.block)[0] for _ in range(args.repeats))
    del os.environ["TCMOA_IO_THREADS"]
    # the server's own pace: the whole object in one GET (no GDAL)
    url = fresh_url()
    start = time.perf_counter()
    server.client().get_object(Bucket=bucket, Key=url.split("/", 3)[3])["Body"].read()
    whole_get = time.perf_counter() - start

    def through(endpoint: str) -> None:
        os.environ.update({"AWS_ENDPOINT_URL": f"http://{endpoint}", "AWS_S3_ENDPOINT": endpoint})

    def remote(repeats: int) -> tuple[float, int, int, int, int]:
        """Best time read straight from the server; requests and bytes of one more read through the relay."""
        through(server.host_port)
        best = min(read_scene(fresh_url(), args.block)[0] for _ in range(repeats))
        through(relay_host_port)
        url = fresh_url()
        before = counted(relay)
        _, tiles, blocks = read_scene(url, args.block)
        requests, received = (a - b for a, b in zip(counted(relay), before))
        return best, requests, received, tiles, blocks

    tuned = remote(args.repeats)
    tuned_options = urls.gdal_options

    def defaults_only(files=()):  # GDAL's own defaults, the endpoint set, decoding as tuned (one thread)
        return {**urls.endpoint_options(), "GDAL_NUM_THREADS": "1"} if any(urls.is_url(f) for f in files) else {}

    urls.gdal_options = defaults_only
    try:
        plain = remote(1)
    finally:
        urls.gdal_options = tuned_options

    # planning one scene: kind detection (magic bytes, TIFF header), header inspection, identity
    url = fresh_url()
    before = counted(relay)
    ref = sources.expand_sources("scene", [url], kind="auto", bands=None, band_files=False, multiple=False,
                                 nodata=None, resampling="bilinear", normalise=sources.NormaliseSpec())[0]
    sources.inspect(ref)
    plan.file_identity(url)
    planning_requests, planning_bytes = (a - b for a, b in zip(counted(relay), before))
    relay.stop()

    server.server.stop()
    for path in tmp.iterdir():
        path.unlink()
    tmp.rmdir()

    print(f"scene: {args.size}x{args.size} uint16 COG, 512^2 DEFLATE tiles + overviews, {size_mb:.1f} MB; "
          f"read as a job does (decimated statistics read, then {args.block}^2 blocks); best of {args.repeats} "
          f"(remote: straight from the server; requests and bytes: one more read through a counting relay)")
    print(f"{'read':<26}{'seconds':>9}{'MB/s':>8}{'x local':>9}{'requests':>10}{'req/tile':>10}{'req/block':>10}{'MB in':>8}{'x file':>8}")
    dash = f"{'-':>10}{'-':>10}{'-':>10}{'-':>8}{'-':>8}"
    print(f"{'local disk':<26}{local:>9.2f}{size_mb / local:>8.1f}{1.0:>9.2f}{dash}")
    print(f"{'local disk, 1 thread':<26}{local_one_thread:>9.2f}{size_mb / local_one_thread:>8.1f}{local_one_thread / local:>9.2f}{dash}")
    print(f"{'s3 one GET of the object':<26}{whole_get:>9.2f}{size_mb / whole_get:>8.1f}{whole_get / local:>9.2f}{1:>10d}{'-':>10}{'-':>10}"
          f"{size_mb:>8.1f}{1.0:>8.2f}")
    for name, (seconds, requests, received, tiles, blocks) in (("s3 (pipeline.urls opts)", tuned), ("s3 (GDAL defaults)", plain)):
        print(f"{name:<26}{seconds:>9.2f}{size_mb / seconds:>8.1f}{seconds / local:>9.2f}{requests:>10d}"
              f"{requests / tiles:>10.3f}{requests / blocks:>10.2f}{received / 1e6:>8.1f}{received / 1e6 / size_mb:>8.2f}")
    print(f"planning one scene from s3 (kind, header, identity): {planning_requests} requests, {planning_bytes / 1e3:.0f} kB")
    print(f"remote/local read time: {tuned[0] / local:.2f}x (tuned), {plain[0] / local:.2f}x (GDAL defaults); "
          f"tuned against local on one thread plus the server's own GET time: "
          f"{tuned[0] / (local_one_thread + whole_get):.2f}x; "
          f"requests: {tuned[1]} tuned vs {plain[1]} defaults for {tuned[3]} tiles in {tuned[4]} blocks "
          f"(+ the decimated read); {args.neighbours} other objects under the prefix")


if __name__ == "__main__":
    main()
