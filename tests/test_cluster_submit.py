"""`tcmoa submit / logs / stop` against a real Ray head (`ray start --head` on loopback, token
authentication required), and the pieces they are made of."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipeline import submission
from pipeline.cli import main
from pipeline.spec import absolute_paths, load_job, parse_job
from pipeline_support import output_pixels, write_fast_demo_job
from ray_head import start_head, stop_head

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- pieces
@pytest.mark.parametrize("name", ["demo", "satellite_ir_optical", "microscopy_focus_stack", "exposure_brackets"])
def test_absolute_paths_keep_the_job_wherever_its_copy_lives(name, tmp_path):
    """The copy a submission ships means the same job from any folder (what the cluster runs)."""
    path = ROOT / "jobs" / f"{name}.yaml"
    original = load_job(path)
    moved = parse_job(absolute_paths(original.document, path.parent), base=tmp_path)
    assert dataclasses.replace(moved, path=None) == dataclasses.replace(original, path=None)


def test_absolute_paths_write_out_defaults_that_depend_on_the_file(tmp_path):
    document = {"name": "j", "task": "vif", "discover": {"type": "glob"},
                "sources": [{"role": "a", "pattern": "*_a.tif"}, {"role": "b", "pattern": "*_b.tif"}],
                "model": {"weights": "w.safetensors"}}
    out = absolute_paths(document, tmp_path)
    assert out["run_dir"] == str(tmp_path / "runs" / "j") and out["discover"]["root"] == str(tmp_path)
    assert out["model"]["weights"] == str(tmp_path / "w.safetensors")
    assert document["discover"] == {"type": "glob"}  # the input is not modified


def test_staging_ships_absolute_paths_and_leaves_the_weights_file_to_the_cluster(tmp_path):
    job_file = tmp_path / "jobs" / "j.yaml"
    job_file.parent.mkdir()
    job_file.write_text(yaml.safe_dump({
        "name": "j", "task": "vif", "discover": {"type": "glob", "root": "../archive"},
        "sources": [{"role": "a", "pattern": "*_a.tif"}, {"role": "b", "pattern": "*_b.tif"}],
        "model": {"weights": "/data/models/m.safetensors"}, "run_dir": "../runs/j"}))
    staging = tmp_path / "staging"
    staging.mkdir()
    job = submission.stage_job(job_file, staging)  # the weights exist only on the cluster: not refused here
    assert job.run_dir == tmp_path / "runs" / "j"
    shipped = yaml.safe_load((staging / submission.STAGED_JOB_FILE).read_text())
    assert shipped["discover"]["root"] == str(tmp_path / "archive") and shipped["run_dir"] == str(tmp_path / "runs" / "j")
    assert shipped["model"]["weights"] == "/data/models/m.safetensors"


def test_auth_token_lookup_follows_rays_order(monkeypatch, tmp_path):
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert submission.auth_token() is None and submission.auth_headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert submission.auth_token() == "from-home"
    (tmp_path / "named").write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "named"))
    assert submission.auth_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert submission.auth_headers() == {"Authorization": "Bearer from-env"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert submission.auth_token() is None
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(submission.SubmissionError, match="no token found"):
        submission.auth_token()


def test_entrypoint_joins_the_cluster_only_when_tcmoa_run_can(monkeypatch):
    monkeypatch.setattr(submission, "run_supports_address", lambda: False)
    assert submission.entrypoint(["--resume"]) == "env -u OMP_NUM_THREADS python -m pipeline.cli run job.yaml --resume"
    monkeypatch.setattr(submission, "run_supports_address", lambda: True)
    assert submission.entrypoint([]) == "env -u OMP_NUM_THREADS python -m pipeline.cli run job.yaml --address auto"
    assert submission.entrypoint(["--address", "ray://x:10001"]).endswith("run job.yaml --address ray://x:10001")


def test_submissions_are_recorded_in_the_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    assert submission.submissions(run_dir) == []
    submission.record_submission(run_dir, {"submission_id": "a", "address": "http://h:8265"})
    submission.record_submission(run_dir, {"submission_id": "b", "address": "http://h:8265"})
    assert [s["submission_id"] for s in submission.submissions(run_dir)] == ["a", "b"]
    assert not [p for p in run_dir.iterdir() if p.name != submission.SUBMISSIONS_FILE]  # no temporaries left
    assert submission.resolve_job(str(run_dir), None) == submission.JobRef("b", "http://h:8265")
    assert submission.resolve_job(str(run_dir), "http://other:8265").address == "http://other:8265"
    assert submission.resolve_job("raysubmit_x", None) == submission.JobRef("raysubmit_x", None)
    with pytest.raises(submission.SubmissionError, match="nothing was submitted"):
        submission.resolve_job(str(tmp_path), None)


def test_an_invalid_job_file_is_refused_before_contacting_the_cluster(tmp_path):
    invalid = tmp_path / "bad.yaml"
    invalid.write_text("name: bad\ntask: nope\n")
    rejected = CliRunner().invoke(main, ["submit", str(invalid), "--address", "http://127.0.0.1:9"])
    assert rejected.exit_code == 2 and "bad.yaml: invalid job" in rejected.stderr and isinstance(rejected.exception, SystemExit)
    nowhere = tmp_path / "job.yaml"
    nowhere.write_text(yaml.safe_dump({"name": "j", "task": "vif", "discover": {"type": "glob"},
                                       "sources": [{"role": "a", "pattern": "*_a.tif"}, {"role": "b", "pattern": "*_b.tif"}]}))
    unreachable = CliRunner().invoke(main, ["submit", str(nowhere), "--address", "http://127.0.0.1:9"])
    assert unreachable.exit_code == 2 and "http://127.0.0.1:9" in unreachable.stderr and isinstance(unreachable.exception, SystemExit)


# ----------------------------------------------------------------------------- against a Ray head
@pytest.fixture(scope="module")
def ray_head():
    head = start_head()
    yield head
    stop_head(head)


def _env(home: pathlib.Path, token: str | None) -> dict:
    """A `tcmoa` process's environment: this checkout's code, no stray cluster address, no token
    but the one given (and RAY_AUTH_MODE unset: the token must be sent without it)."""
    drop = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PYTHONPATH=str(ROOT), HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    if token:
        env["RAY_AUTH_TOKEN"] = token
    return env


def _tcmoa(env: dict, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _demo_archive(root: pathlib.Path) -> None:
    """The sample archive and jobs/demo.yaml beside it, with a fast baseline fuser instead of the
    model (what is tested is the submission: the fuser is the same on both sides)."""
    assert CliRunner().invoke(main, ["samples", str(root / "samples"), "--quiet"]).exit_code == 0
    write_fast_demo_job(root / "jobs")
    write_fast_demo_job(root / "jobs", "local", run_dir="../runs/local")


@pytest.mark.slow
def test_submit_wait_runs_the_job_on_the_cluster_like_a_local_run(ray_head, tmp_path, monkeypatch):
    _demo_archive(tmp_path)
    local = CliRunner().invoke(main, ["run", str(tmp_path / "jobs" / "local.yaml"), "--local", "--quiet"])
    assert local.exit_code == 0, local.output

    # Submitted from another folder: the job file's relative paths still resolve to tmp_path.
    env = _env(tmp_path, ray_head.token)
    submitted = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "submit", "jobs/demo.yaml", "--address", ray_head.address, "--wait"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "6 item(s) done" in submitted.stdout  # the remote run's summary, streamed from its logs

    remote, reference = output_pixels(tmp_path / "runs" / "demo" / "outputs"), output_pixels(tmp_path / "runs" / "local" / "outputs")
    assert sorted(remote) == sorted(reference) and len(reference) >= 10
    for key in reference:
        assert np.array_equal(remote[key], reference[key]), key

    (record,) = json.loads((tmp_path / "runs" / "demo" / "submissions.json").read_text())["submissions"]
    assert record["address"] == ray_head.address and record["job"] == "demo"
    # The run directory finds the job and its cluster.
    monkeypatch.setenv("HOME", str(tmp_path))
    logs = _invoke(monkeypatch, ray_head.token, "logs", tmp_path / "runs" / "demo")
    assert logs.exit_code == 0 and "6 item(s) done" in logs.stdout, logs.output


def test_the_cluster_imports_the_shipped_package(ray_head, tmp_path, monkeypatch):
    """The runtime env's packages come before whatever the cluster has installed, and the driver
    is not held to the one thread Ray gives job entrypoints."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head.token)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    client = submission.client(ray_head.address)
    (tmp_path / submission.STAGED_JOB_FILE).write_text("name: x\n")
    job_id = client.submit_job(
        entrypoint=submission.python_command(["-c", "import os, pipeline, tcmoa; print(pipeline.__file__); "
                                                    "print(tcmoa.__file__); print('threads', os.environ.get('OMP_NUM_THREADS'))"]),
        runtime_env=submission.runtime_env(tmp_path))
    info = submission.follow(client, job_id, lambda text: None, poll_s=0.5)
    assert info.status == "SUCCEEDED", client.get_job_logs(job_id)
    files = [line for line in client.get_job_logs(job_id).splitlines() if line.endswith("__init__.py")]
    assert len(files) == 2 and all("py_modules_files" in f for f in files), files
    assert "threads None" in client.get_job_logs(job_id)


