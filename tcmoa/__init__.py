"""TC-MoA: Task-Customized Mixture of Adapters for general image fusion (CVPR 2024).

The model library: configuration, network, checkpoints, inference interface, losses,
training and fusion metrics. It imports neither Ray nor raster I/O libraries.

For notebooks, two names are resolved on first use, so `import tcmoa` stays light (no torch, no
rasterio): `tcmoa.load_fuser(weights, ...)` (tcmoa.inference) and `tcmoa.open_run(RUN_DIR)`, a
forward to the archive engine's `pipeline.run_outputs.open_run` (xarray, rasterio and pystac are
imported then, by the engine's module: the model library's own modules never import pipeline).
"""
from tcmoa.config import TASKS, TCMoAConfig, get_config

__all__ = ["TASKS", "TCMoAConfig", "get_config", "load_fuser", "open_run"]
__version__ = "0.1.0"

_LAZY = {"load_fuser": "tcmoa.inference", "open_run": "pipeline.run_outputs"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tcmoa' has no attribute {name!r}")
