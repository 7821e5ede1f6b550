"""Pure logic of the control plane: names, runner states, scale patches, key checks, flags."""

from __future__ import annotations

import datetime
import subprocess
import sys
from typing import Any

import grpc
import isolate_proto
import pytest

from kubefal_api import apikeys
from kubefal_controlplane import app_secrets, auth, errors, mapping, settings
from tests.controlplane import runner_pods

State = isolate_proto.RunnerInfo.State
NOW = datetime.datetime(2026, 12, 5, 12, 0, tzinfo=datetime.UTC)


# ---- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "env", "expected"),
    [
        ("my-app", None, mapping.AppRef(None, "my-app")),
        ("my-app", "main", mapping.AppRef(None, "my-app")),
        ("team-a/my-app", None, mapping.AppRef("team-a", "my-app")),
        ("my-app--team-a", "team-a", mapping.AppRef("team-a", "my-app")),
        ("team-a/my-app--team-a", "team-a", mapping.AppRef("team-a", "my-app")),
    ],
)
def test_an_app_is_named_by_namespace_and_name_or_name_alone(
    alias: str, env: str | None, expected: mapping.AppRef
) -> None:
    assert mapping.parse_app_ref(alias, env, field="alias") == expected


@pytest.mark.parametrize(
    ("alias", "env", "message"),
    [
        ("", None, "alias: the app name is empty"),
        ("My_App", None, "alias: 'My_App' is not an app name"),
        ("Team/app", None, "alias: 'Team' is not a namespace name"),
        ("team-b/app--team-a", "team-a", "alias: names namespace 'team-b'"),
        ("app", "Not A Namespace", "environment_name: 'Not A Namespace' is not a namespace"),
        ("a" * 300, None, "alias: longer than 253"),
    ],
)
def test_a_bad_app_name_is_invalid_argument_naming_the_field(
    alias: str, env: str | None, message: str
) -> None:
    with pytest.raises(errors.RpcFailure) as raised:
        mapping.parse_app_ref(alias, env, field="alias")

    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message.startswith(message)


# ---- runners ---------------------------------------------------------------------------------


_pod = runner_pods.runner_pod


@pytest.mark.parametrize(
    ("pod", "detail", "state"),
    [
        (_pod(node=None, phase="Pending", ready=False), None, State.PENDING),
        (_pod(phase="Pending", ready=False, waiting="ImagePullBackOff"), None, State.DOCKER_PULL),
        (_pod(ready=False), None, State.SETUP),
        (_pod(ready=False, waiting="CrashLoopBackOff"), None, State.FAILURE_DELAY),
        (_pod(), None, State.RUNNING),
        (_pod(), mapping.RunnerDetail(in_flight=2, idle_seconds=0), State.RUNNING),
        (_pod(), mapping.RunnerDetail(in_flight=0, idle_seconds=5), State.IDLE),
        (_pod(deleting=True), None, State.TERMINATING),
        (_pod(deleting=True), mapping.RunnerDetail(in_flight=1, idle_seconds=0), State.DRAINING),
        (_pod(phase="Failed", ready=False), None, State.TERMINATED),
    ],
)
def test_a_runner_state_is_read_from_the_pod_and_the_gateway(
    pod: dict[str, Any], detail: mapping.RunnerDetail | None, state: int
) -> None:
    assert mapping.runner_state(pod, detail) == state


def test_an_idle_runner_reports_its_keep_alive_countdown_and_uptime() -> None:
    app = {
        "metadata": {"name": "demo", "namespace": "team-a", "uid": "u-1"},
        "spec": {"app": "a.py::A", "machineTypes": ["GPU-H100"], "scaling": {"keepAlive": 300}},
    }

    info = mapping.runner_info(
        _pod(), app, mapping.RunnerDetail(in_flight=0, idle_seconds=120.4), now=NOW
    )

    assert info.state == State.IDLE
    assert info.expiration_countdown == 179
    assert info.uptime == 3600.0
    assert info.alias == "team-a/demo"
    assert info.revision == "u-1"
    assert info.machine_type == "GPU-H100"
    assert info.runner_id == "demo-abc"


