"""`tcmoa run`, `tcmoa status`, `tcmoa verify`, `tcmoa fuse`, `tcmoa samples`: wiring between click and the engine.

Exit codes (run, fuse, status, verify; see pipeline/errors.py): 0 all done, 1 some items failed
(verify: some recorded output or block does not match), 2 bad job or usage, 3 the run could not
proceed (I/O, disk, lock, damaged run directory, stopped by a signal). Errors are one line naming
the file and the cause; `--traceback` adds the traceback.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import shutil
import sys
import tempfile
import traceback
from typing import Any

import click

from pipeline.errors import EXIT_BAD_JOB, EXIT_ITEMS_FAILED, exit_code_of, message_of


def _output_mode(function):
    function = click.option("--json", "mode", flag_value="json", help="Print one JSON document on stdout, no progress bar.")(function)
    return click.option("--quiet", "-q", "mode", flag_value="quiet", help="No progress bar; print only failures.")(function)


def _errors_as_exit_codes(function):
    """One line naming the file and the cause, and the documented exit code, for any error that
    stops the command (the traceback only with --traceback)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except (Exception, KeyboardInterrupt) as exc:  # Stopped (a signal) is caught below
            error = exc
        except BaseException as exc:
            if not hasattr(exc, "exit_code") or isinstance(exc, SystemExit):
                raise
            error = exc
        if kwargs.get("show_traceback"):
            traceback.print_exception(error)
        click.echo(f"Error: {message_of(error)}", err=True)
        sys.exit(exit_code_of(error))

    return click.option("--traceback", "show_traceback", is_flag=True,
                        help="Print the traceback of an error that stops the command (status: of every recorded failure).")(wrapper)


def _fail(message: str, code: int = EXIT_BAD_JOB) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def _print_summary(summary, mode: str | None, hint: str | None = None) -> None:
    data = summary.to_dict()
    if mode == "json":
        click.echo(json.dumps(data, indent=2, default=str))
        return
    if mode == "quiet":
        return
    click.echo(
        f"{summary.job}: {summary.items_done} item(s) done, {summary.items_skipped} already done, "
        f"{summary.items_failed} failed; {summary.units_run} block(s) run, {summary.units_skipped} skipped; "
        f"{summary.pixels / 1e6:.2f} Mpx in {summary.seconds:.1f} s"
    )
    for key, outputs in summary.outputs.items():
        click.echo(f"  {key}: " + ", ".join(outputs[f] for f in outputs if f != "stac"))
    if summary.redone:
        click.echo(f"{len(summary.redone)} recorded output(s) or block(s) did not match the disk and were redone (listed above)")
    if summary.failures:
        click.echo(hint or f"Run `tcmoa status {summary.run_dir}` for the failure list with tracebacks.")


def _run(job, fuser, *, resume: bool, retry_failed: bool, mode: str | None, hint: str | None = None) -> None:
    """Run the job and exit with its code (errors that stop it reach `_errors_as_exit_codes`)."""
    from pipeline.engine import run_job

    def report(message: str) -> None:
        if mode != "json":
            click.echo(message, err=True)

    summary = run_job(job, fuser=fuser, resume=resume, retry_failed=retry_failed, progress=mode is None, report=report)
    _print_summary(summary, mode, hint)
    sys.exit(EXIT_ITEMS_FAILED if summary.failures else 0)


def _load_fuser(job):
    from pipeline.engine import load_model_fuser

    try:
        return load_model_fuser(job.model)
    except (OSError, ValueError, RuntimeError) as exc:
        _fail(f"model {job.model.weights!r}: {exc}")


@click.command("run")
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.option("--dry-run", is_flag=True, help="Print the plan (items, units, pixels, estimated time) and stop.")
@click.option("--resume", is_flag=True, help="Continue a run in this run directory: done blocks are skipped.")
@click.option("--retry-failed", is_flag=True, help="Like --resume, and re-run what failed before.")
@_output_mode
@_errors_as_exit_codes
def run(job_file: pathlib.Path, dry_run: bool, resume: bool, retry_failed: bool, mode: str | None,
        show_traceback: bool) -> None:
    """Fuse every item of the archive described by JOB_FILE."""
    from pipeline.spec import SpecError, load_job

    try:
        job = load_job(job_file)
    except SpecError as exc:
        _fail(str(exc))
    fuser = _load_fuser(job)
    if dry_run:
        _dry_run(job, fuser, mode)
        return
    _run(job, fuser, resume=resume, retry_failed=retry_failed, mode=mode)


