"""KEDA's external scaler gRPC service, answered from the gateway's desired runner counts.

With the ``keda`` actuator the operator renders a ScaledObject whose trigger is
``external-push`` pointing at this service. KEDA then asks:

* ``IsActive`` / ``StreamIsActive``: should the app have any runner? We push a new answer
  the moment an app's desired count crosses zero, so a request arriving at zero runners
  starts the 0→1 scale-up at once instead of at KEDA's next poll;
* ``GetMetricSpec`` / ``GetMetrics``: one metric per app, the desired runner count, with a
  target of 1 per runner, so the HPA KEDA drives computes ``replicas = desired``. The
  keep-alive window is already inside that number, which is why the rendered ScaledObject
  sets no extra stabilisation of its own.

The message and service descriptors are built from a hand-written description that is
wire-compatible with KEDA's ``externalscaler.proto`` (same package, names and field
numbers), so no generated code is committed and no protoc runs at install time. The e2e
test talks to this service with stubs compiled from KEDA's own proto file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE_NAME = "externalscaler.ExternalScaler"
METRIC_PREFIX = "kubefal-desired-runners"
STREAM_HEARTBEAT_SECONDS = 10.0


class DesiredRunners(Protocol):
    """What the scaler needs from the gateway: desired counts, and news when they change."""

    def desired_runners(self, app_id: str) -> int | None:
        """The app's desired runner count, or None when the gateway does not know the app."""

    def subscribe_desired(self) -> AsyncIterator[str]:
        """Yield the id of every app whose desired runner count changed."""


# --- message classes, built from a descriptor wire-compatible with KEDA's proto ---------

_FieldType = descriptor_pb2.FieldDescriptorProto


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="kubefal/externalscaler.proto", package="externalscaler", syntax="proto3"
    )

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        described = proto.message_type.add(name=name)
        for field_name, number, field_type, label, type_name in fields:
            field = described.field.add(
                name=field_name, number=number, type=field_type, label=label, json_name=field_name
            )
            if type_name:
                field.type_name = type_name

    optional, repeated = _FieldType.LABEL_OPTIONAL, _FieldType.LABEL_REPEATED
    string, boolean = _FieldType.TYPE_STRING, _FieldType.TYPE_BOOL
    int64, double, nested = _FieldType.TYPE_INT64, _FieldType.TYPE_DOUBLE, _FieldType.TYPE_MESSAGE

    ref = proto.message_type.add(name="ScaledObjectRef")
    ref.field.add(name="name", number=1, type=string, label=optional, json_name="name")
    ref.field.add(name="namespace", number=2, type=string, label=optional, json_name="namespace")
    ref.field.add(
        name="scalerMetadata",
        number=3,
        type=nested,
        label=repeated,
        type_name=".externalscaler.ScaledObjectRef.ScalerMetadataEntry",
        json_name="scalerMetadata",
    )
    entry = ref.nested_type.add(name="ScalerMetadataEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=string, label=optional, json_name="key")
    entry.field.add(name="value", number=2, type=string, label=optional, json_name="value")

    message("IsActiveResponse", ("result", 1, boolean, optional, ""))
    message(
        "GetMetricSpecResponse",
        ("metricSpecs", 1, nested, repeated, ".externalscaler.MetricSpec"),
    )
    message(
        "MetricSpec",
        ("metricName", 1, string, optional, ""),
        ("targetSize", 2, int64, optional, ""),
        ("targetSizeFloat", 3, double, optional, ""),
    )
    message(
        "GetMetricsRequest",
        ("scaledObjectRef", 1, nested, optional, ".externalscaler.ScaledObjectRef"),
        ("metricName", 2, string, optional, ""),
    )
    message(
        "GetMetricsResponse",
        ("metricValues", 1, nested, repeated, ".externalscaler.MetricValue"),
    )
    message(
        "MetricValue",
        ("metricName", 1, string, optional, ""),
        ("metricValue", 2, int64, optional, ""),
        ("metricValueFloat", 3, double, optional, ""),
    )
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())


def _message_class(name: str) -> Any:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"externalscaler.{name}"))