def test_gateway_details_skip_malformed_entries() -> None:
    details = mapping.parse_runner_details(
        {
            "runnerDetails": [
                {"id": "a", "inFlight": 2, "idleSeconds": 0},
                {"id": "b", "inFlight": -1},
                {"id": 3, "inFlight": 1},
                "junk",
                {"id": "c", "inFlight": True},
            ]
        }
    )

    assert details == {"a": mapping.RunnerDetail(in_flight=2, idle_seconds=0.0)}


# ---- scale -----------------------------------------------------------------------------------

SPEC = {"app": "a.py::A", "scaling": {"minConcurrency": 0, "maxConcurrency": 4}}


def test_scale_patches_only_the_fields_the_request_sets() -> None:
    request = isolate_proto.UpdateApplicationRequest(
        application_name="demo", keep_alive=30, max_concurrency=9, machine_types=["GPU-H100"]
    )

    patch = mapping.scale_patch(request, SPEC)

    assert patch == {
        "scaling": {"keepAlive": 30, "maxConcurrency": 9},
        "machineTypes": ["GPU-H100"],
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"keep_alive": -1}, "keep_alive: -1 is out of range (0-86400)"),
        ({"max_multiplexing": 0}, "max_multiplexing: 0 is out of range (1-1000)"),
        ({"concurrency_buffer_perc": 101}, "concurrency_buffer_perc: 101 is out of range"),
        ({"min_concurrency": 5}, "min_concurrency: "),
        ({"machine_types": ["GPU-H100", "GPU-H100"]}, "machine_types: "),
        ({"valid_regions": ["us", "us"]}, "valid_regions: regions must be distinct"),
        ({"request_start_timeout": 5}, "request_start_timeout: kubefal has no"),
        ({}, "application_name: no scaling field is set"),
    ],
)
def test_a_bad_scale_request_is_invalid_argument_naming_the_field(
    fields: dict[str, Any], message: str
) -> None:
    request = isolate_proto.UpdateApplicationRequest(application_name="demo", **fields)

    with pytest.raises(errors.RpcFailure) as raised:
        mapping.scale_patch(request, SPEC)

    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message.startswith(message)


def test_alias_info_fills_every_field_from_the_falapp_and_its_pods() -> None:
    app = {
        "metadata": {"name": "demo", "namespace": "team-a", "uid": "u-1"},
        "spec": {
            "app": "a.py::A",
            "auth": "shared",
            "machineTypes": ["GPU-H100", "GPU-H200"],
            "regions": ["us-east"],
            "requestTimeout": 120,
            "startupTimeout": 900,
            "scaling": {
                "minConcurrency": 1,
                "maxConcurrency": 7,
                "keepAlive": 45,
                "concurrencyBuffer": 2,
                "concurrencyBufferPerc": 20,
                "scalingDelay": 3,
                "maxMultiplexing": 4,
            },
        },
        "status": {"phase": "Progressing"},
    }

    info = mapping.alias_info(app, [_pod(), _pod(deleting=True), _pod(node=None, phase="Pending")])

    assert info == isolate_proto.AliasInfo(
        alias="team-a/demo",
        revision="u-1",
        auth_mode=isolate_proto.ApplicationAuthMode.SHARED,
        max_concurrency=7,
        max_multiplexing=4,
        keep_alive=45,
        active_runners=2,
        min_concurrency=1,
        machine_types=["GPU-H100", "GPU-H200"],
        request_timeout=120,
        startup_timeout=900,
        valid_regions=["us-east"],
        concurrency_buffer=2,
        concurrency_buffer_perc=20,
        scaling_delay_seconds=3,
        environment_name="team-a",
        is_rolling=True,
    )


