"""kubefal's control plane: fal's ``IsolateController`` gRPC API served from a Kubernetes cluster.

The unmodified ``fal`` CLI and ``fal.api.SyncServerlessClient`` manage apps over this API
(``FAL_GRPC_HOST``); each RPC is mapped onto FalApps, runner pods, API-key Secrets and Secrets.
"""
