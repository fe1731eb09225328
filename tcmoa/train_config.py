"""Training and pre-training configuration files: dataclasses, YAML parsing and validation.

Relative paths are resolved against the config file's folder, so a config runs the same from any
working directory. Every problem is reported at once, each naming the file and the field.
"""
from __future__ import annotations

import dataclasses
import difflib
import pathlib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from tcmoa.config import TASKS, get_config
from tcmoa.data import TASK_SCALES

PRECISIONS = ("auto", "fp32", "bf16")
LOSS_PATCHES = ("masked", "all")


class ConfigError(ValueError):
    """An invalid training config: lists every problem with the file and field."""


@dataclass(frozen=True)
class DataEntry:
    """One source of pairs for a task: a dataset folder in a known layout, or synthetic pairs."""

    path: pathlib.Path | None = None  # a folder in one of tcmoa.data.LAYOUTS
    split: str | None = None  # e.g. LLVIP's `train`
    synthetic: str | None = None  # 'skimage' (bundled photos) or a folder of sharp photos
    count: int | None = None  # synthetic pairs to draw (default: one per photo)


@dataclass(frozen=True)
class TrainConfig:
    run_dir: pathlib.Path
    data: Mapping[str, tuple[DataEntry, ...]]
    model: Any = "tiny"  # a preset name or a dict of TCMoAConfig fields
    backbone: pathlib.Path | None = None  # MAE weights (.pth, MAE key names); None: random (tests only)
    init: pathlib.Path | None = None  # weights to fine-tune from (.safetensors ours, else reference .pth)
    seed: int = 0
    crop: int = 448
    crop_scales: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(TASK_SCALES))
    flip: bool = True
    batch_size: int = 3  # per task, per worker
    epochs: int = 20
    iters_per_epoch: int | None = None  # default: one pass over the largest task's pairs
    warmup_epochs: int = 2  # linear lr warm-up and the losses' warm-up phase, as in the reference
    lr: float = 3e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float | None = 1.0  # max global grad norm per step; None: no clipping (the reference's)
    ema_decay: float | None = 0.999  # EMA of the trainable weights, exported and evaluated; None: off
    # Weight of the task's loss on the prompt-guided output (tcmoa.guided), added to the reference
    # loss on the decoder output: a direct signal for the prompts. 0: the reference recipe.
    guided_loss: float = 0.0
    # Weight of the reference losses on the decoder output (1: the reference recipe). 0 trains by
    # the other terms alone: guided_loss, or a focus_target weight for every task in data.
    reference_loss: float = 1.0
    # Weight per task of a target for the prompts: the (energy-weighted) mean squared difference
    # between the model's per-token share of source A and A's share of the gradient energy in that
    # token (the source that carries the detail, tcmoa.guided.focus_target_loss). A number is the
    # weight for mff alone (the first form of this field); {}: off.
    focus_target: Mapping[str, float] = field(default_factory=dict)
    # Per task: the focus target's energies divided by (the token's mean luminance + 0.05) ** r,
    # detail relative to brightness (tcmoa.guided.token_energies); absent or 0: plain energy.
    focus_relative: Mapping[str, float] = field(default_factory=dict)
    # Weights (.safetensors, same model config) whose per-token prompt shares some tasks are held
    # to, and the weight per task of that hold (mean squared difference of the shares, the anchor a
    # frozen copy): fine-tune some tasks' prompts while the others keep what they had (the adapters
    # are shared by all tasks, so training one task moves the others' prompts too).
    anchor: pathlib.Path | None = None
    anchor_shares: Mapping[str, float] = field(default_factory=dict)
    precision: str = "auto"  # auto: bf16 where the device computes it natively (tcmoa.devices)
    device: str = "auto"
    num_workers: int = 2  # data loader processes per task
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    sample_every: int = 200  # 0: no sample images
    max_steps: int | None = None  # stop early (the schedule still spans `epochs`)

    @property
    def tasks(self) -> list[str]:
        """Tasks with data, in router order (the reference's step order VIF, MEF, MFF)."""
        return [t for t in TASKS if t in self.data]

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


