"""Running a job on a remote Ray cluster through Ray's Jobs API (`tcmoa submit`, `logs`, `stop`).

A submission ships this package (`pipeline`, `tcmoa`) and a copy of the job file in the job's
runtime env; the cluster runs `tcmoa run` on it (`python -m pipeline.cli run job.yaml`). The
copy has every path made absolute as this machine resolves it, so the job means the same on the
cluster: its sources and run directory must be visible there at those paths (shared storage).
The cluster needs the package's dependencies installed (see ray_cluster.yaml); only the code
travels with a submission.

Authentication: Ray 2.59+ clusters can require a token. The Jobs client only sends one when
RAY_AUTH_MODE=token is set in this process, so we look the token up ourselves, in Ray's order
(RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), and send it as a
bearer header; RAY_AUTH_MODE=disabled sends none. A cluster without auth ignores the header.

Each submission is recorded in the run directory (`submissions.json` beside `job.json`), so
`tcmoa logs RUN_DIR` and `tcmoa stop RUN_DIR` find the latest job and its cluster.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import json
import os
import pathlib
import re
import shlex
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable

import yaml
from ray.exceptions import AuthenticationError

from pipeline.spec import JobSpec, absolute_paths, load_job

SUBMISSIONS_FILE = "submissions.json"
STAGED_JOB_FILE = "job.yaml"
SHIPPED_PACKAGES = ("pipeline", "tcmoa")
# Never uploaded with the code: caches, VCS data, run directories and sample archives.
UPLOAD_EXCLUDES = ["__pycache__/", "*.pyc", ".git/", "*.egg-info/", "runs/", "samples/", ".pytest_cache/"]


class SubmissionError(RuntimeError):
    """The cluster cannot be reached, refused the request, or the job id is unknown."""


# What the Jobs client raises for an unreachable or refusing cluster, an unknown job or a malformed
# address (requests' errors are OSErrors): shown to the user as one line.
CLIENT_ERRORS = (RuntimeError, OSError, ValueError, AuthenticationError)


# ----------------------------------------------------------------------------- authentication
def auth_token() -> str | None:
    """The Ray auth token this process would use, or None (auth disabled or no token anywhere)."""
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode == "disabled":
        return None
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    named = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    path = pathlib.Path(named).expanduser() if named else pathlib.Path.home() / ".ray" / "auth_token"
    try:
        token = path.read_text().strip()
    except OSError:
        token = ""
    if token:
        return token
    if mode == "token" or named:
        raise SubmissionError(
            f"RAY_AUTH_MODE=token but no token found (RAY_AUTH_TOKEN unset, {path} missing or empty); "
            "print the cluster's token on its head node with `ray get-auth-token` and set RAY_AUTH_TOKEN"
        )
    return None


def auth_headers() -> dict[str, str]:
    token = auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def explain_error(exc: BaseException, address: str | None) -> str:
    text = str(exc).strip() or type(exc).__name__
    if any(code in text for code in ("401", "403", "Unauthorized", "Forbidden", "uthentication")):
        hint = ("the cluster requires a valid auth token: set RAY_AUTH_TOKEN (print it on the head node with "
                "`ray get-auth-token`) or put it in ~/.ray/auth_token")
        return f"{address or 'cluster'}: {text.splitlines()[0]} ({hint})"
    return f"{address or 'cluster'}: {text.splitlines()[0]}"


def client(address: str | None):
    """A JobSubmissionClient for the cluster's dashboard address (http://HEAD:8265)."""
    from ray.job_submission import JobSubmissionClient

    if not address:
        raise SubmissionError("no cluster address: pass --address http://HEAD:8265 or set RAY_API_SERVER_ADDRESS")
    headers = auth_headers()
    try:
        return JobSubmissionClient(address, headers=headers)
    except CLIENT_ERRORS as exc:
        raise SubmissionError(explain_error(exc, address)) from None


# ----------------------------------------------------------------------------- what is shipped
def stage_job(job_file: pathlib.Path, staging: pathlib.Path) -> JobSpec:
    """Validate the job file and write the copy the cluster runs (absolute paths) into `staging`.

    Every problem is reported here, before anything is uploaded, except a weights file missing on
    this machine: it may be on storage only the cluster mounts, and the run checks it there."""
    job = load_job(job_file, check_files=False)
    base = job_file.resolve().parent
    header = f"# Submitted copy of {job_file.resolve()}: relative paths resolved against {base}\n"
    document = absolute_paths(job.document, base)
    (staging / STAGED_JOB_FILE).write_text(header + yaml.safe_dump(document, sort_keys=False))
    return job


def package_dirs() -> list[str]:
    """The folders of the packages the cluster imports instead of whatever it has installed."""
    return [str(pathlib.Path(importlib.util.find_spec(name).origin).parent) for name in SHIPPED_PACKAGES]


