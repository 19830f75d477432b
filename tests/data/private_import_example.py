"""Planted for tests/test_architecture.py: a private import it must find."""

from broadcaster._backends.base import BroadcastBackend  # noqa: F401
