"""Cost of the run's durability: status records appended (and fsynced) after every block, every
fsync (blocks' chunks, exported files, status parts), and the verification a resume does before
it trusts done work.

    python bench/status_overhead.py                 # tiny model, a 1344^2 uint16 pair, blocks of 448 px
    python bench/status_overhead.py --size 2016 --block 512 --weights path/to/weights.safetensors

Prints, from one engine run, the seconds spent appending status records and the seconds spent in
os.fsync (all of them) against the run's seconds (target: under 1%), then the seconds a `--resume` of the finished run takes to re-check
every output (size and sha256) before skipping it, against the run's seconds.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from engine_overhead import pair_job, write_pair  # noqa: E402  (the same generated pair and job)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1344)
    parser.add_argument("--block", type=int, default=448)
    parser.add_argument("--weights", default="random:tiny")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    from pipeline.runners.local import load_model_fuser, run_job
    from pipeline.spec import ModelSpec

    fuser = load_model_fuser(ModelSpec(weights=args.weights, batch_size=args.batch_size))
    root = pathlib.Path(tempfile.mkdtemp(prefix="tcmoa-status-"))
    try:
        write_pair(root, args.size)
        job = pair_job(root, "run", tile=448, overlap=112, block=args.block, weights=args.weights,
                       batch_size=args.batch_size, chunk=args.block)
        fsync, fsync_s = os.fsync, [0.0]

        def timed_fsync(fd):
            start = time.perf_counter()
            fsync(fd)
            fsync_s[0] += time.perf_counter() - start

        os.fsync = timed_fsync
        try:
            summary = run_job(job, fuser=fuser, progress=False)
        finally:
            os.fsync = fsync
        assert summary.items_done == 1, summary.failures
        print(f"{args.size}^2 pair, blocks of {args.block} px: {summary.units_run} blocks in {summary.seconds:.2f} s "
              f"({fuser.name}); status appends {summary.status_flush_s:.3f} s "
              f"= {100 * summary.status_flush_s / summary.seconds:.2f}% of the run (target < 1%); "
              f"all fsyncs {fsync_s[0]:.3f} s = {100 * fsync_s[0] / summary.seconds:.2f}%")
        start = time.perf_counter()
        again = run_job(job, fuser=fuser, progress=False)
        verify_s = time.perf_counter() - start
        assert again.items_skipped == 1 and not again.redone
        print(f"resume of the finished run (every output re-checked: size, sha256): {verify_s:.2f} s "
              f"= {100 * verify_s / summary.seconds:.1f}% of the run")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
