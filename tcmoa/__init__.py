"""TC-MoA: Task-Customized Mixture of Adapters for general image fusion (CVPR 2024).

The model library: configuration, network, checkpoints, inference interface, losses,
training and fusion metrics. It imports neither Ray nor raster I/O libraries.
"""
from tcmoa.config import TASKS, TCMoAConfig, get_config

__all__ = ["TASKS", "TCMoAConfig", "get_config"]
__version__ = "0.1.0"