def _dry_run(job, fuser, mode: str | None) -> None:
    from pipeline.engine import describe_plan, plan_job

    try:
        plan = plan_job(job, fuser)
    except ValueError as exc:
        _fail(str(exc))
    described = describe_plan(plan, fuser)
    if mode == "json":
        click.echo(json.dumps(described, indent=2, default=str))
        return
    click.echo(f"job {job.name}  run_dir {job.run_dir}  fingerprint {plan.fingerprint[:12]}")
    click.echo(f"{'collection':<16}{'items':>7}{'units':>7}{'Mpx':>10}{'tiles':>8}{'model calls':>13}")
    for name, c in described["collections"].items():
        click.echo(f"{name:<16}{c['items']:>7}{c['units']:>7}{c['pixels'] / 1e6:>10.2f}{c['tiles']:>8}{c['model_calls']:>13}")
    t = described["totals"]
    click.echo(f"{'total':<16}{t['items']:>7}{t['units']:>7}{t['pixels'] / 1e6:>10.2f}{t['tiles']:>8}{t['model_calls']:>13}")
    if t["grid_tiles"]:
        click.echo(f"tiles computed / tiles in the grids: {t['tiles'] / t['grid_tiles']:.2f} (halo recomputation at block edges)")
    click.echo(f"estimated model time: {described['estimated_seconds']:.0f} s on this machine ({fuser.name})")
    for note in described["notes"]:
        click.echo(note, err=True)
    for failure in described["failures"]:
        click.echo(f"cannot plan {failure['collection']}/{failure['item_id']}: {failure['error']}", err=True)


@click.command("status")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=pathlib.Path))
@_output_mode
@_errors_as_exit_codes
def status(run_dir: pathlib.Path, show_traceback: bool, mode: str | None) -> None:
    """Items of a run directory: blocks done, status (done items whose outputs are missing or of
    another size than recorded are 'damaged'), failures. `tcmoa verify` also compares checksums."""
    from pipeline.status import run_status

    try:
        report = run_status(run_dir)
    except FileNotFoundError as exc:
        _fail(str(exc))
    if mode == "json":
        click.echo(json.dumps(report, indent=2, default=str))
        return
    if mode != "quiet":
        click.echo(f"job {report['job']}  fingerprint {report['fingerprint'][:12]}  run_dir {run_dir}")
        click.echo(f"{'item':<40}{'status':<10}{'blocks':>12}  error")
        for item in report["items"]:
            blocks = f"{item['units_done']}/{item['units']}"
            error = (item["error"] or "").splitlines()[0][:100] if item["error"] else ""
            click.echo(f"{item['item'][:39]:<40}{item['status']:<10}{blocks:>12}  {error}")
        counts = report["counts"]
        click.echo(", ".join(f"{n} {k}" for k, n in counts.items()))
    for failure in report["failures"]:
        if mode == "quiet" or show_traceback:
            click.echo(f"FAILED {failure['item']} ({failure['kind']}): {failure['error']}", err=True)
        if show_traceback and failure.get("traceback"):
            click.echo(failure["traceback"], err=True)


@click.command("verify")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=pathlib.Path))
@_output_mode
@_errors_as_exit_codes
def verify(run_dir: pathlib.Path, mode: str | None, show_traceback: bool) -> None:
    """Check every output (size and sha256) and work-store block (checksum) RUN_DIR recorded as done,
    without running anything. Exit 0 when all match the record, 1 naming each file that does not."""
    from pipeline.verify import verify_run

    try:
        report = verify_run(run_dir)
    except FileNotFoundError as exc:
        _fail(str(exc))
    problems = report["problems"]
    if mode == "json":
        click.echo(json.dumps({**report, "problems": [p.to_dict() for p in problems]}, indent=2))
    else:
        for problem in problems:
            click.echo(f"MISMATCH {problem.item}: {problem}", err=True)
        if mode != "quiet":
            verdict = f"{len(problems)} problem(s); `tcmoa run JOB --resume` redoes them" if problems else "all as recorded"
            click.echo(f"{run_dir}: {report['checked_outputs']} output(s) and {report['checked_blocks']} block(s) checked: {verdict}")
    sys.exit(EXIT_ITEMS_FAILED if problems else 0)


def parse_task(text: str) -> Any:
    """'vif', 'mef', 'mff' or a router mix 'vif=0.7,mef=0.3'."""
    if "=" not in text:
        return text
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        try:
            mix[name.strip()] = float(weight)
        except ValueError:
            raise click.BadParameter(f"router weight {weight!r} in {text!r} is not a number") from None
    return mix


SUFFIX_FORMATS = {".tif": "cog", ".tiff": "tiff", ".png": "png", ".zarr": "zarr"}


@click.command("fuse")
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(path_type=pathlib.Path),
              help="OUT.tif (COG), OUT.tiff, OUT.png or OUT.zarr.")
