"""python -m services.cell_classifier  (CELL_HOST / CELL_PORT, default 127.0.0.1:8001; CELL_WORKERS processes)."""

import multiprocessing
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from uvicorn.main import STARTUP_FAILURE

from services.cell_classifier.app import create_app
from services.cell_classifier.inference import check_servable
from services.cell_classifier.metrics import MULTIPROCESS_DIR_ENV, forget_dead_worker
from services.cell_classifier.settings import CellServiceSettings
from shared.serving import run


def prepare_metrics_dir(workers: int) -> Path | None:
    """The worker processes' metric files (services/cell_classifier/metrics.py): a fresh temporary
    directory when several workers start and none is given, removed at exit (returned); a given
    ``PROMETHEUS_MULTIPROC_DIR`` is created and emptied of an earlier run's files (a restarted container
    would otherwise add the dead processes' counts to its own)."""
    given = os.environ.get(MULTIPROCESS_DIR_ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        return None
    if workers > 1:
        own = Path(tempfile.mkdtemp(prefix="cell-metrics-"))
        os.environ[MULTIPROCESS_DIR_ENV] = str(own)
        return own
    return None


def check_before_workers(settings: CellServiceSettings) -> None:
    """With several workers, a model directory that cannot be served is refused here first, once, with uvicorn's
    startup-failure status and the reason on one line (uvicorn's process manager, still used off Linux, exits 0
    when its workers cannot start; shared/worker_processes.py exits 3 too, but after every worker has failed).

    The model is loaded as each worker loads it (``check_servable``: not only the CNN's card and sha256 but
    the APL head's, the sessions and the provider that runs; checking the CNN alone let a tampered head
    through to workers that then failed while this exited 0), in a child process that exits after, so that
    this one, which only manages the workers, holds neither the model nor a CUDA context."""
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(check_servable, settings.model_dir, settings.provider, settings.model_variant).result()
    except Exception as error:  # noqa: BLE001 - any reason the workers could not load the model
        print(f"cell service: cannot serve the model in {settings.model_dir}: {type(error).__name__}: {error}",
              file=sys.stderr)
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    settings = CellServiceSettings()
    if settings.workers > 1:
        check_before_workers(settings)
    own_metrics_dir = prepare_metrics_dir(settings.workers)
    try:
        run(create_app, settings, access_log=settings.access_log, workers=settings.workers,
            on_worker_exit=forget_dead_worker)
    finally:
        if own_metrics_dir:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)
