"""Requests and bytes per scene for a run whose run directory is in object storage (docs/scaling.md).

    python bench/remote_run_io.py                      # 2 scenes of 1024^2 px, blocks of 512, COG + Zarr
    python bench/remote_run_io.py --scenes 4 --size 2048 --block 1024 --formats cog zarr png

Runs the same job twice on a local S3-compatible server (moto, loopback), the run directory and
outputs in a bucket, behind a TCP relay that counts every request (by method and by the kind of
object it names) and the bytes each way: a first run (everything written), then a second run of
the same job (nothing to do: every output verified by reading it back). The same job with a
local run directory gives the output bytes for comparison. Inputs are local files (reads are
`bench/remote_io.py`'s subject); the model is `baseline:average` (no network time).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def kind_of_key(line: str, run: str) -> str:
    """What a request line's object is, in the run directory's layout."""
    path = line.split(" ")[1].split("?")[0]
    tail = path.split(f"/{run}/", 1)[1] if f"/{run}/" in path else ""
    if "list-type=2" in line or (path.count("/") <= 1 and line.startswith("GET")):
        return "list"
    for pattern, kind in ((r"^\.lock$", "lease"), (r"^job(-source)?\.json$", "job records"),
                          (r"^(items|plan)\.parquet$", "plan tables"), (r"^status/", "status parts"),
                          (r"^work/", "work stores"), (r"^outputs/.*\.zarr/", "zarr outputs"),
                          (r"^outputs/", "file outputs"), (r"^(catalog\.json|stac/)", "run catalog")):
        if re.search(pattern, tail):
            return kind
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--formats", nargs="+", default=["cog", "zarr"])
    args = parser.parse_args()

    import numpy as np

    from pipeline.runners.local import run_job
    from pipeline.spec import parse_job
    from pipeline_support import random_raster, write_geotiff
    from s3_server import Relay, start_server

    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's request log
    server = start_server()
    os.environ.update(server.environment())
    with tempfile.TemporaryDirectory(prefix="tcmoa-bench-") as tmp:
        tmp = pathlib.Path(tmp)
        rng = np.random.default_rng(0)
        for i in range(args.scenes):
            write_geotiff(tmp / "archive" / f"s{i}_a.tif", random_raster(rng, (3, args.size, args.size), "uint16"), blocksize=256)
            write_geotiff(tmp / "archive" / f"s{i}_b.tif", random_raster(rng, (args.size, args.size), "uint16"), blocksize=256)

        def job(run_dir: str):
            return parse_job({
                "name": "bench", "task": "vif", "run_dir": run_dir,
                "discover": {"type": "glob", "root": str(tmp / "archive")},
                "sources": [{"role": "a", "pattern": "{scene}_a.tif", "normalise": "dtype"},
                            {"role": "b", "pattern": "{scene}_b.tif", "normalise": "dtype"}],
                "tiling": {"tile": 224, "overlap": 32, "block": args.block},
                "model": {"weights": "baseline:average"},
                "output": {"formats": args.formats, "chunk": args.chunk},
            }, base=tmp)

        local = run_job(job(str(tmp / "local-run")), progress=False)
        out_bytes = sum(p.stat().st_size for p in (tmp / "local-run" / "outputs").rglob("*") if p.is_file())
        bucket = server.bucket("bench")
        relay = Relay(server.endpoint)
        os.environ["AWS_ENDPOINT_URL"] = relay.endpoint  # every request of the run goes through the relay
        units = local.units_run // args.scenes
        print(f"{args.scenes} scene(s) of {args.size}^2 px, 3+1 bands uint16 in; blocks {args.block}^2 "
              f"({units} units/scene), chunks {args.chunk}^2; outputs {', '.join(args.formats)} "
              f"({out_bytes / args.scenes / 1e6:.2f} MB per scene on disk)")
        for name in ("first run (writes)", "second run (verifies, skips)"):
            start_lines = len(relay.lines)
            before = relay.counts()
            summary = run_job(job(f"s3://{bucket}/run"), progress=False)
            assert not summary.failures, summary.failures
            after = relay.counts()
            lines = relay.lines[start_lines:]
            per_kind: dict[str, dict[str, int]] = {}
            for line in lines:
                counts = per_kind.setdefault(kind_of_key(line, "run"), {})
                method = line.split(" ", 1)[0]
                counts[method] = counts.get(method, 0) + 1
            total = len(lines)
            sent, received = after["sent"] - before["sent"], after["received"] - before["received"]
            print(f"\n{name}: {total / args.scenes:.1f} requests per scene, "
                  f"{sent / args.scenes / 1e6:.2f} MB up, {received / args.scenes / 1e6:.2f} MB down per scene "
                  f"(up / output bytes: {sent / out_bytes:.2f}; down / output bytes: {received / out_bytes:.2f})")
            for kind in sorted(per_kind):
                methods = ", ".join(f"{m} {n / args.scenes:.1f}" for m, n in sorted(per_kind[kind].items()))
                print(f"  {kind:<14} {methods}")
        relay.stop()
    server.server.stop()


if __name__ == "__main__":
    main()
