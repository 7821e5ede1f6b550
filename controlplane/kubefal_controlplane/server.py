"""The control plane's lifespan: one object that owns the Kubernetes client and the gRPC server.

:class:`ControlPlane` is the app factory: built from :class:`Settings`, it creates the
Kubernetes client, the authenticator and the servicer, listens (TLS, with HTTP/2 as gRPC
needs; or gRPC local credentials), and on :meth:`stop` lets calls in progress finish for the
grace period, then closes the Kubernetes client. Use it as a context manager.
"""

from __future__ import annotations

import logging
from concurrent import futures
from types import TracebackType

import grpc
from isolate_proto.controller_pb2_grpc import add_IsolateControllerServicer_to_server

from kubefal_controlplane import auth, backend, cluster, local, service
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
            self.cluster.read_key_record, cache_seconds=settings.auth_cache_seconds
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
            ],
            maximum_concurrent_rpcs=settings.max_workers * 4,
        )
        add_IsolateControllerServicer_to_server(self.controller, self.server)  # type: ignore[no-untyped-call]
        address = f"{settings.host}:{settings.port}"
        self.port: int = self.server.add_secure_port(address, self._credentials())
        if self.port == 0:
            self.cluster.close()
            raise OSError(f"cannot listen on {address}")

    def _credentials(self) -> grpc.ServerCredentials:
        if self.settings.local_credentials:
            return grpc.local_server_credentials()
        assert self.settings.tls_cert is not None and self.settings.tls_key is not None
        return grpc.ssl_server_credentials(
            [(self.settings.tls_key.read_bytes(), self.settings.tls_cert.read_bytes())]
        )

    def start(self) -> ControlPlane:
        self.server.start()
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
        self.server.stop(grace).wait()
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
