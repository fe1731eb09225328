"""Does sharpening the default model's prompts (alpha, paper Eq. 8) help its guided output?

Scores `default` at alpha 1, 2 and 3 beside the Laplacian and Mertens baselines on the first N pairs
of each *training* split (RoadScene, MEFB-train, MFIFB-train: tuning on the dev splits would bias
the card's dev figures), with each task's headline metrics:

    python tools/alpha_check.py [N]          # default N = 10; results under runs/alpha_check/
"""
from __future__ import annotations

import pathlib
import sys

from training_splits import score


def main() -> None:
    from pipeline.evaluation import Method
    from tcmoa.inference import load_fuser

    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    score(lambda task: [Method(f"alpha{alpha:g}", fuser=load_fuser("default", alpha=alpha)) for alpha in (1.0, 2.0, 3.0)],
          pathlib.Path("runs/alpha_check"), limit)


if __name__ == "__main__":
    main()
