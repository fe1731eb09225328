"""Model configuration and the `tiny` / `base` / `large` presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Task name -> router index, as in the reference (VIF also covers other multi-modal pairs).
TASKS: dict[str, int] = {"vif": 0, "mef": 1, "mff": 2}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TCMoAConfig:
    """Every dimension of a TC-MoA network.

    `pos_grid` is the side of the MAE position table (14 for 224 px pre-training);
    it is interpolated to the token grid of each input.
    """

    embed_dim: int
    depth: int
    num_heads: int
    decoder_embed_dim: int
    decoder_depth: int
    decoder_num_heads: int
    patch_size: int = 16
    in_chans: int = 3
    mlp_ratio: float = 4.0
    tau: int = 4
    tau_shift: int = 2
    window_size: int = 14
    upsample: bool = True
    num_tasks: int = 3
    num_experts: int = 4
    top_k: int = 2
    pos_grid: int = 14
    name: str = "custom"

    def __post_init__(self) -> None:
        problems = []
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.decoder_embed_dim % self.decoder_num_heads:
            problems.append(
                f"decoder_embed_dim {self.decoder_embed_dim} is not divisible by "
                f"decoder_num_heads {self.decoder_num_heads}"
            )
        for label, dim in (("embed_dim", self.embed_dim), ("decoder_embed_dim", self.decoder_embed_dim)):
            if dim % 32:
                problems.append(f"{label} {dim} must be a multiple of 32 (adapters use dim/4 and dim/32)")
        if not 1 <= self.top_k <= self.num_experts:
            problems.append(f"top_k {self.top_k} must be in [1, num_experts={self.num_experts}]")
        for label, depth in (("depth", self.depth), ("decoder_depth", self.decoder_depth)):
            if depth % 2:
                problems.append(f"{label} {depth} must be even (one position-bias table per pair of blocks)")
        if self.window_size % 2:
            problems.append(f"window_size {self.window_size} must be even (shift is half a window)")
        if problems:
            raise ValueError("invalid TC-MoA config: " + "; ".join(problems))

    # --- derived geometry -------------------------------------------------------------------
    @property
    def scale(self) -> int:
        return 2 if self.upsample else 1

    @property
    def tile_multiple(self) -> int:
        """Input sides must be multiples of this (112 px for the reference setup)."""
        return self.window_size * self.patch_size // self.scale

    @property
    def shift_size(self) -> int:
        return self.window_size // 2

    def moa_blocks(self, depth: int) -> list[int]:
        """Indices of the blocks followed by a TC-MoA module."""
        return [i for i in range(depth) if (i + self.tau_shift) % self.tau == self.tau - 1]

    @property
    def num_encoder_modules(self) -> int:
        return len(self.moa_blocks(self.depth))

    @property
    def num_decoder_modules(self) -> int:
        return len(self.moa_blocks(self.decoder_depth))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TCMoAConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TC-MoA config keys: {unknown}")
        return cls(**data)

    def replace(self, **changes) -> "TCMoAConfig":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, TCMoAConfig] = {
    # CPU-sized: the shape of the golden fixture; used for tests and the shipped default.
    "tiny": TCMoAConfig(64, 8, 4, 32, 8, 4, name="tiny"),
    # The shipped default's shape: 192-wide encoder (8 blocks) and decoder (4 blocks), so the
    # pixel head maps 192 features to each token's 768 values (tiny's 32 cannot carry detail).
    # Chosen by reconstruction per CPU-second in ../shared/docs/training-notes.md.
    "small": TCMoAConfig(192, 8, 6, 192, 4, 6, name="small"),
    # MAE ViT-B/16 visualize checkpoint.
    "base": TCMoAConfig(768, 12, 12, 512, 8, 16, name="base"),
    # MAE ViT-L/16 visualize (GAN loss) checkpoint; the released TC-MoA uses it.
    "large": TCMoAConfig(1024, 24, 16, 512, 8, 16, name="large"),
}


def get_config(name_or_config: "str | TCMoAConfig | dict") -> TCMoAConfig:
    if isinstance(name_or_config, TCMoAConfig):
        return name_or_config
    if isinstance(name_or_config, dict):
        return TCMoAConfig.from_dict(name_or_config)
    try:
        return PRESETS[name_or_config]
    except KeyError:
        raise ValueError(f"unknown config {name_or_config!r}; presets: {sorted(PRESETS)}") from None


def task_index(task: "str | int") -> int:
    if isinstance(task, int):
        if task not in TASKS.values():
            raise ValueError(f"task index {task} out of range {sorted(TASKS.values())}")
        return task
    try:
        return TASKS[task.lower()]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}") from None
