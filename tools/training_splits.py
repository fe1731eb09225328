"""The training splits the checks in tools/ score on (never the dev splits, which the model card's
figures come from), with each task's headline metrics, and the scoring loop they share."""
from __future__ import annotations

import pathlib

DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
# task -> (A folder, B folder, metric preset, headline metrics)
SPLITS = {
    "vif": (DATA / "vif/RoadScene/vi", DATA / "vif/RoadScene/ir", "vifb", "Qabf,Qcb,VIFF,SSIM"),
    "mef": (DATA / "mef/MEFB-train/over", DATA / "mef/MEFB-train/under", "mefb", "MEF_SSIM,Qabf,Qcb"),
    "mff": (DATA / "mff/MFIFB-train/A", DATA / "mff/MFIFB-train/B", "mefb", "Qabf,Qcb,NMI"),
}


def score(methods_for_task, out_root: pathlib.Path, limit: int) -> None:
    """Score `methods_for_task(task)` (a list of pipeline.evaluation.Method) plus the Laplacian and
    Mertens baselines on the first `limit` pairs of each split; print the means per task."""
    from pipeline.evaluation import Method, run_evaluation
    from tcmoa.baselines import get_baseline

    for task, (a_dir, b_dir, preset, metrics) in SPLITS.items():
        methods = list(methods_for_task(task)) + [Method(name, fuser=get_baseline(name)) for name in ("laplacian", "mertens")]
        result = run_evaluation(a_dir, b_dir, methods, out_root / task, preset=preset, metrics=metrics, task=task,
                                jobs=1, limit=limit, size_mismatch="resize", progress=lambda it, total: it)
        print(f"== {task}\n{result.means.to_string()}", flush=True)
