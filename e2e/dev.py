"""``make dev``: kubefal on the local control plane, ready for the real fal_client.

Starts (or reuses) the local control plane, installs the CRD, runs the gateway and the
operator against it (with the builtin scaler), runs runner pods as local processes, runs
kubefal's fal control plane (``python -m kubefal_controlplane``, for the ``fal`` CLI), creates
an API key for the examples' namespace, applies the examples, prints how to call them and
writes the same lines to ``.kubefal/dev.env``. Ctrl-C or SIGTERM stops everything this command
started; the local control plane stays up (``make cluster-down``).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from e2e import cluster as local_cluster
from e2e import system as whole
from testkit import waiting

KEY_NAMESPACE = "kubefal-system"
EXAMPLES = local_cluster.REPO_ROOT / "examples"
DEFAULT_ENV_FILE = local_cluster.REPO_ROOT / ".kubefal" / "dev.env"


def _ensure_namespace(core: k8s.CoreV1Api, name: str) -> None:
    try:
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    except ApiException as error:
        if error.status != 409:
            raise


def _apply_examples(kubeconfig: pathlib.Path, namespace: str) -> list[str]:
    applied = []
    for manifest in sorted(EXAMPLES.glob("*/falapp.yaml")):
        falapp = yaml.safe_load(manifest.read_text())
        source = falapp["spec"].get("source", {}).get("configMapRef", {}).get("name")
        kubectl = ["kubectl", f"--kubeconfig={kubeconfig}", "-n", namespace]
        if source:
            configmap = subprocess.run(
                [
                    *kubectl,
                    "create",
                    "configmap",
                    source,
                    f"--from-file={manifest.parent / 'app.py'}",
                    "--dry-run=client",
                    "-o",
                    "yaml",
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            subprocess.run(
                [*kubectl, "apply", "-f", "-"],
                input=configmap,
                check=True,
                capture_output=True,
                text=True,
            )
        subprocess.run([*kubectl, "apply", "-f", str(manifest)], check=True, capture_output=True)
        applied.append(falapp["metadata"]["name"])
    return applied


def _start_controlplane(
    system: whole.System, *, kubeconfig: pathlib.Path, workdir: pathlib.Path
) -> tuple[subprocess.Popen[bytes], int]:
    """``python -m kubefal_controlplane`` with the gateway's certificate (localhost, 127.0.0.1)."""
    port = local_cluster.free_port()
    log = workdir / "controlplane.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "KUBEFAL_"))}
    argv = [
        sys.executable,
        "-m",
        "kubefal_controlplane",
        f"--port={port}",
        f"--tls-cert={workdir / 'tls' / 'tls.crt'}",
        f"--tls-key={workdir / 'tls' / 'tls.key'}",
        f"--kubeconfig={kubeconfig}",
        f"--key-namespace={KEY_NAMESPACE}",
        f"--gateway-admin-url=http://127.0.0.1:{system.ports.admin}",
        # fal files, fal.sync_dir and app_files sent to FAL_GRPC_HOST go on to the gateway.
        f"--gateway-rest-url=https://127.0.0.1:{system.rest_port}",
        f"--gateway-rest-ca={system.ca}",
        f"--public-run-url=https://127.0.0.1:{system.ports.run}",
        f"--public-queue-url=https://127.0.0.1:{system.ports.queue}",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    system.logs.append(log)

    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the control plane exited:\n{log.read_text()[-3000:]}")
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    waiting.wait_for(listening, timeout=60, description="the control plane to listen")
    return process, port


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make dev", description=__doc__.split("\n")[0])
    parser.add_argument("--namespace", default="default", help="where the examples go")
    parser.add_argument(
        "--kubeconfig",
        type=pathlib.Path,
        help="use this cluster instead of the local control plane (started if not running)",
    )
    parser.add_argument(
        "--env-file",
        type=pathlib.Path,
        default=DEFAULT_ENV_FILE,
        help=f"where to write the client's environment lines (default {DEFAULT_ENV_FILE})",
    )
    args = parser.parse_args(argv)

    if args.kubeconfig is not None:
        kubeconfig = args.kubeconfig
    else:
        running = local_cluster.LocalCluster.attach()
        if running is None:
            print("# starting the local control plane …", flush=True)
            running = local_cluster.LocalCluster().start()
        elif not running.kubelet_port:
            print(
                "# this local control plane serves no pod logs (fal runners logs, kubectl logs): "
                "it predates them; `make cluster-down` and run `make dev` again",
                flush=True,
            )
        kubeconfig = running.kubeconfig
    core = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=str(kubeconfig)))
    _ensure_namespace(core, KEY_NAMESPACE)
    _ensure_namespace(core, args.namespace)
    workdir = local_cluster.REPO_ROOT / ".kubefal" / "dev"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with whole.running_system(kubeconfig, workdir=workdir, key_namespace=KEY_NAMESPACE) as system:
        controlplane, grpc_port = _start_controlplane(
            system, kubeconfig=kubeconfig, workdir=workdir
        )
        key = whole.create_key(
            core.api_client,
            key_namespace=KEY_NAMESPACE,
            namespaces=[args.namespace],
            description="make dev",
        )
        apps = _apply_examples(kubeconfig, args.namespace)
        env = system.client_env(str(key))
        env["FAL_GRPC_HOST"] = f"localhost:{grpc_port}"
        env["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(system.ca)
        env_file = args.env_file
        lines = [
            f"{name}={env[name]}"
            for name in (
                "FAL_RUN_HOST",
                "FAL_QUEUE_RUN_HOST",
                "FAL_REST_HOST",
                "KUBEFAL_REST_HOST",
                "SSL_CERT_FILE",
                "FAL_KEY",
                "FAL_GRPC_HOST",
                "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
            )
        ]
        env_file.parent.mkdir(parents=True, exist_ok=True)
        env_file.write_text("\n".join(lines) + "\n")
        env_file.chmod(0o600)
        print(f"export KUBECONFIG={kubeconfig}")
        print("\n".join(lines))
        print(
            f"# apps: {', '.join(f'{args.namespace}/{a}' for a in apps)}   (kubectl get falapps -A)"
        )
        print(
            f"# logs: {workdir}/gateway.log, {workdir}/operator.log, {workdir}/pods/*/container.log"
        )
        print(
            f"# try:  set -a; source {env_file}; set +a; {sys.executable} -c "
            f"\"import fal_client; print(fal_client.subscribe('{args.namespace}/text-stats', "
            "arguments={'text': 'the cat and the hat'}, with_logs=True))\""
        )
        fal_cli = pathlib.Path(sys.executable).parent / "fal"
        print(f"# fal CLI: set -a; source {env_file}; set +a; {fal_cli} apps list")
        print(f"#          {fal_cli} runners list; {fal_cli} files list /data (same lines)")
        print(f"#          {fal_cli} runners logs <runner id> [--follow] (a runner pod's output)")
        print(
            "# Ctrl-C removes the examples and stops the gateway, operator, control plane "
            "and runners",
            flush=True,
        )
        try:
            while not stop.wait(1):
                if any(
                    p.poll() is not None for p in (system.gateway, system.operator, controlplane)
                ):
                    print("a kubefal process exited; see the logs above", file=sys.stderr)
                    return 1
        except KeyboardInterrupt:
            pass
        finally:
            local_cluster.stop_pids([controlplane.pid], timeout=15)
            # Without the operator and the runners the examples would hold (fake) GPUs.
            subprocess.run(
                [
                    "kubectl",
                    f"--kubeconfig={kubeconfig}",
                    "-n",
                    args.namespace,
                    "delete",
                    "falapps",
                    *apps,
                    "--wait=false",
                ],
                check=False,
                capture_output=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