@dataclass(frozen=True)
class PretrainConfig:
    run_dir: pathlib.Path
    photos: tuple[str, ...]  # folders of images, 'skimage' for the bundled photos, or pair folders
    model: Any = "tiny"
    seed: int = 0
    image_size: int = 224  # 14 x 14 patches: one TC-MoA attention window
    crop_scale: tuple[float, float] = (0.2, 1.0)
    mask_ratio: float = 0.75  # 0: plain autoencoding of the whole image
    loss_patches: str = "masked"  # "masked": MAE's loss on masked patches; "all": every patch
    upsample: bool = False  # enlarge crops 2x before patch embedding, as TC-MoA does with `upsample`
    batch_size: int = 32
    epochs: int = 100
    iters_per_epoch: int | None = None  # default: one pass over the images
    warmup_epochs: int = 5
    base_lr: float = 1.5e-4  # MAE: lr = base_lr * batch_size / 256
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float | None = None
    precision: str = "auto"
    device: str = "auto"
    num_workers: int = 2
    threads: int | None = None
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    max_steps: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    """JSON/YAML-friendly copy: paths to strings, tuples to lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, pathlib.PurePath):
        return str(value)
    return value


# --- generic field checking ------------------------------------------------------------------------
def _check_scalar(kind: type, value: Any) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError("expected true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported field type {kind}")


def _coerce(annotation: Any, value: Any, base: pathlib.Path) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, base)
    if value is None:
        raise TypeError("must not be empty")
    if annotation is pathlib.Path:
        path = pathlib.Path(_check_scalar(str, value)).expanduser()
        return path if path.is_absolute() else (base / path).resolve()
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_scalar(args[0], v) for v in value)
        if len(value) != len(args):
            raise TypeError(f"expected {len(args)} values, got {len(value)}")
        return tuple(_check_scalar(a, v) for a, v in zip(args, value))
    return _check_scalar(annotation, value)


def _parse_fields(cls: type, document: Mapping[str, Any], base: pathlib.Path, problems: list[str],
                  special: Mapping[str, Any] = {}) -> dict[str, Any]:
    """Check every key of `document` against the dataclass; `special` fields are parsed by the caller."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in document.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            problems.append(f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            continue
        if key in special:
            continue
        try:
            values[key] = _coerce(hints[key], value, base)
        except TypeError as exc:
            problems.append(f"{key}: {exc}")
    for name, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and name not in document:
            problems.append(f"{name}: required")
    return values


def _check_common(values: Mapping[str, Any], problems: list[str]) -> None:
    def positive(name: str, allow_zero: bool = False) -> None:
        v = values.get(name)
        if v is not None and (v < 0 or (v == 0 and not allow_zero)):
            problems.append(f"{name}: must be {'>= 0' if allow_zero else '> 0'}, got {v}")

    for name in ("batch_size", "epochs", "iters_per_epoch", "log_every", "checkpoint_every", "keep_checkpoints",
                 "max_steps", "threads", "crop", "image_size", "lr", "base_lr", "clip_grad"):
        positive(name)
    for name in ("warmup_epochs", "num_workers", "min_lr", "weight_decay", "sample_every", "guided_loss",
                 "reference_loss"):
        positive(name, allow_zero=True)
    if values.get("precision", "auto") not in PRECISIONS:
        problems.append(f"precision: must be one of {PRECISIONS}, got {values['precision']!r}")
    betas = values.get("betas")
    if betas is not None and not all(0 <= b < 1 for b in betas):
        problems.append(f"betas: each must be in [0, 1), got {list(betas)}")
    if "model" in values:
        try:
            get_config(values["model"])
        except (ValueError, TypeError) as exc:
            problems.append(f"model: {exc}")


