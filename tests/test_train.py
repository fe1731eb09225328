"""The training loop on the tiny config: loss falls, frozen weights stay frozen, EMA is exported,
a crash resumes to exactly the uninterrupted run, and Ray Train runs it on 2 CPU workers."""
from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from skimage.transform import resize

from tcmoa.model import TCMoA
from tcmoa.synth import skimage_photos
from tcmoa.run_state import RunStateError, parameter_groups
from tcmoa.train import learning_rate, train
from tcmoa.train_config import ConfigError, load_train_config, parse_train_config


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> pathlib.Path:
    """Small photos for synthetic MEF/MFF pairs, one visible/infrared pair, and an MAE backbone file."""
    root = tmp_path_factory.mktemp("train")
    photos = [resize(p, (128, 128), anti_aliasing=True) for p in skimage_photos(["astronaut", "coffee"])]
    (root / "photos").mkdir()
    for i, photo in enumerate(photos):
        Image.fromarray((photo * 255).astype(np.uint8)).save(root / "photos" / f"p{i}.png")
    for folder, count in (("vif", 2), ("vif_one", 1)):
        for i, photo in enumerate(photos[:count]):
            for side, image in (("vi", photo), ("ir", 1 - photo.mean(-1))):
                (root / folder / side).mkdir(parents=True, exist_ok=True)
                Image.fromarray((image * 255).astype(np.uint8)).save(root / folder / side / f"s{i}.png")
    torch.manual_seed(123)
    donor = TCMoA("tiny")
    backbone = {k: v for k, v in donor.state_dict().items() if k in set(donor.backbone_state_names())}
    torch.save({"model": backbone}, root / "mae_tiny.pth")
    return root


def _config(workspace: pathlib.Path, run_dir: pathlib.Path, **changes):
    document = {
        "run_dir": str(run_dir), "backbone": str(workspace / "mae_tiny.pth"),
        "data": {"vif": str(workspace / "vif"), "mef": [{"synthetic": str(workspace / "photos"), "count": 2}],
                 "mff": [{"synthetic": str(workspace / "photos"), "count": 2}]},
        "crop": 112, "batch_size": 1, "epochs": 4, "iters_per_epoch": 2, "warmup_epochs": 1, "num_workers": 0,
        "threads": 1, "log_every": 1, "checkpoint_every": 2, "sample_every": 0,
    }
    document.update(changes)
    return parse_train_config(document, workspace)


