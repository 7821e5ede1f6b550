"""Where webhooks may go and how tenants share delivery (issue 9, item 8).

The URL and address rules are pure (`webhook_targets.TargetPolicy`); delivery is the real worker
on a real store POSTing to real receivers on 127.0.0.1, which only the allow-list admits.
"""

from __future__ import annotations

import asyncio
import ipaddress
import pathlib
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence

import httpx
import pytest

from kubefal_gateway import queueing, webhook_targets, webhooks
from testkit import certs
from tests.gateway.webhook_harness import LOCAL, Receiver, complete_hooked_job

OpenStore = Callable[..., Awaitable[queueing.QueueStore]]
WaitFor = Callable[..., Awaitable[None]]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/hook", "http or https"),
        ("javascript:alert(1)", "http or https"),
        ("http://[abc", "not a valid URL"),
        ("http://example.com:99999/hook", "not a valid URL"),
        ("http://example.com:0/hook", "port 0"),
        ("http://example.com:http/hook", "not a valid URL"),
        ("http:///hook", "no host"),
        ("http://user:pw@example.com/hook", "credentials"),
        ("http://exa mple.com/hook", "whitespace"),
        ("http://example.com/\r\nx-injected: 1", "control"),
        ("http://ex_ample..com/", "valid host name"),
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://10.96.0.1/", "private"),
        ("http://172.16.5.4/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://100.64.0.1/", "CGNAT"),
        ("http://224.0.0.1/", "multicast"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[fd12::1]/", "private"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://[64:ff9b::a00:1]/", "private"),
        ("http://192.0.2.1/", "private"),
        ("http://" + "a" * 2100 + ".com/", "longer than"),
    ],
)
def test_bad_webhook_urls_are_refused_at_submit(url: str, reason: str) -> None:
    with pytest.raises(webhook_targets.InvalidTarget, match=reason):
        webhook_targets.TargetPolicy().parse(url)


def test_public_urls_parse_and_keep_their_host_port_and_query() -> None:
    policy = webhook_targets.TargetPolicy()
    target = policy.parse("HTTPS://Hooks.Example.com/a/b?x=1&y=2")
    assert (target.scheme, target.host, target.port, target.target) == (
        "https",
        "hooks.example.com",
        443,
        "/a/b?x=1&y=2",
    )
    assert target.host_header == "hooks.example.com"
    assert target.url_for("93.184.216.34") == "https://93.184.216.34:443/a/b?x=1&y=2"
    literal = policy.parse("http://93.184.216.34:8080")
    assert (literal.target, literal.host_header) == ("/", "93.184.216.34:8080")


def test_the_allow_list_admits_cidrs_and_hosts_and_the_deny_list_adds_cluster_cidrs() -> None:
    policy = webhook_targets.TargetPolicy(
        allow=["127.0.0.1/32", "10.1.0.0/16", "hooks.internal", "*.svc.internal"],
        deny=["34.118.224.0/20"],
    )
    assert policy.parse("http://127.0.0.1:9/").address == ipaddress.ip_address("127.0.0.1")
    policy.parse("http://10.1.2.3/")
    with pytest.raises(webhook_targets.InvalidTarget, match="private"):
        policy.parse("http://10.2.0.1/")
    with pytest.raises(webhook_targets.InvalidTarget, match="webhook-deny"):
        policy.parse("http://34.118.225.1/")
    assert policy.host_allowed("hooks.internal")
    assert policy.host_allowed("a.svc.internal")
    assert not policy.host_allowed("svc.internal.evil.com")


def fixed_resolver(answers: dict[str, Sequence[str]]) -> webhook_targets.Resolver:
    """A DNS stand-in: the names used here do not exist, so the test proves the worker connects
    to the address it checked rather than resolving again."""

    async def resolve(host: str, _port: int) -> Sequence[str]:
        if host not in answers:
            raise OSError(f"no such host {host}")
        return answers[host]

    return resolve


