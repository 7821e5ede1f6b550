"""``make dev``: kubefal on the local control plane, ready for the real fal_client.

Starts (or reuses) the local control plane, installs the CRD, runs the gateway and the
operator against it (with the builtin scaler), runs runner pods as local processes,
creates an API key, applies the examples, and prints how to call them. Ctrl-C stops
everything this command started; the control plane stays up (``make cluster-down``).
"""

from __future__ import annotations

import argparse
import pathlib
import signal
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
from kubefal_api import apikeys

KEY_NAMESPACE = "kubefal-system"
EXAMPLES = local_cluster.REPO_ROOT / "examples"


def _ensure_namespace(core: k8s.CoreV1Api, name: str) -> None:
    try:
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    except ApiException as error:
        if error.status != 409:
            raise


def _create_key(core: k8s.CoreV1Api) -> apikeys.ApiKey:
    key = apikeys.generate_key()
    record = apikeys.new_record(key=key, namespaces=["*"], description="make dev")
    core.create_namespaced_secret(
        KEY_NAMESPACE, apikeys.secret_manifest(record, namespace=KEY_NAMESPACE)
    )
    return key


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make dev", description=__doc__.split("\n")[0])
    parser.add_argument("--namespace", default="default", help="where the examples go")
    args = parser.parse_args(argv)

    running = local_cluster.LocalCluster.attach()
    if running is None:
        print("# starting the local control plane …", flush=True)
        running = local_cluster.LocalCluster().start()
    kubeconfig = running.kubeconfig
    core = k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=str(kubeconfig)))
    _ensure_namespace(core, KEY_NAMESPACE)
    workdir = local_cluster.REPO_ROOT / ".kubefal" / "dev"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with whole.running_system(kubeconfig, workdir=workdir, key_namespace=KEY_NAMESPACE) as system:
        key = _create_key(core)
        apps = _apply_examples(kubeconfig, args.namespace)
        env = system.client_env(str(key))
        env_file = workdir / "fal.env"
        lines = [
            f"{name}={env[name]}"
            for name in ("FAL_RUN_HOST", "FAL_QUEUE_RUN_HOST", "SSL_CERT_FILE", "FAL_KEY")
        ]
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
        print("# Ctrl-C removes the examples and stops the gateway, operator and runners")
        try:
            while not stop.wait(1):
                if system.gateway.poll() is not None or system.operator.poll() is not None:
                    print("a kubefal process exited; see the logs above", file=sys.stderr)
                    return 1
        except KeyboardInterrupt:
            pass
        finally:
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
