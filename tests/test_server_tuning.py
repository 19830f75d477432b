"""Process-level tuning the server does while it runs: the garbage collector's threshold."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from realtime.settings import SettingsError, from_env
from tests.conftest import base_settings, running

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("value", ["-1", "lots", "1e5", "10000001"])
def test_a_bad_gc_threshold_names_itself(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        from_env({"JWT_SECRET": "s" * 40, "GC_THRESHOLD": value})
    message = str(caught.value)
    assert message.startswith("GC_THRESHOLD: ") and "allocations from 0 to 10000000" in message, message


def test_the_gc_threshold_defaults_to_50000_and_takes_0() -> None:
    assert from_env({"JWT_SECRET": "s" * 40}).gc_threshold == 50_000
    assert from_env({"JWT_SECRET": "s" * 40, "GC_THRESHOLD": "0"}).gc_threshold == 0


async def test_the_collector_runs_less_often_while_the_server_runs_and_is_put_back(tmp_path: Path) -> None:
    before = gc.get_threshold()
    async with running(base_settings(tmp_path, gc_threshold=20_000)) as srv:
        assert srv.runtime is not None
        assert gc.get_threshold() == (20_000, *before[1:])
    assert gc.get_threshold() == before


async def test_a_gc_threshold_of_0_leaves_the_collector_alone(tmp_path: Path) -> None:
    before = gc.get_threshold()
    async with running(base_settings(tmp_path, gc_threshold=0)):
        assert gc.get_threshold() == before
    assert gc.get_threshold() == before
