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
from typing import Any

import click

from pipeline.cli.failures import CommandFailed, exit_with
from pipeline.errors import EXIT_BAD_JOB, EXIT_ITEMS_FAILED


def _output_mode(function):
    function = click.option("--json", "mode", flag_value="json", help="Print one JSON document on stdout, no progress bar.")(function)
    return click.option("--quiet", "-q", "mode", flag_value="quiet", help="No progress bar; print only failures.")(function)


def _errors_as_exit_codes(function):
    """One line naming the file and the cause (with --json: one JSON object on stdout), and the
    documented exit code, for any error that stops the command (the traceback only with --traceback)."""
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
        exit_with(error, as_json=kwargs.get("mode") == "json", show_traceback=kwargs.get("show_traceback", False))

    return click.option("--traceback", "show_traceback", is_flag=True,
                        help="Print the traceback of an error that stops the command (status: of every recorded failure).")(wrapper)


def _fail(message: str, code: int = EXIT_BAD_JOB, file: str | None = None) -> None:
    """Stop the command: reported by `_errors_as_exit_codes` (as JSON with --json)."""
    raise CommandFailed(message, code, file)


def _progress(mode: str | None) -> bool:
    """A progress bar only for a person watching: not with --json / --quiet, not when stderr
    (where tqdm draws) is a file or a pipe."""
    return mode is None and sys.stderr.isatty()


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


def _runner_options(function):
    """Flags shared by `run` and `resume`: where the work runs and what of it."""
    function = click.option("--only", "only", default="", metavar="IDS",
                            help="Comma-separated item keys (collection/item), item ids or unit ids (or id prefixes): run only these.")(function)
    function = click.option("--retry-failed", is_flag=True, help="Also re-run what failed in earlier runs.")(function)
    function = click.option("--address", default=None, metavar="ADDR", help="Join this Ray cluster (e.g. ray://head:10001 or head:6379) instead of starting one.")(function)
    function = click.option("--workers", type=click.IntRange(min=1), default=None,
                            help="Model workers on Ray (default: one per GPU, else 1).")(function)
    return click.option("--local", is_flag=True, help="Run in this process, without Ray (debugging).")(function)


def _run(job, *, local: bool, workers: int | None, address: str | None, retry_failed: bool, only: str,
         mode: str | None, source: dict | None, fuser=None, hint: str | None = None) -> None:
    """Run the job and exit with its code (errors that stop it reach `_errors_as_exit_codes`)."""
    from pipeline.schedule import Options

    def report(message: str) -> None:
        if mode != "json":
            click.echo(message, err=True)

    options = Options(retry_failed=retry_failed, only=frozenset(i.strip() for i in only.split(",") if i.strip()))
    common = dict(options=options, progress=_progress(mode), report=report, source=source)
    _warn_untrained(job, mode)
    if local or fuser is not None:
        from pipeline.runners.local import run_job

        summary = run_job(job, fuser=fuser, **common)
    else:
        from pipeline.runners.ray import run_job

        summary = run_job(job, workers=workers, address=address, **common)
    _print_summary(summary, mode, hint)
    sys.exit(EXIT_ITEMS_FAILED if summary.failures else 0)


def _warn_untrained(job, mode: str | None) -> None:
    from tcmoa.inference import model_info

    try:
        info = model_info(job.model.weights)
    except (OSError, ValueError) as exc:
        _fail(f"model {job.model.weights!r}: {exc}")
    if not info.trained and not job.model.weights.startswith("baseline:") and mode != "json":
        click.echo(f"warning: weights {job.model.weights!r} are an UNTRAINED random-init {info.config.get('name', '')} model: "
                   "the outputs show the plumbing, not real fusion. Pass trained weights to fuse for real.", err=True)


def _job_source(job_file: pathlib.Path, document: dict) -> dict:
    return {"path": str(job_file.resolve()), "base": str(job_file.resolve().parent), "document": document}


