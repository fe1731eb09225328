"""Checkpoint loaders on state dicts with the real files' key names and shapes."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main as cli
from tcmoa.checkpoints import (
    CheckpointError, infer_config, load_mae_weights, load_model, load_reference_checkpoint, read_metadata,
    save_model,
)
from tcmoa.config import TCMoAConfig
from tcmoa.inference import load_fuser, random_model

CFG = TCMoAConfig(64, 4, 4, 32, 4, 2, name="ckpt-test")
X = torch.linspace(-1, 1, 2 * 3 * 112 * 112).reshape(2, 3, 112, 112)


def outputs(model):
    with torch.no_grad():
        return model(X[:1], X[1:], "mef").pred


def mae_state_dict(model) -> dict:
    """What an MAE visualize checkpoint holds: the backbone under MAE names, plus mask_token."""
    state = {k: v.clone() for k, v in model.state_dict().items() if k in model.backbone_state_names()}
    state["mask_token"] = torch.zeros(1, 1, model.config.decoder_embed_dim)
    return state


def reference_state_dict(model) -> dict:
    """What the released TC-MoA checkpoint holds: everything but the (unregistered) source encodings,
    plus the relative position index buffers."""
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("source_encoding")}
    for name, module in model.named_modules():
        if name.endswith("relative_position") or "relative_position." in name:
            if hasattr(module, "relative_position_index"):
                state[f"{name}.relative_position_index"] = module.relative_position_index.clone()
    return state


def test_mae_checkpoint_loads_into_the_backbone_and_freezes_it(tmp_path):
    source = random_model(CFG)
    torch.save({"model": mae_state_dict(source)}, tmp_path / "mae_visualize_vit_test.pth")
    target = TCMoA_fresh(seed=5)
    loaded = load_mae_weights(target, tmp_path / "mae_visualize_vit_test.pth")
    assert set(loaded) == set(target.backbone_state_names())
    for name in loaded:
        assert torch.equal(target.state_dict()[name], source.state_dict()[name]), name
    frozen = {n for n, p in target.named_parameters() if not p.requires_grad}
    assert frozen == {n for n in loaded if n in dict(target.named_parameters())}
    # The TC-MoA modules were left alone.
    assert not torch.equal(target.state_dict()["blocks_MoA.0.dimReduction.weight"],
                           source.state_dict()["blocks_MoA.0.dimReduction.weight"])


def TCMoA_fresh(seed: int):
    torch.manual_seed(seed)
    from tcmoa.model import TCMoA

    return TCMoA(CFG).eval()


def test_mae_loader_names_missing_and_mismatched_keys():
    state = mae_state_dict(random_model(CFG))
    del state["blocks.1.mlp.fc2.bias"]
    state["decoder_pred.weight"] = torch.zeros(10, 32)
    with pytest.raises(CheckpointError) as err:
        load_mae_weights(TCMoA_fresh(0), state)
    assert "blocks.1.mlp.fc2.bias" in str(err.value) and "decoder_pred.weight" in str(err.value)


def test_mae_loader_refuses_other_models():
    state = mae_state_dict(random_model(CFG))
    state["head.weight"] = torch.zeros(1000, 64)
    with pytest.raises(CheckpointError, match="head.weight"):
        load_mae_weights(TCMoA_fresh(0), state)


def test_a_saved_model_serves_as_the_backbone_of_a_new_one(tmp_path):
    trained = random_model(CFG)
    save_model(trained, tmp_path / "shipped.safetensors")
    fresh = TCMoA_fresh(1)
    adapters = {n: p.detach().clone() for n, p in fresh.trainable_parameters()}
    loaded = load_mae_weights(fresh, tmp_path / "shipped.safetensors")
    own, theirs = fresh.state_dict(), trained.state_dict()
    assert set(loaded) == set(fresh.backbone_state_names())
    assert all(torch.equal(own[n], theirs[n]) for n in loaded)
    assert all(torch.equal(own[n], v) for n, v in adapters.items())  # the new model's own adapters
    assert not fresh.patch_embed.proj.weight.requires_grad


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not really a zip", None])
def test_truncated_or_empty_pth_files_give_clear_errors(tmp_path, content):
    path = tmp_path / "broken.pth"
    if content is None:  # a real checkpoint cut in half
        torch.save({"model": mae_state_dict(random_model(CFG))}, path)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="broken.pth"):
        load_mae_weights(TCMoA_fresh(0), path)


def test_reference_checkpoint_round_trip_with_zero_source_encodings():
    source = random_model(CFG)
    target = TCMoA_fresh(3)
    summary = load_reference_checkpoint(target, {"model": reference_state_dict(source), "epoch": torch.tensor(3)})
    assert summary["source_encodings"] == "zero"
    for name in target.source_encoding_names():
        assert torch.count_nonzero(target.state_dict()[name]) == 0
    with torch.no_grad():
        for name in source.source_encoding_names():
            source.state_dict()[name].zero_()
    torch.testing.assert_close(outputs(target), outputs(source), atol=0, rtol=0)


def legacy_names(state: dict, model) -> dict:
    """Rename to the early TC-MoA names, and store the source encodings as SSF_beta lists."""
    renamed = {}
    for key, value in state.items():
        new = key.replace("blocks_MoA.", "blocks_SSF_rgb.")
        if "blocks_SSF_rgb." in new:
            new = new.replace(".MoA.", ".mlp.").replace(".dimReduction.", ".SE_en_linear.")
        new = new.replace("de_FusionLayer.", "de_projAdapter.")
        if new.startswith("FusionLayer."):
            new = "en_projAdapter." + new[len("FusionLayer."):]
        renamed[new] = value
    for name in model.source_encoding_names():
        prefix = name.replace("blocks_MoA.", "blocks_SSF_rgb.").removesuffix("source_encoding")
        enc = model.state_dict()[name]
        for i, vec in enumerate(enc.reshape(-1, enc.shape[-1])):
            renamed[f"{prefix}SSF_beta.{i}"] = vec.clone()
    return renamed


def test_legacy_names_load_including_source_encodings():
    source = random_model(CFG)
    state = legacy_names(reference_state_dict(source), source)
    assert any(k.startswith("en_projAdapter.") for k in state) and any(".SE_en_linear." in k for k in state)
    target = TCMoA_fresh(9)
    summary = load_reference_checkpoint(target, state)
    assert summary["source_encodings"] == "checkpoint"
    torch.testing.assert_close(outputs(target), outputs(source), atol=0, rtol=0)


def test_reference_loader_names_problems():
    state = reference_state_dict(random_model(CFG))
    del state["decoder_blocks_MoA.0.MoA.w_gate"]
    state["blocks_MoA.0.MoA.w_noise"] = torch.zeros(2, 16, 4)
    with pytest.raises(CheckpointError) as err:
        load_reference_checkpoint(TCMoA_fresh(0), state)
    assert "decoder_blocks_MoA.0.MoA.w_gate" in str(err.value) and "blocks_MoA.0.MoA.w_noise" in str(err.value)
    bad_index = reference_state_dict(random_model(CFG))
    bad_index["en_relative_position.0.relative_position_index"] = torch.zeros(196, 196, dtype=torch.long)
    with pytest.raises(CheckpointError, match="relative_position_index"):
        load_reference_checkpoint(TCMoA_fresh(0), bad_index)


def test_config_is_inferred_from_shapes():
    cfg = infer_config(reference_state_dict(random_model(CFG)))
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.decoder_embed_dim, cfg.decoder_depth, cfg.decoder_num_heads) == (
        64, 4, 4, 32, 4, 2)


def test_own_format_round_trip_without_pickle(tmp_path):
    model = random_model(CFG)
    path = tmp_path / "w.safetensors"
    sha = save_model(model, path, provenance={"trained": False, "by": "test"})
    assert not list(tmp_path.glob("*.tmp"))
    meta = read_metadata(path)
    assert meta["config"]["name"] == "ckpt-test" and meta["provenance"]["by"] == "test"
    loaded, info = load_model(path)
    assert info["sha256"] == sha
    torch.testing.assert_close(outputs(loaded), outputs(model), atol=0, rtol=0)
    # safetensors starts with an 8-byte header length and JSON: no pickle anywhere.
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert json.loads(path.read_bytes()[8:8 + header_len])["__metadata__"]["format"] == "tcmoa"


def test_truncated_safetensors_file_is_reported(tmp_path):
    path = tmp_path / "w.safetensors"
    save_model(random_model(CFG), path)
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="w.safetensors"):
        load_model(path)


def test_convert_command_merges_mae_and_tcmoa_files(tmp_path):
    source = random_model(CFG)
    torch.save({"model": mae_state_dict(source)}, tmp_path / "mae.pth")
    trainable_only = {k: v for k, v in reference_state_dict(source).items() if source.is_trainable_name(k)}
    torch.save({"model": trainable_only, "epoch": 19}, tmp_path / "tcmoa.pth")
    out = tmp_path / "converted.safetensors"
    result = CliRunner().invoke(cli, ["convert", "--mae", str(tmp_path / "mae.pth"), "--tcmoa",
                                      str(tmp_path / "tcmoa.pth"), "--config", "tiny", "-o", str(out)])
    # 'tiny' has 8 blocks: the 4-block files do not fit, and the error names the keys.
    assert result.exit_code != 0 and "blocks.4" in result.output
    # Without --config the dims come from the MAE file and the heads from the TC-MoA bias tables.
    result = CliRunner().invoke(cli, ["convert", "--mae", str(tmp_path / "mae.pth"), "--tcmoa",
                                      str(tmp_path / "tcmoa.pth"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    fuser = load_fuser(str(out))
    assert fuser.weights_info["trained"] is True and fuser.weights_info["mae"]["file"] == "mae.pth"
    with torch.no_grad():
        for name in source.source_encoding_names():
            source.state_dict()[name].zero_()
    torch.testing.assert_close(outputs(fuser.model), outputs(source), atol=0, rtol=0)
    # The full reference file alone also converts (it carries the backbone).
    torch.save({"model": reference_state_dict(source)}, tmp_path / "tcmoa_full.pth")
    alone = tmp_path / "alone.safetensors"
    result = CliRunner().invoke(cli, ["convert", "--tcmoa", str(tmp_path / "tcmoa_full.pth"), "-o", str(alone)])
    assert result.exit_code == 0, result.output
    torch.testing.assert_close(outputs(load_fuser(str(alone)).model), outputs(source), atol=0, rtol=0)
    info = CliRunner().invoke(cli, ["info", str(out)])
    assert info.exit_code == 0 and '"trainable"' in info.output


def test_info_describes_the_default_and_random_specs_without_a_file(tmp_path):
    result = CliRunner().invoke(cli, ["info", "default"])
    assert result.exit_code == 0, result.output
    described = json.loads(result.output)
    assert described["parameters"]["total"] > 0 and described["config"]
    from tcmoa.inference import DEFAULT_WEIGHTS

    if DEFAULT_WEIGHTS.is_file():  # the shipped model (docs/model-card.md), used in the mode it records
        assert described["config"]["embed_dim"] == 192 and described["provenance"]["reconstruction"] == "guided"
        assert DEFAULT_WEIGHTS.stat().st_size <= 25e6  # the package's size limit for its weights
    else:  # a source tree without the file: the untrained tiny model
        assert described["provenance"]["trained"] is False and described["config"]["embed_dim"] == 64
    small = json.loads(CliRunner().invoke(cli, ["info", "random:small"]).output)
    assert small["config"]["embed_dim"] == 192
    missing = CliRunner().invoke(cli, ["info", str(tmp_path / "absent.safetensors")])
    assert missing.exit_code == 1 and "absent.safetensors: no such weights file" in missing.output
