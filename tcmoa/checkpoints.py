"""Checkpoint loading and saving.

Three formats:
- MAE "visualize" checkpoints (`mae_visualize_vit_{base,large_ganloss}.pth`): the frozen backbone.
- The released TC-MoA checkpoint (reference key names, including its older names).
- The project's own format: safetensors weights with the config and provenance as JSON in the
  file's metadata. It loads without pickle.

Every loader checks names and shapes and raises `CheckpointError` naming the file and the
missing, unexpected or mismatched keys.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import re
from typing import Any, Mapping

import torch

from tcmoa.config import PRESETS, TCMoAConfig
from tcmoa.model import TCMoA
from tcmoa.run_state import atomic_write
from tcmoa.vit import relative_position_index

FORMAT_NAME = "tcmoa"
FORMAT_VERSION = "1"

# Older names in early TC-MoA checkpoints -> current names (applied in this order).
_LEGACY_RENAMES = (
    (re.compile(r"blocks_SSF_rgb\."), "blocks_MoA."),
    (re.compile(r"^((?:decoder_)?blocks_MoA\.\d+\.)mlp\."), r"\1MoA."),
    (re.compile(r"^((?:decoder_)?blocks_MoA\.\d+\.)SE_en_linear\."), r"\1dimReduction."),
    (re.compile(r"^en_projAdapter\."), "FusionLayer."),
    (re.compile(r"^de_projAdapter\."), "de_FusionLayer."),
)
_SSF_BETA = re.compile(r"^((?:decoder_)?blocks_MoA\.\d+\.)SSF_beta(?:\.(\d+))?$")
# MAE keys the TC-MoA network does not use.
_MAE_UNUSED = ("mask_token",)


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: names the file and the offending keys."""


StateDict = Mapping[str, torch.Tensor]