def _losses(run_dir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_frozen_weights_stay_bit_identical(workspace, tmp_path):
    # One pair per task, the whole image every time: the loss must fall step after step.
    same_view = {"vif": [1.0, 1.0], "mef": [1.0, 1.0], "mff": [1.0, 1.0]}
    config = _config(workspace, tmp_path / "run", lr=1e-3, min_lr=1e-3, warmup_epochs=0, epochs=100,
                     iters_per_epoch=10, max_steps=8, crop_scales=same_view, flip=False, sample_every=4,
                     data={"vif": str(workspace / "vif_one"),
                           "mef": [{"synthetic": str(workspace / "photos"), "count": 1}],
                           "mff": [{"synthetic": str(workspace / "photos"), "count": 1}]})
    result = train(config, progress=False)
    records = _losses(tmp_path / "run")
    assert [r["step"] for r in records] == list(range(1, 9))
    for task in ("vif", "mef", "mff"):
        curve = [r[f"{task}/loss"] for r in records]
        assert curve[-1] < 0.995 * curve[0], f"{task} loss did not fall: {curve}"
        assert sum(b < a for a, b in zip(curve, curve[1:])) >= 6, f"{task} loss is not falling steadily: {curve}"

    backbone = torch.load(workspace / "mae_tiny.pth", weights_only=True)["model"]
    exported = load_file(result.weights)
    for name, tensor in backbone.items():
        assert torch.equal(exported[name], tensor), f"frozen weight {name} changed"
    # The exported weights are the EMA, which differs from both the start and the raw weights.
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_00000008.state.pt", weights_only=True)
    ema = state["ema"]["shadow"]
    assert all(torch.equal(exported[n], ema[n]) for n in ema)
    assert any(not torch.equal(ema[n], state["trainable"][n]) for n in ema)
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == [
        f"step_{s:08d}_{t}.png" for s in (4, 8) for t in ("mef", "mff", "vif")]


class _Crash(RuntimeError):
    pass


def test_a_crashed_run_resumes_to_the_same_weights(workspace, tmp_path):
    # Random crops, flips, batch 2 and the warm-up -> main loss switch at step 2: everything that
    # depends on RNG and data position must come back exactly.
    settings = dict(batch_size=2, max_steps=4, ema_decay=0.9)
    reference = train(_config(workspace, tmp_path / "straight", **settings), progress=False)

    def crash_after_step_3(report):
        if report.step == 3:
            raise _Crash("simulated crash")

    crashed_config = _config(workspace, tmp_path / "crashed", num_workers=1, **settings)
    with pytest.raises(_Crash):
        train(crashed_config, callbacks=[crash_after_step_3], progress=False)
    assert json.loads((tmp_path / "crashed" / "checkpoints" / "latest.json").read_text())["step"] == 2
    resumed = train(crashed_config, progress=False)

    straight, again = load_file(reference.weights), load_file(resumed.weights)
    assert straight.keys() == again.keys()
    for name in straight:
        assert torch.equal(straight[name], again[name]), f"{name} differs after resume"
    state_a = torch.load(tmp_path / "straight" / "checkpoints" / "step_00000004.state.pt", weights_only=True)
    state_b = torch.load(tmp_path / "crashed" / "checkpoints" / "step_00000004.state.pt", weights_only=True)
    for name, value in state_a["trainable"].items():
        assert torch.equal(value, state_b["trainable"][name])
    for key, value in state_a["optimizer"]["state"].items():
        assert torch.equal(value["exp_avg_sq"], state_b["optimizer"]["state"][key]["exp_avg_sq"])
    assert state_a["rng"][0]["torch"] == state_b["rng"][0]["torch"]
    # The log holds each step once, with the same values as the uninterrupted run.
    assert [r["step"] for r in _losses(tmp_path / "crashed")] == [1, 2, 3, 4]
    assert [r["mff/loss"] for r in _losses(tmp_path / "crashed")] == [r["mff/loss"] for r in _losses(tmp_path / "straight")]


def test_resume_refuses_changed_configs_and_no_resume_protects_checkpoints(workspace, tmp_path):
    train(_config(workspace, tmp_path / "run", max_steps=2), progress=False)
    with pytest.raises(RunStateError, match="lr: checkpoint 0.0003 != now 0.001"):
        train(_config(workspace, tmp_path / "run", max_steps=3, lr=1e-3), progress=False)
    with pytest.raises(RunStateError, match="holds checkpoints"):
        train(_config(workspace, tmp_path / "run", max_steps=3), resume=False, progress=False)


def test_schedule_and_weight_decay_groups():
    config = parse_train_config({"run_dir": "r", "data": {"vif": "."}, "epochs": 10, "warmup_epochs": 2,
                                 "lr": 1e-3, "min_lr": 1e-5}, pathlib.Path("/tmp"))
    assert learning_rate(config, 0, 100) == 0.0
    assert learning_rate(config, 100, 100) == pytest.approx(5e-4)
    assert learning_rate(config, 200, 100) == pytest.approx(1e-3)
    assert learning_rate(config, 600, 100) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert learning_rate(config, 1000, 100) == pytest.approx(1e-5)
    model = TCMoA("tiny")
    decay, no_decay = parameter_groups(model.trainable_parameters(), 0.05)
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.05
    assert all(p.ndim == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(model.trainable_parameters())


def test_config_errors_name_the_file_and_every_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("run_dir: out\nbatch_sise: 3\nlr: fast\ncrop: 100\n"
                    "data:\n  vif: [missing_folder]\n  pan: [x]\n  mff: [{synthetic: skimage, path: y}]\n")
    with pytest.raises(ConfigError) as info:
        load_train_config(path)
    message = str(info.value)
    for expected in (str(path), "unknown key 'batch_sise' (did you mean 'batch_size'?)", "lr: expected a number",
                     "crop: 100 must be a multiple of 112", "missing_folder is not a folder", "unknown task 'pan'",
                     "give exactly one of `path`"):
        assert expected in message
    assert math.isclose(load_train_config(_write(tmp_path, "run_dir: o\ndata: {mef: [{synthetic: skimage}]}\n")).lr, 3e-4)


def _write(folder: pathlib.Path, text: str) -> pathlib.Path:
    path = folder / "good.yaml"
    path.write_text(text)
    return path


def test_ray_train_with_two_cpu_workers(workspace, tmp_path, ray_cluster):
    from pipeline.train_ray import train_with_ray

    config = _config(workspace, tmp_path / "ray_run", max_steps=2)
    metrics = train_with_ray(config, workers=2)
    assert metrics["step"] == 2 and math.isfinite(metrics["vif/loss"])
    state = torch.load(tmp_path / "ray_run" / "checkpoints" / "step_00000002.state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["rng"][0]["torch"] != state["rng"][1]["torch"]  # router noise differs per rank
    assert (tmp_path / "ray_run" / "final.safetensors").is_file()


def test_cli_train_resumes_and_reports_errors(workspace, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main

    config = tmp_path / "train.yaml"
    config.write_text(
        f"run_dir: run\nbackbone: {workspace / 'mae_tiny.pth'}\ncrop: 112\nbatch_size: 1\nepochs: 3\n"
        f"iters_per_epoch: 1\nwarmup_epochs: 1\nnum_workers: 0\nthreads: 1\nsample_every: 0\n"
        f"data:\n  mff: [{{synthetic: {workspace / 'photos'}, count: 1}}]\n")
    runner = CliRunner()
    first = runner.invoke(main, ["train", str(config), "--max-steps", "1"])
    assert first.exit_code == 0, first.output
    assert "trained 1 steps" in first.output and (tmp_path / "run" / "final.safetensors").is_file()
    refused = runner.invoke(main, ["train", str(config), "--no-resume"])
    assert refused.exit_code == 1 and "holds checkpoints (last at step 1)" in refused.output
    resumed = runner.invoke(main, ["train", str(config), "--max-steps", "2"])
    assert resumed.exit_code == 0 and "trained 2 steps" in resumed.output
    assert [r["step"] for r in _losses(tmp_path / "run")] == [1, 2]
    config.write_text("run_dir: run\ndata: {mff: [{synthetic: skimage}]}\nlearning_rate: 1\n")
    bad = runner.invoke(main, ["train", str(config)])
    assert bad.exit_code == 1 and "unknown key 'learning_rate'" in bad.output


@pytest.mark.shared_data
def test_example_jobs_parse(shared_dir, tmp_path):
    root = pathlib.Path(__file__).resolve().parents[1] / "jobs"
    config = load_train_config(root / "train_tiny.yaml", {"backbone": None})  # its backbone comes from pretrain
    assert config.tasks == ["vif", "mef", "mff"] and config.crop == 448
    from tcmoa.train_config import load_pretrain_config

    assert load_pretrain_config(root / "pretrain_tiny.yaml").mask_ratio == 0.75
    configs = {}
    for name in ("train_small.yaml", "train_small_guided.yaml", "finetune_small_guided.yaml", "finetune_small_focus.yaml",
                 "finetune_small_targets.yaml", "finetune_small_detail.yaml"):
        small = configs[name] = load_train_config(root / name, {"backbone": None, "init": None})
        assert small.model == "small" and small.tasks == ["vif", "mef", "mff"] and small.crop % 112 == 0
        assert all("dev" not in str(e.path) and "VIFB" not in str(e.path) for t in small.tasks for e in small.data[t])
    assert configs["finetune_small_focus.yaml"].guided_loss == 1.0
    detail = configs["finetune_small_detail.yaml"]  # the prompt targets alone
    assert (detail.reference_loss, detail.guided_loss) == (0.0, 0.0) and set(detail.focus_target) == {"vif", "mef", "mff"}
    assert detail.focus_relative == {"mef": 0.5}
    shipped = pathlib.Path(__file__).resolve().parents[1] / "tcmoa" / "weights" / "tcmoa-default.safetensors"
    anchored = load_train_config(root / "finetune_small_anchored.yaml",
                                 {"backbone": None, "init": None, "anchor": str(shipped)})
    assert anchored.anchor_shares == {"vif": 100.0} and set(anchored.focus_target) == {"mef", "mff"}
    assert all("dev" not in str(e.path) and "VIFB" not in str(e.path) for t in anchored.tasks for e in anchored.data[t])
    # Its Landsat composites are generated by tools/raster_photos.py before a run (absent in a fresh clone).
    from tcmoa.train_config import parse_pretrain_config, read_yaml

    document = read_yaml(root / "pretrain_small.yaml")
    assert "../runs/photos/rasters" in document["photos"]
    document["photos"] = [str(tmp_path) if p == "../runs/photos/rasters" else p for p in document["photos"]]
    pre = parse_pretrain_config(document, root, "pretrain_small.yaml", None)
    assert (pre.mask_ratio, pre.loss_patches, pre.upsample) == (0.0, "all", True)
    assert not any("dev" in p or "VIFB" in p for p in pre.photos)


def test_guided_loss_trains_the_prompts_through_the_guided_output(workspace, tmp_path):
    from tcmoa.train import _config_differences

    plain = train(_config(workspace, tmp_path / "plain", max_steps=2), progress=False)
    guided = train(_config(workspace, tmp_path / "guided", max_steps=2, guided_loss=1.0), progress=False)
    logged = _losses(tmp_path / "guided")[-1]
    assert all(math.isfinite(logged[f"{t}/guided_loss"]) for t in ("vif", "mef", "mff"))
    assert "vif/guided_loss" not in _losses(tmp_path / "plain")[-1]
    gate = "blocks_MoA.0.MoA.w_gate"  # the routers feed the prompts: the extra loss moves them
    assert not torch.equal(load_file(plain.weights)[gate], load_file(guided.weights)[gate])
    # runs saved before the field existed resume as the reference recipe (guided_loss 0)
    saved = {k: v for k, v in _config(workspace, tmp_path / "x").to_dict().items() if k != "guided_loss"}
    assert _config_differences(saved, _config(workspace, tmp_path / "x").to_dict()) == []


def test_export_takes_the_newest_weights_of_a_run_as_fp16(workspace, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main as cli
    from tcmoa.checkpoints import load_model, read_metadata

    empty = CliRunner().invoke(cli, ["export", str(tmp_path), "-o", str(tmp_path / "x.safetensors")])
    assert empty.exit_code == 1 and "no checkpoint yet" in empty.output
    train(_config(workspace, tmp_path / "run", max_steps=2), progress=False)  # checkpoint 2 = final 2
    train(_config(workspace, tmp_path / "run", max_steps=3, checkpoint_every=1), progress=False)
    (tmp_path / "run" / "final.safetensors").rename(tmp_path / "old_final.safetensors")
    train(_config(workspace, tmp_path / "run", max_steps=4, checkpoint_every=1), progress=False)
    # a final from step 4 and a checkpoint 4: either; now make final stale, as an interrupted resume would
    (tmp_path / "old_final.safetensors").replace(tmp_path / "run" / "final.safetensors")
    out = tmp_path / "shipped.safetensors"
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "run"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "exported step 4" in result.output
    newest, _ = load_model(tmp_path / "run" / "checkpoints" / "step_00000004.safetensors")
    shipped, meta = load_model(out)
    assert meta["provenance"]["trained_steps"] == 4 and meta["provenance"]["stored_as"] == "float16"
    for name, value in newest.state_dict().items():
        assert torch.equal(shipped.state_dict()[name], value.half().float()), name
    assert read_metadata(out)["config"] == read_metadata(tmp_path / "run" / "final.safetensors")["config"]
    # a weights file re-exported with the mode it is best used in: same tensors, the mode recorded
    again = tmp_path / "guided.safetensors"
    result = CliRunner().invoke(cli, ["export", str(out), "-o", str(again), "--reconstruction", "guided"])
    assert result.exit_code == 0 and "exported step 4" in result.output, result.output
    restored, meta = load_model(again)
    assert meta["provenance"]["reconstruction"] == "guided" and meta["provenance"]["trained_steps"] == 4
    assert all(torch.equal(restored.state_dict()[n], v) for n, v in shipped.state_dict().items())
    (tmp_path / "plain").touch()  # the permissions any new file gets here (safetensors alone would give 0600)
    assert again.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777


def test_init_starts_from_saved_weights_and_backbone_wins(workspace, tmp_path):
    from tcmoa.checkpoints import save_model

    torch.manual_seed(7)
    start = TCMoA("tiny")
    save_model(start, tmp_path / "start.safetensors")
    # Step 1 runs at lr 0 (linear warm-up from 0), so the exported weights are exactly the start's.
    result = train(_config(workspace, tmp_path / "run", init=str(tmp_path / "start.safetensors"), max_steps=1),
                   progress=False)
    exported, backbone = load_file(result.weights), torch.load(workspace / "mae_tiny.pth", weights_only=True)["model"]
    for name, value in start.state_dict().items():
        expected = backbone[name] if name in backbone else value
        assert torch.equal(exported[name], expected), name


def test_focus_target_pulls_the_mff_prompts_towards_the_sharper_source(workspace, tmp_path):
    """focus_shares says which source is sharp per token; with focus_target the MFF step adds the
    mean squared gap between the model's token shares and those, and training narrows it."""
    from scipy import ndimage

    from tcmoa.guided import focus_shares

    rng = np.random.default_rng(4)
    sharp = rng.random((64, 64))
    blurred = ndimage.gaussian_filter(sharp, 3.0)
    left_sharp = np.concatenate([sharp[:, :32], blurred[:, 32:]], axis=1)  # A sharp on the left only
    right_sharp = np.concatenate([blurred[:, :32], sharp[:, 32:]], axis=1)
    as_batch = lambda x: torch.tensor(x, dtype=torch.float32).expand(1, 3, -1, -1)
    share = focus_shares(as_batch(left_sharp), as_batch(right_sharp), (8, 8))[0, 0]
    assert share.shape == (8, 8)
    assert (share[:, :3] > 0.9).all() and (share[:, 5:] < 0.1).all()
    np.testing.assert_allclose(focus_shares(as_batch(sharp), as_batch(sharp), (4, 4)).numpy(), 0.5, atol=1e-6)

    config = _config(workspace, tmp_path / "run", focus_target=100.0, lr=1e-3, min_lr=1e-3, warmup_epochs=0,
                     epochs=100, iters_per_epoch=10, max_steps=8, crop_scales={"mff": [1.0, 1.0]}, flip=False,
                     data={"mff": [{"synthetic": str(workspace / "photos"), "count": 1}]})
    train(config, progress=False)
    gaps = [r["mff/focus_target_loss"] for r in _losses(tmp_path / "run")]
    assert len(gaps) == 8 and all(np.isfinite(gaps))
    assert np.mean(gaps[-3:]) < np.mean(gaps[:3]), gaps


def test_focus_target_takes_a_weight_per_task_and_counts_detailed_tokens_most(workspace, tmp_path):
    from tcmoa.guided import focus_shares, focus_target_loss
    from tcmoa.train import _config_differences
    from tcmoa.train_config import ConfigError

    assert _config(workspace, tmp_path / "a", focus_target=100.0).focus_target == {"mff": 100.0}  # the first form
    assert _config(workspace, tmp_path / "b", focus_target={"mef": 5, "mff": 0}).focus_target == {"mef": 5.0}
    assert _config(workspace, tmp_path / "c").focus_target == {}
    with pytest.raises(ConfigError, match="focus_target: unknown task 'pan'"):
        _config(workspace, tmp_path / "d", focus_target={"pan": 1.0})
    with pytest.raises(ConfigError, match=r"focus_target.mef: must be >= 0"):
        _config(workspace, tmp_path / "e", focus_target={"mef": -1.0})
    assert _config(workspace, tmp_path / "r", focus_relative={"mef": 0.5}).focus_relative == {"mef": 0.5}
    with pytest.raises(ConfigError, match="focus_relative: expected a mapping"):
        _config(workspace, tmp_path / "s", focus_relative=0.5)
    # a run saved with the single MFF weight resumes under the same weights written as a mapping
    current = _config(workspace, tmp_path / "f", focus_target={"mff": 3.0}).to_dict()
    assert not [d for d in _config_differences({**current, "focus_target": 3.0}, current) if "focus" in d]
    assert [d for d in _config_differences({**current, "focus_target": 0.0}, current) if "focus" in d]

    # A sharp on the left, both flat on the right: a wrong share on the flat side costs ~nothing
    rng = np.random.default_rng(0)
    a = torch.full((1, 3, 32, 32), 0.5)
    a[..., :16] = torch.tensor(rng.random((32, 16)), dtype=torch.float32)
    b = torch.full((1, 3, 32, 32), 0.5)
    right_wrong = torch.ones(1, 1, 4, 4)
    left_wrong = torch.ones(1, 1, 4, 4)
    left_wrong[..., :2] = 0.0
    assert focus_target_loss(right_wrong, a, b) < 1e-3 < focus_target_loss(left_wrong, a, b)

    # relative to brightness, a dark source's detail counts for more than in plain energy
    texture = torch.tensor(rng.random((1, 1, 32, 32)), dtype=torch.float32).expand(1, 3, -1, -1)
    dark, bright = 0.1 + 0.05 * texture, 0.5 + 0.15 * texture
    plain, relative = focus_shares(dark, bright, (4, 4)), focus_shares(dark, bright, (4, 4), relative=1.0)
    assert (plain < relative).all() and (relative < 0.5).all()


def test_reference_loss_weight_and_a_run_on_the_focus_target_alone(workspace, tmp_path):
    from tcmoa.train_config import ConfigError

    with pytest.raises(ConfigError, match="reference_loss: 0 leaves no loss for mef, vif"):
        _config(workspace, tmp_path / "none", reference_loss=0.0, focus_target=1.0)
    config = _config(workspace, tmp_path / "run", reference_loss=0.0, focus_target=1.0, max_steps=2,
                     data={"mff": [{"synthetic": str(workspace / "photos"), "count": 1}]})
    train(config, progress=False)
    for record in _losses(tmp_path / "run"):  # the step's loss is the focus term alone
        assert record["mff/loss"] == pytest.approx(record["mff/focus_target_loss"], rel=1e-6)


def test_anchor_shares_hold_a_tasks_prompts_to_other_weights(workspace, tmp_path):
    """anchor_shares adds, for its tasks, the mean squared gap between the model's token shares and
    those of frozen `anchor` weights; training narrows it (the prompts move towards the anchor's)."""
    from tcmoa.checkpoints import save_model
    from tcmoa.guided import token_share
    from tcmoa.model import normalize

    backbone = torch.load(workspace / "mae_tiny.pth", weights_only=True)["model"]
    for seed, name in ((7, "start"), (8, "anchor")):
        torch.manual_seed(seed)
        model = TCMoA("tiny")
        model.load_state_dict(backbone, strict=False)
        save_model(model, tmp_path / f"{name}.safetensors")
    with pytest.raises(ConfigError, match="anchor_shares: needs `anchor`"):
        _config(workspace, tmp_path / "x", anchor_shares={"vif": 1.0})
    vif_only = {"vif": str(workspace / "vif")}
    config = _config(workspace, tmp_path / "run", init=str(tmp_path / "start.safetensors"), backbone=None,
                     anchor=str(tmp_path / "anchor.safetensors"), anchor_shares={"vif": 100.0}, reference_loss=0.0,
                     data=vif_only, lr=1e-2, min_lr=1e-2, warmup_epochs=0, epochs=10, iters_per_epoch=2)
    assert config.anchor_shares == {"vif": 100.0}
    result = train(config, progress=False)
    records = _losses(tmp_path / "run")
    assert all(r["vif/loss"] == pytest.approx(100.0 * r["vif/anchor_loss"], rel=1e-6) for r in records)

    def gap(weights: pathlib.Path) -> float:  # on a fixed pair, in eval mode (no gating noise)
        from tcmoa.checkpoints import load_model

        anchor, _ = load_model(tmp_path / "anchor.safetensors")
        model, _ = load_model(weights)
        a = normalize(torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(0)))
        b = normalize(torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(1)))
        with torch.no_grad():
            ours, held = (token_share(m.eval()(a, b, "vif")) for m in (model, anchor))
        return float(((ours - held) ** 2).mean())

    assert gap(result.weights) < 0.5 * gap(tmp_path / "start.safetensors")
    from tcmoa.checkpoints import file_sha256, read_metadata

    provenance = read_metadata(result.weights)["provenance"]  # where the weights came from
    assert provenance["backbone"] == "from init"
    start = tmp_path / "start.safetensors"
    assert provenance["init"] == {"file": f"{tmp_path.name}/start.safetensors", "sha256": file_sha256(start)}
    assert provenance["anchor"]["sha256"] == file_sha256(tmp_path / "anchor.safetensors")
    # weights of another model config are refused before training
    other = TCMoA("small")
    save_model(other, tmp_path / "small.safetensors")
    with pytest.raises(ValueError, match="model config"):
        train(_config(workspace, tmp_path / "bad", anchor=str(tmp_path / "small.safetensors"),
                      anchor_shares={"vif": 1.0}, max_steps=1), progress=False)