def _parse_data(document: Any, base: pathlib.Path, problems: list[str]) -> dict[str, tuple[DataEntry, ...]]:
    if not isinstance(document, Mapping) or not document:
        problems.append("data: expected a mapping of task -> list of data entries (vif/mef/mff)")
        return {}
    parsed: dict[str, tuple[DataEntry, ...]] = {}
    for task, entries in document.items():
        if task not in TASKS:
            problems.append(f"data: unknown task {task!r}; expected some of {sorted(TASKS)}")
            continue
        if isinstance(entries, (str, Mapping)):
            entries = [entries]
        if not isinstance(entries, list) or not entries:
            problems.append(f"data.{task}: expected a non-empty list of entries")
            continue
        items = []
        for i, entry in enumerate(entries):
            where = f"data.{task}[{i}]"
            if isinstance(entry, str):
                entry = {"path": entry}
            if not isinstance(entry, Mapping):
                problems.append(f"{where}: expected a path or a mapping, got {entry!r}")
                continue
            sub: list[str] = []
            values = _parse_fields(DataEntry, entry, base, sub)
            item = DataEntry(**values)
            if (item.path is None) == (item.synthetic is None):
                sub.append("give exactly one of `path` (a dataset folder) or `synthetic` (photos)")
            if item.synthetic is not None:
                if task not in ("mef", "mff"):
                    sub.append(f"synthetic pairs exist for mef and mff, not {task}")
                if item.synthetic != "skimage":
                    folder = pathlib.Path(item.synthetic).expanduser()
                    folder = folder if folder.is_absolute() else (base / folder).resolve()
                    item = dataclasses.replace(item, synthetic=str(folder))
                    if not folder.is_dir():
                        sub.append(f"synthetic: {folder} is not a folder (or use 'skimage')")
            if item.count is not None and item.count < 1:
                sub.append(f"count: must be > 0, got {item.count}")
            if item.path is not None and not item.path.is_dir():
                sub.append(f"path: {item.path} is not a folder")
            problems.extend(f"{where}: {p}" for p in sub)
            items.append(item)
        parsed[task] = tuple(items)
    return parsed


def _parse_scales(document: Any, problems: list[str]) -> dict[str, tuple[float, float]]:
    scales = dict(TASK_SCALES)
    if not isinstance(document, Mapping):
        problems.append("crop_scales: expected a mapping task -> [low, high]")
        return scales
    for task, pair in document.items():
        if task not in TASKS:
            problems.append(f"crop_scales: unknown task {task!r}")
            continue
        try:
            low, high = _coerce(tuple[float, float], pair, pathlib.Path("."))
        except TypeError as exc:
            problems.append(f"crop_scales.{task}: {exc}")
            continue
        if not 0 < low <= high <= 1:
            problems.append(f"crop_scales.{task}: need 0 < low <= high <= 1, got {[low, high]}")
        scales[task] = (low, high)
    return scales


def focus_target_weights(value: Any) -> dict[str, float]:
    """`focus_target` as task -> weight: a number is the MFF weight (0: none); zero weights dropped."""
    if isinstance(value, Mapping):
        return {task: float(weight) for task, weight in value.items() if weight}
    return {"mff": float(value)} if value else {}


def _parse_task_numbers(name: str, document: Any, problems: list[str]) -> dict[str, float]:
    """A mapping task -> number >= 0 (focus_target, focus_relative, anchor_shares); zeros dropped."""
    if not isinstance(document, Mapping):
        problems.append(f"{name}: expected a mapping task -> number")
        return {}
    numbers = {}
    for task, value in document.items():
        if task not in TASKS:
            problems.append(f"{name}: unknown task {task!r}")
            continue
        try:
            numbers[task] = _check_scalar(float, value)
        except TypeError as exc:
            problems.append(f"{name}.{task}: {exc}")
            continue
        if numbers[task] < 0:
            problems.append(f"{name}.{task}: must be >= 0, got {numbers[task]}")
    return {task: value for task, value in numbers.items() if value}


def _raise(problems: list[str], where: str) -> None:
    if problems:
        raise ConfigError(f"{where}: invalid config ({len(problems)} problem{'s' * (len(problems) > 1)}):\n  - "
                          + "\n  - ".join(problems))


