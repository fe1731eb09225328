"""Prompt-guided reconstruction: the Laplacian-pyramid blend of the source pixels and its use by
the fuser (`reconstruction="guided"`)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tcmoa.guided import guided_fusion, luminance, pyramid_blend
from tcmoa.inference import TCMoAFuser, load_fuser, random_model


def _images(channels: int = 3, size: tuple[int, int] = (96, 128), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(1, channels, *size, generator=g) for _ in range(2))


def test_a_dominant_source_is_kept_exactly_and_half_weights_give_the_average():
    a, b = _images()
    ones = torch.ones(1, 1, *a.shape[-2:])
    assert torch.allclose(pyramid_blend(a, b, ones), a, atol=1e-6)
    assert torch.allclose(pyramid_blend(a, b, 0 * ones), b, atol=1e-6)
    assert torch.allclose(pyramid_blend(a, b, 0.5 * ones), (a + b) / 2, atol=1e-6)


def test_where_one_source_dominates_a_region_the_output_there_is_its_pixels():
    a, b = _images(size=(128, 256))
    weight = torch.zeros(1, 1, 128, 256)
    weight[..., :128] = 1.0
    fused = pyramid_blend(a, b, weight, levels=4)
    margin = 48  # beyond the coarsest level's reach (8 px x its blur and upsampling)
    assert torch.allclose(fused[..., : 128 - margin], a[..., : 128 - margin], atol=1e-6)
    assert torch.allclose(fused[..., 128 + margin:], b[..., 128 + margin:], atol=1e-6)
    # and in between it is a blend, not a copy of either
    seam = fused[..., 120:136]
    assert not torch.allclose(seam, a[..., 120:136], atol=1e-3) and not torch.allclose(seam, b[..., 120:136], atol=1e-3)


def test_grey_and_colour_fuse_in_luminance_with_the_colour_sources_chroma():
    colour, _ = _images(3, seed=1)
    grey = torch.rand(1, 1, *colour.shape[-2:], generator=torch.Generator().manual_seed(2))
    weight = torch.full((1, 1, *colour.shape[-2:]), 0.3)
    colour, grey = colour * 0.3 + 0.35, grey * 0.4 + 0.3  # ranges that keep the result inside [0, 1]
    fused = guided_fusion(colour, grey, weight)
    chroma = lambda x: x - luminance(x)
    assert fused.shape == (1, 3, *colour.shape[-2:])
    assert torch.allclose(chroma(fused), chroma(colour), atol=1e-5)
    assert torch.allclose(luminance(fused), 0.3 * luminance(colour) + 0.7 * grey, atol=1e-5)
    # the colour source alone gives back its pixels
    assert torch.allclose(guided_fusion(colour, grey, torch.ones_like(weight)), colour, atol=1e-5)


def test_grey_stored_as_three_equal_channels_counts_as_grey():
    colour, _ = _images(3, seed=3)
    grey3 = torch.rand(1, 1, *colour.shape[-2:]).expand(-1, 3, -1, -1)
    fused = guided_fusion(colour, grey3, torch.zeros(1, 1, *colour.shape[-2:]))
    # all of the grey source's luminance, none of its (absent) chroma: the colour's chroma stays
    expected = (grey3[:, :1] + colour - luminance(colour)).clamp(0, 1)
    assert torch.allclose(fused, expected, atol=1e-5)


@pytest.fixture(scope="module")
def guided_fuser():
    return TCMoAFuser(random_model("tiny"), reconstruction="guided")


def test_fuser_guided_by_prompts_forced_to_a_returns_source_a(guided_fuser):
    rng = np.random.default_rng(0)
    a, b = rng.random((100, 130, 3), dtype=np.float32), rng.random((100, 130), dtype=np.float32)
    guided_fuser.alpha, guided_fuser.beta = 0.0, 0.5  # p_A' = 1, p_B' = 0 everywhere (paper Eq. 8)
    try:
        np.testing.assert_allclose(guided_fuser.fuse(a, b, "vif"), a, atol=1e-5)
        guided_fuser.beta = 0.0  # p_A' = p_B' = 0.5: the pyramid average = the pixel average
        grey_a, grey_b = rng.random((100, 130), dtype=np.float32), rng.random((100, 130), dtype=np.float32)
        np.testing.assert_allclose(guided_fuser.fuse(grey_a, grey_b, "mef"), (grey_a + grey_b) / 2, atol=1e-5)
    finally:
        guided_fuser.alpha, guided_fuser.beta = 1.0, 0.0


def test_fuser_guided_output_follows_the_prompt_map(guided_fuser):
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 112, 112, 1), dtype=np.float32), rng.random((2, 112, 112, 1), dtype=np.float32)
    result = guided_fuser.fuse_batch(a, b, "mff", return_prompts=True)
    assert result.image.shape == (2, 112, 112, 1) and result.prompt_map.shape == (2, 112, 112)
    expected = pyramid_blend(torch.from_numpy(a).permute(0, 3, 1, 2), torch.from_numpy(b).permute(0, 3, 1, 2),
                             torch.from_numpy(result.prompt_map)[:, None]).clamp(0, 1)
    np.testing.assert_allclose(result.image[..., 0], expected[:, 0].numpy(), atol=1e-5)
    assert guided_fuser.provenance()["reconstruction"] == "guided"


def test_load_fuser_takes_the_reconstruction_and_rejects_unknown_ones():
    assert load_fuser("random:tiny", reconstruction="guided").reconstruction == "guided"
    assert load_fuser("random:tiny").reconstruction == "decoder"
    with pytest.raises(ValueError, match="reconstruction must be one of"):
        load_fuser("random:tiny", reconstruction="pyramid")
