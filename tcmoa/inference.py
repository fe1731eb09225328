"""`TCMoAFuser`: the model behind the `tcmoa.interface.Fuser` interface, and `load_fuser`.

Arrays in [0, 1] of any size and 1 or 3 channels go in; the fuser reflect-pads them to a
multiple of the attention window (instead of resizing), runs them in batches on CPU or GPU in
float32 or bfloat16, and returns the fused image at the input size.
"""
from __future__ import annotations

import logging
import pathlib
import warnings
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

import tcmoa
from tcmoa.devices import PRECISIONS, autocast_dtype, cpu_has_native_bf16, resolve_device, resolve_precision  # noqa: F401 (re-exported)
from tcmoa.guided import GUIDED_VERSION, guided_fusion, prompt_share, selection_rule
from tcmoa.interface import FusionResult, ModelInfo, RouterSpec, as_nhwc, check_pair, output_channels
from tcmoa.model import TCMoA, decode_to_image01, normalize

log = logging.getLogger(__name__)

DOWNSAMPLES = ("nearest", "area")
# decoder: the paper's output (the decoder's pixels); guided: a Laplacian-pyramid blend of the
# source pixels weighted by the prompts (tcmoa.guided); auto: what the weights file recommends
# (its provenance's "reconstruction", set by `tcmoa export --reconstruction`), else decoder.
RECONSTRUCTIONS = ("auto", "decoder", "guided")


def resolve_reconstruction(requested: str, weights_info: dict[str, Any] | None) -> str:
    """The reconstruction mode a fuser uses: `requested`, or for 'auto' the weights' recommendation."""
    if requested not in RECONSTRUCTIONS:
        raise ValueError(f"reconstruction must be one of {RECONSTRUCTIONS}, got {requested!r}")
    if requested != "auto":
        return requested
    recommended = (weights_info or {}).get("reconstruction")
    return recommended if recommended in ("decoder", "guided") else "decoder"


# The shipped default weights (docs/model-card.md); without the file "default" is an untrained model.
DEFAULT_WEIGHTS = pathlib.Path(__file__).parent / "weights" / "tcmoa-default.safetensors"
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def pad_to_multiple(x: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad NHWC at the bottom/right to a multiple of `multiple`; returns the original (H, W)."""
    h, w = x.shape[1:3]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        # numpy's reflect repeats the reflection when the pad exceeds the image (tiny inputs).
        x = np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
    return x, (h, w)


class TCMoAFuser:
    """Fuse pairs with a TC-MoA model. Implements `tcmoa.interface.Fuser`."""

    name = "tcmoa"

    def __init__(self, model: TCMoA, *, device: "str | torch.device" = "cpu", precision: str = "fp32",
                 batch_size: int = 8, alpha: float = 1.0, beta: float = 0.0, downsample: str = "nearest",
                 reconstruction: str = "auto", weights_info: dict[str, Any] | None = None):
        if downsample not in DOWNSAMPLES:
            raise ValueError(f"downsample must be one of {DOWNSAMPLES}, got {downsample!r}")
        self.reconstruction = resolve_reconstruction(reconstruction, weights_info)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.alpha, self.beta = float(alpha), float(beta)
        self.downsample = downsample
        self.tile_multiple = model.config.tile_multiple
        self.weights_info = dict(weights_info or {})

    # --- Fuser interface ---------------------------------------------------------------------
    def fuse_batch(self, a: np.ndarray, b: np.ndarray, task: RouterSpec = "vif", *,
                   return_prompts: bool = False) -> FusionResult:
        a, b = as_nhwc(a, "source A"), as_nhwc(b, "source B")
        check_pair(a, b)
        channels = output_channels(a, b)
        route = self.model.route_vector(task)  # validates the task before any work
        images, maps = [], []
        for start in range(0, a.shape[0], self.batch_size):
            stop = start + self.batch_size
            image, pmap = self._run(a[start:stop], b[start:stop], route, return_prompts)
            images.append(image)
            maps.append(pmap)
        image = np.concatenate(images)
        if channels == 1 and image.shape[-1] == 3:  # the decoder always paints RGB
            image = (image @ _LUMA)[..., None]
        prompt_map = np.concatenate(maps) if return_prompts else None
        return FusionResult(image=image, prompt_map=prompt_map)

    def provenance(self) -> dict[str, Any]:
        return {
            "fuser": self.name,
            "config": self.model.config.to_dict(),
            "weights": self.weights_info,
            "precision": self.precision,
            "device": self.device.type,
            "alpha": self.alpha,
            "beta": self.beta,
            "downsample": self.downsample,
            "reconstruction": self.reconstruction,
            "guided_version": GUIDED_VERSION,
            "tcmoa_version": tcmoa.__version__,
            "torch_version": torch.__version__,
        }

    # --- convenience for one pair ------------------------------------------------------------
    def fuse(self, a, b, task: RouterSpec = "vif", *, return_prompts: bool = False):
        """Fuse one pair of any size (HxW or HxWxC, numpy or torch). Returns HxW(xC) or (image, map)."""
        squeeze = np.ndim(a) == 2 and np.ndim(b) == 2
        result = self.fuse_batch(a, b, task, return_prompts=return_prompts)
        image = result.image[0, ..., 0] if squeeze else result.image[0]
        return (image, result.prompt_map[0]) if return_prompts else image

    # --- internals ---------------------------------------------------------------------------
    def _autocast(self):
        dtype = autocast_dtype(self.precision)
        return torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()

    @torch.inference_mode()
    def _run(self, a: np.ndarray, b: np.ndarray, route: torch.Tensor, return_prompts: bool):
        a, (h, w) = pad_to_multiple(a, self.tile_multiple)
        b, _ = pad_to_multiple(b, self.tile_multiple)
        ta, tb = (self._to_model_input(x) for x in (a, b))
        with self._autocast():
            out = self.model(ta, tb, route.to(self.device), alpha=self.alpha, beta=self.beta)
        size = tuple(ta.shape[-2:])
        share = None
        if return_prompts or self.reconstruction == "guided":
            share = prompt_share(out, size)[:, 0, :h, :w].cpu().numpy()
        if self.reconstruction == "guided":
            image = guided_fusion(a[:, :h, :w], b[:, :h, :w], share, rule=selection_rule(route))
        else:
            fused = decode_to_image01(out.pred, size, mode=self.downsample)[..., :h, :w]
            image = fused.permute(0, 2, 3, 1).float().cpu().numpy()
        return image, share if return_prompts else None

    def _to_model_input(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device).permute(0, 3, 1, 2)
        if t.shape[1] == 1:  # grey / infrared: repeated to 3 channels as in training
            t = t.expand(-1, 3, -1, -1)
        return normalize(t.float())


# --- loading by name ---------------------------------------------------------------------------
def random_model(config: str = "tiny", seed: int = 0) -> TCMoA:
    """A randomly initialised model (untrained): for tests, benchmarks and plumbing only."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return TCMoA(config).eval()
    finally:
        torch.random.set_rng_state(generator_state)


def load_model_spec(spec: str, device: "str | torch.device" = "cpu") -> tuple[TCMoA, dict[str, Any]]:
    """Resolve a weights spec to (model, weights_info).

    'default'          the shipped default weights (an untrained tiny model, with a warning, if the file is absent)
    'random:CONFIG'    random initialisation of a preset (tiny/base/large), seed 0; also 'tiny-random'
    PATH.safetensors   the project's own format
    PATH.pth           a released TC-MoA checkpoint (configuration inferred from its shapes)
    """
    from tcmoa import checkpoints

    if spec == "default":
        if DEFAULT_WEIGHTS.is_file():
            model, meta = checkpoints.load_model(DEFAULT_WEIGHTS, device)
            return model, {"spec": spec, "path": str(DEFAULT_WEIGHTS), "sha256": meta["sha256"], **meta["provenance"]}
        warnings.warn(
            f"{DEFAULT_WEIGHTS} is missing: using an UNTRAINED random-init tiny model "
            "(outputs show the plumbing, not real fusion). Pass trained weights to fuse for real.",
            stacklevel=2,
        )
        spec = "random:tiny"
    if spec == "tiny-random":
        spec = "random:tiny"
    if spec.startswith("random:"):
        config = spec.split(":", 1)[1]
        return random_model(config).to(device), {"spec": spec, "trained": False, "init": "random, seed 0"}
    path = pathlib.Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"weights {spec!r}: no such file (or use 'default' / 'random:tiny')")
    if path.suffix == ".safetensors":
        model, meta = checkpoints.load_model(path, device)
        return model, {"spec": spec, "path": str(path), "sha256": meta["sha256"], **meta["provenance"]}
    state, _ = checkpoints.read_torch_checkpoint(path)
    model = TCMoA(checkpoints.infer_config(state))
    checkpoints.load_reference_checkpoint(model, state)
    return model.to(device).eval(), {"spec": spec, "path": str(path), "sha256": checkpoints.file_sha256(path),
                                     "format": "reference"}