async def test_resolution_keeps_only_allowed_addresses() -> None:
    resolver = fixed_resolver(
        {"mixed.test": ["10.0.0.7", "93.184.216.34"], "inside.test": ["169.254.169.254"]}
    )
    policy = webhook_targets.TargetPolicy(resolver=resolver)
    assert await policy.resolve(policy.parse("http://mixed.test/")) == "93.184.216.34"
    with pytest.raises(webhook_targets.InvalidTarget, match="link-local"):
        await policy.resolve(policy.parse("http://inside.test/"))
    trusting = webhook_targets.TargetPolicy(allow=["inside.test"], resolver=resolver)
    assert await trusting.resolve(trusting.parse("http://inside.test/")) == "169.254.169.254"


# ---- delivery ----------------------------------------------------------------------------------


async def test_without_the_allow_list_a_loopback_receiver_gets_nothing(
    open_queue_store: OpenStore, receiver: Receiver
) -> None:
    store = await open_queue_store()
    outcomes: list[str] = []
    worker = webhooks.WebhookWorker(
        store, settings=webhooks.WebhookSettings(timeout=10), on_outcome=outcomes.append
    )
    port = receiver.url.split(":")[2].split("/")[0]
    # A name that resolves to loopback passes the submit check; delivery refuses it.
    await complete_hooked_job(
        store, f"http://localhost:{port}/hook", app_id="t/app", request_id="r-1"
    )
    await worker.deliver_due()
    await worker.drain()
    await worker.close()
    assert outcomes == ["refused"]
    assert receiver.received == []
    assert await store.lease_webhooks(limit=10, lease_seconds=60, now=time.time() + 10**6) == []


async def test_delivery_connects_to_the_checked_address_with_the_urls_host(
    open_queue_store: OpenStore, receiver: Receiver
) -> None:
    store = await open_queue_store()
    outcomes: list[str] = []
    worker = webhooks.WebhookWorker(
        store,
        settings=webhooks.WebhookSettings(allow=LOCAL),
        on_outcome=outcomes.append,
        resolver=fixed_resolver({"hooks.test": ["127.0.0.1"]}),
    )
    port = receiver.url.split(":")[2].split("/")[0]
    await complete_hooked_job(
        store, f"http://hooks.test:{port}/hook?x=1", app_id="t/app", request_id="r-2"
    )
    await worker.deliver_due()
    await worker.drain()
    await worker.close()
    assert outcomes == ["delivered"]
    [delivery] = receiver.received
    assert delivery.headers["host"] == f"hooks.test:{port}"


class Tarpit:
    """Accepts connections, reads, never answers; counts the connections open right now."""

    def __init__(self) -> None:
        self.open = 0
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, host="127.0.0.1", port=0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        try:
            while await reader.read(65536):
                pass
        finally:
            self.open -= 1
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_a_tarpit_receiver_only_holds_its_own_tenants_slots(
    open_queue_store: OpenStore, receiver: Receiver, wait_for: WaitFor
) -> None:
    store = await open_queue_store()
    tarpit = Tarpit()
    tarpit_url = await tarpit.start()
    outcomes: list[str] = []
    worker = webhooks.WebhookWorker(
        store,
        settings=webhooks.WebhookSettings(
            allow=LOCAL,
            timeout=60,
            concurrency=16,
            tenant_concurrency=4,
            tenant_queue=4,
            poll_interval=0.05,
        ),
        on_outcome=outcomes.append,
    )
    for index in range(20):
        await complete_hooked_job(store, tarpit_url, app_id="slow/app", request_id=f"slow-{index}")
    await complete_hooked_job(store, receiver.url, app_id="fast/app", request_id="fast-1")
    running = asyncio.create_task(worker.run())
    try:
        # The other tenant's webhook arrives although the tarpit, which answers nothing within
        # the 60 s attempt timeout, got its 20 deliveries first.
        await wait_for(
            lambda: outcomes == ["delivered"] and tarpit.open == 4,
            message="the other tenant's webhook",
        )
        # The tarpit holds exactly its tenant's slots and none has timed out; its other
        # deliveries wait in the outbox or the tenant's queue, not in the shared pool.
        assert tarpit.accepted == 4
        assert len(receiver.received) == 1
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        for task in list(worker._in_flight):
            task.cancel()
        await asyncio.gather(*worker._in_flight, return_exceptions=True)
        await tarpit.stop()
        await worker.close()


