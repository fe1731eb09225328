"""`tcmoa report RUN_DIR`: the page renders in headless Chromium with every quicklook loaded."""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from outputs_support import demo_run  # noqa: F401  (session fixture)
from pipeline.cli import main
from pipeline.runners.local import run_job
from pipeline.report import write_report
from pipeline.spec import parse_job
from pipeline_support import ContextFuser, pair_job, random_raster, write_geotiff

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# put into a copy of the page (same folder, so the same relative links): after the load event every
# <img> says whether it loaded (natural size known, no error event), and --dump-dom prints it
PROBE = """<script>
const failed = [];
document.addEventListener('error', e => { if (e.target.tagName === 'IMG') failed.push(e.target.getAttribute('src')); }, true);
window.addEventListener('load', () => {
  const images = [...document.images].map(i => ({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth,
                                                 failed: failed.includes(i.getAttribute('src'))}));
  const out = document.createElement('pre'); out.id = 'image-probe'; out.textContent = JSON.stringify(images);
  document.body.appendChild(out);
});
</script>"""


def _browser() -> str:
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        pytest.skip("no headless Chromium on this machine (Debian: apt-get install chromium; .ci/run installs it where it can)")
    return found


def _images_in_browser(page: pathlib.Path, tmp_path: pathlib.Path) -> list[dict]:
    probe = page.with_name("_probe.html")
    probe.write_text(page.read_text().replace("<head>", "<head>" + PROBE))  # before any <img>
    try:
        result = subprocess.run(
            [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--allow-file-access-from-files",
             f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=15000", "--dump-dom", probe.as_uri()],
            capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": str(tmp_path)},
        )
    finally:
        probe.unlink()
    match = re.search(r'<pre id="image-probe">(.*?)</pre>', result.stdout, re.S)
    assert match, f"the page did not finish loading in Chromium: {result.stderr[-2000:]}"
    return json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_demo_report_renders_with_every_image_loaded(demo_run, tmp_path):
    result = CliRunner().invoke(main, ["report", str(demo_run)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    page = pathlib.Path(result.output.strip())
    assert page == demo_run / "report" / "index.html"
    text = page.read_text()
    quicklooks = sorted((demo_run / "report" / "quicklooks").rglob("*.png"))
    # 3 brackets x (3 sources + fused + prompts) + 2 stacks x (3 planes + 2) + geo (2 sources + 2)
    assert len(quicklooks) == 3 * 5 + 2 * 5 + 4 and "not drawn" not in text
    for section in ("brackets/astronaut", "focus/camera", "geo/scene1"):
        assert f"id='{section}'" in text
    images = _images_in_browser(page, tmp_path)
    assert len(images) == len(quicklooks)
    assert all(i["complete"] and not i["failed"] and i["width"] > 0 for i in images), [i for i in images if not i["width"]]
    widths = {(page.parent / i["src"]).resolve(): i["width"] for i in images}
    assert all(widths[q.resolve()] == Image.open(q).width for q in quicklooks)  # the browser read our files


def test_report_shows_failures_timings_and_metrics(tmp_path):
    rng = np.random.default_rng(2)
    for scene in ("good", "bad"):
        write_geotiff(tmp_path / f"{scene}_a.tif", random_raster(rng, (3, 80, 90), "uint16"), nodata=0)
        write_geotiff(tmp_path / f"{scene}_b.tif", random_raster(rng, (80, 90), "uint16"))
    (tmp_path / "bad_b.tif").write_bytes((tmp_path / "bad_b.tif").read_bytes()[:300])  # truncated
    job = parse_job(pair_job(tmp_path, extra_output={"prompt_maps": True}), base=tmp_path)
    summary = run_job(job, fuser=ContextFuser(), progress=False)
    assert summary.items_done == 1 and len(summary.failures) == 1
    metrics = tmp_path / "scores.csv"
    metrics.write_text("image,method,metric,value\ngood.png,tcmoa,SSIM,0.8125\nother.png,tcmoa,SSIM,0.5\n")
    page = write_report(tmp_path / "run", metrics)
    text = page.read_text()
    assert "bad_b.tif" in text and "class='failed'" in text and "class='done'" in text
    assert re.search(r"prepare [0-9.]+ s, blocks [0-9.]+ s, export [0-9.]+ s", text)
    assert "<td>SSIM</td><td>0.8125</td>" in text and "0.5<" not in text
    shares = np.asarray(Image.open(page.parent / "quicklooks" / "test" / "good" / "prompts.png"))
    fused = np.asarray(Image.open(page.parent / "quicklooks" / "test" / "good" / "fused.png"))
    assert shares.shape[:2] == fused.shape[:2] == (80, 90) and (fused[..., 3] == 0).any() == (shares[..., 3] == 0).any()
    images = _images_in_browser(page, tmp_path)
    assert len(images) == 4 and all(not i["failed"] and i["width"] == 90 for i in images)  # a, b, fused, prompts
