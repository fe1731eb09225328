"""MAE pre-training of the tiny backbone: masking, pixel layout, learning, the MAE key set, and
that `tcmoa train` takes the result as its frozen backbone."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from skimage.transform import resize

from tcmoa.checkpoints import load_mae_weights
from tcmoa.model import TCMoA
from tcmoa.pretrain import ImageTransform, MaskedAutoencoder, pretrain
from tcmoa.synth import skimage_photos
from tcmoa.train import train
from tcmoa.train_config import ConfigError, parse_pretrain_config, parse_train_config


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("photos")
    for i, photo in enumerate(skimage_photos(["astronaut", "coffee"])):
        Image.fromarray((resize(photo, (160, 160), anti_aliasing=True) * 255).astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


def _config(photos: pathlib.Path, run_dir: pathlib.Path, **changes):
    document = {"run_dir": str(run_dir), "photos": [str(photos)], "batch_size": 4, "epochs": 100,
                "iters_per_epoch": 10, "warmup_epochs": 1, "base_lr": 0.1, "num_workers": 0, "threads": 1,
                "log_every": 1, "checkpoint_every": 2}
    document.update(changes)
    return parse_pretrain_config(document, photos)


def _held_out_loss(photos: pathlib.Path, state: dict | None, seed: int = 0) -> float:
    """Reconstruction loss of both photos, whole, under one fixed mask."""
    torch.manual_seed(seed)
    model = MaskedAutoencoder("tiny").eval()
    if state is not None:
        model.load_state_dict(state)
    view = ImageTransform(224, (1.0, 1.0))
    images = torch.stack([view(np.asarray(Image.open(p), dtype=np.float32) / 255, None, np.random.default_rng(0))["image"]
                          for p in sorted(photos.iterdir())])
    torch.manual_seed(1)
    with torch.no_grad():
        return float(model(images)[0])


def test_masking_keeps_a_quarter_and_reports_the_rest():
    tokens = torch.arange(2 * 196, dtype=torch.float32).reshape(2, 196, 1)
    kept, mask, restore = MaskedAutoencoder.random_masking(tokens, 0.75)
    assert kept.shape == (2, 49, 1) and mask.sum(1).tolist() == [147.0, 147.0]
    for b in range(2):
        visible = torch.nonzero(mask[b] == 0).flatten()
        assert sorted(kept[b, :, 0].long().tolist()) == (visible + 196 * b).tolist()
    assert torch.equal(torch.sort(restore, dim=1).values, torch.arange(196).expand(2, -1))


def test_every_patch_objective_has_a_finite_loss_over_all_patches():
    """mask_ratio=0 used to divide by zero masked patches (NaN); it now scores every patch."""
    torch.manual_seed(0)
    model = MaskedAutoencoder("tiny").eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        loss, pred, mask = model(images, 0.0)
        every = ((pred - model.patchify(images)) ** 2).mean()
        assert not mask.any() and torch.isfinite(loss) and torch.allclose(loss, every)
        # "all" scores the visible patches too, under masking
        torch.manual_seed(1)
        masked, pred, mask = model(images, 0.5, "masked")
        torch.manual_seed(1)
        scored_all, pred_all, _ = model(images, 0.5, "all")
    error = ((pred - model.patchify(images)) ** 2).mean(-1)
    assert torch.allclose(masked, (error * mask).sum() / mask.sum())
    assert torch.allclose(scored_all, error.mean()) and not torch.allclose(masked, scored_all)


def test_upsampled_pretraining_reconstructs_the_enlarged_image():
    """With upsample the target is the 2x bilinear enlargement TC-MoA feeds its backbone."""
    model = MaskedAutoencoder("tiny", upsample=True).eval()
    images = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        loss, pred, _ = model(images, 0.0)
    enlarged = torch.nn.functional.interpolate(images, scale_factor=2, mode="bilinear", align_corners=False)
    assert pred.shape == (1, 196, 768)
    assert torch.allclose(loss, ((pred - model.patchify(enlarged)) ** 2).mean())


def test_patch_layout_matches_the_tcmoa_decoder_and_keys_match_mae():
    mae, fusion = MaskedAutoencoder("tiny"), TCMoA("tiny")
    images = torch.rand(2, 3, 224, 224)
    assert torch.equal(fusion.unpatchify(mae.patchify(images), (14, 14)), images)
    assert set(mae.state_dict()) == set(fusion.backbone_state_names()) | {"mask_token"}


def test_pretraining_learns_and_train_takes_the_backbone(photos, tmp_path):
    result = pretrain(_config(photos, tmp_path / "mae", max_steps=24), progress=False)
    state = torch.load(result.backbone, weights_only=True)["model"]
    before, after = _held_out_loss(photos, None), _held_out_loss(photos, state)
    assert after < 0.9 * before, f"reconstruction loss {before:.3f} -> {after:.3f}"

    model = TCMoA("tiny")
    load_mae_weights(model, result.backbone)
    assert torch.equal(model.state_dict()["blocks.3.attn.qkv.weight"], state["blocks.3.attn.qkv.weight"])
    config = parse_train_config({
        "run_dir": str(tmp_path / "fusion"), "backbone": str(result.backbone),
        "data": {"mef": [{"synthetic": str(photos), "count": 1}]}, "crop": 112, "batch_size": 1, "epochs": 3,
        "iters_per_epoch": 1, "warmup_epochs": 1, "max_steps": 1, "num_workers": 0, "threads": 1,
        "sample_every": 0}, tmp_path)
    train(config, progress=False)
    exported = load_file(tmp_path / "fusion" / "final.safetensors")
    assert torch.equal(exported["decoder_pred.weight"], state["decoder_pred.weight"])  # frozen, as pre-trained


def test_pretraining_resumes_exactly(photos, tmp_path):
    straight = pretrain(_config(photos, tmp_path / "straight", max_steps=4), progress=False)
    pretrain(_config(photos, tmp_path / "split", max_steps=2), progress=False)
    resumed = pretrain(_config(photos, tmp_path / "split", max_steps=4), progress=False)
    a = torch.load(straight.backbone, weights_only=True)["model"]
    b = torch.load(resumed.backbone, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretrain_config_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_pretrain_config({"run_dir": "r", "photos": ["nowhere"], "mask_ratio": 1.5, "image_size": 100},
                              tmp_path, "pre.yaml")
    for expected in ("pre.yaml", "nowhere is not a folder", "mask_ratio: must be in [0, 1)",
                     "image_size: 100 must be a multiple of 224"):
        assert expected in str(info.value)


def test_cli_pretrain(photos, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main

    config = tmp_path / "pre.yaml"
    config.write_text(f"run_dir: run\nphotos: [{photos}]\nbatch_size: 2\nepochs: 2\niters_per_epoch: 1\n"
                      f"warmup_epochs: 1\nnum_workers: 0\nthreads: 1\n")
    result = CliRunner().invoke(main, ["pretrain", str(config)])
    assert result.exit_code == 0, result.output
    assert "pre-trained 2 steps" in result.output and (tmp_path / "run" / "mae_backbone.pth").is_file()