@click.option("--task", default="vif", show_default=True, help="vif, mef, mff or a router mix like vif=0.7,mef=0.3.")
@click.option("--weights", default="default", show_default=True, help="Weights file, 'default' or a fuser spec.")
@click.option("--alpha", type=float, default=1.0, show_default=True, help="Prompt scale (paper Eq. 8).")
@click.option("--beta", type=float, default=0.0, show_default=True, help="Prompt shift (paper Eq. 8).")
@click.option("--reconstruction", type=click.Choice(["decoder", "guided"]), default="decoder", show_default=True,
              help="decoder: the model's decoder output (the paper's); guided: the source pixels blended in a "
                   "Laplacian pyramid weighted by the model's prompts.")
@click.option("--tile", type=int, default=448, show_default=True)
@click.option("--overlap", type=int, default=112, show_default=True)
@click.option("--normalise", type=click.Choice(["auto", "dtype", "percentile"]), default="auto", show_default=True,
              help="auto: full dtype range for 8-bit sources, 0.5-99.5 percentiles otherwise.")
@click.option("--prompts", is_flag=True, help="Also write the prompt map (share of each source per pixel).")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=pathlib.Path),
              help="Keep the manifest here (default: a temporary folder, removed afterwards).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file (or zarr store) of the same kind; never an input.")
@_output_mode
@_errors_as_exit_codes
def fuse(sources, output: pathlib.Path, task: str, weights: str, alpha: float, beta: float, reconstruction: str,
         tile: int, overlap: int, normalise: str, prompts: bool, run_dir: pathlib.Path | None, overwrite: bool,
         mode: str | None, show_traceback: bool) -> None:
    """Fuse one item: SOURCES in order (the first is the reference grid), or one z-stack file."""
    from pipeline.output_safety import input_collisions
    from pipeline.spec import parse_job

    fmt = SUFFIX_FORMATS.get(output.suffix.lower())
    if fmt is None:
        _fail(f"{output}: unsupported output suffix; use one of {', '.join(SUFFIX_FORMATS)}")
    collisions = input_collisions([output], sources)
    if collisions:
        _fail(collisions[0])
    roles = [f"source{i + 1}" for i in range(len(sources))]
    document = {
        "name": "fuse",
        "task": parse_task(task),
        "discover": {"type": "list", "items": [{"item": output.stem, **dict(zip(roles, map(str, map(pathlib.Path.absolute, map(pathlib.Path, sources)))))}]},
        "sources": [{"role": r, "normalise": normalise} for r in roles],
        "reference": roles[0],
        "tiling": {"tile": tile, "overlap": overlap},
        "model": {"weights": weights, "alpha": alpha, "beta": beta, "reconstruction": reconstruction},
        "output": {"dir": str(output.parent.absolute()), "name": output.stem, "formats": [fmt], "prompt_maps": prompts},
        "run_dir": str((run_dir or pathlib.Path(tempfile.gettempdir())).absolute()),  # see below for no --run-dir
        "overwrite": overwrite,
    }
    job = parse_job(document, base=pathlib.Path.cwd())
    fuser = _load_fuser(job)
    if run_dir is not None:
        _run(job, fuser, resume=True, retry_failed=False, mode=mode)
    # without --run-dir the manifest lives in a temporary folder, created only now and always removed
    tmp_dir = pathlib.Path(tempfile.mkdtemp(prefix="tcmoa-fuse-"))
    try:
        _run(dataclasses.replace(job, run_dir=tmp_dir), fuser, resume=False, retry_failed=False, mode=mode,
             hint="Give --run-dir DIR to keep the run's manifest (failures with tracebacks) for `tcmoa status DIR`.")
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


@click.command("samples")
@click.argument("directory", type=click.Path(file_okay=False, path_type=pathlib.Path))
@_output_mode
def samples(directory: pathlib.Path, mode: str | None) -> None:
    """Write the sample archive (exposure brackets, focus stacks, an optical + thermal pair) to DIRECTORY."""
    from pipeline.samples import write_samples

    written = write_samples(directory)
    if mode == "json":
        click.echo(json.dumps([str(p) for p in written], indent=2))
    elif mode != "quiet":
        click.echo(f"wrote {len(written)} files under {directory}/ (brackets/, focus/, geo/); next: tcmoa run jobs/demo.yaml")


@click.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=pathlib.Path))
@click.option("--metrics", type=click.Path(dir_okay=False, exists=True, path_type=pathlib.Path),
              help="A `tcmoa eval` results table (CSV or Parquet): its rows for each item are shown.")
def report(run_dir: pathlib.Path, metrics: pathlib.Path | None) -> None:
    """Write RUN_DIR/report/index.html: per item, sources, fused output and prompt map as quicklooks."""
    from pipeline.report import write_report

    try:
        page = write_report(run_dir, metrics)
    except FileNotFoundError as exc:
        _fail(str(exc))
    click.echo(str(page))
