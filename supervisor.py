"""The part of the server that runs in uvicorn's supervisor process.

With `--workers N` (or WEB_CONCURRENCY) uvicorn's parent process never imports
`server:app`; each worker does. A worker that refuses its settings is either
restarted for ever or, as a start-up failure, stops the parent with status 0.
What the parent does run before it starts any worker is its logging
configuration (`--log-config`), building the factories that file names: the
shipped `logging.json` (which the Procfile and the image pass) names
`check_settings` below, so a bad setting, or more workers than the broker can
serve, stops the parent there with one line and a non-zero exit.
"""

from __future__ import annotations

import logging
import os
import sys

from .settings import SettingsError, from_env

EXIT_STATUS = 2


def check_settings() -> logging.Filter:
    """A `logging.json` filter factory: check the settings, then pass every record."""
    env = dict(os.environ)
    workers = _command_line_workers()
    if workers is not None:
        env["WEB_CONCURRENCY"] = str(workers)
    try:
        from_env(env)
    except SettingsError as exc:
        print(f"realtime: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_STATUS) from None
    return logging.Filter()


def _command_line_workers() -> int | None:
    """`--workers` (or UVICORN_WORKERS) of the `uvicorn` command this process runs, if any."""
    import click  # uvicorn's command line: present whenever uvicorn is

    context = click.get_current_context(silent=True)
    if context is None or context.params.get("reload"):
        return None  # a worker, a programmatic uvicorn.run, or --reload (which ignores --workers)
    workers = context.params.get("workers")
    return workers if isinstance(workers, int) else None
