"""The resume rules, as one pure function shared by every runner:

    schedule(plan, recorded status, what is on disk, options) -> the work to do, item by item

- An item whose export is recorded done, with its outputs verified on disk (size, sha256), is
  done: nothing of it is read or run again (a scheduled run over a grown archive does only the
  new items).
- An item whose outputs may not be written (they would replace what the run did not create) is
  refused before any work.
- A recorded failure (preparation or a block) stops its item unless `retry_failed`.
- A recorded radiometry is reused only while the item's work store is intact (it exists and
  carries the item's prepare id); a store prepared afresh voids the item's done block records.
- A block recorded done in an intact store, whose checksum the store still gives, is skipped;
  every other block runs.
- `only` narrows the run to some items (key 'collection/item', item id) or units (id or prefix).

What is on disk is observed by the runner beforehand (`Observed`), so this function does no I/O
and answers the same for the same inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.plan import ItemPlan, Plan, Unit

RETRY_HINT = " (recorded earlier; --retry-failed re-runs it)"


@dataclass(frozen=True)
class Options:
    retry_failed: bool = False
    only: frozenset[str] = frozenset()  # item keys, item ids, unit ids or unit id prefixes; empty: all


@dataclass(frozen=True)
class Observed:
    """Facts from disk, checked by the runner before scheduling."""

    outputs_verified: frozenset[str] = frozenset()  # finalize ids whose recorded outputs are on disk as recorded
    stores_intact: frozenset[str] = frozenset()  # prepare ids whose work store carries the id, metadata as recorded
    blocks_verified: frozenset[str] = frozenset()  # unit ids whose block in the store has its recorded checksum
    refused: dict[str, str] = field(default_factory=dict)  # finalize id -> why the item's outputs may not be written


@dataclass(frozen=True)
class ItemWork:
    item: ItemPlan
    state: str  # 'done' (nothing to do), 'failed' (a recorded failure, not retried), 'run', 'excluded' (not in --only)
    error: str | None = None
    stage: str | None = None  # of a failure: 'prepare', 'unit' or 'outputs' 
    radiometry: str | None = None  # the recorded radiometry (JSON) to reuse; None: prepare the item afresh
    units: tuple[Unit, ...] = ()  # units to run
    units_done: int = 0  # units recorded done in an intact store (skipped)
    export: bool = False  # export once every unit is done (False when --only leaves units out)


@dataclass(frozen=True)
class Work:
    items: tuple[ItemWork, ...] = field(default_factory=tuple)

    @property
    def to_run(self) -> list[ItemWork]:
        return [w for w in self.items if w.state == "run"]

    @property
    def units(self) -> int:
        return sum(len(w.units) for w in self.to_run)


def _selected(item: ItemPlan, units: list[Unit], only: frozenset[str]) -> list[Unit] | None:
    """The item's units that `only` selects (all of them when the item itself is named)."""
    if not only or item.key in only or item.item_id in only:
        return units
    chosen = [u for u in units if any(u.unit_id.startswith(o) for o in only if len(o) >= 6)]
    return chosen or None


def schedule(plan: Plan, latest: dict[tuple[str, str], dict], observed: Observed, options: Options = Options()) -> Work:
    out: list[ItemWork] = []
    for item in plan.items:
        units = plan.units[item.key]
        chosen = _selected(item, units, options.only)
        finished = latest.get(("item", item.finalize_id))
        if finished and finished["status"] == "done" and item.finalize_id in observed.outputs_verified:
            out.append(ItemWork(item, "done", units_done=len(units)))
            continue
        if chosen is None:
            out.append(ItemWork(item, "excluded"))
            continue
        if item.finalize_id in observed.refused:
            out.append(ItemWork(item, "failed", error=observed.refused[item.finalize_id], stage="outputs"))
            continue
        prepared = latest.get(("prepare", item.prepare_id))
        if prepared and prepared["status"] == "failed" and not options.retry_failed:
            out.append(ItemWork(item, "failed", error=f"{prepared['error']}{RETRY_HINT}", stage="prepare"))
            continue
        intact = bool(prepared and prepared["status"] == "done" and item.prepare_id in observed.stores_intact)
        todo: list[Unit] = []
        done = 0
        failed = None
        for unit in units:
            record = latest.get(("unit", unit.unit_id))
            if intact and record and record["status"] == "done" and unit.unit_id in observed.blocks_verified:
                done += 1
            elif record and record["status"] == "failed" and not options.retry_failed:
                failed = failed or f"{record['error']}{RETRY_HINT}"
            elif unit in chosen:
                todo.append(unit)
        if failed:
            out.append(ItemWork(item, "failed", error=failed, stage="unit", units_done=done))
            continue
        out.append(ItemWork(item, "run", radiometry=prepared["info"] if intact else None, units=tuple(todo),
                            units_done=done, export=done + len(todo) == len(units)))
    return Work(tuple(out))
