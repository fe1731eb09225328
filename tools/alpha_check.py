"""Does sharpening the default model's prompts (alpha, paper Eq. 8) help its guided output?

Scores `default` at alpha 1, 2 and 3 beside the Laplacian and Mertens baselines on the first N pairs
of each *training* split (RoadScene, MEFB-train, MFIFB-train: tuning on the dev splits would bias
the card's dev figures), with each task's headline metrics:

    python tools/alpha_check.py [N]          # default N = 10; results under runs/alpha_check/
"""
from __future__ import annotations

import pathlib
import sys

from pipeline.evaluation import Method, run_evaluation
from tcmoa.baselines import get_baseline
from tcmoa.inference import load_fuser

DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPLITS = {
    "vif": (DATA / "vif/RoadScene/vi", DATA / "vif/RoadScene/ir", "vifb", "Qabf,Qcb,VIFF,SSIM"),
    "mef": (DATA / "mef/MEFB-train/over", DATA / "mef/MEFB-train/under", "mefb", "MEF_SSIM,Qabf,Qcb"),
    "mff": (DATA / "mff/MFIFB-train/A", DATA / "mff/MFIFB-train/B", "mefb", "Qabf,Qcb,NMI"),
}


def main() -> None:
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    for task, (a, b, preset, metrics) in SPLITS.items():
        methods = [Method(f"alpha{alpha:g}", fuser=load_fuser("default", alpha=alpha)) for alpha in (1.0, 2.0, 3.0)]
        methods += [Method(name, fuser=get_baseline(name)) for name in ("laplacian", "mertens")]
        result = run_evaluation(a, b, methods, pathlib.Path("runs/alpha_check") / task, preset=preset, metrics=metrics,
                                task=task, jobs=1, limit=limit, size_mismatch="resize", progress=lambda it, total: it)
        print(f"== {task}\n{result.means.to_string()}", flush=True)


if __name__ == "__main__":
    main()
