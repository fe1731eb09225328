"""A Ray head started with `ray start --head --block` in a subprocess, for the Jobs API tests.

It runs in its own temp dir and process group, on loopback ports chosen free, with token
authentication required (RAY_AUTH_MODE=token, a token made for it): the way a 2.59+ cluster
with a token runs. Stopped by its pid (SIGTERM lets `ray start --block` shut its processes down),
then its process group (the head's own processes) if anything is left.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from contextlib import closing
from dataclasses import dataclass

RAY = pathlib.Path(sys.executable).with_name("ray")


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayHead:
    process: subprocess.Popen
    address: str  # the dashboard / Jobs API, http://127.0.0.1:PORT
    token: str
    temp_dir: pathlib.Path
    log: pathlib.Path


def start_head(num_cpus: int = 2, timeout_s: float = 90.0) -> RayHead:
    temp_dir = pathlib.Path(tempfile.mkdtemp(prefix="rayh", dir="/tmp"))  # socket paths must stay short
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    # Job entrypoints run `python` from PATH, as on a cluster node: this environment's python.
    env["PATH"] = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, HOME=str(temp_dir))
    dashboard = free_port()
    ports = {
        "--port": free_port(), "--dashboard-port": dashboard, "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(), "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(), "--metrics-export-port": free_port(),
        "--node-manager-port": free_port(), "--object-manager-port": free_port(),
    }
    command = [
        str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
        "--include-dashboard", "true",  # the Jobs API is served by the dashboard process
        "--num-cpus", str(num_cpus), "--num-gpus", "0", "--object-store-memory", str(128 * 1024**2),
        "--temp-dir", str(temp_dir), "--disable-usage-stats",
        *[str(x) for pair in ports.items() for x in pair],
    ]
    log = temp_dir / "ray-start.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    head = RayHead(process, f"http://127.0.0.1:{dashboard}", token, temp_dir, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stop_head(head, keep_log=True)
            raise RuntimeError(f"ray start --head exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if _jobs_api_up(head):
            return head
        time.sleep(1.0)
    stop_head(head, keep_log=True)
    raise RuntimeError(f"the Jobs API at {head.address} did not come up in {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def _jobs_api_up(head: RayHead) -> bool:
    request = urllib.request.Request(f"{head.address}/api/jobs/", headers={"Authorization": f"Bearer {head.token}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop_head(head: RayHead, keep_log: bool = False) -> None:
    if head.process.poll() is None:
        head.process.send_signal(signal.SIGTERM)
        try:
            head.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.process.kill()
            head.process.wait(timeout=10)
    try:  # the head's own process group (start_new_session): raylet, GCS, dashboard, workers left over
        os.killpg(head.process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if not keep_log:
        shutil.rmtree(head.temp_dir, ignore_errors=True)
