"""The /logs/stream concurrency limit (controlplane rest_logs.py): the counting, pure logic."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubefal_controlplane import auth, http1, rest_logs
from kubefal_controlplane import settings as settings_module


class _Routes(rest_logs.LogRoutes):
    """The log routes with a runner lookup that waits until the test lets it go on."""

    def __init__(self) -> None:
        self.settings = settings_module.Settings(local_credentials=True, log_streams=1)
        self.logs = None
        self._open_streams = 0
        self.looked_up = asyncio.Event()
        self.release = asyncio.Event()

    async def _runner(self, caller: auth.Caller, runner_id: str) -> dict[str, Any]:
        self.looked_up.set()
        await self.release.wait()
        return {"metadata": {"namespace": "ns", "name": runner_id}}


def test_streams_arriving_together_cannot_pass_the_limit_together() -> None:
    async def scenario() -> None:
        routes = _Routes()
        caller: Any = None
        connection: Any = None
        first = asyncio.create_task(routes._stream(connection, caller, {"job_id": "r1"}))
        await asyncio.wait_for(routes.looked_up.wait(), 10)
        # The first stream is still looking its runner up: the second is over the limit.
        with pytest.raises(http1.HttpError) as raised:
            await asyncio.wait_for(routes._stream(connection, caller, {"job_id": "r2"}), 30)
        assert raised.value.status == 429
        routes.release.set()
        with pytest.raises(http1.HttpError) as ended:
            await first
        assert ended.value.status == 501  # no log source here; the slot is given back
        assert routes._open_streams == 0

    asyncio.run(scenario())
