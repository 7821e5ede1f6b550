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
