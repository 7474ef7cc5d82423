"""Which addresses a client-chosen URL may reach, and name resolution that answers in time.

One :class:`AddressPolicy` decides for every outbound connection imagegate makes on a client's
behalf: input images, LoRAs and datasets (:class:`~imagegate.media.inputs.InputFetcher`) and
webhooks (:class:`~imagegate.webhooks.deliverer.Deliverer`). Public addresses pass; loopback,
private, link-local (cloud metadata), multicast, reserved, CGNAT and the like are refused unless
the operator allows them. A name passes only when *every* address it resolves to passes.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imagegate.exceptions import AddressRefusedError, UnresolvableHostError

if TYPE_CHECKING:
    from imagegate.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Names every resolver maps to the machine itself (RFC 6761), whatever its configuration says.
LOOPBACK_NAMES = frozenset({"localhost"})

_INET_ATON_CHARS = frozenset("0123456789abcdefABCDEFxX.")

# Ranges Python's ipaddress does not flag on every supported version.
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class AddressPolicy:
    """Where outbound connections may go.

    ``public``: public addresses pass (off for plain-http webhooks, which only ever go to
    loopback). ``allow_loopback``: loopback passes too (development webhooks).
    ``allow_networks``: ranges an operator trusts (an in-cluster object store).
    ``allow_private``: everything passes (development; never the default).
    """

    public: bool = True
    allow_loopback: bool = False
    allow_networks: tuple[Network, ...] = ()
    allow_private: bool = False

    @classmethod
    def for_webhooks(cls, settings: Settings, scheme: str) -> AddressPolicy:
        """Webhook targets: https to public addresses; with ``allow_http_webhooks`` loopback
        too, and plain http to loopback only."""
        dev = settings.allow_http_webhooks
        return cls(public=scheme == "https", allow_loopback=dev)

    @classmethod
    def with_networks(cls, allow_private: bool, networks: Iterable[str]) -> AddressPolicy:
        return cls(allow_private=allow_private, allow_networks=tuple(ipaddress.ip_network(n, strict=False) for n in networks))

    def refusal(self, address: str) -> str | None:
        """Why ``address`` (an IP literal) is refused, or None when it passes."""
        if self.allow_private:
            return None
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if any(ip.version == net.version and ip in net for net in self.allow_networks):
            return None
        judged = _addresses_to_judge(ip)
        if self.allow_loopback and all(candidate.is_loopback for candidate in judged):
            return None
        for candidate in judged:
            reason = _refusal_reason(candidate)
            if reason is None and not self.public:
                reason = "not a loopback address (plain http:// is only sent to loopback)"
            if reason is not None:
                shown = address if candidate == ip else f"{address} ({candidate})"
                return f"address {shown} is {reason}; such URLs are refused"
        return None

    def check(self, address: str) -> None:
        reason = self.refusal(address)
        if reason is not None:
            raise AddressRefusedError(reason)

    def resolve(self, host: str, port: int, timeout: float | None) -> list[str]:
        """Every address ``host`` resolves to, in resolver order, each one checked.

        Raises :class:`AddressRefusedError` when any answer is refused: a name that mixes public
        and internal answers is misconfigured or an attack, and connecting to the public one
        would hide it. Raises :class:`UnresolvableHostError` when there is no answer in time.
        Connect to a returned address, not to the name, or a second lookup may answer otherwise.
        """
        literal = literal_address(host)
        addresses = [literal] if literal is not None else _getaddrinfo(host.strip("[]"), port, timeout)
        for address in addresses:
            self.check(address)
        return addresses


def literal_address(host: str) -> str | None:
    """The address ``host`` spells, in any form the resolver reads without asking DNS
    (``127.0.0.1``, ``[::1]``, ``2130706433``, ``0x7f.1``), or None for a name."""
    host = host.strip("[]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    # The resolver reads IPv4 the way inet_aton does (decimal, hex, octal, fewer than four
    # parts); inet_aton itself tolerates trailing junk after a space, hence the alphabet check.
    if not host or not set(host) <= _INET_ATON_CHARS:
        return None
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return None


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback literal; no DNS."""
    if host.lower().rstrip(".") in LOOPBACK_NAMES:
        return True
    literal = literal_address(host)
    return literal is not None and all(ip.is_loopback for ip in _addresses_to_judge(ipaddress.ip_address(literal)))


def _refusal_reason(ip: IPAddress) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "private or loopback"
    if ip.is_link_local:
        return "link-local (where cloud metadata services live)" if ip.version == 4 else "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.version == 4 and ip in _CGNAT:
        return "in the carrier-grade NAT range"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private or (ip.version == 6 and ip.is_site_local):
        return "private or loopback"
    if not ip.is_global:
        return "not a public address"
    return None


def _addresses_to_judge(ip: IPAddress) -> list[IPAddress]:
    """The addresses a connection to ``ip`` really reaches: ``::ffff:127.0.0.1`` must be as
    loopback as ``127.0.0.1``. Mapped and NAT64 addresses are pure translations, so only the
    IPv4 side counts; 6to4 and Teredo tunnels count both ends."""
    if ip.version != 6:
        return [ip]
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip in _NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    judged: list[IPAddress] = [ip]
    if ip.sixtofour is not None:
        judged.append(ip.sixtofour)
    if ip.teredo is not None:
        judged.extend(ip.teredo)
    return judged


def _getaddrinfo(host: str, port: int, timeout: float | None) -> list[str]:
    # getaddrinfo has no timeout of its own; a daemon thread keeps a stuck resolver from
    # holding the caller (or interpreter exit) past its deadline.
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as exc:
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="imagegate-resolve", daemon=True).start()
    if not done.wait(timeout):
        raise UnresolvableHostError(f"could not resolve host {host}: no answer in time")
    if "error" in outcome:
        raise UnresolvableHostError(f"could not resolve host {host}") from outcome["error"]
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in outcome["infos"]:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnresolvableHostError(f"could not resolve host {host}")
    return addresses
