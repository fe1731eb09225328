"""The one inference interface everything outside the model library uses.

A `Fuser` turns batches of co-registered source pairs in [0, 1] into fused images.
The TC-MoA model (`tcmoa.inference.TCMoAFuser`) and the classical baselines
(`tcmoa.baselines`) implement it, so the engine and the evaluation harness never
depend on model internals.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Union, runtime_checkable

import numpy as np

# A task name ('vif', 'mef', 'mff'), a task index, or a weighted mix of task routers
# such as {"vif": 0.7, "mef": 0.3} (the paper's zero-shot use on unseen pairs).
RouterSpec = Union[str, int, Mapping[str, float]]


@dataclass
class FusionResult:
    """Output of `Fuser.fuse_batch`.

    image:      (N, H, W, C) float32 in [0, 1]; C is 3 when either source has 3 channels, else 1.
    prompt_map: (N, H, W) float32 in [0, 1] or None: the share of source A per pixel,
                p_A / (p_A + p_B) averaged over the TC-MoA modules (0.5 = both equally).
    """

    image: np.ndarray
    prompt_map: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Fuser(Protocol):
    name: str
    # Tile sides the engine feeds should be multiples of this (fusers pad internally anyway).
    tile_multiple: int

    def fuse_batch(
        self, a: np.ndarray, b: np.ndarray, task: RouterSpec = "vif", *, return_prompts: bool = False
    ) -> FusionResult:
        """Fuse N pairs. a, b: (N, H, W, Ca) and (N, H, W, Cb) float32 in [0, 1] (or integer arrays,
        scaled by their dtype's range: see `as_nhwc`), Ca, Cb in {1, 3}."""
        ...

    def provenance(self) -> dict[str, Any]:
        """What produced the output (name, config, weights hash, options, versions): JSON-able."""
        ...


@dataclass(frozen=True)
class Placement:
    """Resolved device type and precision (`tcmoa.devices.resolve_placement`): what results depend
    on, so unit ids hash it (a GPU's index does not matter)."""

    device: str  # 'cpu' or 'cuda'
    precision: str  # 'fp32' or 'bf16'

    @classmethod
    def resolve(cls, device: str = "auto", precision: str = "auto", weights: str = "") -> "Placement":
        if weights.startswith("baseline:"):  # classical baselines compute in numpy float64
            return cls("cpu", "fp32")
        from tcmoa.devices import resolve_placement  # imports torch: only where a model will run

        return resolve_placement(device, precision)

    @classmethod
    def of(cls, fuser: "Fuser") -> "Placement":
        """Where a fuser already built runs (stand-ins and baselines: the CPU in fp32)."""
        return cls(getattr(getattr(fuser, "device", None), "type", "cpu"), getattr(fuser, "precision", "fp32"))


@dataclass(frozen=True)
class ModelInfo:
    """What planning needs to know about a model, read without building or loading the network
    (`tcmoa.inference.model_info`): a driver without a GPU plans a job from this alone."""

    name: str  # the fuser's name (what `Fuser.name` will say)
    tile_multiple: int  # tile sides must be multiples of this
    weights: str  # the weights spec as given ('default', a path, 'random:tiny', 'baseline:NAME')
    weights_sha256: str | None  # of the weights file; None where there is no file
    config: dict[str, Any] = field(default_factory=dict)  # the network's configuration
    trained: bool = True
    reconstruction: str = "decoder"  # the mode `reconstruction: auto` resolves to (the weights' recommendation)
    guided_version: int | None = None  # tcmoa.guided.GUIDED_VERSION for models with a guided mode

    @classmethod
    def of(cls, fuser: "Fuser", weights: str = "") -> "ModelInfo":
        """The info of a fuser already built (tests, stand-ins, baselines)."""
        provenance = fuser.provenance() if hasattr(fuser, "provenance") else {}
        info = provenance.get("weights", {}) if isinstance(provenance.get("weights"), dict) else {}
        return cls(getattr(fuser, "name", type(fuser).__name__), int(getattr(fuser, "tile_multiple", 1) or 1),
                   weights, info.get("sha256"), provenance.get("config", {}), info.get("trained", True),
                   provenance.get("reconstruction", "decoder"), provenance.get("guided_version"))


def as_nhwc(x: Any, what: str = "image") -> np.ndarray:
    """Accept HxW, HxWxC or NxHxWxC arrays (numpy or torch) and return float32 NHWC.

    A 3-D array is always one image with channels last; a stack of grey images is N x H x W x 1.
    Integer arrays are scaled from their dtype's range to [0, 1] (uint8 / 255, uint16 / 65535,
    int16 from [-32768, 32767]); booleans become 0 and 1. Float arrays are taken as given, in [0, 1].
    """
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 2:
        arr = arr[None, :, :, None]
    elif arr.ndim == 3:
        arr = arr[None]
    elif arr.ndim != 4:
        raise ValueError(f"{what}: expected HxW, HxWxC or NxHxWxC, got shape {arr.shape}")
    if arr.shape[-1] not in (1, 3):
        raise ValueError(f"{what}: expected 1 or 3 channels, got shape {arr.shape}")
    return to_unit_range(arr)


def to_unit_range(arr: np.ndarray) -> np.ndarray:
    """float32 in [0, 1]: integers scaled by their dtype's range, never read as if already in [0, 1]."""
    if arr.dtype.kind in "iu":
        info = np.iinfo(arr.dtype)
        if info.min == 0:
            return (arr / np.float64(info.max)).astype(np.float32)
        return ((arr.astype(np.float64) - info.min) / (float(info.max) - info.min)).astype(np.float32)
    if arr.dtype.kind == "b":
        return arr.astype(np.float32)
    if arr.dtype.kind != "f":
        raise TypeError(f"unsupported array dtype {arr.dtype}: give float images in [0, 1] or integer images")
    return arr.astype(np.float32, copy=False)


def output_channels(a: np.ndarray, b: np.ndarray) -> int:
    return 3 if max(a.shape[-1], b.shape[-1]) == 3 else 1


def check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[:3] != b.shape[:3]:
        raise ValueError(f"sources differ in size: {a.shape[:3]} vs {b.shape[:3]} (N, H, W)")
