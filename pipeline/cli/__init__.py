"""The `tcmoa` command line: wiring only.

Sub-commands live in sibling modules and are imported lazily, so `tcmoa --help`
stays fast and a command never pays for the imports of another (Ray, rasterio, torch).
"""
from __future__ import annotations

import importlib

import click

# command name -> ("module:attribute" of a click.Command, one-line help shown by `tcmoa --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "samples": ("pipeline.cli.run_cmds:samples", "Write a small generated sample archive (photos, stacks, GeoTIFFs)."),
    "run": ("pipeline.cli.run_cmds:run", "Run a fusion job over an archive (resumable)."),
    "resume": ("pipeline.cli.run_cmds:resume", "Finish a run directory's job: redo only what is not verified done."),
    "status": ("pipeline.cli.run_cmds:status", "Show the items, units and failures of a run directory."),
    "submit": ("pipeline.cli.cluster_cmds:submit", "Run a job on a remote Ray cluster (Jobs API); --wait follows it."),
    "logs": ("pipeline.cli.cluster_cmds:logs", "Print or follow the logs of a submitted job."),
    "stop": ("pipeline.cli.cluster_cmds:stop", "Stop a submitted job (its verified work is kept)."),
    "verify": ("pipeline.cli.run_cmds:verify", "Check a run's recorded outputs and blocks against the disk (runs nothing)."),
    "fuse": ("pipeline.cli.run_cmds:fuse", "Fuse one item (two or more source files) into one output."),
    "report": ("pipeline.cli.run_cmds:report", "Write an HTML page of a run: quicklooks, timings, failures."),
    "eval": ("pipeline.cli.eval_cmds:evaluate", "Score fused images with the fusion metrics; compare methods."),
    "train": ("pipeline.cli.train_cmds:train", "Train or fine-tune TC-MoA from a YAML config (local or Ray)."),
    "pretrain": ("pipeline.cli.train_cmds:pretrain", "MAE-pretrain a backbone for configs without public weights."),
    "export": ("pipeline.cli.train_cmds:export", "Export a training run's latest weights (e.g. as the package default)."),
    "convert": ("pipeline.cli.model_cmds:convert", "Convert MAE / released TC-MoA checkpoints to safetensors."),
    "check-parity": ("pipeline.cli.model_cmds:check_parity", "Compare the model and losses with a reference fixture."),
    "info": ("pipeline.cli.model_cmds:info", "Show config, parameter counts and provenance of weights."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        entry = COMMANDS.get(name)
        if entry is None:
            return None
        module_name, attr = entry[0].split(":")
        return getattr(importlib.import_module(module_name), attr)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """With --json, every error that stops a command (click's usage errors included) is one
        JSON object on stdout (pipeline/cli/failures.py); otherwise click's own handling."""
        import sys

        from pipeline.cli.failures import exit_with, json_requested

        args = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or not json_requested(args):
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            exit_with(KeyboardInterrupt(), as_json=True)
        except click.ClickException as exc:
            exit_with(exc, as_json=True)
        except Exception as exc:  # a command without its own handler (eval, check-parity)
            exit_with(exc, as_json=True)
        sys.exit(0)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Static help lines: listing commands must not import torch, Ray or rasterio.
        with formatter.section("Commands"):
            formatter.write_dl([(name, entry[1]) for name, entry in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tcmoa")
def main() -> None:
    """Fuse multi-source image archives with TC-MoA (VIF, MEF, MFF and zero-shot pairs)."""


if __name__ == "__main__":
    main()