def parse_train_config(document: Mapping[str, Any], base: pathlib.Path, where: str = "<config>",
                       overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    document = {**document, **(overrides or {})}
    problems: list[str] = []
    values = _parse_fields(TrainConfig, document, base, problems,
                           special={"data": None, "crop_scales": None, "focus_target": None, "focus_relative": None,
                                    "anchor_shares": None})
    if "data" in document:
        values["data"] = _parse_data(document["data"], base, problems)
    if "crop_scales" in document:
        values["crop_scales"] = _parse_scales(document["crop_scales"], problems)
    if "focus_target" in document:  # a number: the first form of the field, the MFF weight
        target = document["focus_target"]
        values["focus_target"] = _parse_task_numbers(
            "focus_target", target if isinstance(target, Mapping) else {"mff": target}, problems)
    if "focus_relative" in document:
        values["focus_relative"] = _parse_task_numbers("focus_relative", document["focus_relative"], problems)
    if "anchor_shares" in document:
        values["anchor_shares"] = _parse_task_numbers("anchor_shares", document["anchor_shares"], problems)
        if values["anchor_shares"] and values.get("anchor") is None:
            problems.append("anchor_shares: needs `anchor`, the weights whose prompt shares are held")
    _check_common(values, problems)
    if values.get("crop") is not None:
        try:
            multiple = get_config(values.get("model", "tiny")).tile_multiple
            if values["crop"] % multiple:
                problems.append(f"crop: {values['crop']} must be a multiple of {multiple} (the model's tile side)")
        except (ValueError, TypeError):
            pass
    if values.get("reference_loss", 1.0) == 0 and not values.get("guided_loss"):
        without = sorted(set(values.get("data", {})) - set(values.get("focus_target", {}))
                         - set(values.get("anchor_shares", {})))
        if without:
            problems.append(f"reference_loss: 0 leaves no loss for {', '.join(without)}: give guided_loss > 0, "
                            "or a focus_target or anchor_shares weight for every task in data")
    if values.get("warmup_epochs", 2) >= values.get("epochs", 20) and values.get("warmup_epochs", 2) > 0:
        problems.append("warmup_epochs: must be smaller than epochs")
    for name in ("backbone", "init", "anchor"):
        path = values.get(name)
        if path is not None and not path.is_file():
            problems.append(f"{name}: {path} does not exist")
    _raise(problems, where)
    return TrainConfig(**values)


def parse_pretrain_config(document: Mapping[str, Any], base: pathlib.Path, where: str = "<config>",
                          overrides: Mapping[str, Any] | None = None) -> PretrainConfig:
    document = {**document, **(overrides or {})}
    problems: list[str] = []
    values = _parse_fields(PretrainConfig, document, base, problems, special={"photos": None})
    photos = document.get("photos")
    if isinstance(photos, str):
        photos = [photos]
    if "photos" in document:
        if not isinstance(photos, list) or not photos or not all(isinstance(p, str) for p in photos):
            problems.append("photos: expected a list of folders (or 'skimage')")
        else:
            resolved = []
            for p in photos:
                if p == "skimage":
                    resolved.append(p)
                    continue
                folder = pathlib.Path(p).expanduser()
                folder = folder if folder.is_absolute() else (base / folder).resolve()
                if not folder.is_dir():
                    problems.append(f"photos: {folder} is not a folder")
                resolved.append(str(folder))
            values["photos"] = tuple(resolved)
    _check_common(values, problems)
    ratio = values.get("mask_ratio", 0.75)
    if not 0 <= ratio < 1:
        problems.append(f"mask_ratio: must be in [0, 1), got {ratio}")
    if values.get("loss_patches", "masked") not in LOSS_PATCHES:
        problems.append(f"loss_patches: must be one of {list(LOSS_PATCHES)}, got {values['loss_patches']!r}")
    size = values.get("image_size", 224)
    model = values.get("model", "tiny")
    try:
        model_config = get_config(model)
        window_px = model_config.patch_size * model_config.window_size // (2 if values.get("upsample") else 1)
        if size % window_px:
            problems.append(f"image_size: {size} must be a multiple of {window_px} (one attention window of patches)")
    except (ValueError, TypeError):
        pass
    _raise(problems, where)
    return PretrainConfig(**values)


def read_yaml(path: "str | pathlib.Path") -> dict[str, Any]:
    path = pathlib.Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping, got {type(document).__name__}")
    return document


def load_train_config(path: "str | pathlib.Path", overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    path = pathlib.Path(path)
    return parse_train_config(read_yaml(path), path.resolve().parent, str(path), overrides)


def load_pretrain_config(path: "str | pathlib.Path", overrides: Mapping[str, Any] | None = None) -> PretrainConfig:
    path = pathlib.Path(path)
    return parse_pretrain_config(read_yaml(path), path.resolve().parent, str(path), overrides)
