"""fal_client inside a runner reaches the gateway over TLS with the CA the operator hands over.

We test these aspects, with real runners and the real fal_client: a runner given
``KUBEFAL_GATEWAY_CA`` (and ``FAL_RUN_HOST``) calls another app through a TLS endpoint whose
certificate comes from that private CA, and removes the bundle it wrote when it stops; without
the CA the same call fails verification; the bundle keeps the default roots before the
gateway's CA (pure logic).
"""

from __future__ import annotations

import pathlib

import httpx
import pytest

from kubefal_runner import trust
from testkit import certs, runners

pytestmark = pytest.mark.slow  # starts real processes; `make unit` leaves it out


def _callee(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> tuple[runners.RunnerProcess, pathlib.Path]:
    ca_path, cert_path, key_path = certs.issue_serving_certificate(
        tmp_path / "pki", dns_names=["localhost"], ip_addresses=["127.0.0.1"]
    )
    callee = start_runner(
        "caller_app.py::CalleeApp",
        extra_args=["--tls-cert", str(cert_path), "--tls-key", str(key_path)],
        tls_ca=ca_path,
    )
    callee.wait_ready()
    return callee, ca_path


def _call(caller: runners.RunnerProcess) -> dict[str, object]:
    response = httpx.post(f"{caller.base_url}/", json={"name": "ada"}, timeout=60)
    assert response.status_code == 200
    outcome: dict[str, object] = response.json()
    return outcome


def test_fal_client_in_a_runner_trusts_the_gateway_ca_it_is_given(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    callee, ca_path = _callee(start_runner, tmp_path)
    caller = start_runner(
        "caller_app.py::CallerApp",
        extra_env={
            "FAL_RUN_HOST": f"localhost:{callee.port}",
            "FAL_KEY": "key-id:key-secret",
            "KUBEFAL_GATEWAY_CA": ca_path.read_text(),
            "TMPDIR": str(tmp_path),
        },
    )
    caller.wait_ready()
    (bundle,) = tmp_path.glob(f"{trust.BUNDLE_PREFIX}*.pem")

    assert _call(caller) == {"result": {"greeting": "hello ada"}}
    # the runner removes its bundle when it stops
    caller.send_signal()
    assert caller.wait_exit() == 0
    assert not bundle.exists()


def test_without_the_gateway_ca_the_call_is_not_trusted(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    callee, _ = _callee(start_runner, tmp_path)
    caller = start_runner(
        "caller_app.py::CallerApp",
        extra_env={"FAL_RUN_HOST": f"localhost:{callee.port}", "FAL_KEY": "key-id:key-secret"},
    )
    caller.wait_ready()

    outcome = _call(caller)

    assert "CERTIFICATE_VERIFY_FAILED" in str(outcome.get("error"))


def test_the_bundle_keeps_the_default_roots_before_the_gateway_ca(tmp_path: pathlib.Path) -> None:
    roots = tmp_path / "roots.pem"
    roots.write_text("-----BEGIN CERTIFICATE-----\nROOTS\n-----END CERTIFICATE-----\n")
    gateway_ca = "-----BEGIN CERTIFICATE-----\nGATEWAY\n-----END CERTIFICATE-----"
    environ = {"SSL_CERT_FILE": str(roots), "KUBEFAL_GATEWAY_CA": gateway_ca}

    bundle = trust.install_gateway_ca(environ, directory=tmp_path)

    assert bundle is not None
    assert environ["SSL_CERT_FILE"] == environ["REQUESTS_CA_BUNDLE"] == str(bundle)
    text = bundle.read_text()
    assert text.index("ROOTS") < text.index("GATEWAY")
    assert trust.install_gateway_ca({}, directory=tmp_path) is None


def test_runners_sharing_a_temporary_directory_each_trust_their_own_gateway(
    tmp_path: pathlib.Path,
) -> None:
    """Two runner processes with one TMPDIR (kubefal run, the e2e pod runner) and different
    gateway CAs: neither bundle replaces the other, and each is readable by its owner only."""
    first, second = (
        {"KUBEFAL_GATEWAY_CA": f"-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----"}
        for name in ("GATEWAY-ONE", "GATEWAY-TWO")
    )

    one = trust.install_gateway_ca(first, directory=tmp_path)
    two = trust.install_gateway_ca(second, directory=tmp_path)

    assert one is not None and two is not None and one != two
    assert "GATEWAY-ONE" in one.read_text() and "GATEWAY-TWO" not in one.read_text()
    assert "GATEWAY-TWO" in two.read_text()
    assert one.stat().st_mode & 0o077 == 0
