"""The TC-MoA network: parity with the reference fixture, and properties checked independently."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main as cli
from tcmoa.config import TCMoAConfig, get_config
from tcmoa.inference import TCMoAFuser, random_model
from tcmoa.model import TCMoA, count_parameters, decode_to_image01, normalize
from tcmoa.vit import Block, RelativePositionBias, interpolate_pos_table, sincos_pos_table

from conftest import FIXTURE, shared_path

SMALL = TCMoAConfig(64, 4, 4, 32, 4, 2, name="small-test")


def test_check_parity_passes_on_the_shared_fixture():
    fixture = shared_path("fixtures", FIXTURE.name)
    result = CliRunner().invoke(cli, ["check-parity", str(fixture)])
    assert result.exit_code == 0, result.output
    assert "0 failed" in result.output
    # Every output and every loss term of every task was compared.
    for task in ("VIF", "MEF", "MFF"):
        for quantity in ("raw_decoder_output", "fused01", "decoder_prompts_B", "epoch5.loss"):
            assert any(line.startswith(task) and quantity in line for line in result.output.splitlines())


def test_check_parity_fails_on_a_perturbed_model(tmp_path):
    fixture = torch.load(shared_path("fixtures", FIXTURE.name))
    fixture["state_dict"] = dict(fixture["state_dict"])
    fixture["state_dict"]["Alpha_decoder"] = fixture["state_dict"]["Alpha_decoder"] + 0.01
    path = tmp_path / "perturbed.pt"
    torch.save(fixture, path)
    result = CliRunner().invoke(cli, ["check-parity", str(path)])
    assert result.exit_code == 1
    assert "FAIL" in result.output


def test_sincos_table_follows_the_mae_layout():
    dim, grid = 32, 14
    table = sincos_pos_table(dim, grid)[0]
    assert table.shape == (1 + grid * grid, dim)
    assert torch.all(table[0] == 0)
    row, col = 3, 5
    token = table[1 + row * grid + col].double()
    k = torch.arange(dim // 4, dtype=torch.float64)
    omega = 10000 ** (-k / (dim / 4))
    expected = torch.cat([torch.sin(col * omega), torch.cos(col * omega), torch.sin(row * omega), torch.cos(row * omega)])
    torch.testing.assert_close(token, expected, atol=1e-6, rtol=0)


def naive_window_block(block: Block, x: torch.Tensor, grid, bias_table: torch.Tensor, window: int, shift: int):
    """A slow, loop-per-window restatement of the reference block, for cross-checking."""
    b, n, c = x.shape
    h, w = grid
    heads = block.attn.num_heads
    y = block.norm1(x).view(b, h, w, c)
    y = torch.roll(y, (-shift, -shift), (1, 2)) if shift else y
    out = torch.zeros_like(y)
    coords = [(i, j) for i in range(window) for j in range(window)]
    bias = torch.empty(heads, window * window, window * window)
    for p, (yi, xi) in enumerate(coords):
        for q, (yj, xj) in enumerate(coords):
            bias[:, p, q] = bias_table[(yi - yj + window - 1) * (2 * window - 1) + (xi - xj + window - 1)]
    for bi in range(b):
        for wy in range(0, h, window):
            for wx in range(0, w, window):
                tokens = y[bi, wy:wy + window, wx:wx + window].reshape(-1, c)
                qkv = block.attn.qkv(tokens).view(-1, 3, heads, c // heads)
                q, k, v = qkv[:, 0].transpose(0, 1), qkv[:, 1].transpose(0, 1), qkv[:, 2].transpose(0, 1)
                logits = q @ k.transpose(1, 2) / math.sqrt(c // heads) + bias
                attended = (logits.softmax(-1) @ v).transpose(0, 1).reshape(-1, c)
                out[bi, wy:wy + window, wx:wx + window] = block.attn.proj(attended).view(window, window, c)
    out = torch.roll(out, (shift, shift), (1, 2)) if shift else out
    x = x + out.reshape(b, n, c)
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("shift", [0, 7])
def test_windowed_block_matches_a_naive_per_window_implementation(shift):
    torch.manual_seed(0)
    block, rel = Block(32, 4, 4.0), RelativePositionBias(14, 4)
    grid = (28, 42)  # non-square, several windows each way
    x = torch.randn(2, grid[0] * grid[1], 32)
    with torch.no_grad():
        fast = block(x, grid, rel(), 14, shift)
        slow = naive_window_block(block, x, grid, rel.relative_position_bias_table, 14, shift)
    torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-5)


def test_a_block_trains_on_a_grid_first_seen_under_inference_mode():
    """The window permutations are cached per grid: fusing (inference mode) before training in the
    same process, on the same grid, must not hand autograd an inference tensor."""
    torch.manual_seed(0)
    block, rel = Block(32, 4, 4.0), RelativePositionBias(14, 4)
    grid = (14, 70)  # a grid no other test uses, so the cache is cold here
    x = torch.randn(1, grid[0] * grid[1], 32)
    with torch.inference_mode():
        block(x, grid, rel(), 14, 7)
    block(x.clone().requires_grad_(), grid, rel(), 14, 7).sum().backward()
    assert block.mlp.fc1.weight.grad is not None


def test_position_table_interpolation_is_identity_on_the_native_grid():
    table = sincos_pos_table(32, 14)
    torch.testing.assert_close(interpolate_pos_table(table, (14, 14))[0], table[0, 1:])
    assert interpolate_pos_table(table, (28, 42)).shape == (1, 28 * 42, 32)


def test_batch_items_are_independent():
    """Per-sample re-standardisation and per-token prompts: a batch equals its items one by one."""
    model = random_model(SMALL)
    torch.manual_seed(1)
    a, b = torch.randn(2, 3, 112, 224), torch.randn(2, 3, 112, 224)
    with torch.no_grad():
        both = model(a, b, "mef")
        first = model(a[:1], b[:1], "mef")
    torch.testing.assert_close(both.pred[:1], first.pred, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.decoder_prompts_A[:, :1], first.decoder_prompts_A, atol=1e-6, rtol=1e-6)


def test_output_shapes_for_non_square_inputs():
    model = random_model(SMALL)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 336), torch.randn(1, 3, 224, 336), 2)
    assert out.pred.shape == (1, 3, 448, 672)
    tokens = (448 // 16) * (672 // 16)
    assert out.encoder_prompts_A.shape == (SMALL.num_encoder_modules, 1, tokens, 1)
    assert out.decoder_prompts_B.shape == (SMALL.num_decoder_modules, 1, tokens, 1)
    assert out.aux_loss.ndim == 0 and out.aux_loss >= 0


def test_inputs_that_are_not_window_multiples_are_refused():
    with pytest.raises(ValueError, match="multiple of 112"):
        random_model(SMALL)(torch.zeros(1, 3, 100, 112), torch.zeros(1, 3, 100, 112))


def test_base_parameter_counts_match_the_paper():
    counts = count_parameters(TCMoA("base"))
    assert abs(counts["total"] / 115.4e6 - 1) < 0.005
    assert abs(counts["trainable_without_source_encodings"] / 3.87e6 - 1) < 0.005


def test_only_the_mae_backbone_is_frozen():
    model = TCMoA(SMALL)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n for n, _ in model.trainable_parameters()}
    assert "blocks.0.attn.qkv.weight" in frozen and "decoder_pred.weight" in frozen and "pos_embed" in frozen
    assert "en_relative_position.0.relative_position_bias_table" in trainable
    assert "blocks_MoA.0.source_encoding" in trainable and "Alpha_decoder" in trainable
    assert not frozen & trainable


def test_router_mix_of_one_task_equals_that_task_and_mixes_differ():
    model = random_model(SMALL)
    for module in [*model.blocks_MoA, *model.decoder_blocks_MoA]:  # make the routers differ per task
        torch.nn.init.normal_(module.MoA.w_gate, std=1.0)
    a, b = torch.randn(1, 3, 112, 112), torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        single = model(a, b, "mef").pred
        as_mix = model(a, b, {"mef": 2.0}).pred
        mixed = model(a, b, {"vif": 0.5, "mef": 0.5}).pred
    torch.testing.assert_close(single, as_mix)
    assert (mixed - single).abs().max() > 1e-4
    with pytest.raises(ValueError, match="unknown task"):
        model(a, b, "pansharpen")


def test_tcmoa_modules_run_in_fp32_under_bf16_autocast():
    model = random_model(SMALL)
    seen = []
    model.blocks_MoA[0].register_forward_hook(lambda m, args, out: seen.append((args[0].dtype, out[0].dtype)))
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, x, "vif")
    assert seen == [(torch.float32, torch.float32)]
    assert out.pred.dtype == torch.float32


def test_decode_modes():
    pred = torch.randn(1, 3, 8, 8)
    nearest = decode_to_image01(pred, (4, 4), "nearest")
    area = decode_to_image01(pred, (4, 4), "area")
    torch.testing.assert_close(nearest, decode_to_image01(pred[..., ::2, ::2], (4, 4)))
    torch.testing.assert_close(area, decode_to_image01(torch.nn.functional.avg_pool2d(pred, 2), (4, 4)))
    with pytest.raises(ValueError):
        decode_to_image01(pred, (4, 4), "bicubic")


# --- the inference interface ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuser():
    return TCMoAFuser(random_model(SMALL), batch_size=2)


def test_fuser_keeps_size_and_channels(fuser):
    rng = np.random.default_rng(0)
    grey = fuser.fuse(rng.random((37, 150), dtype=np.float32), rng.random((37, 150), dtype=np.float32))
    assert grey.shape == (37, 150) and grey.dtype == np.float32
    rgb = fuser.fuse(torch.rand(130, 90, 3), rng.random((130, 90), dtype=np.float32), "mff")
    assert rgb.shape == (130, 90, 3)
    assert 0 <= rgb.min() and rgb.max() <= 1


def test_fuser_batches_equal_single_calls(fuser):
    rng = np.random.default_rng(1)
    a, b = rng.random((3, 112, 112, 3), dtype=np.float32), rng.random((3, 112, 112, 1), dtype=np.float32)
    batched = fuser.fuse_batch(a, b, "vif").image  # batch_size 2: chunks of 2 and 1
    single = np.stack([fuser.fuse(a[i], b[i], "vif") for i in range(3)])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_fuser_pads_instead_of_resizing(fuser):
    """The fused image of a padded input equals the crop of the fused reflect-padded input."""
    rng = np.random.default_rng(2)
    a, b = rng.random((100, 112, 3), dtype=np.float32), rng.random((100, 112, 3), dtype=np.float32)
    pad = ((0, 12), (0, 0), (0, 0))
    full = fuser.fuse(np.pad(a, pad, mode="reflect"), np.pad(b, pad, mode="reflect"))
    np.testing.assert_allclose(fuser.fuse(a, b), full[:100], atol=1e-6)


def test_prompt_control_moves_the_prompt_map(fuser):
    rng = np.random.default_rng(3)
    a, b = rng.random((112, 112, 3), dtype=np.float32), rng.random((112, 112, 3), dtype=np.float32)
    image, share = fuser.fuse(a, b, return_prompts=True)
    assert share.shape == (112, 112) and 0 <= share.min() and share.max() <= 1
    towards_a = TCMoAFuser(fuser.model, beta=0.2)
    identity = TCMoAFuser(fuser.model, alpha=1.0, beta=0.0)
    np.testing.assert_array_equal(identity.fuse(a, b), image)
    _, share_a = towards_a.fuse(a, b, return_prompts=True)
    assert share_a.mean() > share.mean() + 0.05


def test_bf16_is_close_to_fp32():
    model = random_model("tiny")
    rng = np.random.default_rng(4)
    a, b = rng.random((1, 224, 224, 3), dtype=np.float32), rng.random((1, 224, 224, 3), dtype=np.float32)
    fp32 = TCMoAFuser(model, precision="fp32").fuse_batch(a, b).image
    bf16 = TCMoAFuser(model, precision="bf16").fuse_batch(a, b).image
    assert np.abs(fp32 - bf16).max() < 2 / 255


def test_fuser_reports_provenance(fuser):
    info = fuser.provenance()
    assert info["config"]["embed_dim"] == 64 and info["precision"] == "fp32"


def test_fuser_rejects_bad_arrays(fuser):
    with pytest.raises(ValueError, match="differ in size"):
        fuser.fuse(np.zeros((10, 10)), np.zeros((10, 12)))
    with pytest.raises(ValueError, match="channels"):
        fuser.fuse(np.zeros((10, 10, 4)), np.zeros((10, 10, 4)))


def test_presets_have_the_reference_geometry():
    large = get_config("large")
    assert large.moa_blocks(large.depth) == [1, 5, 9, 13, 17, 21]
    assert large.num_decoder_modules == 2 and large.tile_multiple == 112
    with pytest.raises(ValueError, match="even"):
        TCMoAConfig(64, 7, 4, 32, 8, 4)
    assert normalize(torch.ones(1, 3, 1, 1)).shape == (1, 3, 1, 1)