# ---- secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("1BAD", "x", "name: '1BAD' is not an environment variable name"),
        ("HF-TOKEN", "x", "name: 'HF-TOKEN' is not an environment variable name"),
        ("TOKEN", "a\0b", "value: holds a NUL byte"),
        ("TOKEN", "x" * (app_secrets.MAX_SECRET_VALUE_BYTES + 1), "value: larger than"),
        ("TOKEN", "é" * (app_secrets.MAX_SECRET_VALUE_BYTES // 2 + 1), "value: larger than"),
    ],
)
def test_a_secret_no_environment_can_carry_is_invalid_argument_naming_the_field(
    name: str, value: str, message: str
) -> None:
    with pytest.raises(errors.RpcFailure) as raised:
        app_secrets.check_secret(name, value)

    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message.startswith(message)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HF_TOKEN", "hf_123"),
        ("_X", ""),
        ("T", "x" * app_secrets.MAX_SECRET_VALUE_BYTES),
        ("T", None),
    ],
)
def test_a_secret_an_environment_can_carry_is_accepted(name: str, value: str | None) -> None:
    app_secrets.check_secret(name, value)


# ---- keys ------------------------------------------------------------------------------------


def _authenticator(records: dict[str, apikeys.KeyRecord]) -> auth.Authenticator:
    return auth.Authenticator(records.get, cache_seconds=60)


def _metadata(key: apikeys.ApiKey) -> list[tuple[str, str]]:
    return [("auth-key-id", key.id), ("auth-key", key.secret)]


def test_a_valid_key_yields_its_namespaces() -> None:
    key = apikeys.generate_key()
    record = apikeys.new_record(key=key, namespaces=["team-a"])

    caller = _authenticator({key.id: record}).authenticate(_metadata(key))

    assert caller.key_id == key.id
    assert caller.allows("team-a") and not caller.allows("team-b")
    with pytest.raises(errors.RpcFailure) as raised:
        caller.require("team-b")
    assert raised.value.code is grpc.StatusCode.PERMISSION_DENIED


def test_a_cached_verification_still_sees_a_revocation() -> None:
    key = apikeys.generate_key()
    records = {key.id: apikeys.new_record(key=key, namespaces=["*"])}
    authenticator = _authenticator(records)
    authenticator.authenticate(_metadata(key))

    records[key.id] = apikeys.KeyRecord(**{**records[key.id].__dict__, "revoked": True})

    with pytest.raises(errors.RpcFailure) as raised:
        authenticator.authenticate(_metadata(key))
    assert raised.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in raised.value.message


def test_a_wrong_secret_is_refused_even_after_the_right_one_was_cached() -> None:
    key = apikeys.generate_key()
    authenticator = _authenticator({key.id: apikeys.new_record(key=key, namespaces=["*"])})
    authenticator.authenticate(_metadata(key))

    with pytest.raises(errors.RpcFailure) as raised:
        authenticator.authenticate(_metadata(apikeys.ApiKey(key.id, "guess")))

    assert raised.value.code is grpc.StatusCode.UNAUTHENTICATED


def test_wrong_secrets_beyond_the_budget_are_refused_without_hashing() -> None:
    """The seam: ``hash_verifications`` counts hash computations. Once a key id (or an
    address) has used its failed-check budget, more wrong secrets cost no hash, while a right
    key of another id, or the same id from another address, is still checked."""
    victim, other = apikeys.generate_key(), apikeys.generate_key()
    records = {key.id: apikeys.new_record(key=key, namespaces=["*"]) for key in (victim, other)}
    now = [0.0]
    authenticator = auth.Authenticator(
        records.get,
        cache_seconds=60,
        failures_per_key=3,
        failures_per_ip=5,
        max_tracked=16,
        clock=lambda: now[0],
    )
    codes = []
    for attempt in range(6):
        wrong = apikeys.ApiKey(victim.id, f"wrong-{attempt}")
        with pytest.raises(errors.RpcFailure) as raised:
            authenticator.authenticate(_metadata(wrong), client="192.0.2.1")
        codes.append(raised.value.code)

    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
    assert authenticator.hash_verifications == 3
    assert authenticator.throttled == 3
    # Another id from the same address (2 failures left there, and a success refunds).
    assert authenticator.authenticate(_metadata(other), client="192.0.2.1").key_id == other.id
    assert authenticator.hash_verifications == 4
    # The per-address budget: two more failures with the other id, then refused unhashed.
    for attempt in range(3):
        with pytest.raises(errors.RpcFailure) as raised:
            wrong = apikeys.ApiKey(other.id, f"bad-{attempt}")
            authenticator.authenticate(_metadata(wrong), client="192.0.2.1")
    assert raised.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "from this address" in raised.value.message
    assert authenticator.hash_verifications == 6
    # A minute later the buckets have refilled: the right key is checked again.
    now[0] += 60.0
    assert authenticator.authenticate(_metadata(victim), client="192.0.2.1").key_id == victim.id


