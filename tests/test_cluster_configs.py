"""The deployment files are real configs: ray_cluster.yaml against Ray's own autoscaler schema,
every YAML file and unit file in jobs/ parsed, job specs through the project's validator, the
commands they run accepted by `tcmoa run`, and the files that must agree with each other agree."""
from __future__ import annotations

import configparser
import pathlib
import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from pipeline.cli import main
from pipeline.spec import SpecError, load_job

ROOT = pathlib.Path(__file__).resolve().parents[1]
JOBS = ROOT / "jobs"
run_command = main.get_command(None, "run")  # `tcmoa run`, wherever its module lives
TRAINING_CONFIGS = {"train_tiny.yaml", "pretrain_tiny.yaml", "train_small.yaml", "train_small_guided.yaml",
                    "finetune_small_guided.yaml", "finetune_small_focus.yaml", "finetune_small_targets.yaml",
                    "finetune_small_detail.yaml", "finetune_small_anchored.yaml",
                    "pretrain_small.yaml"}  # checked by tests/test_train.py
# Fields of KubeRay's ray.io/v1 RayJobSpec and RayClusterSpec (ray-operator/apis/ray/v1/*_types.go).
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata", "clusterSelector",
    "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode",
    "entrypointResources", "entrypointNumCpus", "entrypointNumGpus", "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes", "suspend", "schedule",
}
RAYCLUSTER_SPEC_FIELDS = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
    "headServiceAnnotations", "suspend", "authOptions", "gcsFaultToleranceOptions", "managedBy",
}


def _yaml_files() -> list[pathlib.Path]:
    return sorted(p for p in JOBS.rglob("*") if p.suffix in (".yaml", ".yml"))


def _tcmoa_run_args(command: str) -> list[str]:
    """The arguments after `tcmoa run` in a shell command line, checked by `tcmoa run`'s own parser."""
    words = shlex.split(command)
    start = next(i for i, w in enumerate(words) if w.endswith("tcmoa") and words[i + 1] == "run") + 2
    end = next((i for i in range(start, len(words)) if words[i] in (">>", ">", "2>&1", "|", "&&", ";")), len(words))
    args = words[start:end]
    run_command.make_context("run", list(args))  # raises click.UsageError on an unknown option
    return args


def _load_cluster_job(path: pathlib.Path):
    """A job spec whose weights are on the cluster's shared storage (/data), absent here: valid in
    every other respect (what `tcmoa submit` checks before sending it)."""
    with pytest.raises(SpecError, match=r"model\.weights: weights file /data/\S+ does not exist"):
        load_job(path)
    return load_job(path, check_files=False)


# ----------------------------------------------------------------------------- jobs/
@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(JOBS)))
def test_every_yaml_file_in_jobs_parses(path):
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents and all(isinstance(d, dict) for d in documents)
    if path.name in TRAINING_CONFIGS:
        return
    if all("apiVersion" in d and "kind" in d for d in documents):
        return  # Kubernetes manifests: checked below
    assert len(documents) == 1
    _load_cluster_job(path) if path.name == "archive.yaml" else load_job(path)


def test_archive_job_is_valid_apart_from_the_cluster_weights():
    job = _load_cluster_job(JOBS / "archive.yaml")
    assert str(job.run_dir).startswith("/data/") and str(job.collections[0].discover.root).startswith("/data/")
    assert job.model.weights.startswith("/data/")


def test_crontab_line_runs_the_archive_job():
    lines = [line for line in (JOBS / "schedule" / "crontab").read_text().splitlines() if line.strip() and not line.startswith("#")]
    entries = [line for line in lines if not re.match(r"^[A-Z_]+=", line)]
    assert len(entries) == 1
    fields = entries[0].split(None, 5)
    limits = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
    for field, (low, high) in zip(fields[:5], limits):
        assert field == "*" or low <= int(field) <= high, field
    args = _tcmoa_run_args(fields[5])
    assert args[0] == "jobs/archive.yaml" and "--resume" in args and "flock" not in fields[5]


