"""One run of jobs/demo.yaml over the generated samples, shared by the output-format tests.

A stand-in fuser that depends on both sources and reports prompts (ContextFuser) replaces the
model, so the run is fast and still writes prompt maps for every collection."""
from __future__ import annotations

import pathlib

import pytest
import yaml

from pipeline.runners.local import run_job
from pipeline.samples import write_samples
from pipeline.spec import load_job
from pipeline_support import ContextFuser

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_demo(root: pathlib.Path) -> pathlib.Path:
    """Samples under root/samples, the demo job with prompt maps everywhere; returns the run dir."""
    write_samples(root / "samples")
    document = yaml.safe_load((ROOT / "jobs" / "demo.yaml").read_text())
    for collection in document["collections"]:
        collection["output"]["prompt_maps"] = True
    (root / "jobs").mkdir(parents=True, exist_ok=True)
    job_file = root / "jobs" / "demo.yaml"
    job_file.write_text(yaml.safe_dump(document))
    job = load_job(job_file)
    summary = run_job(job, fuser=ContextFuser(), progress=False)
    assert summary.items_done == 6 and not summary.failures, summary.failures
    return root / "runs" / "demo"


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> pathlib.Path:
    return run_demo(tmp_path_factory.mktemp("demo"))
