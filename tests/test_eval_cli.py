"""`tcmoa eval` and the harness: reading by content, pairing, outputs, errors."""
from __future__ import annotations

import io
import json
import pathlib

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import main
from pipeline.evaluation import EvaluationError, list_images, read_image
from tcmoa.metrics import evaluate

H, W = 32, 40


def textured(seed: int, rgb: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    img = 120 + 70 * np.sin(x / (3 + seed)) * np.cos(y / 5) + rng.normal(0, 10, (H, W))
    if rgb:
        img = np.stack([img, img * 0.9 + 10, img * 0.7 + 30], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def save(path: pathlib.Path, img: np.ndarray, fmt: str) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format=fmt)
    return path


@pytest.fixture()
def dataset(tmp_path):
    """Sources A (RGB) and B (grey) in mixed formats, two fused folders; one .png holds JPEG data."""
    formats = {"p1": ("png", "PNG"), "p2": ("bmp", "BMP"), "p3": ("tif", "TIFF"), "p4": ("png", "JPEG")}
    for i, (stem, (ext, fmt)) in enumerate(formats.items()):
        a, b = textured(i, rgb=True), textured(i + 10, rgb=False)
        save(tmp_path / "A" / f"{stem}.{ext}", a, fmt)
        save(tmp_path / "B" / f"{stem}.jpg", b, "JPEG")
        good = ((a.astype(float) + b[..., None]) / 2).astype(np.uint8)
        save(tmp_path / "good" / f"{stem}.tiff", good, "TIFF")
        save(tmp_path / "dark" / f"{stem}.png", (good // 3).astype(np.uint8), "PNG")
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(main, ["eval", *args], catch_exceptions=False)


def test_read_image_by_content(tmp_path):
    img = textured(1, rgb=True)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG")
    disguised = tmp_path / "photo.png"
    disguised.write_bytes(buf.getvalue())
    real = tmp_path / "photo.jpg"
    real.write_bytes(buf.getvalue())
    np.testing.assert_array_equal(read_image(disguised), read_image(real))
    assert read_image(disguised).shape == (H, W, 3)

    rgba = np.dstack([img, np.full((H, W), 255, np.uint8)])
    assert read_image(save(tmp_path / "rgba.png", rgba, "PNG")).shape == (H, W, 3)
    deep = (textured(2, rgb=False).astype(np.uint16) * 257)
    assert read_image(save(tmp_path / "deep.png", deep, "PNG")).dtype == np.uint16
    assert read_image(save(tmp_path / "grey.bmp", img[..., 0], "BMP")).shape == (H, W)

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(EvaluationError, match="broken.jpg"):
        read_image(broken)


def test_list_images_refuses_duplicate_stems(tmp_path):
    save(tmp_path / "x.png", textured(0, False), "PNG")
    save(tmp_path / "x.jpg", textured(0, False), "JPEG")
    with pytest.raises(EvaluationError, match="stem"):
        list_images(tmp_path)


def test_eval_writes_all_outputs_and_ranks_methods(dataset):
    out = dataset / "out"
    result = run("--a", str(dataset / "A"), "--b", str(dataset / "B"),
                 "--fused", f"good={dataset / 'good'}", "--fused", f"dark={dataset / 'dark'}",
                 "--method", "baseline:average", "--preset", "vifb", "--metrics", "Qabf,SSIM,EN,Variance",
                 "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["images"] == 4 and set(payload["means"]) == {"good", "dark", "average"}
    assert set(payload["means"]["good"]) == {"Qabf", "Ssim", "Entropy", "Variance"}  # the VIFB table names
    assert payload["mean_rank"]["good"] < payload["mean_rank"]["dark"]

    long = pd.read_csv(out / "per_image.csv")
    assert list(long.columns) == ["image", "method", "metric", "value"]
    assert len(long) == 4 * 3 * 4
    pd.testing.assert_frame_equal(long, pd.read_parquet(out / "per_image.parquet"), check_dtype=False)
    means = pd.read_csv(out / "means.csv").set_index("method")
    assert means.loc["dark", "Qabf"] == pytest.approx(long.query("method == 'dark' and metric == 'Qabf'")["value"].mean())
    assert (out / "ranking.csv").exists()
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "fused" / "average").iterdir()) == ["p1.png", "p2.png", "p3.png", "p4.png"]

    # The CSV holds exactly what the metric API gives for the same files (read by content).
    a, b = read_image(dataset / "A" / "p4.png"), read_image(dataset / "B" / "p4.jpg")
    direct = evaluate(read_image(dataset / "good" / "p4.tiff"), a, b, ["Qabf", "SSIM"], "vifb", names="table")
    row = long.query("image == 'p4' and method == 'good'").set_index("metric")["value"]
    assert row["Qabf"] == pytest.approx(direct["Qabf"]) and row["Ssim"] == pytest.approx(direct["Ssim"])
    fused_avg = read_image(out / "fused" / "average" / "p4.png")
    assert fused_avg.shape == (H, W, 3)


def test_eval_both_reconstruction_modes_of_a_model(dataset):
    out = dataset / "out"
    result = run("--a", str(dataset / "A"), "--b", str(dataset / "B"), "--method", "m=random:tiny",
                 "--reconstruction", "both", "--metrics", "Qabf", "--limit", "1", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    means = json.loads(result.output)["means"]
    assert set(means) == {"m-decoder", "m-guided"} and means["m-decoder"]["Qabf"] != means["m-guided"]["Qabf"]


def test_eval_worker_processes_give_the_same_scores(dataset):
    """--jobs 2 scores images in worker processes (allocator tuned in each): same table as one process."""
    tables = {}
    for jobs in ("1", "2"):
        result = run("--a", str(dataset / "A"), "--b", str(dataset / "B"), "--fused", f"good={dataset / 'good'}",
                     "--metrics", "Qabf,FMI_pixel,Qp,EN", "--jobs", jobs, "-o", str(dataset / f"o{jobs}"), "--quiet")
        assert result.exit_code == 0, result.output
        tables[jobs] = pd.read_csv(dataset / f"o{jobs}" / "per_image.csv").sort_values(["image", "metric"], ignore_index=True)
    assert len(tables["2"]) == 4 * 4
    pd.testing.assert_frame_equal(tables["1"], tables["2"])


def test_eval_default_metrics_follow_the_preset(dataset):
    result = run("--a", str(dataset / "A"), "--b", str(dataset / "B"), "--fused", f"good={dataset / 'good'}",
                 "--preset", "vifb", "--limit", "1", "-o", str(dataset / "o"), "--quiet")
    assert result.exit_code == 0, result.output
    assert result.output == ""
    metrics = set(pd.read_csv(dataset / "o" / "per_image.csv")["metric"])
    assert metrics == {"Cross_entropy", "Entropy", "Mutinf", "Psnr", "Avg_gradient", "Edge_intensity", "Qabf",
                       "Variance", "Spatial_frequency", "Rmse", "Ssim", "Qcb", "Qcv"}


def test_eval_reports_missing_and_mismatched_images(dataset):
    (dataset / "good" / "p2.tiff").unlink()
    result = run("--a", str(dataset / "A"), "--b", str(dataset / "B"), "--fused", f"good={dataset / 'good'}",
                 "--metrics", "EN", "-o", str(dataset / "o1"))
    assert result.exit_code != 0
    assert "p2" in result.output and "good" in result.output
    assert not (dataset / "o1" / "per_image.csv").exists()

    save(dataset / "dark" / "p1.png", np.zeros((H // 2, W // 2), np.uint8), "PNG")
    args = ["--a", str(dataset / "A"), "--b", str(dataset / "B"), "--fused", f"dark={dataset / 'dark'}",
            "--metrics", "EN", "-o", str(dataset / "o2")]
    failed = run(*args)
    assert failed.exit_code != 0 and "p1.png" in failed.output and "(16, 20)" in failed.output
    skipped = run(*args, "--size-mismatch", "skip", "--json")
    assert skipped.exit_code == 0, skipped.output
    payload = json.loads(skipped.output)
    assert payload["images"] == 3 and "p1.png" in payload["notes"][0]


def test_eval_usage_errors_and_metric_list(dataset):
    assert run("--a", str(dataset / "A"), "--b", str(dataset / "B"), "-o", "x").exit_code != 0
    bad = run("--a", str(dataset / "A"), "--b", str(dataset / "B"), "--fused", f"g={dataset / 'good'}",
              "--metrics", "NoSuch", "-o", str(dataset / "o3"))
    assert bad.exit_code != 0 and "NoSuch" in bad.output
    listing = run("--list-metrics")
    assert listing.exit_code == 0 and "Qabf" in listing.output and "higher" in listing.output
