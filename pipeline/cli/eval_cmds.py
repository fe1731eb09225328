"""`tcmoa eval`: score fused images (or a fusion method run on the sources) with the fusion metrics."""
from __future__ import annotations

import json
import pathlib
import sys

import click


def _parse_fused(values: tuple[str, ...]) -> list[tuple[str, pathlib.Path]]:
    out = []
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep:
            folder, name = value, pathlib.Path(value).name
        if not name:
            raise click.BadParameter(f"{value!r}: expected NAME=DIR", param_hint="--fused")
        path = pathlib.Path(folder)
        if not path.is_dir():
            raise click.BadParameter(f"{folder}: not a folder", param_hint="--fused")
        out.append((name, path))
    return out


def _load_method(value: str, reconstruction: str = "auto") -> list[tuple[str, object]]:
    """NAME=SPEC or SPEC, where SPEC is 'baseline:NAME' or a model spec for tcmoa.inference.load_fuser.

    A model is loaded once per reconstruction mode ('both': NAME/decoder and NAME/guided).
    """
    name, sep, spec = value.partition("=")
    if not sep:
        spec = value
        name = spec.split(":", 1)[1] if spec.startswith("baseline:") else pathlib.Path(spec).stem or spec
    try:
        if spec.startswith("baseline:"):
            from tcmoa.baselines import get_baseline

            return [(name, get_baseline(spec.split(":", 1)[1]))]
        from tcmoa.inference import load_fuser

        if reconstruction == "both":
            return [(f"{name}-{mode}", load_fuser(spec, reconstruction=mode)) for mode in ("decoder", "guided")]
        return [(name, load_fuser(spec, reconstruction=reconstruction))]
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise click.BadParameter(f"{spec}: {exc}", param_hint="--method") from exc


@click.command("eval")
@click.option("--a", "a_dir", type=click.Path(file_okay=False, path_type=pathlib.Path),
              help="Folder of source A images (visible / under-exposed / focus A).")
@click.option("--b", "b_dir", type=click.Path(file_okay=False, path_type=pathlib.Path),
              help="Folder of source B images (infrared / over-exposed / focus B).")
@click.option("--fused", "fused", multiple=True, metavar="NAME=DIR",
              help="A folder of fused images named like the sources (repeatable).")
@click.option("--method", "method", multiple=True, metavar="[NAME=]SPEC",
              help="Run a fuser on the sources first: baseline:average|laplacian|mertens or a model "
                   "spec such as weights.safetensors (repeatable).")
@click.option("--task", default="vif", show_default=True, help="Task router for model methods (vif/mef/mff).")
@click.option("--reconstruction", type=click.Choice(["auto", "decoder", "guided", "both"]), default="auto",
              show_default=True, help="Output of model methods: the decoder's, prompt-guided, both (NAME-decoder, "
                                      "NAME-guided), or auto: what the weights recommend (else decoder).")
@click.option("--preset", default="standard", show_default=True,
              help="Metric conventions: standard (textbook), vifb or mefb (those toolboxes).")
@click.option("--metrics", default=None, metavar="LIST",
              help="Comma-separated metric names or aliases (default: the preset's table metrics, "
                   "or all metrics for 'standard').")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=pathlib.Path),
              help="Output folder for per_image.csv/.parquet, means.csv, ranking.csv, chart.png.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1, 64), help="Worker processes.")
@click.option("--size-mismatch", type=click.Choice(["error", "skip", "resize"]), default="error", show_default=True,
              help="A fused image of another size than its sources: fail, skip it, or resample it.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the first N pairs (by name).")
@click.option("--json", "as_json", is_flag=True, help="Print the per-method means (and ranks) as JSON.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--list-metrics", is_flag=True, help="List the metrics, their direction and aliases, and exit.")
def evaluate(a_dir, b_dir, fused, method, task, reconstruction, preset, metrics, out_dir, jobs, size_mismatch, limit, as_json,
             quiet, list_metrics) -> None:
    """Score fused images against their two sources (pairs matched by file stem).

    Writes long-form per-image results (image,method,metric,value) as CSV and Parquet, per-method
    means, a ranking when several methods are given, and a chart; prints the means table.

    \b
    Example:
      tcmoa eval --a VIFB/vi --b VIFB/ir --fused CNN=VIFB/fused/CNN \\
                 --method baseline:average --preset vifb -o results/vifb
    """
    from tcmoa.metrics import PRESETS, list_metrics as all_metrics

    if list_metrics:
        for spec in all_metrics():
            arrow = "higher" if spec.higher_is_better else "lower"
            aliases = f" (aliases: {', '.join(spec.aliases)})" if spec.aliases else ""
            click.echo(f"{spec.name:<10} {arrow:<6} {spec.description}{aliases}")
        return
    missing = [flag for flag, value in (("--a", a_dir), ("--b", b_dir), ("-o/--output", out_dir)) if value is None]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)}")
    if preset not in PRESETS:
        raise click.BadParameter(f"{preset!r}; presets: {', '.join(sorted(PRESETS))}", param_hint="--preset")
    if not fused and not method:
        raise click.UsageError("give at least one --fused NAME=DIR or --method SPEC")

    import pandas as pd
    from tqdm import tqdm

    from pipeline.evaluation import EvaluationError, Method, run_evaluation

    methods = [Method(name, folder=folder) for name, folder in _parse_fused(fused)]
    methods += [Method(name, fuser=fuser) for value in method for name, fuser in _load_method(value, reconstruction)]

    def progress(iterable, total):
        return tqdm(iterable, total=total, desc="pairs", unit="pair", disable=quiet or as_json or not sys.stderr.isatty(), file=sys.stderr)

    try:
        result = run_evaluation(a_dir, b_dir, methods, out_dir, preset=preset, metrics=metrics, task=task,
                                jobs=jobs, limit=limit, size_mismatch=size_mismatch,
                                progress=progress)
    except (EvaluationError, KeyError) as exc:
        raise click.ClickException(str(exc).strip('"')) from exc

    if as_json:
        payload = {
            "preset": preset,
            "images": int(result.long["image"].nunique()),
            "means": {m: {k: float(v) for k, v in row.items()} for m, row in result.means.iterrows()},
            "mean_rank": None if result.ranks is None else {m: float(r) for m, r in result.ranks["mean_rank"].items()},
            "files": {k: str(v) for k, v in result.files.items()},
            "notes": result.notes,
        }
        click.echo(json.dumps(payload, indent=1))
    elif not quiet:
        with pd.option_context("display.max_columns", None, "display.width", 200, "display.precision", 4):
            table = result.means if result.ranks is None else result.means.join(result.ranks["mean_rank"]).sort_values("mean_rank")
            click.echo(f"Means over {result.long['image'].nunique()} pairs (preset {preset}):")
            click.echo(table.to_string())
        for note in result.notes:
            click.echo(f"note: {note}", err=True)
        click.echo(f"wrote {', '.join(str(p) for p in result.files.values())}")
