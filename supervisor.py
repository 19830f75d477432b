"""The part of the server that runs in uvicorn's supervisor process.

With `--workers N` (or WEB_CONCURRENCY) uvicorn's parent process never imports
`server:app`; each worker does. A worker that refuses its settings is either
restarted for ever or, as a start-up failure, stops the parent with status 0.
What the parent does run before it starts any worker is its logging
configuration (`--log-config`), building the factories that file names: the
shipped `logging.json` (which the Procfile and the image pass) names
`check_settings` below, so a bad setting, or more workers than the broker can
serve, stops the parent there with one line and a non-zero exit.

It also readies the directory of prometheus_client's multiprocess mode, with
which `/metrics` shows every worker's numbers (events/node/metrics_shared.py):
emptied of the previous run's files, or, for several workers and no
PROMETHEUS_MULTIPROC_DIR, a temporary one made for this run. The workers load
the same file and call the same factory: they only check their settings.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .settings import SettingsError, from_env

EXIT_STATUS = 2
METRICS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def check_settings() -> logging.Filter:
    """A `logging.json` filter factory: check the settings, then pass every record."""
    env = dict(os.environ)
    params = _command_line()
    try:
        if params is not None:
            workers = _workers(params)
            if workers is not None:
                env["WEB_CONCURRENCY"] = str(workers)
            directory = ready_metrics_dir(env.get(METRICS_VARIABLE), _count(env.get("WEB_CONCURRENCY")))
            if directory is not None:
                # The workers inherit it, and their prometheus_client reads it when imported.
                os.environ[METRICS_VARIABLE] = env[METRICS_VARIABLE] = str(directory)
            else:
                # Set but blank would still turn prometheus_client's files on, in the working directory.
                os.environ.pop(METRICS_VARIABLE, None)
                env.pop(METRICS_VARIABLE, None)
        from_env(env)
    except SettingsError as exc:
        print(f"realtime: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_STATUS) from None
    return logging.Filter()


def ready_metrics_dir(configured: str | None, workers: int) -> Path | None:
    """The multiprocess metrics directory of this run, emptied; None when there is none."""
    if not configured or not configured.strip():
        if workers <= 1:
            return None
        made = Path(tempfile.mkdtemp(prefix="realtime-metrics-"))
        atexit.register(shutil.rmtree, made, ignore_errors=True)
        return made
    directory = Path(configured.strip())
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # Only prometheus_client's files: a directory named by mistake keeps the rest.
        for stale in directory.glob("*.db"):
            stale.unlink()
    except OSError as exc:
        raise SettingsError(f"{METRICS_VARIABLE}: cannot empty {configured!r}: {exc.strerror or exc}") from None
    return directory


def _command_line() -> dict[str, Any] | None:
    """The parameters of the `uvicorn` command this process runs; None in a worker
    (a fresh interpreter) or under a programmatic `uvicorn.run`."""
    import click  # uvicorn's command line: present whenever uvicorn is

    context = click.get_current_context(silent=True)
    return None if context is None else context.params


def _count(workers: str | None) -> int:
    """WEB_CONCURRENCY as uvicorn takes it (a bad value is from_env's to report)."""
    try:
        return int(workers or 1)
    except ValueError:
        return 1


def _workers(params: dict[str, Any]) -> int | None:
    """`--workers` (or WEB_CONCURRENCY) of the command line, if any."""
    if params.get("reload"):
        return None  # --reload ignores --workers
    workers = params.get("workers")
    return workers if isinstance(workers, int) else None
