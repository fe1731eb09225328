"""`tcmoa submit`, `tcmoa logs`, `tcmoa stop`: a job on a remote Ray cluster through the Jobs API.

Exit codes: submit --wait and logs --follow exit with the job's: 0 succeeded, the remote
`tcmoa run`'s own code when it failed (1 some items failed, 2 the job could not start; 1 when
Ray reports none), 3 stopped. 2 when the cluster cannot be reached or refuses the request.
"""
from __future__ import annotations

import pathlib
import sys
import tempfile

import click

EXIT_CANNOT_SUBMIT = 2
EXIT_STOPPED = 3

ADDRESS_ENV = ["RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"]  # as `ray job submit` reads them


def _address_option(function):
    return click.option(
        "--address", envvar=ADDRESS_ENV, metavar="URL",
        help="The cluster's dashboard address, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS).",
    )(function)


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(EXIT_CANNOT_SUBMIT)


def _write(text: str) -> None:
    click.echo(text, nl=False)


def _exit_with(info) -> None:
    """Exit with the finished job's status (see the module docstring)."""
    from ray.job_submission import JobStatus

    # Ray's message repeats the tail of the logs just streamed: its first line is enough.
    message = (info.message or "").strip().splitlines()
    click.echo(f"job {info.submission_id}: {info.status.value}" + (f" ({message[0].rstrip(':,')})" if message else ""), err=True)
    if info.status == JobStatus.SUCCEEDED:
        sys.exit(0)
    if info.status == JobStatus.STOPPED:
        sys.exit(EXIT_STOPPED)
    sys.exit(info.driver_exit_code or 1)


def _follow(job_client, job_id: str) -> None:
    from pipeline.submission import follow

    try:
        info = follow(job_client, job_id, _write)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; the job goes on: `tcmoa logs {job_id} --follow`, `tcmoa stop {job_id}`", err=True)
        sys.exit(130)
    _exit_with(info)


@click.command("submit")
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path))
@_address_option
@click.option("--wait", is_flag=True, help="Follow the job: stream its logs and exit with its status.")
@click.argument("run_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- RUN_OPTIONS]")
def submit(job_file: pathlib.Path, address: str | None, wait: bool, run_args: tuple[str, ...]) -> None:
    """Run JOB_FILE on a Ray cluster: `tcmoa run` there, with this package and the job file shipped.

    Relative paths in the job file are resolved here, as `tcmoa run` would: the cluster must see the
    sources and the run directory at the same absolute paths (shared storage). Options after `--` go
    to `tcmoa run` (e.g. `-- --retry-failed`); the submission is recorded in the run directory.
    """
    from pipeline.spec import SpecError
    from pipeline.submission import (
        CLIENT_ERRORS, SubmissionError, client, entrypoint, explain_error, record_submission, runtime_env, stage_job, submission_id,
        submission_record,
    )

    try:
        with tempfile.TemporaryDirectory(prefix="tcmoa-submit-") as staging:
            job = stage_job(job_file, pathlib.Path(staging))  # a bad job file is refused before any request
            command = entrypoint(run_args)
            job_client = client(address)
            job_id = job_client.submit_job(
                entrypoint=command, submission_id=submission_id(job.name), runtime_env=runtime_env(pathlib.Path(staging)),
                metadata={"tcmoa_job": job.name, "run_dir": str(job.run_dir)},
            )
    except (SpecError, SubmissionError) as exc:
        _fail(str(exc))
    except CLIENT_ERRORS as exc:
        _fail(explain_error(exc, address))
    try:
        recorded = record_submission(job.run_dir, submission_record(job_id, address, job, job_file, command))
        click.echo(f"submitted {job_id} to {address} (recorded in {recorded})", err=True)
    except (OSError, SubmissionError) as exc:  # the run directory is on storage only the cluster sees, or its record is damaged
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        click.echo(f"submitted {job_id} to {address}; not recorded in {job.run_dir}: {reason}", err=True)
    if not wait:
        click.echo(job_id)
        click.echo(f"follow it: tcmoa logs {job_id} --follow --address {address}; stop it: tcmoa stop {job_id} --address {address}", err=True)
        return
    _follow(job_client, job_id)


def _job(job_or_run_dir: str, address: str | None):
    from pipeline.submission import SubmissionError, client, resolve_job

    try:
        ref = resolve_job(job_or_run_dir, address)
        return ref, client(ref.address)
    except SubmissionError as exc:
        _fail(str(exc))


@click.command("logs")
@click.argument("job", metavar="JOB_ID_OR_RUN_DIR")
@_address_option
@click.option("--follow", "-f", is_flag=True, help="Keep streaming until the job ends; exit with its status.")
def logs(job: str, address: str | None, follow: bool) -> None:
    """Print the logs of a submitted job (or of the latest submission of a run directory)."""
    from pipeline.submission import CLIENT_ERRORS, explain_error

    ref, job_client = _job(job, address)
    try:
        if follow:
            _follow(job_client, ref.job_id)
        _write(job_client.get_job_logs(ref.job_id))
    except CLIENT_ERRORS as exc:
        _fail(explain_error(exc, ref.address))


@click.command("stop")
@click.argument("job", metavar="JOB_ID_OR_RUN_DIR")
@_address_option
def stop(job: str, address: str | None) -> None:
    """Stop a submitted job. Its run directory keeps every verified unit: resubmit with `-- --resume`."""
    from pipeline.submission import CLIENT_ERRORS, explain_error

    ref, job_client = _job(job, address)
    try:
        if job_client.stop_job(ref.job_id):
            click.echo(f"stop requested for {ref.job_id}")
        else:
            click.echo(f"{ref.job_id} was not running ({job_client.get_job_status(ref.job_id).value})")
    except CLIENT_ERRORS as exc:
        _fail(explain_error(exc, ref.address))