def runtime_env(staging: pathlib.Path) -> dict:
    return {"working_dir": str(staging), "py_modules": package_dirs(), "excludes": list(UPLOAD_EXCLUDES)}


def run_supports_address() -> bool:
    """Whether this version's `tcmoa run` can join the cluster it runs in (`--address auto`)."""
    from pipeline.cli import main

    return any(param.name == "address" for param in main.get_command(None, "run").params)


def python_command(args: Iterable[str]) -> str:
    """A `python ...` command line for a job's driver on the cluster.

    Ray starts job entrypoints with OMP_NUM_THREADS=1 (its default for a process that reserved no
    CPUs): torch in the driver would then run the model on one core, and its bf16 results differ
    in the last bits from a run on all cores. The driver is one process: let it use the node's cores
    like `tcmoa run` on that machine would (Ray's workers still get their own settings)."""
    return shlex.join(["env", "-u", "OMP_NUM_THREADS", "python", *args])


def entrypoint(run_args: Iterable[str] = ()) -> str:
    """The command the cluster runs: `tcmoa run` on the shipped job file, joining that cluster
    when `tcmoa run` can (otherwise it runs in the job's driver process on the head node)."""
    run_args = list(run_args)
    args = ["-m", "pipeline.cli", "run", STAGED_JOB_FILE]
    if run_supports_address() and not any(a == "--address" or a.startswith("--address=") for a in run_args):
        args += ["--address", "auto"]
    return python_command([*args, *run_args])


def submission_id(job_name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", job_name).strip("-")[:40] or "job"
    return f"tcmoa-{safe}-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


# ----------------------------------------------------------------------------- the run directory's record
def record_submission(run_dir, record: dict):
    """Append one submission to run_dir/submissions.json (replaced atomically: a rename on disk,
    one PUT in an object store)."""
    from pipeline.manifest import RunDir

    where = RunDir(run_dir)
    if not where.remote:
        where.path.mkdir(parents=True, exist_ok=True)
    history = submissions(run_dir)
    where.write_text(SUBMISSIONS_FILE, json.dumps({"submissions": [*history, record]}, indent=2) + "\n")
    return where.path / SUBMISSIONS_FILE


def submissions(run_dir) -> list[dict]:
    from pipeline.manifest import RunDir

    where = RunDir(run_dir)
    text = where.read_text(SUBMISSIONS_FILE)
    if text is None:
        return []
    try:
        return list(json.loads(text)["submissions"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SubmissionError(f"{where.path / SUBMISSIONS_FILE}: not a submissions record ({exc})") from None


def submission_record(job_id: str, address: str, job: JobSpec, job_file: pathlib.Path, command: str) -> dict:
    return {
        "submission_id": job_id,
        "address": address,
        "submitted": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "job": job.name,
        "job_file": str(job_file.resolve()),
        "entrypoint": command,
        "submitted_from": socket.gethostname(),
    }


@dataclass(frozen=True)
class JobRef:
    job_id: str
    address: str | None


def resolve_job(job_or_run_dir: str, address: str | None) -> JobRef:
    """A job id as given, or a run directory's latest submission (its address unless one is given)."""
    from pipeline import runstore

    path = runstore.location(job_or_run_dir)
    if runstore.is_remote(path) or path.is_dir():
        history = submissions(path)
        if not history:
            raise SubmissionError(f"{path}: no {SUBMISSIONS_FILE} (nothing was submitted with this run directory)")
        latest = history[-1]
        return JobRef(latest["submission_id"], address or latest.get("address"))
    return JobRef(job_or_run_dir, address)


# ----------------------------------------------------------------------------- following a job
def follow(job_client, job_id: str, write: Callable[[str], None], poll_s: float = 1.0):
    """Stream the job's logs to `write` until it ends; return its final JobDetails."""
    try:
        asyncio.run(_tail(job_client, job_id, write))
    except Exception:  # noqa: BLE001 - the log socket dropped (proxy, restart): poll instead
        _poll_logs(job_client, job_id, write, poll_s)
    while True:  # the log stream can close a moment before the status turns terminal
        info = job_client.get_job_info(job_id)
        if info.status.is_terminal():
            return info
        time.sleep(poll_s)


async def _tail(job_client, job_id: str, write: Callable[[str], None]) -> None:
    async for chunk in job_client.tail_job_logs(job_id):
        write(chunk)


def _poll_logs(job_client, job_id: str, write: Callable[[str], None], poll_s: float) -> None:
    shown = 0
    while True:
        status = job_client.get_job_status(job_id)
        logs = job_client.get_job_logs(job_id)
        if len(logs) > shown:
            write(logs[shown:])
            shown = len(logs)
        if status.is_terminal():
            return
        time.sleep(poll_s)
