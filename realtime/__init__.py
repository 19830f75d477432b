"""The package `realtime`, as seen from a checkout.

Installed, `realtime` is the repository root itself (pyproject.toml maps it with
`package-dir`), so `server.py` is `realtime.server` and `events/` is
`realtime.events`. In a checkout that root has no directory of that name: this
one stands in for it, pointing the package's path at the root, so that
`import realtime.server` and `--http realtime.transport.guard:http_protocol`
work from a checkout without installing anything. It is never installed.
"""

from pathlib import Path

__path__ = [str(Path(__file__).resolve().parent.parent)]
