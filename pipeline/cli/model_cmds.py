"""Model commands: `tcmoa check-parity`, `tcmoa convert`, `tcmoa info`."""
from __future__ import annotations

import datetime as dt
import json
import pathlib
import sys

import click


@click.command("check-parity")
@click.argument("fixture", type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path))
@click.option("--tol", "output_tol", default=1e-4, show_default=True, help="Max absolute difference of outputs.")
@click.option("--loss-tol", default=1e-4, show_default=True, help="Max relative difference of loss terms.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparisons as JSON.")
def check_parity(fixture: pathlib.Path, output_tol: float, loss_tol: float, as_json: bool) -> None:
    """Run every task of a reference FIXTURE through the model (and losses); exit 1 above tolerance."""
    import torch

    from tcmoa.parity import check_fixture

    try:
        data = torch.load(fixture, map_location="cpu", weights_only=True)
        results = check_fixture(data, output_tol, loss_tol)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise click.ClickException(f"{fixture}: not a usable parity fixture: {exc}") from exc
    failed = [r for r in results if not r.ok]
    if as_json:
        click.echo(json.dumps([{**r.__dict__, "ok": r.ok} for r in results], indent=1))
    else:
        click.echo(f"{'task':<6} {'quantity':<28} {'difference':>12} {'tolerance':>10}  result")
        for r in results:
            click.echo(f"{r.task:<6} {r.quantity:<28} {r.difference:>12.3e} {r.tolerance:>7.0e} {r.kind}  "
                       f"{'ok' if r.ok else 'FAIL'}")
        click.echo(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if failed:
        sys.exit(1)


@click.command("convert")
@click.option("--mae", "mae_path", type=click.Path(exists=True, dir_okay=False), help="MAE visualize checkpoint (.pth).")
@click.option("--tcmoa", "tcmoa_path", type=click.Path(exists=True, dir_okay=False), help="Released TC-MoA checkpoint (.pth).")
@click.option("--config", "config_name", default=None, help="Preset (tiny/base/large); inferred from the TC-MoA file if omitted.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.option("--allow-pickle", is_flag=True, help="Allow arbitrary pickled objects in the .pth files (trusted files only).")
def convert(mae_path: str | None, tcmoa_path: str | None, config_name: str | None, output: pathlib.Path,
            allow_pickle: bool) -> None:
    """Turn MAE and/or released TC-MoA checkpoints into the project's safetensors format."""
    from tcmoa import checkpoints
    from tcmoa.model import TCMoA

    if not mae_path and not tcmoa_path:
        raise click.UsageError("give --mae, --tcmoa or both")
    try:
        tc_state, mae_state = {}, {}
        if tcmoa_path:
            tc_state = checkpoints.rename_legacy_keys(checkpoints.read_torch_checkpoint(tcmoa_path, allow_pickle)[0])
        if mae_path:
            mae_state = checkpoints.read_torch_checkpoint(mae_path, allow_pickle)[0]
        # Shapes tell the configuration: MAE gives the backbone dims, TC-MoA the heads (bias tables).
        config = config_name or checkpoints.infer_config({**mae_state, **tc_state})
        model = TCMoA(config)
        provenance: dict = {"converted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        if mae_path:
            checkpoints.load_mae_weights(model, mae_state)
            provenance["mae"] = {"file": pathlib.Path(mae_path).name, "sha256": checkpoints.file_sha256(mae_path)}
        if tcmoa_path:
            summary = checkpoints.load_reference_checkpoint(model, tc_state, require_backbone=not mae_path)
            provenance["tcmoa"] = {"file": pathlib.Path(tcmoa_path).name,
                                   "sha256": checkpoints.file_sha256(tcmoa_path), **summary}
            provenance["trained"] = True
        else:
            provenance["trained"] = False
            provenance["note"] = "MAE backbone only: TC-MoA modules are randomly initialised"
    except checkpoints.CheckpointError as exc:
        raise click.ClickException(str(exc)) from exc
    sha = checkpoints.save_model(model, output, provenance)
    click.echo(f"wrote {output} ({model.config.name} config, sha256 {sha[:16]}...)")


@click.command("info")
@click.argument("weights")
def info(weights: str) -> None:
    """Print the configuration, parameter counts and provenance of WEIGHTS: a weights file,
    `default` (the package's default model) or `random:CONFIG` (an untrained network)."""
    from tcmoa import checkpoints
    from tcmoa.inference import DEFAULT_WEIGHTS
    from tcmoa.model import TCMoA, count_parameters

    if weights == "default" and DEFAULT_WEIGHTS.is_file():
        weights = str(DEFAULT_WEIGHTS)
    elif weights == "default" or weights.startswith("random:"):
        # No file behind it: the untrained network the same spec gives every other command.
        from tcmoa.config import TCMoAConfig
        from tcmoa.inference import model_info

        try:
            described = model_info(weights)
        except (KeyError, ValueError) as exc:
            raise click.ClickException(f"weights {weights!r}: {exc}") from exc
        model = TCMoA(TCMoAConfig.from_dict(described.config))
        click.echo(json.dumps({"config": described.config, "parameters": count_parameters(model),
                               "provenance": {"weights": weights, "trained": False,
                                              "note": "untrained, randomly initialised: no weights file"},
                               "sha256": None}, indent=2))
        return
    if not pathlib.Path(weights).is_file():
        raise click.ClickException(f"{weights}: no such weights file (or use 'default' / 'random:CONFIG')")
    try:
        model, meta = checkpoints.load_model(weights)
    except checkpoints.CheckpointError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({"config": meta["config"], "parameters": count_parameters(model),
                           "provenance": meta["provenance"], "sha256": meta["sha256"]}, indent=2))
