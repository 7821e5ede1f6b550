"""Start-up refusals of the gateway's edge settings (issue 9, item 12): reading API-key Secrets
cluster-wide is an explicit choice, and limits must be usable."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from kubefal_gateway import settings


def test_outside_a_pod_the_key_namespace_must_be_chosen(tmp_path: pathlib.Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    assert not settings.SERVICE_ACCOUNT_NAMESPACE.exists()
    with pytest.raises(SystemExit) as refused:
        settings.load(["--kubeconfig", str(kubeconfig)], environ={})
    assert "--key-namespace" in str(refused.value)
    assert "'*'" in str(refused.value)
    every = settings.load(["--kubeconfig", str(kubeconfig), "--key-namespace", "*"], environ={})
    assert every.key_namespace == "*"
    one = settings.load(
        [],
        environ={
            "KUBEFAL_GATEWAY_KEY_NAMESPACE": "keys",
            "KUBEFAL_GATEWAY_KUBECONFIG": str(kubeconfig),
        },
    )
    assert one.key_namespace == "keys"
    # The real process says so and exits before opening anything.
    completed = subprocess.run(
        [sys.executable, "-m", "kubefal_gateway", "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert completed.returncode != 0
    assert "--key-namespace is required outside a pod" in completed.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-header-bytes", "0"],
        ["--header-timeout", "0"],
        ["--admin-token-metrics", "maybe"],
    ],
)
def test_unusable_limits_are_refused(argv: list[str], tmp_path: pathlib.Path) -> None:
    with pytest.raises(SystemExit):
        settings.load([*argv, "--static-config", str(tmp_path / "c.yaml")], environ={})


def test_boolean_flags_parse() -> None:
    loaded = settings.load(
        ["--admin-token-metrics", "true", "--static-config", "c.yaml"], environ={}
    )
    assert loaded.admin_token_metrics is True


def test_the_edge_flags_reach_the_webhook_worker_and_the_key_store() -> None:
    from kubefal_gateway import auth, webhooks

    loaded = settings.load(
        [
            "--static-config=c.yaml",
            "--webhook-allow=127.0.0.1/32, hooks.internal",
            "--webhook-deny=34.118.224.0/20",
            "--webhook-timeout=3",
            "--webhook-base-delay=2",
            "--webhook-max-delay=60",
            "--webhook-max-attempts=4",
            "--webhook-concurrency=9",
            "--webhook-tenant-concurrency=2",
            "--webhook-tenant-queue=5",
            "--key-cache-ttl=30",
            "--key-verify-concurrency=3",
            "--key-verify-queue=7",
            "--auth-failures-per-key=4",
            "--auth-failures-per-ip=8",
            "--key-rate-limit=2.5",
            "--key-rate-burst=6",
        ],
        environ={},
    )
    worker = webhooks.settings_from(loaded)
    assert (worker.allow, worker.deny) == (("127.0.0.1/32", "hooks.internal"), ("34.118.224.0/20",))
    assert (worker.timeout, worker.base_delay, worker.max_delay, worker.max_attempts) == (
        3.0,
        2.0,
        60.0,
        4,
    )
    assert (worker.concurrency, worker.tenant_concurrency, worker.tenant_queue) == (9, 2, 5)
    assert worker.lease > worker.timeout * (1 + 5 / 2)
    assert auth.limits_from_settings(loaded) == auth.AuthLimits(
        cache_ttl=30.0,
        verify_concurrency=3,
        verify_queue=7,
        failures_per_key=4,
        failures_per_ip=8,
        rate_limit=2.5,
        rate_burst=6,
    )
    with pytest.raises(SystemExit, match="webhook-deny"):
        settings.load(["--static-config=c.yaml", "--webhook-deny=hooks.internal"], environ={})
