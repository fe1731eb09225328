"""Compare the model (and the losses) with a golden fixture of the reference implementation.

Fixture format: ../shared/fixtures/README.md (config, reference state dict, normalised inputs,
and per task the raw decoder output, fused image, prompts and loss terms).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tcmoa.checkpoints import infer_config, load_reference_checkpoint
from tcmoa.model import TCMoA, decode_to_image01

OUTPUT_KEYS = ("raw_decoder_output", "fused01", "encoder_prompts_A", "encoder_prompts_B",
               "decoder_prompts_A", "decoder_prompts_B")


# Fixture config key(s) -> TCMoAConfig field.
_CONFIG_ALIASES = {
    "tau": ("tau", "interval_tau"), "tau_shift": ("tau_shift", "tau_shift_value"),
    "window_size": ("window", "window_size", "shift_window_size"), "upsample": ("upsample",),
    "num_heads": ("heads", "num_heads"), "decoder_num_heads": ("dheads", "decoder_num_heads"),
    "top_k": ("top_k", "k", "topk"), "num_experts": ("num_experts", "experts"),
    "num_tasks": ("task_num", "num_tasks"), "mlp_ratio": ("mlp_ratio", "mlp"), "patch_size": ("patch", "patch_size"),
}


@dataclass
class Comparison:
    task: str
    quantity: str
    difference: float  # max absolute difference (outputs) or relative difference (losses)
    tolerance: float
    kind: str  # "abs" or "rel"

    @property
    def ok(self) -> bool:
        return self.difference <= self.tolerance


def model_from_fixture(fixture: dict[str, Any]) -> TCMoA:
    """Build the fixture's configuration from its state dict's shapes and its config entry."""
    state = fixture["state_dict"]
    cfg = infer_config(state)
    given = fixture.get("config", {})
    overrides = {}
    for field, names in _CONFIG_ALIASES.items():
        for name in names:
            if name in given:
                overrides[field] = given[name]
                break
    model = TCMoA(cfg.replace(**overrides))
    load_reference_checkpoint(model, state)
    return model.eval()


def _loss_terms_fn():
    """The losses' fixture hook, once the training losses exist."""
    try:
        from tcmoa.losses import fixture_loss_terms
    except ImportError:
        return None
    return fixture_loss_terms


@torch.no_grad()
def check_fixture(fixture: dict[str, Any], output_tol: float = 1e-4, loss_tol: float = 1e-4) -> list[Comparison]:
    model = model_from_fixture(fixture)
    a_norm, b_norm = fixture["A_norm"].float(), fixture["B_norm"].float()
    size = tuple(a_norm.shape[-2:])
    loss_terms = _loss_terms_fn()
    results: list[Comparison] = []
    for task_name, expected in fixture["tasks"].items():
        out = model(a_norm, b_norm, int(expected["task_index"]))
        fused = decode_to_image01(out.pred, size, mode="nearest")
        produced = {
            "raw_decoder_output": out.pred, "fused01": fused,
            "encoder_prompts_A": out.encoder_prompts_A, "encoder_prompts_B": out.encoder_prompts_B,
            "decoder_prompts_A": out.decoder_prompts_A, "decoder_prompts_B": out.decoder_prompts_B,
        }
        for key in OUTPUT_KEYS:
            if key not in expected:
                continue
            ref = expected[key].float()
            if tuple(ref.shape) != tuple(produced[key].shape):
                diff = float("inf")
            else:
                diff = float((produced[key] - ref).abs().max())
            results.append(Comparison(task_name, key, diff, output_tol, "abs"))
        if loss_terms is None or "losses" not in expected:
            continue
        a01 = fixture.get("A01")
        b01 = fixture.get("B01")
        for epoch_key, ref_terms in expected["losses"].items():
            epoch = int(epoch_key.removeprefix("epoch"))
            ours = loss_terms(task_name, fused, a01, b01, produced, out.aux_loss, epoch)
            for term, ref_value in ref_terms.items():
                value = ours.get(term)
                if value is None:
                    diff = float("inf")
                else:
                    diff = abs(float(value) - float(ref_value)) / max(abs(float(ref_value)), 1e-12)
                results.append(Comparison(task_name, f"{epoch_key}.{term}", diff, loss_tol, "rel"))
    return results
