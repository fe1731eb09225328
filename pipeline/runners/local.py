"""The in-process runner (`tcmoa run --local`): every unit in this process, one after another.

For debugging and for machines without Ray; gives the same outputs and records as the Ray runner.
An item's sources are opened (photos decoded) once for all its units.
"""
from __future__ import annotations

from typing import Callable

from pipeline import runtime
from pipeline.items import export_item, prepare_item, remove_store, store_path, stretches_from_json
from pipeline.manifest import now
from pipeline.runners.session import RunSummary, Session
from pipeline.schedule import ItemWork, Options
from pipeline.spec import JobSpec, ModelSpec
from pipeline.unit import ReaderCache, process_unit
from tcmoa.interface import Fuser, ModelInfo, Placement


def load_model_fuser(model: ModelSpec, placement: Placement | None = None) -> Fuser:
    """The job's model on its resolved device and precision (loaded: for workers, not planning)."""
    from tcmoa.inference import load_fuser

    placement = placement or Placement.resolve(model.device, model.precision, model.weights)
    options = {"batch_size": model.batch_size, "alpha": model.alpha, "beta": model.beta,
               "reconstruction": model.reconstruction}
    if not model.weights.startswith("baseline:"):
        options.update(device=placement.device, precision=placement.precision)
    return load_fuser(model.weights, **options)


def run_job(
    job: JobSpec, *, fuser: Fuser | None = None, options: Options = Options(), retry_failed: bool = False,
    progress: bool = True, report: Callable[[str], None] | None = None, source: dict | None = None,
) -> RunSummary:
    """Run what the schedule leaves to do, in this process; failed items are recorded, the others go on.
    `fuser`: a model already built (tests, stand-ins); by default the job's model is loaded.
    A run always resumes its run directory."""
    runtime.tune_allocator()  # before the model and the first blocks allocate
    if retry_failed:
        options = Options(retry_failed=True, only=options.only)
    if fuser is None:
        from tcmoa.inference import model_info

        placement = Placement.resolve(job.model.device, job.model.precision, job.model.weights)
        model = model_info(job.model.weights)  # planning needs the metadata only
    else:
        placement, model = Placement.of(fuser), ModelInfo.of(fuser, job.model.weights)
    session = Session(job, model, placement, options, runner="local", workers=1, progress=progress, report=report,
                      source=source)
    with session.open(), ReaderCache() as readers:
        if session.work.to_run and fuser is None:  # loaded only when there is work for it
            fuser = load_model_fuser(job.model, placement)
        for work in session.work.to_run:
            _run_item(session, work, fuser, readers)
    return session.summary


def _run_item(session: Session, work: ItemWork, fuser: Fuser, readers: ReaderCache) -> None:
    item, run = work.item, session.plan.run_info
    left = len(work.units)
    started = now()
    session.bar.set_postfix_str(f"preparing {item.key}")
    radiometry = work.radiometry
    if radiometry is None:
        try:
            radiometry = prepare_item(run, item, session.work_dir)
        except Exception as exc:
            session.prepare_failed(item, exc, started, left)
            if not work.units_done:
                remove_store(session.work_dir, item)
            return
        session.prepared(item, radiometry, started)
    stretches = stretches_from_json(radiometry)
    store = store_path(session.work_dir, item)
    session.bar.set_postfix_str(item.key)
    for unit in work.units:
        started = now()
        try:
            result = process_unit(unit, item, stretches, store, fuser, readers)
        except Exception as exc:
            session.unit_failed(item, unit, exc, started, left)
            if not work.units_done and left == len(work.units):  # nothing worth resuming: no partial store left
                remove_store(session.work_dir, item)
            return
        session.unit_done(item, unit, result, started)
        left -= 1
    readers.drop(item.sources)
    if not work.export:
        return
    session.bar.set_postfix_str(f"exporting {item.key}")
    started = now()
    try:
        assets = export_item(run, item, session.work_dir, stretches, session.claim_outputs(item))
    except Exception as exc:
        session.export_failed(item, exc, started)
        return
    session.exported(item, assets, started)
