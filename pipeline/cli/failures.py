"""How a command reports the error that stops it: one line on stderr ("Error: FILE: CAUSE"), or,
with `--json`, one JSON object on stdout instead, so a script reading the command's JSON always
gets JSON:

  {"message": "FILE: CAUSE", "file": "FILE" or null, "cause": "CAUSE", "exit_code": 2, "error_type": "SpecError"}

The exit codes are pipeline/errors.py's (usage errors found by click exit 2, like a bad job).
"""
from __future__ import annotations

import json
import os
import sys
import traceback

import click

from pipeline.errors import EXIT_BAD_JOB, exit_code_of, message_of


class CommandFailed(ValueError):
    """A command's own refusal (a bad option, a missing run directory): its message and exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_JOB, file: str | os.PathLike | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.file = file


def _file_of(exc: BaseException, message: str) -> str | None:
    """The file the error is about: the exception's own attribute, else the message's "PATH: " prefix
    when it names a path."""
    for name in ("file", "path", "filename"):
        value = getattr(exc, name, None)
        if isinstance(value, (str, os.PathLike)) and str(value):
            return str(value)
    head, sep, _ = message.partition(": ")
    if sep and head and (os.sep in head or os.path.exists(head)):
        return head
    return None


def error_document(exc: BaseException, exit_code: int) -> dict:
    message = exc.format_message() if isinstance(exc, click.ClickException) else message_of(exc)
    file = _file_of(exc, message)
    cause = message[len(file) + 2:] if file and message.startswith(f"{file}: ") else message
    return {"message": message, "file": file, "cause": cause, "exit_code": exit_code, "error_type": type(exc).__name__}


def report(exc: BaseException, *, as_json: bool, show_traceback: bool = False) -> int:
    """Print the error the documented way and return its exit code (the caller exits with it)."""
    code = exc.exit_code if isinstance(exc, click.ClickException) else exit_code_of(exc)
    if show_traceback:
        traceback.print_exception(exc)
    if as_json:
        click.echo(json.dumps(error_document(exc, code)))
    elif isinstance(exc, click.ClickException):
        exc.show()
    else:
        click.echo(f"Error: {message_of(exc)}", err=True)
    return code


def json_requested(args: list[str]) -> bool:
    """Whether the command line asks for JSON output (checked before click has parsed it, so that
    usage errors are JSON too)."""
    return "--json" in args[: args.index("--") if "--" in args else len(args)]


def exit_with(exc: BaseException, *, as_json: bool, show_traceback: bool = False) -> None:
    sys.exit(report(exc, as_json=as_json, show_traceback=show_traceback))
