"""Paired dataset readers, identical augmentation of both sources, and the resumable stream."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from tcmoa import data
from tcmoa.model import normalize
from tests.conftest import shared_path


def _write(path: pathlib.Path, array: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def _rgb(seed: int, h: int = 40, w: int = 56) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("layout", data.LAYOUTS, ids=lambda l: f"{l.a}-{l.b}")
def test_every_public_layout_is_detected_with_the_reference_source_order(tmp_path, layout):
    for stem in ("x1", "x2"):
        _write(tmp_path / layout.a / f"{stem}.png", _rgb(1))
        _write(tmp_path / layout.b / f"{stem}.png", _rgb(2)[..., 0])  # grey B (like infrared)
    pairs = data.PairFolder(tmp_path)
    assert pairs.layout == layout and pairs.task == layout.task and len(pairs) == 2
    a, b, name = pairs.load(0)
    assert name == "x1" and a.shape == b.shape == (40, 56, 3) and a.dtype == np.float32
    np.testing.assert_allclose(a, _rgb(1) / 255.0, atol=1e-6)  # A is the layout's first folder
    assert np.array_equal(b[..., 0], b[..., 2])  # grey repeated to 3 channels


def test_files_are_read_by_content_and_16_bit_grey_is_scaled(tmp_path):
    _write(tmp_path / "over" / "s.png", _rgb(3), fmt="JPEG")  # JPEG bytes behind a .png name
    grey16 = (np.arange(40 * 56, dtype=np.uint16).reshape(40, 56) * 29)
    Image.fromarray(grey16).save(tmp_path / "under_tmp.png")
    (tmp_path / "under").mkdir()
    (tmp_path / "under_tmp.png").rename(tmp_path / "under" / "s.png")
    a, b, _ = data.PairFolder(tmp_path).load(0)
    assert abs(a.mean() - _rgb(3).mean() / 255) < 0.02
    np.testing.assert_allclose(b[..., 1], grey16 / 65535.0, atol=1e-6)


def test_pairs_match_by_stem_with_side_tags_and_skip_orphans(tmp_path):
    for stem in ("001", "002", "003"):
        _write(tmp_path / "imageA" / f"{stem}_A.png", _rgb(4))
    for stem in ("001", "002", "004"):
        _write(tmp_path / "imageB" / f"{stem}_B.jpg", _rgb(5))
    with pytest.warns(UserWarning, match="2 files without a partner"):
        pairs = data.PairFolder(tmp_path)
    assert [name for name, _, _ in pairs.pairs] == ["001", "002"]


def test_bad_folders_get_clear_errors(tmp_path):
    _write(tmp_path / "vi" / "p.png", _rgb(6, 40, 56))
    _write(tmp_path / "ir" / "p.png", _rgb(6, 40, 60))
    with pytest.raises(ValueError, match=r"p\.png is 56x40 but .*p\.png is 60x40"):
        data.PairFolder(tmp_path)
    with pytest.raises(ValueError, match="no known pair layout.*LLVIP: visible/infrared"):
        data.PairFolder(tmp_path / "vi")
    broken = tmp_path / "broken"
    _write(broken / "A" / "q.png", _rgb(7))
    (broken / "B").mkdir()
    (broken / "B" / "q.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"q\.png: not a readable image"):
        data.PairFolder(broken)


def test_split_folders_inside_and_above_the_sources(tmp_path):
    llvip, msrs = tmp_path / "LLVIP", tmp_path / "MSRS"
    for side in ("visible", "infrared"):
        _write(llvip / side / "train" / "010001.jpg", _rgb(8))
        _write(llvip / side / "test" / "190001.jpg", _rgb(8))
    for side in ("vi", "ir"):
        _write(msrs / "train" / side / "00001D.png", _rgb(9))
    assert data.PairFolder(llvip, split="train").pairs[0][0] == "010001"
    assert data.PairFolder(msrs, split="train").pairs[0][0] == "00001D"
    with pytest.raises(ValueError, match="choose one with split="):
        data.PairFolder(llvip)


def test_crop_box_respects_the_area_range():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = data.random_resized_crop_box(300, 400, (0.2, 1.0), rng)
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
        assert 0.19 <= h * w / (300 * 400) <= 1.0
        assert 0.74 <= w / h <= 1.34


def test_transform_crops_and_flips_both_sources_identically():
    a = np.random.default_rng(1).random((90, 120, 3), dtype=np.float32)
    b = 1 - a  # any per-pixel relation must survive the shared crop, resize and flip
    transform = data.PairTransform(64, (0.3, 1.0))
    for seed in range(8):
        item = transform(a, b, np.random.default_rng(seed))
        assert item["a01"].shape == (3, 64, 64)
        torch.testing.assert_close(item["b01"], 1 - item["a01"], atol=1e-5, rtol=0)
        torch.testing.assert_close(item["a"], normalize(item["a01"][None])[0])
        assert torch.equal(item["a01"], transform(a, b, np.random.default_rng(seed))["a01"])  # same rng, same view
    # The flip is applied to both sources together, for about half of the draws.
    unflipped = data.PairTransform(64, (0.3, 1.0), flip=False)
    flipped = 0
    for seed in range(12):
        view = transform(a, b, np.random.default_rng(seed))
        plain = unflipped(a, b, np.random.default_rng(seed))
        if not torch.equal(view["a01"], plain["a01"]):
            flipped += 1
            assert torch.equal(view["a01"], plain["a01"].flip(-1)) and torch.equal(view["b01"], plain["b01"].flip(-1))
    assert 0 < flipped < 12
    with pytest.raises(ValueError, match="crop scale range"):
        data.PairTransform(64, (0.0, 1.0))


class _Numbered:
    """A pair source whose pixels say which pair they are."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def load(self, index: int):
        image = np.full((20, 20, 3), index / 100, dtype=np.float32)
        return image, image, str(index)


def test_stream_ranks_split_each_pass_and_resume_mid_stream():
    source, transform = _Numbered(10), data.PairTransform(16, (0.5, 1.0))
    streams = [data.PairStream(source, transform, 0, seed=3, rank=r, world_size=2) for r in range(2)]
    first_pass = [streams[r].index_of(q)[1] for r in range(2) for q in range(5)]
    assert sorted(first_pass) == list(range(10))  # every pair exactly once over both ranks
    assert [streams[0].index_of(q)[0] for q in (4, 5)] == [0, 1]  # then the next pass
    loader = iter(data.stream_loader(streams[0], 3, start_batch=0, num_workers=0))
    batches = [next(loader) for _ in range(4)]
    resumed = next(iter(data.stream_loader(streams[0], 3, start_batch=2, num_workers=1)))
    assert resumed["name"] == batches[2]["name"]
    torch.testing.assert_close(resumed["a"], batches[2]["a"], rtol=0, atol=0)


@pytest.mark.shared_data
@pytest.mark.parametrize("folder, task", [("vif/VIFB", "vif"), ("vif/RoadScene", "vif"), ("mef/MEFB-train", "mef"),
                                          ("mff/MFIFB-train", "mff"), ("medical/MRI_CT", "vif")])
def test_shared_benchmark_folders_load(folder, task):
    pairs = data.PairFolder(shared_path("data", *folder.split("/")))
    assert pairs.task == task and len(pairs) >= 20
    a, b, _ = pairs.load(len(pairs) - 1)
    assert a.shape == b.shape and a.shape[-1] == 3 and 0 <= a.min() and a.max() <= 1
