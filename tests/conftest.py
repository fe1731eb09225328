"""Shared test fixtures: the ../shared folder (optional), one local Ray cluster and one local S3
server (moto, loopback) per session."""
from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("TCMOA_SHARED", ROOT.parent / "shared"))
FIXTURE = SHARED / "fixtures" / "tcmoa_tiny_seed0_224.pt"


def shared_path(*parts: str) -> pathlib.Path:
    """A path under ../shared, or skip the test with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: the ../shared benchmark data is not beside this checkout")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    return shared_path()


@pytest.fixture(scope="session")
def ray_cluster(request):
    """One small local Ray instance for the whole session, isolated from any other cluster. It
    starts after the session's S3 server (where moto is installed), so its workers inherit the
    server's endpoint and dummy credentials, as workers on a cluster have the object store's."""
    ray = pytest.importorskip("ray")
    try:
        import moto.server  # noqa: F401
    except ImportError:
        pass
    else:
        request.getfixturevalue("s3_server")
    os.environ.pop("RAY_ADDRESS", None)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_AUTH_MODE"] = "disabled"  # tests only: lets `ray start --address` join without a token
    # workers import this checkout (and the tests' stand-in fusers), not an installed copy
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")) if p)
    # Ray's socket paths must stay short (< 108 bytes): use a short temp dir, not pytest's.
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=512 * 1024 * 1024,
            _temp_dir=temp_dir,
            log_to_driver=False,
            # a killed node is noticed in ~2 s instead of ~30 s (the node-loss test)
            _system_config={"health_check_period_ms": 500, "health_check_failure_threshold": 4},
        )
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 for the whole session; its endpoint and dummy credentials are
    put in the environment (inherited by subprocesses and Ray workers started afterwards)."""
    pytest.importorskip("moto.server")
    from s3_server import start_server

    server = start_server()
    saved = {key: os.environ.get(key) for key in server.environment()}
    os.environ.update(server.environment())
    yield server
    server.server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