def file_sha256(path: "str | os.PathLike") -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _describe(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def read_torch_checkpoint(source: "str | os.PathLike | Mapping", allow_pickle: bool = False) -> tuple[dict, str]:
    """Return (state dict, label) from a .pth path or an in-memory dict; unwraps {'model': ...}."""
    if isinstance(source, Mapping):
        data, label = dict(source), "<state dict>"
    else:
        label = str(source)
        path = pathlib.Path(source)
        if not path.is_file():
            raise CheckpointError(f"{label}: no such checkpoint file")
        if path.stat().st_size == 0:
            raise CheckpointError(f"{label}: the file is empty")
        try:
            # Training checkpoints often carry an argparse.Namespace of arguments.
            with torch.serialization.safe_globals([argparse.Namespace]):
                data = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
        except Exception as exc:  # torch raises several types for corrupt or truncated files
            hint = "" if allow_pickle else " (if you trust it and it holds other Python objects, allow pickle)"
            raise CheckpointError(f"{label}: cannot read the checkpoint: {exc}{hint}") from exc
    for wrapper in ("model", "state_dict"):  # training checkpoints / fixtures wrap the weights
        if isinstance(data.get(wrapper), Mapping):
            data = data[wrapper]
            break
    bad = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{label}: not a state dict: non-tensor entries {_describe(bad)}")
    return data, label


def _check_and_assign(model: TCMoA, incoming: dict, names: list[str], label: str) -> None:
    """Copy `names` from `incoming` into the model; every name must exist with the right shape."""
    own = model.state_dict()
    missing = [n for n in names if n not in incoming]
    mismatched = [
        f"{n} {tuple(incoming[n].shape)} != {tuple(own[n].shape)}"
        for n in names if n in incoming and incoming[n].shape != own[n].shape
    ]
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {_describe(missing)}")
        if mismatched:
            parts.append(f"shape mismatches (file != model): {_describe(mismatched)}")
        raise CheckpointError(f"{label}: does not fit a {model.config.name} TC-MoA: " + "; ".join(parts))
    with torch.no_grad():
        for n in names:
            own[n].copy_(incoming[n])


def load_mae_weights(model: TCMoA, source: "str | os.PathLike | Mapping", allow_pickle: bool = False) -> list[str]:
    """Load an MAE visualize checkpoint into the backbone and freeze exactly those weights.

    A `.safetensors` file in the project's format gives its backbone (so a shipped model is also a
    pre-trained backbone for a new training run).

    Returns the names loaded. Raises CheckpointError on missing or mismatched keys, and on keys
    that are neither backbone weights nor known unused MAE entries.
    """
    if isinstance(source, (str, os.PathLike)) and pathlib.Path(source).suffix == ".safetensors":
        # a whole model in the project's format (e.g. a shipped default): take its backbone
        whole, _ = load_model(source)
        state, label = {k: v for k, v in whole.state_dict().items() if not model.is_trainable_name(k)}, str(source)
    else:
        state, label = read_torch_checkpoint(source, allow_pickle)
    names = model.backbone_state_names()
    unexpected = [k for k in state if k not in names and k not in _MAE_UNUSED]
    if unexpected:
        raise CheckpointError(f"{label}: not an MAE checkpoint for this model: unexpected keys {_describe(unexpected)}")
    _check_and_assign(model, state, names, label)
    model.freeze_backbone()
    return names


def rename_legacy_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in _LEGACY_RENAMES:
            key = pattern.sub(replacement, key)
        renamed[key] = value
    return renamed


def _source_encodings_from_legacy(model: TCMoA, state: dict, label: str) -> dict[str, torch.Tensor]:
    """Collect `SSF_beta` entries (older name of the source encodings) as (tasks, 2, dim) tensors."""
    found: dict[str, dict[int | None, torch.Tensor]] = {}
    for key in [k for k in state if _SSF_BETA.match(k)]:
        prefix, index = _SSF_BETA.match(key).groups()
        found.setdefault(prefix + "source_encoding", {})[None if index is None else int(index)] = state.pop(key)
    own = model.state_dict()
    result = {}
    for name, parts in found.items():
        if name not in own:
            raise CheckpointError(f"{label}: source encodings for a module the model lacks: {name}")
        target = own[name].shape  # (tasks, 2, dim)
        if None in parts:
            tensor = parts[None]
        else:  # a list of per-(task, source) vectors, index = 2 * task + source
            tensor = torch.stack([parts[i] for i in sorted(parts)])
        if tensor.numel() != target.numel():
            raise CheckpointError(
                f"{label}: {name} (legacy SSF_beta) has {tuple(tensor.shape)}, expected {tuple(target)} elements"
            )
        result[name] = tensor.reshape(target)
    return result


def load_reference_checkpoint(model: TCMoA, source: "str | os.PathLike | Mapping", allow_pickle: bool = False,
                              require_backbone: bool = True) -> dict[str, Any]:
    """Load the released TC-MoA checkpoint (reference names, older names renamed).

    Source encodings the file does not carry (the reference never registers them) are set to
    zero, which is what the reference's outputs correspond to. With require_backbone=False a
    file holding only the trainable weights is accepted (the backbone then comes from MAE).
    Returns a summary of what was loaded.
    """
    state, label = read_torch_checkpoint(source, allow_pickle)
    state = rename_legacy_keys(state)
    encodings = _source_encodings_from_legacy(model, state, label)

    # The reference saves the relative position index; it must equal ours.
    expected_index = relative_position_index(model.config.window_size)
    for key in [k for k in state if k.endswith("relative_position_index")]:
        if not torch.equal(state.pop(key).long(), expected_index):
            raise CheckpointError(f"{label}: {key} differs from a {model.config.window_size}-token window's index")

    own_names = list(model.state_dict())
    encoding_names = set(model.source_encoding_names())
    unexpected = [k for k in state if k not in own_names and k not in _MAE_UNUSED]
    if unexpected:
        raise CheckpointError(f"{label}: unexpected keys for a {model.config.name} TC-MoA: {_describe(unexpected)}")
    wanted = [n for n in own_names if n not in encoding_names]
    if not require_backbone:
        wanted = [n for n in wanted if model.is_trainable_name(n) or n in state]
    _check_and_assign(model, state, wanted, label)
    with torch.no_grad():
        for name in encoding_names:
            model.state_dict()[name].copy_(encodings.get(name, torch.zeros(())))
    model.freeze_backbone()
    return {"loaded": len(wanted), "source_encodings": "checkpoint" if encodings else "zero"}


# --- the project's own format -------------------------------------------------------------
def save_model(model: TCMoA, path: "str | os.PathLike", provenance: Mapping[str, Any] | None = None,
               dtype: torch.dtype | None = None) -> str:
    """Write weights + config + provenance as safetensors, atomically. Returns the file's sha256.

    dtype (e.g. torch.float16) stores the floating-point tensors narrower, to ship a smaller file;
    loading widens them back into the fp32 model.
    """
    from safetensors.torch import save_file

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(model.config.to_dict()),
        "provenance": json.dumps(dict(provenance or {}), default=str),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return file_sha256(path)


def read_metadata(path: "str | os.PathLike") -> dict[str, Any]:
    from safetensors import safe_open

    label = str(path)
    if not pathlib.Path(path).is_file():
        raise CheckpointError(f"{label}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"{label}: not a readable safetensors file: {exc}") from exc
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{label}: safetensors file without tcmoa metadata (format={meta.get('format')!r})")
    try:
        return {
            "format_version": meta.get("format_version"),
            "config": json.loads(meta["config"]),
            "provenance": json.loads(meta.get("provenance", "{}")),
        }
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{label}: corrupt tcmoa metadata: {exc}") from exc


def load_model(path: "str | os.PathLike", device: "str | torch.device" = "cpu") -> tuple[TCMoA, dict[str, Any]]:
    """Load a model saved by `save_model`. Returns (model in eval mode, metadata incl. sha256)."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    model = TCMoA(TCMoAConfig.from_dict(meta["config"]))
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the weights (truncated or corrupt?): {exc}") from exc
    unexpected = [k for k in state if k not in model.state_dict()]
    if unexpected:
        raise CheckpointError(f"{path}: unexpected keys {_describe(unexpected)}")
    _check_and_assign(model, state, list(model.state_dict()), str(path))
    meta["sha256"] = file_sha256(path)
    meta["path"] = str(path)
    return model.to(device).eval(), meta


def infer_config(state: Mapping[str, torch.Tensor]) -> TCMoAConfig:
    """Work out the configuration of a reference or project state dict from its shapes."""
    try:
        dim, in_chans, patch, _ = state["patch_embed.proj.weight"].shape
        ddim = state["decoder_embed.weight"].shape[0]
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        ddepth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("decoder_blocks."))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"cannot infer the configuration: backbone keys missing ({exc})") from exc
    heads = state.get("en_relative_position.0.relative_position_bias_table")
    dheads = state.get("de_relative_position.0.relative_position_bias_table")
    preset = next((c for c in PRESETS.values() if (c.embed_dim, c.depth, c.decoder_embed_dim, c.decoder_depth) == (dim, depth, ddim, ddepth)), None)
    if heads is None or dheads is None:
        if preset is None:
            raise CheckpointError("cannot infer the number of attention heads: give the config explicitly")
        num_heads, dnum_heads = preset.num_heads, preset.decoder_num_heads
    else:
        num_heads, dnum_heads = heads.shape[1], dheads.shape[1]
    window = 14
    if heads is not None:
        window = (int(round(heads.shape[0] ** 0.5)) + 1) // 2
    fields = dict(embed_dim=dim, depth=depth, num_heads=num_heads, decoder_embed_dim=ddim, decoder_depth=ddepth,
                  decoder_num_heads=dnum_heads, patch_size=patch, in_chans=in_chans, window_size=window)
    gate = state.get("blocks_MoA.0.MoA.w_gate")
    if gate is not None:
        fields.update(num_tasks=gate.shape[0], num_experts=gate.shape[2])
    name = preset.name if preset is not None and all(getattr(preset, k) == v for k, v in fields.items()) else "custom"
    base = preset if preset is not None else TCMoAConfig(dim, depth, num_heads, ddim, ddepth, dnum_heads)
    return base.replace(**fields, name=name)