def _unit(path: pathlib.Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def test_systemd_service_and_timer():
    service = _unit(JOBS / "schedule" / "tcmoa-archive.service")
    timer = _unit(JOBS / "schedule" / "tcmoa-archive.timer")
    assert service["Service"]["Type"] == "oneshot"
    args = _tcmoa_run_args(service["Service"]["ExecStart"])
    assert args[0] == "/srv/tcmoa/jobs/archive.yaml" and "--resume" in args
    assert timer["Timer"]["Unit"] == "tcmoa-archive.service" and timer["Timer"]["OnCalendar"]
    assert timer["Install"]["WantedBy"] == "timers.target"
    assert set(service) - {"DEFAULT"} <= {"Unit", "Service", "Install"} and set(timer) - {"DEFAULT"} <= {"Unit", "Timer", "Install"}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_units(tmp_path):
    """systemd's own checker: unknown keys, bad values, a timer without a schedule. The one
    complaint allowed is the ExecStart binary, which exists where the service is installed."""
    for name in ("tcmoa-archive.service", "tcmoa-archive.timer"):
        shutil.copy(JOBS / "schedule" / name, tmp_path / name)
    result = subprocess.run(["systemd-analyze", "verify", "tcmoa-archive.service", "tcmoa-archive.timer"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if line.strip() and "Command /srv/tcmoa/venv/bin/tcmoa is not executable" not in line]
    assert not complaints, complaints
    on_calendar = _unit(JOBS / "schedule" / "tcmoa-archive.timer")["Timer"]["OnCalendar"]
    calendar = subprocess.run(["systemd-analyze", "calendar", on_calendar], capture_output=True, text=True, timeout=60)
    assert calendar.returncode == 0 and "Next elapse" in calendar.stdout, calendar.stderr


def _manifests(name: str) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all((JOBS / "kubernetes" / name).read_text()) if d}


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def test_kuberay_rayjob():
    import ray

    rayjob = _manifests("rayjob.yaml")["RayJob"]
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["metadata"]["generateName"]
    spec = rayjob["spec"]
    assert set(spec) <= RAYJOB_SPEC_FIELDS, set(spec) - RAYJOB_SPEC_FIELDS
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "InteractiveMode") and spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAYCLUSTER_SPEC_FIELDS, set(cluster) - RAYCLUSTER_SPEC_FIELDS
    assert cluster["rayVersion"] == ray.__version__
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:  # rayStartParams is a map of strings in the CRD
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    for worker in cluster["workerGroupSpecs"]:
        assert worker["groupName"] and 0 <= worker["minReplicas"] <= worker["maxReplicas"]
        assert any("nvidia.com/gpu" in c["resources"]["limits"] for c in _containers(worker["template"]))
    images = {c["image"] for g in groups for c in _containers(g["template"])}
    assert len(images) == 1

    args = _tcmoa_run_args(spec["entrypoint"])
    assert "--resume" in args
    if any(p.name == "address" for p in run_command.params):
        assert "--address" in args, "tcmoa run can join a cluster now: add `--address auto` to the RayJob entrypoint"
    # The job file the entrypoint names is the tcmoa-job ConfigMap's archive.yaml, mounted on the head.
    head = cluster["headGroupSpec"]["template"]["spec"]
    volume = next(v for v in head["volumes"] if v.get("configMap", {}).get("name") == "tcmoa-job")
    mount = next(m for c in head["containers"] for m in c["volumeMounts"] if m["name"] == volume["name"])
    assert args[0] == f"{mount['mountPath']}/archive.yaml"
    assert "--from-file=archive.yaml=jobs/archive.yaml" in (JOBS / "kubernetes" / "rayjob.yaml").read_text()
    # Every pod mounts the shared storage where the job's paths point.
    for group in groups:
        spec_ = group["template"]["spec"]
        claim = next(v for v in spec_["volumes"] if "persistentVolumeClaim" in v)
        assert any(m["name"] == claim["name"] and m["mountPath"] == "/data" for c in spec_["containers"] for m in c["volumeMounts"])


def test_cronjob_creates_the_rayjob():
    manifests = _manifests("cronjob.yaml")
    cron = manifests["CronJob"]
    assert cron["apiVersion"] == "batch/v1" and len(cron["spec"]["schedule"].split()) == 5
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    account = manifests["ServiceAccount"]["metadata"]["name"]
    assert pod["serviceAccountName"] == account
    binding = manifests["RoleBinding"]
    assert binding["subjects"][0]["name"] == account and binding["roleRef"]["name"] == manifests["Role"]["metadata"]["name"]
    rule = manifests["Role"]["rules"][0]
    assert rule["apiGroups"] == ["ray.io"] and "rayjobs" in rule["resources"] and "create" in rule["verbs"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:3] == ["kubectl", "create", "-f"]  # create, not apply: the RayJob has a generateName
    volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "tcmoa-rayjob")
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert command[3] == f"{mount['mountPath']}/rayjob.yaml"
    assert "--from-file=rayjob.yaml=jobs/kubernetes/rayjob.yaml" in (JOBS / "kubernetes" / "cronjob.yaml").read_text()


# ----------------------------------------------------------------------------- ray_cluster.yaml
def _cluster_config() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def test_ray_cluster_config_passes_rays_schema():
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    # prepare_config fills the provider's defaults as `ray up` does; validate_config checks the
    # result against ray/autoscaler/ray-schema.json and the node-type rules.
    validate_config(prepare_config(_cluster_config()))
    assert (pathlib.Path(ray.autoscaler.__file__).parent / "ray-schema.json").exists()


def test_ray_cluster_config_is_the_cluster_we_describe():
    import ray

    config = _cluster_config()
    image = config["docker"]["image"]
    assert image == f"rayproject/ray:{ray.__version__}-py311-gpu"
    dockerfile = (JOBS / "kubernetes" / "Dockerfile").read_text()
    assert f"FROM {image}\n" in dockerfile  # one Ray version for the launcher and Kubernetes
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert workers and all(t["resources"].get("GPU", 0) >= 1 and t["max_workers"] > t.get("min_workers", 0) for t in workers)
    assert any(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in workers)
    assert any("pip install" in c and "/home/ray/tcmoa" in c for c in config["setup_commands"])
    assert config["file_mounts"]["/home/ray/tcmoa"] == "."
    assert "-v /data:/data" in config["docker"]["run_options"]
    assert any("mount" in c and "/data" in c for c in config["initialization_commands"])
    assert all("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c)
