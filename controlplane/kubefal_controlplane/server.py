"""The control plane's lifespan: one object that owns the Kubernetes client and the gRPC server.

:class:`ControlPlane` is the app factory: built from :class:`Settings`, it creates the
Kubernetes client, the authenticator and the servicer, listens, and on :meth:`stop` lets calls
in progress finish for the grace period, then closes the Kubernetes client. Use it as a
context manager.

With TLS, the port is the front door's (:mod:`kubefal_controlplane.frontdoor`): HTTP/2
connections reach grpcio, which listens without TLS on a Unix socket in a private directory,
and HTTP/1.1 connections reach the REST routes fal's SDK sends to the same host
(:mod:`kubefal_controlplane.rest`). With gRPC local credentials (``ISOLATE_TEST_MODE``
clients) grpcio listens on the port itself and there is no REST.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from concurrent import futures
from types import TracebackType
from typing import cast

import grpc
from isolate_proto.controller_pb2_grpc import add_IsolateControllerServicer_to_server

from kubefal_controlplane import auth, backend, cluster, frontdoor, local, rest, rpc, service
from kubefal_controlplane import settings as settings_module

logger = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10.0


class ControlPlane:
    """A running ``IsolateController`` server and everything it owns."""

    def __init__(
        self, settings: settings_module.Settings, *, kube: backend.Backend | None = None
    ) -> None:
        self.settings = settings
        self.cluster: backend.Backend
        if kube is not None:
            self.cluster = kube
        elif settings.local_run is not None:
            self.cluster = local.LocalRun(settings.local_run, settings)
        else:
            self.cluster = cluster.Cluster(cluster.new_api_client(settings), settings)
        self.authenticator = auth.Authenticator(
            self.cluster.read_key_record,
            cache_seconds=settings.auth_cache_seconds,
            failures_per_key=settings.auth_failures_per_key,
            failures_per_ip=settings.auth_failures_per_ip,
            max_tracked=settings.auth_max_tracked,
        )
        self.controller = service.Controller(
            cluster=self.cluster, authenticator=self.authenticator, settings=settings
        )
        self.server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=settings.max_workers, thread_name_prefix="controlplane"
            ),
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                # A connection with no call in progress is closed (GOAWAY) after this long,
                # so idle h2 connections cannot hold the front door's places.
                ("grpc.max_connection_idle_ms", int(settings.grpc_idle_timeout * 1000)),
            ],
            maximum_concurrent_rpcs=settings.max_workers * 4,
            interceptors=[rpc.DecodeRequests()],
        )
        add_IsolateControllerServicer_to_server(self.controller, self.server)  # type: ignore[no-untyped-call]
        self.rest: rest.RestApi | None = None
        self.front_door: frontdoor.FrontDoor | None = None
        self._socket_dir: str | None = None
        address = f"{settings.host}:{settings.port}"
        if settings.local_credentials:
            self.port: int = self.server.add_secure_port(address, grpc.local_server_credentials())
            if self.port == 0:
                self.cluster.close()
                raise OSError(f"cannot listen on {address}")
            return
        try:
            self._listen_behind_front_door()
        except Exception:
            self.cluster.close()
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
            raise

    def _listen_behind_front_door(self) -> None:
        settings = self.settings
        assert settings.tls_cert is not None and settings.tls_key is not None
        context = frontdoor.server_context(str(settings.tls_cert), str(settings.tls_key))
        self._socket_dir = tempfile.mkdtemp(prefix="kubefal-controlplane-")
        os.chmod(self._socket_dir, 0o700)
        grpc_socket = os.path.join(self._socket_dir, "grpc.sock")
        if self.server.add_insecure_port(f"unix:{grpc_socket}") == 0:
            raise OSError(f"cannot listen on unix:{grpc_socket}")
        logs = self.cluster if hasattr(self.cluster, "read_runner_log") else None
        self.rest = rest.RestApi(
            controller=self.controller,
            logs=cast("rest.RunnerLogs | None", logs),
            authenticator=self.authenticator,
            settings=settings,
        )
        self.front_door = frontdoor.FrontDoor(
            host=settings.host,
            port=settings.port,
            context=context,
            grpc_socket=grpc_socket,
            rest=self.rest.serve,
            max_connections=settings.rest_max_connections,
            handshake_timeout=settings.rest_header_timeout,
            max_connections_per_ip=settings.max_connections_per_ip,
            peers=self.authenticator.peers,
        )
        self.port = self.front_door.port

    def start(self) -> ControlPlane:
        self.server.start()
        if self.front_door is not None:
            self.front_door.start()
        logger.info(
            "IsolateController listening on %s:%d (%s)",
            self.settings.host,
            self.port,
            "local credentials" if self.settings.local_credentials else "TLS",
        )
        return self

    def wait(self) -> None:
        self.server.wait_for_termination()

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        if self.front_door is not None:
            self.front_door.stop_accepting()
        self.server.stop(grace).wait()
        if self.front_door is not None:
            rest_api = self.rest
            if rest_api is not None and self.front_door.loop.is_running():
                with contextlib.suppress(Exception):
                    self.front_door.call(rest_api.aclose(), timeout=5.0)
            self.front_door.stop(grace=1.0)
            if rest_api is not None:
                rest_api.close()
            self.front_door.close_socket()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self.cluster.close()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
