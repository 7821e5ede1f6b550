"""Where webhooks may go: validation of ``fal_webhook`` URLs and of the addresses they resolve to.

Why it exists: a webhook makes the gateway send a POST to a URL the caller chose, from inside
the cluster. Without checks that is a blind SSRF: a caller could make the gateway POST to the
cloud metadata service (169.254.169.254), to cluster-internal Services and pods, or to loopback.
So:

* at submit, `TargetPolicy.parse` refuses URLs that are not ``http(s)://host[:port]/...``, have
  a bad port, credentials, control characters or an invalid host name, and URLs whose host is
  an IP literal in a refused range (below); the queue API answers 400 naming ``fal_webhook``;
* at delivery, `TargetPolicy.resolve` resolves the host once and keeps only addresses outside
  the refused ranges; the worker connects to that checked address (the Host header and the TLS
  server name stay the URL's host), so a DNS answer that changes between check and connect
  (DNS rebinding) cannot redirect the POST. Redirects are never followed.

Refused ranges: loopback, link-local (169.254.0.0/16 with the metadata service, fe80::/10),
private (10/8, 172.16/12, 192.168/16), CGNAT (100.64/10), multicast, unspecified, IPv6 unique
local (fc00::/7), every other range that is not globally routable, IPv4 embedded in IPv6
(mapped, 6to4, NAT64) by the embedded address, and the operator's ``--webhook-deny`` CIDRs (the
cluster's service and pod CIDRs when they are public ranges). ``--webhook-allow`` admits CIDRs
and host names (``hooks.internal``, or ``*.internal`` for subdomains) despite all that: an
allowed host name skips the address check, an allowed CIDR admits the addresses inside it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence

from kubefal_gateway import settings

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

MAX_URL_LENGTH = 2048
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")


class InvalidTarget(ValueError):
    """A webhook URL or address the policy refuses; the message says why."""


@dataclasses.dataclass(frozen=True)
class Target:
    """A parsed, validated webhook URL."""

    scheme: str
    host: str
    """Lower-case host name (IDNA, ASCII) or IP literal without brackets."""
    port: int
    target: str
    """Path and query to send in the request line (``/`` at least)."""
    address: IpAddress | None
    """The host as an address when it is an IP literal."""

    @property
    def host_header(self) -> str:
        host = (
            f"[{self.host}]"
            if self.address is not None and self.address.version == 6
            else self.host
        )
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def url_for(self, address: str) -> str:
        """This URL with the host replaced by the checked ``address``."""
        literal = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{literal}:{self.port}{self.target}"


def _embedded_ipv4(address: IpAddress) -> IpAddress:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def refusal_reason(address: IpAddress) -> str | None:
    """Why ``address`` is not a webhook destination by default, or None when it is one."""
    address = _embedded_ipv4(address)
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address in CGNAT:
        return "CGNAT"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "not globally routable"
    return None


def _networks(items: Sequence[str], flag: str) -> tuple[IpNetwork, ...]:
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as error:
            raise ValueError(f"{flag}: {item!r} is not a CIDR ({error})") from error
    return tuple(networks)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


async def system_resolver(host: str, port: int) -> Sequence[str]:
    """The host's addresses from the system resolver (``getaddrinfo``)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


class TargetPolicy:
    """The allow-list, the deny-list and the checks of the module docstring."""

    def __init__(
        self,
        *,
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
        resolver: Resolver = system_resolver,
    ) -> None:
        allowed_hosts = [item.lower().rstrip(".") for item in allow if not _is_cidr(item)]
        self.allowed_networks = _networks([item for item in allow if _is_cidr(item)], "allow")
        self.allowed_hosts = frozenset(host for host in allowed_hosts if not host.startswith("*."))
        self.allowed_suffixes = tuple(host[1:] for host in allowed_hosts if host.startswith("*."))
        self.denied_networks = _networks(deny, "deny")
        self._resolver = resolver

    @classmethod
    def from_settings(cls, config: settings.Settings) -> TargetPolicy:
        return cls(allow=_split(config.webhook_allow), deny=_split(config.webhook_deny))

    def host_allowed(self, host: str) -> bool:
        return host in self.allowed_hosts or host.endswith(self.allowed_suffixes)

    def address_refusal(self, address: IpAddress) -> str | None:
        """Why the policy refuses ``address``, or None when it may be contacted."""
        if any(address in network for network in self.allowed_networks):
            return None
        embedded = _embedded_ipv4(address)
        if any(embedded in network for network in self.denied_networks):
            return "in --webhook-deny"
        return refusal_reason(address)

    def parse(self, url: str) -> Target:
        """Validate ``url`` (the submit-time checks); raise `InvalidTarget` saying why."""
        if len(url) > MAX_URL_LENGTH:
            raise InvalidTarget(f"longer than {MAX_URL_LENGTH} characters")
        if _UNSAFE.search(url):
            raise InvalidTarget("contains whitespace or control characters")
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as error:
            raise InvalidTarget(f"not a valid URL ({error})") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise InvalidTarget("must be an http or https URL")
        if parts.username is not None or parts.password is not None:
            raise InvalidTarget("must not contain credentials")
        raw_host = parts.hostname
        if not raw_host:
            raise InvalidTarget("has no host")
        if port == 0:
            raise InvalidTarget("port 0 is not a valid port")
        port = port or (443 if scheme == "https" else 80)
        address: IpAddress | None
        try:
            address = ipaddress.ip_address(raw_host)
            host = str(address)
        except ValueError:
            address = None
            host = _host_name(raw_host)
        if address is not None:
            reason = self.address_refusal(address)
            if reason is not None:
                raise InvalidTarget(f"its address {host} is {reason} (not allowed for webhooks)")
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        return Target(scheme=scheme, host=host, port=port, target=target, address=address)

    async def resolve(self, target: Target) -> str:
        """One address of ``target`` the policy allows, resolved once; `InvalidTarget` if none."""
        if target.address is not None:
            reason = self.address_refusal(target.address)
            if reason is not None:
                raise InvalidTarget(f"address {target.address} is {reason}")
            return str(target.address)
        try:
            addresses = await self._resolver(target.host, target.port)
        except (OSError, UnicodeError) as error:
            raise OSError(f"cannot resolve {target.host}: {error}") from error
        trusted_host = self.host_allowed(target.host)
        refusals = []
        for text in addresses:
            try:
                address = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                continue
            reason = None if trusted_host else self.address_refusal(address)
            if reason is None:
                return str(address)
            refusals.append(f"{address} ({reason})")
        if not refusals:
            raise OSError(f"{target.host} has no address")
        raise InvalidTarget(
            f"{target.host} resolves only to refused addresses: " + ", ".join(refusals)
        )


def _is_cidr(item: str) -> bool:
    try:
        ipaddress.ip_network(item, strict=False)
    except ValueError:
        return False
    return True


def _host_name(raw: str) -> str:
    try:
        host = raw.encode("idna").decode("ascii").lower().rstrip(".")
    except UnicodeError:
        raise InvalidTarget(f"host {raw!r} is not a valid host name") from None
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidTarget(f"host {raw!r} is not a valid host name")
    return host
