"""The gateway's KEDA external scaler, called by a client compiled from KEDA's own proto.

The client is the stub grpcio-tools generates from KEDA's own ``externalscaler.proto``
(vendored unchanged under ``gateway/protos/keda/``; ``e2e/test_keda_proto.py`` checks it
against the KEDA module itself), so the test proves wire compatibility with what KEDA sends.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import grpc
import pytest

from kubefal_gateway import keda_scaler
from kubefal_gateway._generated import externalscaler_pb2, externalscaler_pb2_grpc


class DesiredCounts:
    """An in-memory source of desired runner counts (the gateway's signal, minus the queue)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.changes: asyncio.Queue[str] = asyncio.Queue()

    def set(self, app_id: str, desired: int) -> None:
        self.counts[app_id] = desired
        self.changes.put_nowait(app_id)

    def desired_runners(self, app_id: str) -> int | None:
        return self.counts.get(app_id)

    async def subscribe_desired(self) -> AsyncIterator[str]:
        while True:
            yield await self.changes.get()


@pytest.fixture(scope="module")
def keda_stubs() -> tuple[ModuleType, ModuleType]:
    """KEDA's client side: the stubs generated from KEDA's own proto (vendored unchanged)."""
    return externalscaler_pb2, externalscaler_pb2_grpc


async def _serve(source: DesiredCounts) -> tuple[grpc.aio.Server, int]:
    server, _, port = await keda_scaler.serve(source, host="127.0.0.1", port=0)
    return server, port


async def test_keda_reads_the_desired_runner_count_as_its_metric(
    keda_stubs: tuple[ModuleType, ModuleType],
) -> None:
    messages, services = keda_stubs
    source = DesiredCounts()
    source.set("team-a/sdxl", 3)
    server, port = await _serve(source)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub: Any = services.ExternalScalerStub(channel)
            ref = messages.ScaledObjectRef(
                name="sdxl", namespace="team-a", scalerMetadata={"appId": "team-a/sdxl"}
            )
            spec = await stub.GetMetricSpec(ref)
            (metric,) = spec.metricSpecs
            assert metric.metricName == "kubefal-desired-runners-team-a-sdxl"
            assert metric.targetSizeFloat == 1.0
            values = await stub.GetMetrics(
                messages.GetMetricsRequest(scaledObjectRef=ref, metricName=metric.metricName)
            )
            assert [(v.metricName, v.metricValueFloat) for v in values.metricValues] == [
                (metric.metricName, 3.0)
            ]
            assert (await stub.IsActive(ref)).result is True
            unknown = messages.ScaledObjectRef(name="nope", namespace="team-a")
            assert (await stub.IsActive(unknown)).result is False
    finally:
        await server.stop(grace=None)


async def test_stream_is_active_pushes_the_zero_to_one_change_at_once(
    keda_stubs: tuple[ModuleType, ModuleType],
) -> None:
    messages, services = keda_stubs
    source = DesiredCounts()
    source.set("team-a/sdxl", 0)
    server, port = await _serve(source)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub: Any = services.ExternalScalerStub(channel)
            stream = stub.StreamIsActive(messages.ScaledObjectRef(name="sdxl", namespace="team-a"))
            first = await asyncio.wait_for(stream.read(), timeout=10)
            assert first.result is False
            source.set("team-a/sdxl", 1)
            second = await asyncio.wait_for(stream.read(), timeout=5)
            assert second.result is True
            source.set("team-a/sdxl", 0)
            third = await asyncio.wait_for(stream.read(), timeout=5)
            assert third.result is False
            stream.cancel()
    finally:
        await server.stop(grace=None)


def test_the_metric_name_is_a_valid_kubernetes_metric_name() -> None:
    name = keda_scaler.metric_name("team-a/sdxl")
    assert name == "kubefal-desired-runners-team-a-sdxl"
    assert pathlib.PurePosixPath(name).name == name  # no slash survives