def _invoke(monkeypatch, token: str, *args):
    """`tcmoa ...` in this process, with only the given token (faster than a subprocess: no Ray import)."""
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    return CliRunner().invoke(main, [str(a) for a in args])


def test_stop_and_follow_a_job(ray_head, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head.token)
    job_id = submission.client(ray_head.address).submit_job(entrypoint="echo started && sleep 120")
    stopped = _invoke(monkeypatch, ray_head.token, "stop", job_id, "--address", ray_head.address)
    assert stopped.exit_code == 0 and f"stop requested for {job_id}" in stopped.stdout, stopped.output
    followed = _invoke(monkeypatch, ray_head.token, "logs", job_id, "--follow", "--address", ray_head.address)
    assert followed.exit_code == 3 and "STOPPED" in followed.stderr, followed.output  # exits with the job's status
    again = _invoke(monkeypatch, ray_head.token, "stop", job_id, "--address", ray_head.address)
    assert again.exit_code == 0 and "was not running (STOPPED)" in again.stdout, again.output
    unknown = _invoke(monkeypatch, ray_head.token, "logs", "no-such-job", "--address", ray_head.address)
    assert unknown.exit_code == 2 and "no-such-job" in unknown.stderr and isinstance(unknown.exception, SystemExit)


def test_submit_without_the_token_is_refused_with_a_hint(ray_head, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"name": "j", "task": "vif", "discover": {"type": "glob"},
                                   "sources": [{"role": "a", "pattern": "*_a.tif"}, {"role": "b", "pattern": "*_b.tif"}]}))
    refused = _tcmoa(_env(tmp_path, None), "submit", job, "--address", ray_head.address)
    assert refused.returncode == 2 and "RAY_AUTH_TOKEN" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "runs").exists()  # nothing recorded for a job that was not submitted


def test_a_wrong_token_is_refused_with_a_hint(ray_head, monkeypatch):
    wrong = _invoke(monkeypatch, "not-the-token", "logs", "some-job", "--address", ray_head.address)
    assert wrong.exit_code == 2 and "Invalid authentication token" in wrong.stderr and "RAY_AUTH_TOKEN" in wrong.stderr
    assert isinstance(wrong.exception, SystemExit)
