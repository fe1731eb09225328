"""A fresh machine has only what pyproject.toml declares: every import must be declared and importable.

These tests fail on an undeclared import even where no other test reaches the module, and even on a
machine where the package happens to be installed by hand (the declaration check reads the source).
"""
from __future__ import annotations

import ast
import importlib
import importlib.metadata as metadata
import pkgutil
import re
import sys
import tomllib

import click
import pytest
from click.testing import CliRunner

from conftest import ROOT

PACKAGES = ("tcmoa", "pipeline")
SCANNED = ("tcmoa", "pipeline", "tests", "bench")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    names = {re.split(r"[\s\[<>=!~;]", r.strip(), maxsplit=1)[0] for r in requirements}
    return {_normalise(n) for n in names if n and n != project["name"]}


def _third_party_imports() -> dict[str, str]:
    """Top-level module -> first file importing it, over the project's code, tests and benchmarks."""
    local = set(SCANNED) | {p.stem for d in SCANNED for p in (ROOT / d).rglob("*.py")}
    used: dict[str, str] = {}
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in local:
                        used.setdefault(top, str(path.relative_to(ROOT)))
    return used


def test_every_import_is_declared():
    declared = _declared()
    providers = metadata.packages_distributions()
    problems = []
    for module, where in sorted(_third_party_imports().items()):
        owners = {_normalise(d) for d in providers.get(module, [])}
        if not owners:
            problems.append(f"{module} (imported in {where}) is not installed: declare it and install it")
        elif not owners & declared:
            problems.append(f"{module} (imported in {where}; from {', '.join(sorted(owners))}) is not declared")
    assert not problems, "pyproject.toml misses:\n" + "\n".join(problems)


def _all_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names.append(package)
        names += [info.name for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}.")]
    return sorted(n for n in names if not n.endswith("__main__"))


@pytest.mark.parametrize("module", _all_modules())
def test_module_imports(module):
    importlib.import_module(module)


def _command_paths(group: click.Group, ctx: click.Context, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, f"`tcmoa {' '.join(prefix + (name,))}` is listed but cannot be loaded"
        paths.append(prefix + (name,))
        if isinstance(command, click.Group):
            paths += _command_paths(command, click.Context(command, parent=ctx), prefix + (name,))
    return paths


def test_every_command_shows_help():
    from pipeline.cli import main

    paths = _command_paths(main, click.Context(main))
    assert len(paths) >= 10
    runner = CliRunner()
    for path in [()] + paths:
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, f"`tcmoa {' '.join(path)} --help` failed:\n{result.output}{result.exception!r}"
        assert "Usage:" in result.output