@click.command("run")
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.option("--dry-run", is_flag=True, help="Print the plan (items, units, pixels, tiles) and stop; the weights are not loaded.")
@click.option("--estimate", is_flag=True, help="With --dry-run: load the model and time it to estimate the model time.")
@click.option("--resume", is_flag=True, hidden=True, help="Accepted for old scripts: a run always resumes its run directory.")
@_runner_options
@_output_mode
@_errors_as_exit_codes
def run(job_file: pathlib.Path, dry_run: bool, estimate: bool, resume: bool, local: bool, workers: int | None,
        address: str | None, retry_failed: bool, only: str, mode: str | None, show_traceback: bool) -> None:
    """Fuse every item of the archive described by JOB_FILE (on an embedded local Ray by default).

    Run again on the same run directory, it does only what is not verified done: the items an
    archive gained since, the units a crash left."""
    import yaml

    from pipeline.spec import SpecError, load_job

    try:
        job = load_job(job_file)
    except SpecError as exc:
        _fail(str(exc))
    if dry_run:
        _dry_run(job, mode, estimate)
        return
    _run(job, local=local, workers=workers, address=address, retry_failed=retry_failed, only=only, mode=mode,
         source=_job_source(job_file, yaml.safe_load(job_file.read_text())))


class RunDirParam(click.ParamType):
    """A run directory: a local folder (that must exist where `exists`) or an object-store URL
    (s3://bucket/prefix), kept as a URL (pathlib would fold its '//')."""

    name = "run_dir"

    def __init__(self, exists: bool = False):
        self.exists = exists

    def convert(self, value, param, ctx):
        from pipeline import runstore

        where = runstore.location(value)
        if isinstance(where, pathlib.Path):
            if where.exists() and not where.is_dir():
                self.fail(f"{where}: a file, not a run directory", param, ctx)
            if self.exists and not where.is_dir():
                self.fail(f"{where}: no such directory", param, ctx)
        return where


@click.command("resume")
@click.argument("run_dir", type=RunDirParam(exists=True))
@_runner_options
@_output_mode
@_errors_as_exit_codes
def resume(run_dir: pathlib.Path, local: bool, workers: int | None, address: str | None, retry_failed: bool,
           only: str, mode: str | None, show_traceback: bool) -> None:
    """Finish the job of RUN_DIR: redo only what is not verified done (after a crash, a stop, a lost driver)."""
    from pipeline import runstore
    from pipeline.manifest import RunDir
    from pipeline.runners.session import JOB_SOURCE
    from pipeline.spec import SpecError, parse_job

    try:
        text = RunDir(run_dir).read_text(JOB_SOURCE)
        if text is None:
            raise FileNotFoundError("no such file")
        source = json.loads(text)
    except (OSError, ValueError) as exc:
        _fail(f"{run_dir}: no job to resume here ({JOB_SOURCE}: {exc})")
    try:
        job = parse_job(source["document"], base=pathlib.Path(source["base"]))
    except SpecError as exc:
        _fail(str(exc))
    recorded = runstore.location(job.run_dir)
    if type(recorded) is not type(run_dir) or (
            recorded.resolve() != run_dir.resolve() if isinstance(run_dir, pathlib.Path) else str(recorded) != str(run_dir)):
        _fail(f"{run_dir}: its job writes to {job.run_dir}, not here (moved run directory?)")
    _run(job, local=local, workers=workers, address=address, retry_failed=retry_failed, only=only, mode=mode, source=source)


