"""The pieces `kubefal run` prepares before starting anything: CA, key, ports, gateway config."""

from __future__ import annotations

import contextlib
import datetime
import os
import pathlib
import random
import socket
import ssl
import subprocess
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kubefal_api import apikeys
from kubefal_cli import appref, errors, localca
from kubefal_cli.local import config as local_config
from kubefal_cli.local import supervise


def _handshake(
    tls: localca.LocalTls,
    *,
    server_name: str,
    cert: pathlib.Path | None = None,
    key: pathlib.Path | None = None,
) -> str:
    """Serve TLS with the local server certificate and connect trusting only the local CA."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert or tls.server_cert, key or tls.server_key)
    client_context = ssl.create_default_context(cafile=str(tls.ca_cert))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def accept_one() -> None:
            connection, _ = listener.accept()
            with (
                contextlib.suppress(ssl.SSLError, OSError),
                server_context.wrap_socket(connection, server_side=True) as wrapped,
            ):
                wrapped.sendall(b"ok")

        acceptor = threading.Thread(target=accept_one)
        acceptor.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_context.wrap_socket(raw, server_hostname=server_name) as client,
        ):
            received = client.recv(2).decode()
        acceptor.join(timeout=10)
    return received


@pytest.mark.parametrize("server_name", ["127.0.0.1", "localhost"])
def test_a_client_trusting_the_local_ca_accepts_the_gateway_certificate(
    tmp_path: pathlib.Path, server_name: str
) -> None:
    tls = localca.ensure(tmp_path / "ca")

    assert _handshake(tls, server_name=server_name) == "ok"


def _leaf_signed_by_the_local_ca(
    directory: pathlib.Path, *, name: str
) -> tuple[pathlib.Path, pathlib.Path]:
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(tz=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "rogue.pem", directory / "rogue-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_even_with_its_key_the_local_ca_cannot_vouch_for_another_host(
    tmp_path: pathlib.Path,
) -> None:
    tls = localca.ensure(tmp_path / "ca")
    cert, key = _leaf_signed_by_the_local_ca(tmp_path / "ca", name="pypi.org")

    with pytest.raises(ssl.SSLCertVerificationError, match=r"(?i)name constraint|permitted"):
        _handshake(tls, server_name="pypi.org", cert=cert, key=key)


def test_the_ca_is_reused_and_its_key_is_private(tmp_path: pathlib.Path) -> None:
    first = localca.ensure(tmp_path / "ca")
    ca_bytes = first.ca_cert.read_bytes()
    server_bytes = first.server_cert.read_bytes()

    second = localca.ensure(tmp_path / "ca")

    assert second.ca_cert.read_bytes() == ca_bytes
    assert second.server_cert.read_bytes() == server_bytes
    assert (tmp_path / "ca" / "ca-key.pem").stat().st_mode & 0o077 == 0
    assert first.server_key.stat().st_mode & 0o077 == 0


def test_the_bundle_trusts_the_local_ca_and_the_public_roots(tmp_path: pathlib.Path) -> None:
    tls = localca.ensure(tmp_path / "ca")

    bundle = tls.ca_bundle.read_text()

    assert bundle.startswith(tls.ca_cert.read_text().strip())
    assert bundle.count("BEGIN CERTIFICATE") > 10


def test_a_lost_server_certificate_is_reissued_by_the_same_ca(tmp_path: pathlib.Path) -> None:
    tls = localca.ensure(tmp_path / "ca")
    ca_bytes = tls.ca_cert.read_bytes()
    tls.server_cert.unlink()

    renewed = localca.ensure(tmp_path / "ca")

    assert renewed.ca_cert.read_bytes() == ca_bytes
    assert _handshake(renewed, server_name="127.0.0.1") == "ok"


def test_a_corrupt_ca_is_replaced_together_with_its_server_certificate(
    tmp_path: pathlib.Path,
) -> None:
    tls = localca.ensure(tmp_path / "ca")
    tls.ca_cert.write_text("garbage")

    renewed = localca.ensure(tmp_path / "ca")

    assert "BEGIN CERTIFICATE" in renewed.ca_cert.read_text()
    assert _handshake(renewed, server_name="127.0.0.1") == "ok"


def test_the_local_key_is_generated_once_and_kept_private(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "state" / "api-key"

    first = local_config.load_or_create_local_key(path)
    second = local_config.load_or_create_local_key(path)

    assert first == second
    assert path.stat().st_mode & 0o077 == 0


def test_port_zero_picks_four_distinct_free_ports() -> None:
    ports = local_config.choose_ports(0)

    assert len({ports.queue, ports.run, ports.admin, ports.runner, ports.rest}) == 5


def _two_consecutive_free_ports() -> int:
    """A port P such that P and P + 1 are free (below the ephemeral range, which the OS fills)."""
    for port in random.sample(range(20000, 32000, 2), k=200):
        with socket.socket() as first, socket.socket() as second:
            try:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
                with socket.socket() as third:  # the REST (files) port
                    third.bind(("127.0.0.1", port + 2))
            except OSError:
                continue
            return port
    raise AssertionError("no two consecutive free ports found")


def test_an_explicit_port_gives_the_queue_that_port_and_the_run_api_the_next() -> None:
    free = _two_consecutive_free_ports()

    ports = local_config.choose_ports(free)

    assert (ports.queue, ports.run, ports.rest) == (free, free + 1, free + 2)


def test_an_out_of_range_port_is_refused() -> None:
    with pytest.raises(errors.CliError, match="out of range"):
        local_config.choose_ports(70000)


def test_the_gateway_config_names_the_app_its_runner_and_only_the_key_hash(
    apps_dir: pathlib.Path,
) -> None:
    config = appref.read_config(appref.parse_ref(str(apps_dir / "echo_app.py::CliEchoApp")))
    key = apikeys.generate_key()
    record = apikeys.new_record(key=key, namespaces=["local"])

    static = local_config.static_config(
        config=config, runner_url="http://127.0.0.1:9999", key_record=record
    )

    assert static["apps"] == [
        {
            "id": "local/cli-echo-app",
            "auth": "shared",
            "runners": ["http://127.0.0.1:9999"],
            "maxMultiplexing": 2,
            "requestTimeout": 60,
        }
    ]
    stored = static["keys"][0]  # type: ignore[index]
    assert key.secret not in repr(static)
    assert apikeys.verify_secret(secret=key.secret, encoded_hash=stored["hash"])
    assert stored["namespaces"] == "local"


def _env_lines(**extra: str) -> local_config.EnvLines:
    return local_config.EnvLines(
        run_host="127.0.0.1:2",
        queue_run_host="127.0.0.1:1",
        ssl_cert_file=pathlib.Path("/ca.pem"),
        fal_key="kf0123456789abcdef:s",
        app_id="local/app",
        **extra,
    )


def test_the_env_lines_are_exactly_what_fal_client_reads() -> None:
    lines = _env_lines()

    assert lines.render() == (
        "FAL_RUN_HOST=127.0.0.1:2\n"
        "FAL_QUEUE_RUN_HOST=127.0.0.1:1\n"
        "SSL_CERT_FILE=/ca.pem\n"
        "FAL_KEY=kf0123456789abcdef:s\n"
        "KUBEFAL_APP=local/app\n"
    )


def test_the_env_lines_point_fal_sdk_and_fal_client_uploads_at_the_rest_port() -> None:
    lines = _env_lines(rest_host="127.0.0.1:3")

    assert lines.render().splitlines()[2:4] == [
        "FAL_REST_HOST=127.0.0.1:3",
        "KUBEFAL_REST_HOST=127.0.0.1:3",
    ]


def test_the_printed_example_fills_the_required_fields_of_the_root_endpoint(
    apps_dir: pathlib.Path,
) -> None:
    config = appref.read_config(appref.parse_ref(str(apps_dir / "echo_app.py::CliEchoApp")))

    assert config.example_arguments == {"text": "hello"}


def test_example_placeholders_follow_the_schema_of_each_required_field() -> None:
    openapi = {
        "paths": {
            "/": {
                "post": {
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/In"}}
                        }
                    }
                }
            }
        },
        "components": {
            "schemas": {
                "In": {
                    "required": ["size", "mode", "seed", "note", "flags"],
                    "properties": {
                        "size": {"type": "integer", "minimum": 64},
                        "mode": {"$ref": "#/components/schemas/Mode"},
                        "seed": {"anyOf": [{"type": "null"}, {"type": "integer"}]},
                        "note": {"type": "string", "examples": ["a cat"]},
                        "flags": {"type": "array"},
                        "optional": {"type": "string"},
                    },
                },
                "Mode": {"enum": ["fast", "slow"]},
            }
        },
    }

    assert appref.example_arguments(openapi) == {
        "size": 64,
        "mode": "fast",
        "seed": 1,
        "note": "a cat",
        "flags": [],
    }


_ACCESS_LINE = 'INFO:     127.0.0.1:1 - "POST / HTTP/1.1" 200 OK'
_APP_LINE = '{"message": "echoing \'hi\'", "level": "STDOUT", "source": "USER"}'


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ('INFO:     127.0.0.1:1 - "GET /_kubefal/ready HTTP/1.1" 200 OK', None),
        (_ACCESS_LINE, _ACCESS_LINE),
        (_APP_LINE, "[STDOUT] echoing 'hi'"),
        ("{not json", "{not json"),
    ],
)
def test_the_followed_log_hides_probe_noise_and_unwraps_app_output(
    line: str, shown: str | None
) -> None:
    assert supervise.readable_log_line(line) == shown


def test_the_env_lines_point_the_fal_cli_at_the_control_plane_with_make_devs_names() -> None:
    lines = _env_lines(grpc_host="localhost:4")

    assert lines.render().splitlines()[4:6] == [
        "FAL_GRPC_HOST=localhost:4",
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=/ca.pem",
    ]


def _four_consecutive_free_ports() -> int:
    for port in random.sample(range(20000, 32000, 4), k=200):
        sockets = [socket.socket() for _ in range(4)]
        try:
            for offset, sock in enumerate(sockets):
                sock.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return port
    raise AssertionError("no four consecutive free ports found")


def test_with_the_control_plane_an_explicit_port_gives_it_the_fourth_port() -> None:
    free = _four_consecutive_free_ports()

    ports = local_config.choose_ports(free, control_plane=True)

    assert (ports.queue, ports.run, ports.rest, ports.grpc) == (free, free + 1, free + 2, free + 3)
    assert local_config.choose_ports(0).grpc == 0
    assert local_config.choose_ports(0, control_plane=True).grpc != 0


def test_keys_made_with_fal_keys_create_stay_valid_in_the_next_runs_gateway_config(
    apps_dir: pathlib.Path,
) -> None:
    config = appref.read_config(appref.parse_ref(str(apps_dir / "echo_app.py::CliEchoApp")))
    run_key = apikeys.new_record(key=apikeys.generate_key(), namespaces=["local"])
    made = apikeys.new_record(key=apikeys.generate_key(), namespaces=["local"])

    static = local_config.static_config(
        config=config,
        runner_url="http://127.0.0.1:9999",
        key_record=run_key,
        more_keys=[made, run_key],
    )

    assert [(k["id"], k["hash"]) for k in static["keys"]] == [  # type: ignore[attr-defined]
        (run_key.id, run_key.hash),
        (made.id, made.hash),
    ]


def test_a_hostile_state_path_in_the_env_file_stays_one_value_when_a_shell_sources_it(
    tmp_path: pathlib.Path,
) -> None:
    # $KUBEFAL_HOME (where the CA lives) may hold spaces, `$(...)` or a newline: sourcing the
    # env file must give back the path, run nothing and define no other variable.
    marker = tmp_path / "ran"
    ca = pathlib.Path(f"/home/a b/$(touch {marker})/`touch {marker}`\nINJECTED=1/ca.pem")
    env_file = tmp_path / "kubefal.env"
    lines = local_config.EnvLines(
        run_host="127.0.0.1:2",
        queue_run_host="127.0.0.1:1",
        ssl_cert_file=ca,
        fal_key="kf0123456789abcdef:s",
        app_id="local/app",
        grpc_host="localhost:4",
    )
    env_file.write_text(lines.render())

    sourced = subprocess.run(
        [
            "sh",
            "-c",
            'set -a; . "$1"; set +a; printf "%s|%s|%s|%s" "$SSL_CERT_FILE" '
            '"$GRPC_DEFAULT_SSL_ROOTS_FILE_PATH" "${INJECTED-unset}" "$FAL_KEY"',
            "sh",
            str(env_file),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    )

    assert sourced.stdout == f"{ca}|{ca}|unset|kf0123456789abcdef:s"
    assert not marker.exists()
