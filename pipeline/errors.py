"""Exit codes and one-line error messages of the `tcmoa` engine commands (run, fuse, status, verify).

  0  everything done (verify: every recorded output matches)
  1  some items failed (the others are done), or verify found problems
  2  bad job or usage: invalid job file, a run directory that belongs to another job, an output
     that would replace an input or a file the run did not create, ...
  3  the run could not proceed: I/O error, full disk, run directory locked / unusable / damaged,
     stopped by SIGTERM or SIGINT (finished blocks are recorded: --resume continues)

Every error is printed as one line naming the file and the cause; tracebacks stay in the status
table (`tcmoa status --traceback`) or are printed with `--traceback`.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

EXIT_OK = 0
EXIT_ITEMS_FAILED = 1
EXIT_BAD_JOB = 2
EXIT_CANNOT_PROCEED = 3


class JobError(ValueError):
    """The job (or the command line) asks for something that cannot be done as written."""

    exit_code = EXIT_BAD_JOB


class Stopped(BaseException):
    """SIGTERM or SIGINT arrived: unwind (flushing the status records) and exit."""

    exit_code = EXIT_CANNOT_PROCEED

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}; finished blocks are recorded (run again with --resume to continue)"


def one_line(exc: BaseException) -> str:
    """The exception and its causes in one line (GDAL's and zarr's detail is often in the cause)."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = " ".join(str(exc).replace("See previous exception for details.", "").split()).strip(" .")
        if text and not any(text in p for p in parts):
            parts.append(text)
        exc = exc.__cause__ or exc.__context__
    return ": ".join(reversed(parts)) or "unknown error"


def exit_code_of(exc: BaseException) -> int:
    """The documented exit code for an error that stopped a command."""
    code = getattr(exc, "exit_code", None)
    if code is not None:
        return code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_CANNOT_PROCEED
    if isinstance(exc, OSError):
        return EXIT_CANNOT_PROCEED
    if isinstance(exc, ValueError):  # SpecError and the engine's job-level checks
        return EXIT_BAD_JOB
    return EXIT_CANNOT_PROCEED


def message_of(exc: BaseException) -> str:
    """One line: the file and the cause (the type name only where the message alone says too little)."""
    if isinstance(exc, KeyboardInterrupt):
        return str(Stopped(signal.SIGINT))
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {exc.strerror or text}"
    if not text or not isinstance(exc, (OSError, ValueError, RuntimeError, Stopped)):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Turn the first SIGTERM / SIGINT into a `Stopped` exception, so the run unwinds through its
    `finally` blocks (status records flushed, temporaries removed, lock released); later ones are
    ignored while it does. Only in the main thread (where Python delivers signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = []

    def handler(signum, frame):
        if not stopping:
            stopping.append(signum)
            raise Stopped(signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