def _dry_run(job, mode: str | None, estimate: bool) -> None:
    from pipeline.plan import describe_plan, plan_job
    from pipeline.runners.local import load_model_fuser
    from pipeline.runners.session import recorded_infos
    from pipeline.manifest import RunDir
    from tcmoa.interface import Placement
    from tcmoa.inference import model_info

    try:
        placement = Placement.resolve(job.model.device, job.model.precision, job.model.weights)
        plan = plan_job(job, model_info(job.model.weights), placement, recorded_infos(RunDir(job.run_dir)))
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    fuser = load_model_fuser(job.model, placement) if estimate else None
    described = describe_plan(plan, fuser)
    if mode == "json":
        click.echo(json.dumps(described, indent=2, default=str))
        return
    click.echo(f"job {job.name}  run_dir {job.run_dir}  fingerprint {plan.fingerprint[:12]}  "
               f"model {plan.model.name} ({placement.device}, {placement.precision})")
    click.echo(f"{'collection':<16}{'items':>7}{'units':>7}{'Mpx':>10}{'tiles':>8}{'model calls':>13}")
    for name, c in described["collections"].items():
        click.echo(f"{name:<16}{c['items']:>7}{c['units']:>7}{c['pixels'] / 1e6:>10.2f}{c['tiles']:>8}{c['model_calls']:>13}")
    t = described["totals"]
    click.echo(f"{'total':<16}{t['items']:>7}{t['units']:>7}{t['pixels'] / 1e6:>10.2f}{t['tiles']:>8}{t['model_calls']:>13}")
    if t["grid_tiles"]:
        click.echo(f"tiles computed / tiles in the grids: {t['tiles'] / t['grid_tiles']:.2f} (halo recomputation at block edges)")
    if described["estimated_seconds"] is not None:
        click.echo(f"estimated model time: {described['estimated_seconds']:.0f} s on this machine, one worker ({fuser.name})")
    else:
        click.echo("model time: pass --estimate to time the model here (it loads the weights)")
    for note in described["notes"]:
        click.echo(note, err=True)
    for failure in described["failures"]:
        click.echo(f"cannot plan {failure['collection']}/{failure['item_id']}: {failure['error']}", err=True)


@click.command("status")
@click.argument("run_dir", type=RunDirParam())
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
@click.argument("run_dir", type=RunDirParam())
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
            verdict = f"{len(problems)} problem(s); `tcmoa resume RUN_DIR` redoes them" if problems else "all as recorded"
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


# output suffix -> format, the longest suffixes first (OUT.ome.tif is an OME-TIFF, OUT.tif a COG)
SUFFIX_FORMATS = {".ome.tif": "ome-tiff", ".ome.zarr": "ome-zarr", ".tif": "cog", ".tiff": "tiff", ".png": "png", ".zarr": "zarr"}


def _absolute_input(source: str) -> str:
    """A source as the job records it: a URL as given (s3://, https://...), a local path made absolute."""
    from pipeline import urls

    return source if urls.is_url(source) else str(pathlib.Path(source).absolute())


@click.command("fuse")
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(path_type=pathlib.Path),
              help="OUT.tif (COG), OUT.tiff, OUT.png, OUT.zarr, or for microscopy OUT.ome.tif / OUT.ome.zarr.")
@click.option("--task", default="vif", show_default=True, help="vif, mef, mff or a router mix like vif=0.7,mef=0.3.")
@click.option("--weights", default="default", show_default=True, help="Weights file, 'default' or a fuser spec.")
@click.option("--alpha", type=float, default=1.0, show_default=True, help="Prompt scale (paper Eq. 8).")
@click.option("--beta", type=float, default=0.0, show_default=True, help="Prompt shift (paper Eq. 8).")
@click.option("--reconstruction", type=click.Choice(["auto", "decoder", "guided"]), default="auto", show_default=True,
              help="decoder: the model's decoder output (the paper's); guided: the sources' own pixels, their "
                   "details selected by the model's prompts in a Laplacian pyramid; auto: what the weights "
                   "recommend (the default model: guided), else decoder.")
@click.option("--tile", type=int, default=448, show_default=True)
@click.option("--overlap", type=int, default=112, show_default=True)
@click.option("--normalise", type=click.Choice(["auto", "dtype", "percentile"]), default="auto", show_default=True,
              help="auto: full dtype range for 8-bit sources, 0.5-99.5 percentiles otherwise.")
@click.option("--prompts", is_flag=True, help="Also write the prompt map (share of each source per pixel).")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=pathlib.Path),
              help="Keep the manifest here (default: a temporary folder, removed afterwards).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file (or zarr store) of the same kind; never an input.")