def load_fuser(spec: str = "default", **options: Any):
    """A Fuser by name: a weights spec (see `load_model_spec`) or 'baseline:NAME'."""
    if spec.startswith("baseline:"):
        from tcmoa.baselines import BASELINES

        name = spec.split(":", 1)[1]
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")
        return BASELINES[name]()
    device = resolve_device(options.pop("device", "auto"))  # 'auto': the GPU where there is one
    model, info = load_model_spec(spec, device)
    return TCMoAFuser(model, device=device, weights_info=info, **options)


def model_info(spec: str = "default") -> ModelInfo:
    """A weights spec's `ModelInfo` from the file's metadata (safetensors header: config,
    provenance), without building the network or reading its tensors. A reference .pth has no
    header: its state dict is read (not loaded into a network) to infer the configuration."""
    from tcmoa import checkpoints
    from tcmoa.config import TCMoAConfig, get_config

    if spec.startswith("baseline:"):
        from tcmoa.baselines import BASELINES

        name = spec.split(":", 1)[1]
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")
        cls = BASELINES[name]
        return ModelInfo(cls.name, int(cls.tile_multiple), spec, None, {}, trained=False)
    path = DEFAULT_WEIGHTS if spec == "default" and DEFAULT_WEIGHTS.is_file() else pathlib.Path(spec)
    if spec == "tiny-random" or (spec == "default" and not DEFAULT_WEIGHTS.is_file()):
        spec_random = "random:tiny"
    else:
        spec_random = spec if spec.startswith("random:") else None
    if spec_random is not None:
        config = get_config(spec_random.split(":", 1)[1])
        return ModelInfo(TCMoAFuser.name, config.tile_multiple, spec, None, config.to_dict(), trained=False,
                         guided_version=GUIDED_VERSION)
    if not path.is_file():
        raise FileNotFoundError(f"weights {spec!r}: no such file (or use 'default' / 'random:tiny')")
    reconstruction = "decoder"
    if path.suffix == ".safetensors":
        meta = checkpoints.read_metadata(path)
        config = TCMoAConfig.from_dict(meta["config"])
        reconstruction = resolve_reconstruction("auto", meta.get("provenance"))
    else:
        state, _ = checkpoints.read_torch_checkpoint(path)
        config = checkpoints.infer_config(state)
    return ModelInfo(TCMoAFuser.name, config.tile_multiple, spec, checkpoints.file_sha256(path), config.to_dict(),
                     reconstruction=reconstruction, guided_version=GUIDED_VERSION)