ScaledObjectRef = _message_class("ScaledObjectRef")
IsActiveResponse = _message_class("IsActiveResponse")
GetMetricSpecResponse = _message_class("GetMetricSpecResponse")
MetricSpec = _message_class("MetricSpec")
GetMetricsRequest = _message_class("GetMetricsRequest")
GetMetricsResponse = _message_class("GetMetricsResponse")
MetricValue = _message_class("MetricValue")


def metric_name(app_id: str) -> str:
    """The metric KEDA reads for an app: ``kubefal-desired-runners-<namespace>-<name>``."""
    return f"{METRIC_PREFIX}-{app_id.replace('/', '-')}"


def app_id_of(ref: Any) -> str:
    """The app a ScaledObjectRef names: trigger metadata ``appId`` wins, else its own name."""
    metadata = dict(ref.scalerMetadata)
    return str(metadata.get("appId") or f"{ref.namespace}/{ref.name}")


class ExternalScaler:
    """The four RPCs of ``externalscaler.ExternalScaler``."""

    def __init__(self, source: DesiredRunners) -> None:
        self.source = source
        self._watchers: dict[str, set[asyncio.Queue[None]]] = {}
        self._fanout: asyncio.Task[None] | None = None

    def _desired(self, ref: Any) -> int:
        desired = self.source.desired_runners(app_id_of(ref))
        return 0 if desired is None else desired

    async def IsActive(self, ref: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return IsActiveResponse(result=self._desired(ref) > 0)

    async def StreamIsActive(
        self, ref: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        self._ensure_fanout()
        app_id = app_id_of(ref)
        changed: asyncio.Queue[None] = asyncio.Queue(maxsize=1)
        self._watchers.setdefault(app_id, set()).add(changed)
        try:
            last: bool | None = None
            while True:
                active = self._desired(ref) > 0
                if active != last:
                    yield IsActiveResponse(result=active)
                    last = active
                try:
                    await asyncio.wait_for(changed.get(), timeout=STREAM_HEARTBEAT_SECONDS)
                except TimeoutError:
                    last = None  # re-send the current answer as a heartbeat
        finally:
            self._watchers[app_id].discard(changed)

    async def GetMetricSpec(self, ref: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        spec = MetricSpec(metricName=metric_name(app_id_of(ref)), targetSize=1, targetSizeFloat=1.0)
        return GetMetricSpecResponse(metricSpecs=[spec])

    async def GetMetrics(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        desired = self._desired(request.scaledObjectRef)
        name = request.metricName or metric_name(app_id_of(request.scaledObjectRef))
        value = MetricValue(metricName=name, metricValue=desired, metricValueFloat=float(desired))
        return GetMetricsResponse(metricValues=[value])

    def _ensure_fanout(self) -> None:
        if self._fanout is None or self._fanout.done():
            self._fanout = asyncio.get_running_loop().create_task(self._fan_out())

    async def _fan_out(self) -> None:
        async for app_id in self.source.subscribe_desired():
            for queue in self._watchers.get(app_id, ()):
                if queue.empty():
                    queue.put_nowait(None)

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler to register on a ``grpc.aio`` server."""

        def unary(
            method: Callable[..., Any], request_type: Any, response_type: Any
        ) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                method,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )

        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "IsActive": unary(self.IsActive, ScaledObjectRef, IsActiveResponse),
                "StreamIsActive": grpc.unary_stream_rpc_method_handler(
                    self.StreamIsActive,
                    request_deserializer=ScaledObjectRef.FromString,
                    response_serializer=IsActiveResponse.SerializeToString,
                ),
                "GetMetricSpec": unary(self.GetMetricSpec, ScaledObjectRef, GetMetricSpecResponse),
                "GetMetrics": unary(self.GetMetrics, GetMetricsRequest, GetMetricsResponse),
            },
        )

    async def stop(self) -> None:
        if self._fanout is not None:
            self._fanout.cancel()


async def serve(
    source: DesiredRunners, *, host: str, port: int
) -> tuple[grpc.aio.Server, ExternalScaler, int]:
    """Start the external scaler on ``host:port`` (0 picks a port); return server and port."""
    scaler = ExternalScaler(source)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((scaler.handler(),))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, scaler, bound