async def test_every_attempt_is_bounded_by_the_timeout(
    open_queue_store: OpenStore, wait_for: WaitFor
) -> None:
    store = await open_queue_store()
    tarpit = Tarpit()
    url = await tarpit.start()
    outcomes: list[str] = []
    worker = webhooks.WebhookWorker(
        store,
        settings=webhooks.WebhookSettings(allow=LOCAL, timeout=0.5, base_delay=3600),
        on_outcome=outcomes.append,
    )
    await complete_hooked_job(store, url, app_id="t/app", request_id="r-3")
    await worker.deliver_due()
    await worker.drain()
    await worker.close()
    await tarpit.stop()
    assert outcomes == ["retry"]
    [pending] = await store.lease_webhooks(limit=10, lease_seconds=60, now=time.time() + 10**5)
    assert pending.attempts == 1


async def test_https_is_verified_against_the_urls_host_while_connecting_to_the_checked_address(
    open_queue_store: OpenStore, tmp_path: pathlib.Path
) -> None:
    # A certificate for "hooks.test" only (no IP address in it).
    ca_path, cert_path, key_path = certs.issue_serving_certificate(
        tmp_path, dns_names=["hooks.test"], ip_addresses=[]
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert_path), str(key_path))
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        received.append(head)
        writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, host="127.0.0.1", port=0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    store = await open_queue_store()
    outcomes: list[str] = []
    client = httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(ca_path)))
    worker = webhooks.WebhookWorker(
        store,
        settings=webhooks.WebhookSettings(allow=LOCAL),
        client=client,
        on_outcome=outcomes.append,
        # The worker connects to 127.0.0.1 and still verifies the certificate for
        # "hooks.test" (SNI and hostname check on the URL's host, not on the address).
        resolver=fixed_resolver({"hooks.test": ["127.0.0.1"]}),
    )
    try:
        await complete_hooked_job(
            store, f"https://hooks.test:{port}/hook", app_id="t/app", request_id="r-4"
        )
        await worker.deliver_due()
        await worker.drain()
    finally:
        await worker.close()
        await client.aclose()
        server.close()
    assert outcomes == ["delivered"]
    assert f"host: hooks.test:{port}".encode() in received[0].lower()


async def test_redirects_are_not_followed(open_queue_store: OpenStore) -> None:
    target = Receiver(statuses=[])
    await target.start()
    redirecting = await asyncio.start_server(
        lambda reader, writer: _redirect(reader, writer, target.url), host="127.0.0.1", port=0
    )
    port = redirecting.sockets[0].getsockname()[1]
    store = await open_queue_store()
    outcomes: list[str] = []
    worker = webhooks.WebhookWorker(
        store,
        settings=webhooks.WebhookSettings(allow=LOCAL, base_delay=3600),
        on_outcome=outcomes.append,
    )
    try:
        await complete_hooked_job(
            store, f"http://127.0.0.1:{port}/hook", app_id="t/app", request_id="r-5"
        )
        await worker.deliver_due()
        await worker.drain()
    finally:
        await worker.close()
        redirecting.close()
        await target.stop()
    assert outcomes == ["retry"]
    assert target.received == []


async def _redirect(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, location: str
) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(f"HTTP/1.1 307 X\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n".encode())
    await writer.drain()
    writer.close()
