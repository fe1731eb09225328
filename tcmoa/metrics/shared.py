"""Intermediates shared by several metrics within one `evaluate()` call.

Some metrics are built on the same maps (Q_S, Q_W and Q_E on Piella's local SSIM maps; Q_Y and
Q_C on the same 7x7 local moments). Inside `evaluate()` such a map is computed once and handed
to every metric that asks for it, also when the metrics run on different threads (the second
asker waits for the first). Outside `evaluate()` (a metric function called directly) nothing is
kept. Keys name the computation and the identity of the prepared arrays, which `evaluate()`
keeps alive for the whole call.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
from typing import Any, Callable, Hashable, Iterator

_STATE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("tcmoa_metric_intermediates", default=None)


@contextlib.contextmanager
def sharing() -> Iterator[None]:
    """Share intermediates among the metrics computed inside this block."""
    token = _STATE.set({"lock": threading.Lock(), "entries": {}})
    try:
        yield
    finally:
        _STATE.reset(token)


def shared(key: Hashable, compute: Callable[[], Any]) -> Any:
    """compute() once per sharing block for this key; without a block, just compute()."""
    state = _STATE.get()
    if state is None:
        return compute()
    with state["lock"]:
        entry = state["entries"].setdefault(key, {"lock": threading.Lock(), "done": False, "value": None})
    with entry["lock"]:
        if not entry["done"]:
            entry["value"], entry["done"] = compute(), True
    return entry["value"]


def array_key(*arrays) -> tuple:
    """The identity of prepared arrays (valid while `evaluate()` holds them)."""
    return tuple(id(a) for a in arrays)
