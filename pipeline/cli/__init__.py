"""The `tcmoa` command line: wiring only.

Sub-commands live in sibling modules and are imported lazily, so `tcmoa --help`
stays fast and a command never pays for the imports of another (Ray, rasterio, torch).
"""
from __future__ import annotations

import importlib

import click

# command name -> "module:attribute" (a click.Command)
COMMANDS: dict[str, str] = {
    "check-parity": "pipeline.cli.model_cmds:check_parity",
    "convert": "pipeline.cli.model_cmds:convert",
    "info": "pipeline.cli.model_cmds:info",
    "train": "pipeline.cli.train_cmds:train",
    "pretrain": "pipeline.cli.train_cmds:pretrain",
    "eval": "pipeline.cli.eval_cmds:evaluate",
    "run": "pipeline.cli.run_cmds:run",
    "status": "pipeline.cli.run_cmds:status",
    "fuse": "pipeline.cli.run_cmds:fuse",
    "samples": "pipeline.cli.run_cmds:samples",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tcmoa")
def main() -> None:
    """Fuse multi-source image archives with TC-MoA (VIF, MEF, MFF and zero-shot pairs)."""


if __name__ == "__main__":
    main()