def test_the_failed_check_tables_stay_within_their_limit() -> None:
    key = apikeys.generate_key()
    authenticator = auth.Authenticator(
        {key.id: apikeys.new_record(key=key, namespaces=["*"])}.get,
        cache_seconds=60,
        failures_per_key=1,
        failures_per_ip=1,
        max_tracked=16,
    )
    for number in range(200):
        with pytest.raises(errors.RpcFailure):
            authenticator.authenticate(
                _metadata(apikeys.ApiKey(key.id, f"w{number}")), client=f"10.0.{number}.1"
            )

    _keys, addresses = authenticator.tracked_failures()
    assert 0 < addresses <= 16


@pytest.mark.parametrize(
    ("peer", "client"),
    [
        ("ipv4:192.0.2.7:4242", "192.0.2.7"),
        ("ipv6:[2001:db8::1]:4242", "2001:db8::1"),
        ("ipv6:%5B::1%5D:1", "::1"),
        ("unix:/run/unknown", None),
        ("garbage", None),
    ],
)
def test_a_grpc_peer_names_its_client_address(peer: str, client: str | None) -> None:
    assert auth.PeerAddresses().client(peer) == client


# ---- flags -----------------------------------------------------------------------------------


def test_help_names_the_flags_and_their_environment_variables() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kubefal_controlplane", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0
    for flag in ("--tls-cert", "--key-namespace", "--gateway-admin-url", "--max-workers"):
        assert flag in result.stdout
    assert "KUBEFAL_KEY_NAMESPACE" in result.stdout


def test_tls_is_required_unless_local_credentials() -> None:
    with pytest.raises(SystemExit):
        settings.from_args(["--kubeconfig", "/dev/null"])

    assert settings.from_args(["--local-credentials"]).local_credentials


def test_application_info_is_the_apps_one_revision_with_its_creation_time() -> None:
    app = {
        "metadata": {
            "name": "demo",
            "namespace": "team-a",
            "uid": "u-1",
            "creationTimestamp": "2026-12-05T11:00:00Z",
        },
        "spec": {"app": "a.py::A", "scaling": {"keepAlive": 9}},
    }

    info = mapping.application_info(app, [_pod()])

    assert info.application_id == "u-1"
    assert info.keep_alive == 9 and info.active_runners == 1
    assert info.created_at.ToDatetime(tzinfo=datetime.UTC) == datetime.datetime(
        2026, 12, 5, 11, 0, tzinfo=datetime.UTC
    )
    assert info.environment_name == "team-a"


def test_every_flag_has_a_variable_and_a_flag_wins_over_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBEFAL_CONTROLPLANE_MAX_WORKERS", "16")
    monkeypatch.setenv("KUBEFAL_CONTROLPLANE_LOG_STREAMS", "3")
    monkeypatch.setenv("KUBEFAL_KEY_NAMESPACE", "keys")
    loaded = settings.from_args(["--local-credentials", "--log-streams", "5"])
    assert (loaded.max_workers, loaded.log_streams, loaded.key_namespace) == (16, 5, "keys")


def test_a_bad_variable_stops_the_control_plane_naming_it_and_its_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBEFAL_CONTROLPLANE_MAX_WORKERS", "1000")
    with pytest.raises(SystemExit) as exited:
        settings.from_args(["--local-credentials"])
    assert "KUBEFAL_CONTROLPLANE_MAX_WORKERS='1000'" in str(exited.value)
    assert "--max-workers" in str(exited.value)
