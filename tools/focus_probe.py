"""Do the frozen backbone's tokens carry focus, and can the TC-MoA prompt path read it?

On MFIFB-train pairs (two 224 px crops each; the first 70% of the pairs to fit, the rest to test),
the backbone of a weights file runs each source alone (no TC-MoA mixing) and the tokens of both
sources at each TC-MoA insertion point (and after the patch embedding) are probed for which source
carries the detail, `tcmoa.guided.focus_shares`, on the more detailed half of the tokens of each
crop (in flat tokens the target is a ratio of noise):

- an MLP (2 x 256 hidden) predicting the log-ratio of the energies: held-out R^2;
- a fresh TC-MoA module of the model's width (`tcmoa.adapters.TCMoAModule`, MFF router) trained on
  the share p_A / (p_A + p_B) directly: train and held-out R^2 of the share.

    python tools/focus_probe.py [WEIGHTS]      # default: the shipped default; about 4 minutes on 2 cores
"""
from __future__ import annotations

import pathlib
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tcmoa.adapters import PromptControl, TCMoAModule
from tcmoa.guided import token_energies
from tcmoa.inference import load_model_spec
from tcmoa.model import normalize
from tcmoa.vit import interpolate_pos_table
from training_splits import DATA

CROP, STEPS, BATCH = 224, 1500, 1024


def crops(path: pathlib.Path) -> list[torch.Tensor]:
    x = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255
    h, w = x.shape[:2]
    out = []
    for f in (0.25, 0.75):
        y0, x0 = int((h - CROP) * f), int((w - CROP) * f)
        out.append(torch.from_numpy(np.ascontiguousarray(x[y0:y0 + CROP, x0:x0 + CROP])).permute(2, 0, 1)[None])
    return out


@torch.no_grad()
def backbone_tokens(model, x01: torch.Tensor) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
    """Tokens (N, C) after the patch embedding and after every block a TC-MoA module follows."""
    cfg = model.config
    x = normalize(x01)
    if cfg.upsample:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    x, grid = model.patch_embed(x)
    x = x + interpolate_pos_table(model.pos_embed, grid)
    out = {"embed": x[0]}
    for i, block in enumerate(model.blocks):
        x = block(x, grid, model.en_relative_position[i // 2](), cfg.window_size, cfg.shift_size if i % 2 else 0)
        if i in cfg.moa_blocks(cfg.depth):
            out[f"encoder block {i}"] = x[0]
    x = model.decoder_embed(model.norm(x)) + interpolate_pos_table(model.decoder_pos_embed, grid)
    for i, block in enumerate(model.decoder_blocks):
        x = block(x, grid, model.de_relative_position[i // 2](), cfg.window_size, cfg.shift_size if i % 2 else 0)
        if i in cfg.moa_blocks(cfg.decoder_depth):
            out[f"decoder block {i}"] = x[0]
    return out, grid


def r2(pred: torch.Tensor, target: torch.Tensor) -> float:
    return 1 - float(((pred - target) ** 2).mean() / target.var())


def fit(net: torch.nn.Module, predict, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
    optimiser = torch.optim.Adam(net.parameters(), lr)
    net.train()
    for _ in range(STEPS):
        pick = torch.randint(0, len(x), (BATCH,))
        loss = F.mse_loss(predict(x[pick]), y[pick])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    net.eval()


def main() -> None:
    torch.manual_seed(0)
    model, _ = load_model_spec(sys.argv[1] if len(sys.argv) > 1 else "default")
    model.eval()
    folder = DATA / "mff/MFIFB-train"
    names = sorted((folder / "A").iterdir())
    fit_pairs = int(0.7 * len(names))
    rows: dict[str, list] = {}
    for index, path in enumerate(names):
        for a, b in zip(crops(path), crops(folder / "B" / path.name)):
            tokens_a, grid = backbone_tokens(model, a)
            tokens_b, _ = backbone_tokens(model, b)
            ea, eb = (e.flatten() for e in token_energies(a, b, grid))
            detailed = (ea + eb) > (ea + eb).median()
            share = (ea / (ea + eb).clamp_min(1e-12))[detailed]
            for key in tokens_a:
                rows.setdefault(key, []).append((index < fit_pairs, torch.cat([tokens_a[key], tokens_b[key]], -1)[detailed], share))
    route = model.route_vector("mff")
    print(f"{len(names)} MFIFB-train pairs ({fit_pairs} to fit), 2 crops each; R^2 on held-out pairs")
    for key, parts in rows.items():
        x_fit, x_test = (torch.cat([v for f, v, _ in parts if f == side]) for side in (True, False))
        s_fit, s_test = (torch.cat([s for f, _, s in parts if f == side]) for side in (True, False))
        mean, std = x_fit.mean(0), x_fit.std(0) + 1e-6
        logit = lambda s: torch.log(s.clamp(1e-4, 1 - 1e-4) / (1 - s).clamp(1e-4, 1 - 1e-4))
        mlp = torch.nn.Sequential(torch.nn.Linear(x_fit.shape[1], 256), torch.nn.GELU(), torch.nn.Linear(256, 256),
                                  torch.nn.GELU(), torch.nn.Linear(256, 1))
        fit(mlp, lambda x: mlp((x - mean) / std)[:, 0], x_fit, logit(s_fit), lr=1e-3)
        width = x_fit.shape[1] // 2
        module = TCMoAModule(width, model.config.num_tasks, model.config.num_experts, model.config.top_k)

        def share_of_a(x: torch.Tensor) -> torch.Tensor:
            _, _, p_a, p_b, _ = module(x[None, :, :width], x[None, :, width:], route, PromptControl())
            return (p_a / (p_a + p_b))[0, :, 0]

        fit(module, share_of_a, x_fit, s_fit, lr=3e-3)
        with torch.no_grad():
            mlp_test = r2(mlp((x_test - mean) / std)[:, 0], logit(s_test))
            module_fit, module_test = r2(share_of_a(x_fit), s_fit), r2(share_of_a(x_test), s_test)
        print(f"{key:16s} MLP probe {mlp_test:6.3f}   TC-MoA prompt module: fit {module_fit:6.3f}, held out {module_test:6.3f}",
              flush=True)


if __name__ == "__main__":
    main()
