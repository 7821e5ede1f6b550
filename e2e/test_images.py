"""The built images run as they are: non-root, read-only root filesystem, host loopback only.

The runner image is started from its OCI archive with ``python -m kubefal_runner`` on
examples/text-stats and must answer a request over 127.0.0.1 with the app's result, then drain
and exit 0 on SIGTERM. The kubefal image must import every server process it is meant to run.
Only with ``KUBEFAL_IMAGE_TESTS=1`` after ``make images`` (``make test-images``).
"""

from __future__ import annotations

import json
import pathlib
import uuid
from collections.abc import Iterator

import httpx
import pytest

from e2e import images
from e2e.cluster import free_port
from testkit import waiting

TEXT_STATS = images.REPO_ROOT / "examples" / "text-stats"
HARDENED = [
    "--pull=never",
    "--read-only",
    "--cap-drop=all",
    "--security-opt=no-new-privileges",
]


@pytest.fixture
def podman_env(tmp_path: pathlib.Path) -> dict[str, str]:
    return images.podman_env(tmp_path)


@pytest.fixture
def container_name(podman_env: dict[str, str]) -> Iterator[str]:
    name = f"kubefal-e2e-{uuid.uuid4().hex[:8]}"
    yield name
    images.podman(podman_env, "rm", "--force", "--ignore", name, check=False)


def test_the_runner_image_serves_an_app_from_its_archive_and_drains_on_sigterm(
    podman_env: dict[str, str], container_name: str
) -> None:
    images.require_images("kubefal-runner")
    loaded = images.podman(
        podman_env, "load", "--quiet", "--input", str(images.archive("kubefal-runner"))
    )
    assert images.image_ref("kubefal-runner") in loaded
    port, metrics_port = free_port(), free_port()
    images.podman(
        podman_env,
        "run",
        "--detach",
        f"--name={container_name}",
        "--network=host",
        *HARDENED,
        f"--volume={TEXT_STATS}:/app:ro",
        # The operator mounts an emptyDir there (requirements installed at start).
        "--tmpfs=/var/cache/kubefal:mode=1777",
        "--env=KUBEFAL_RUNNER_APP=/app/app.py::TextStats",
        "--env=KUBEFAL_RUNNER_HOST=127.0.0.1",
        f"--env=KUBEFAL_RUNNER_PORT={port}",
        f"--env=KUBEFAL_RUNNER_METRICS_PORT={metrics_port}",
        images.image_ref("kubefal-runner"),
    )
    base = f"http://127.0.0.1:{port}"

    waiting.wait_for(
        lambda: httpx.get(f"{base}/_kubefal/ready", timeout=2).status_code == 200,
        timeout=90,
        description="the runner container to be ready",
        describe_last=lambda: images.podman_logs(podman_env, container_name),
    )
    request = json.loads((TEXT_STATS / "request.json").read_text())
    response = httpx.post(f"{base}/", json=request, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"words": 9, "distinct_words": 7, "top_words": [["the", 3]]}
    # Non-root, as the image says (the operator's pods run it as 10001 too).
    assert images.podman(podman_env, "exec", container_name, "id", "-u") == "10001"

    images.podman(podman_env, "stop", "--time=30", container_name)
    exit_code = images.podman(podman_env, "inspect", "--format={{.State.ExitCode}}", container_name)
    logs = images.podman_logs(podman_env, container_name)
    assert exit_code == "0", logs
    assert "SIGTERM received: draining" in logs
    assert "teardown() done" in logs


def test_the_kubefal_image_imports_every_server_process_read_only_and_offline(
    podman_env: dict[str, str], container_name: str
) -> None:
    images.require_images("kubefal")
    images.podman(podman_env, "load", "--quiet", "--input", str(images.archive("kubefal")))
    modules = [
        "kubefal_operator.handlers",
        "kubefal_gateway.server",
        "kubefal_webhook.app",
        "kubefal_controlplane.server",
        # Imported only with a Redis store; redis needs async-timeout on Debian's 3.11.2.
        "kubefal_gateway.stores.redis_store",
    ]
    output = images.podman(
        podman_env,
        "run",
        f"--name={container_name}",
        "--network=none",
        *HARDENED,
        images.image_ref("kubefal"),
        "python",
        "-c",
        f"import getpass, os, {', '.join(modules)}; print(os.getuid(), getpass.getuser())",
    )
    # kopf names its peering identity after getpass.getuser(), which must not fail for the
    # passwd-less uid the chart runs.
    assert output.splitlines()[-1] == "65532 kubefal"
