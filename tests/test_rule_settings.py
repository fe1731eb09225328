"""tools/rule_settings.py's choice: the setting with the largest smallest margin over the bar's
reference per metric (the best of the three baselines; for VIF SSIM the Laplacian baseline's)."""
import importlib.util
import pathlib

import pandas as pd

TOOL = pathlib.Path(__file__).resolve().parents[1] / "tools" / "rule_settings.py"


def _tool():
    spec = importlib.util.spec_from_file_location("rule_settings", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_smallest_margin_decides_and_vif_ssim_is_measured_against_the_laplacian_baseline():
    tool = _tool()
    means = pd.DataFrame(
        {"Qabf": [0.60, 0.58, 0.40, 0.55, 0.50], "Ssim": [1.40, 1.45, 1.49, 1.41, 1.44]},
        index=["k=1", "k=2", "average", "laplacian", "mertens"],
    )
    found = tool.margins(means, "vif", ["k=1", "k=2"])
    # SSIM against the Laplacian baseline (1.41), not the average's 1.49 (which wins SSIM by construction)
    assert found["k=1"][1] == "Ssim" and abs(found["k=1"][0] - (-0.01)) < 1e-12
    assert found["k=2"][1] == "Qabf" and abs(found["k=2"][0] - 0.03) < 1e-12
    assert max(found, key=lambda name: found[name][0]) == "k=2"
    # for another task SSIM would be measured against the best baseline (the average here)
    assert tool.margins(means, "mef", ["k=2"])["k=2"] == (means.loc["k=2", "Ssim"] - 1.49, "Ssim")