@click.option("--co", "creation_options", multiple=True, metavar="KEY=VALUE",
              help="GDAL creation option for a .tif (COG) or .tiff output, e.g. --co COMPRESS=ZSTD --co LEVEL=9 "
                   "(repeatable; replaces the default DEFLATE with the data type's predictor).")
@_output_mode
@_errors_as_exit_codes
def fuse(sources, output: pathlib.Path, task: str, weights: str, alpha: float, beta: float, reconstruction: str,
         tile: int, overlap: int, normalise: str, prompts: bool, run_dir: pathlib.Path | None, overwrite: bool,
         creation_options: tuple[str, ...], mode: str | None, show_traceback: bool) -> None:
    """Fuse one item: SOURCES in order (the first is the reference grid), or one z-stack file.
    A source may be a URL (s3://, gs://, az://, https://)."""
    from pipeline.creation_options import check, parse_pairs
    from pipeline.output_safety import input_collisions
    from pipeline.spec import parse_job

    suffix = next((s for s in SUFFIX_FORMATS if output.name.lower().endswith(s)), None)
    if suffix is None:
        _fail(f"{output}: unsupported output suffix; use one of {', '.join(SUFFIX_FORMATS)}", file=str(output))
    fmt = SUFFIX_FORMATS[suffix]
    try:
        options = parse_pairs(creation_options)
        check(options, [fmt])
    except ValueError as exc:
        _fail(f"--co: {exc}")
    collisions = input_collisions([output], sources)
    if collisions:
        _fail(collisions[0])
    roles = [f"source{i + 1}" for i in range(len(sources))]
    document = {
        "name": "fuse",
        "task": parse_task(task),
        "discover": {"type": "list", "items": [{"item": output.name[:-len(suffix)], **dict(zip(roles, map(_absolute_input, sources)))}]},
        "sources": [{"role": r, "normalise": normalise} for r in roles],
        "reference": roles[0],
        "tiling": {"tile": tile, "overlap": overlap},
        "model": {"weights": weights, "alpha": alpha, "beta": beta, "reconstruction": reconstruction},
        "output": {"dir": str(output.parent.absolute()), "name": output.name[:-len(suffix)], "formats": [fmt],
                   "prompt_maps": prompts, "creation_options": options},
        "run_dir": str((run_dir or pathlib.Path(tempfile.gettempdir())).absolute()),  # see below for no --run-dir
        "overwrite": overwrite,
    }
    job = parse_job(document, base=pathlib.Path.cwd())
    if run_dir is not None:
        _run(job, local=True, workers=None, address=None, retry_failed=False, only="", mode=mode,
             source={"path": None, "base": str(pathlib.Path.cwd()), "document": document})
    # without --run-dir the manifest lives in a temporary folder, created only now and always removed
    tmp_dir = pathlib.Path(tempfile.mkdtemp(prefix="tcmoa-fuse-"))
    try:
        _run(dataclasses.replace(job, run_dir=tmp_dir), local=True, workers=None, address=None, retry_failed=False,
             only="", mode=mode, source=None,
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
@click.argument("run_dir", type=RunDirParam(exists=True))
@click.option("--metrics", type=click.Path(dir_okay=False, exists=True, path_type=pathlib.Path),
              help="A `tcmoa eval` results table (CSV or Parquet): its rows for each item are shown.")
@_errors_as_exit_codes
def report(run_dir: pathlib.Path, metrics: pathlib.Path | None, show_traceback: bool) -> None:
    """Write RUN_DIR/report/index.html: per item, sources, fused output and prompt map as quicklooks."""
    from pipeline.report import write_report

    if not isinstance(run_dir, pathlib.Path):  # the page and its quicklooks are files beside each other
        _fail(f"{run_dir}: tcmoa report writes into a local run directory; copy this one first (its paths are "
              f"relative: e.g. `aws s3 sync {run_dir} runs/copy`, then `tcmoa report runs/copy`)")
    try:
        page = write_report(run_dir, metrics)
    except FileNotFoundError as exc:
        _fail(str(exc))
    click.echo(str(page))
