"""The callback URL policy: which addresses taskplatform may send a callback to.

taskplatform makes HTTP requests on behalf of whoever creates a task, so a callbackUrl must not
turn it against the network it runs in (server-side request forgery, as the Standard Webhooks
specification's "SSRF" section describes). The policy is a list of denied networks (by default
link-local, which holds the cloud metadata services at 169.254.169.254 and fd00:ec2::254, the
"this host" and unspecified addresses, broadcast and multicast), and optionally a list of allowed
networks. Loopback and private ranges stay allowed by default: the platform serves internal
services.

The policy is enforced at two points, and a sender needs both:

1. Before sending, on the URL's host as written (:meth:`CallbackPolicy.check_url_host`, or
   :meth:`CallbackPolicy.check_url`). aiohttp does not consult its resolver for a host that is an
   IP literal (a dotted quad, or anything holding ``:``), so a literal host such as
   ``[::ffff:169.254.169.254]`` is only ever seen here.
2. On the addresses a name resolves to, by the connector's resolver (:class:`PolicyResolver`).
   aiohttp connects to exactly the addresses its resolver returns, so a name that resolves to a
   denied address, or resolves to an allowed one when checked and to a denied one when connected
   (DNS rebinding), never gets a connection.

This holds only while the session connects directly: it must not use a proxy (``trust_env`` off,
no ``proxy=``), whose name the resolver would judge instead of the callback's, and it must not
follow redirects, whose targets would skip step 1.

Exceptions::

    OSError
    └── CallbackRefused     the host is, or resolves only to, refused addresses
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import unicodedata
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from urllib.parse import unquote

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

logger = logging.getLogger(__name__)

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

DENY_SETTING = "TASKPLATFORM_CALLBACK_DENY_NETWORKS"
"""The setting that holds the denied networks; refusal messages name it."""
ALLOW_SETTING = "TASKPLATFORM_CALLBACK_ALLOW_NETWORKS"
"""The setting that holds the allowed networks; refusal messages name it."""

DEFAULT_DENY: tuple[IPNetwork, ...] = (
    # Link-local (RFC 3927, RFC 4291): cloud metadata services (169.254.169.254 on AWS, GCP,
    # Azure, OCI) and hosts that only the local link should reach.
    IPv4Network("169.254.0.0/16"),
    IPv6Network("fe80::/10"),
    # "This host on this network" (RFC 1122 3.2.1.3); Linux connects 0.0.0.0 to the local host.
    IPv4Network("0.0.0.0/8"),
    # The unspecified IPv6 address (RFC 4291 2.5.2); Linux connects it to the local host.
    IPv6Network("::/128"),
    # Limited broadcast (RFC 919, RFC 8190).
    IPv4Network("255.255.255.255/32"),
    # Multicast (RFC 5771, RFC 4291 2.7): never a TCP peer.
    IPv4Network("224.0.0.0/4"),
    IPv6Network("ff00::/8"),
    # The AWS instance metadata service over IPv6 (EC2 IMDS documentation).
    IPv6Network("fd00:ec2::254/128"),
    # Metadata services outside link-local: Alibaba Cloud's (in the shared address space) and
    # Azure's WireServer, which hands out VM extension settings and certificates.
    IPv4Network("100.100.100.200/32"),
    IPv4Network("168.63.129.16/32"),
)
"""The networks denied unless configured otherwise."""

# RFC 6052 2.1: the well-known NAT64 prefix; the IPv4 address is the last 32 bits.
_NAT64 = IPv6Network("64:ff9b::/96")
# RFC 2765 2.1: "IPv4-translated" addresses ::ffff:0:a.b.c.d.
_IPV4_TRANSLATED = IPv6Network("::ffff:0:0:0/96")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_OCTAL_DIGITS = frozenset("01234567")
_DECIMAL_DIGITS = frozenset("0123456789")
# UTS 46 maps these to "." in a host name (and so do yarl and browsers); NFKC alone does not.
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


class CallbackRefused(OSError):
    """The callback was refused by the URL policy.

    Its host is, or resolves only to, refused addresses. An ``OSError``, so that aiohttp treats
    a refusal raised by :class:`PolicyResolver` as a failed resolution: the request fails with
    ``aiohttp.ClientConnectorDNSError`` whose ``os_error`` is this exception, and no connection
    is opened. ``errno`` is None; ``strerror`` and ``str()`` are the message.

    Attributes:
        host: The host as the URL or the connector gave it.
        reason: Why it is refused, naming the address and the setting that refuses it.
    """

    def __init__(self, host: str, reason: str) -> None:
        """Create the error.

        Args:
            host: The host as the URL or the connector gave it.
            reason: Why it is refused.
        """
        message = f"callback refused by the URL policy: {reason}"
        super().__init__(message)
        self.host = host
        self.reason = reason
        self.strerror = message  # aiohttp's ClientConnectorError shows strerror, not str()


def parse_networks(values: Iterable[str], *, setting: str = DENY_SETTING) -> tuple[IPNetwork, ...]:
    """Parse networks written as ``10.0.0.0/8``, ``fd00::/8`` or a bare address (one host).

    Args:
        values: The networks, as text; surrounding whitespace and empty items are ignored.
        setting: The setting they come from, named in the error.

    Returns:
        The networks, in the order given.

    Raises:
        ValueError: a value is not a network, or has host bits set (``10.0.0.1/8``).
    """
    networks: list[IPNetwork] = []
    for value in values:
        text = value.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            raise ValueError(f"{setting}: {text!r} is not an IP network: {exc}") from exc
    return tuple(networks)


def embedded_ipv4(ip: IPv6Address) -> tuple[IPv4Address, str] | None:
    """Return the IPv4 address that an IPv6 address stands for, and the name of the form.

    Connecting to one of these reaches (or, through a translator, is forwarded to) the IPv4
    address, so the policy judges that address too. The forms:

    - IPv4-mapped ``::ffff:a.b.c.d`` (RFC 4291 2.5.5.2): a dual-stack socket connects to a.b.c.d.
    - IPv4-translated ``::ffff:0:a.b.c.d`` (RFC 2765 2.1).
    - NAT64 ``64:ff9b::a.b.c.d``, the well-known prefix (RFC 6052 2.1). A network-specific NAT64
      prefix is not recognised: deny it explicitly if the network has one.
    - 6to4 ``2002:AABB:CCDD::/48`` (RFC 3056 2).
    - IPv4-compatible ``::a.b.c.d`` (RFC 4291 2.5.5.1, deprecated), except ``::`` and ``::1``,
      which are the unspecified and loopback addresses.
    - Teredo ``2001::/32`` (RFC 4380 4): the client's address.

    Args:
        ip: The IPv6 address.

    Returns:
        ``(ipv4, form)``, or None when ``ip`` embeds no IPv4 address.
    """
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped"
    low32 = IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _IPV4_TRANSLATED:
        return low32, "IPv4-translated"
    if ip in _NAT64:
        return low32, "NAT64"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    if int(ip) >> 32 == 0 and int(ip) > 1:
        return low32, "IPv4-compatible"
    if ip.teredo is not None:
        return ip.teredo[1], "Teredo"
    return None


def _ipv4_number(text: str) -> int | None:
    """Parse one part of an IPv4 host as the WHATWG URL Standard's "IPv4 number parser" does.

    ``0x``/``0X`` starts hexadecimal, another leading ``0`` octal, else decimal; a bare ``0x`` is
    0. Only ASCII digits count (``int`` alone would take other digits and ``_``).

    Returns:
        The number, or None (failure).
    """
    if not text:
        return None
    digits, radix, allowed = text, 10, _DECIMAL_DIGITS
    if len(text) >= 2 and text[:2] in ("0x", "0X"):
        digits, radix, allowed = text[2:], 16, _HEX_DIGITS
    elif len(text) >= 2 and text[0] == "0":
        digits, radix, allowed = text[1:], 8, _OCTAL_DIGITS
    if not digits:
        return 0
    if not set(digits) <= allowed:
        return None
    try:
        return int(digits, radix)
    except ValueError:  # more decimal digits than int() converts: out of range anyway
        return None


def _parse_ipv4(host: str, shown: str) -> tuple[IPv4Address | None, str | None]:
    """Apply the WHATWG URL Standard's "ends in a number checker" and "IPv4 parser" to ``host``.

    ``shown`` is the host as given, for the message.

    Returns:
        ``(address, None)`` for an IPv4 address; ``(None, None)`` for a name; ``(None, problem)``
        for a host that ends in a number (so a browser reads it as IPv4) but is not a valid one.
    """
    parts = host.split(".")
    last = parts[-1]
    ends_in_number = (bool(last) and set(last) <= _DECIMAL_DIGITS) or (
        _ipv4_number(last) is not None
    )
    if not ends_in_number:
        return None, None
    invalid = (
        f"{shown!r} ends in a number, so it is read as an IPv4 address (WHATWG URL Standard), "
        "but it is not a valid one"
    )
    if len(parts) > 4:
        return None, invalid
    numbers = [_ipv4_number(part) for part in parts]
    valid = [number for number in numbers if number is not None]
    if len(valid) != len(numbers) or any(number > 255 for number in valid[:-1]):
        return None, invalid
    if valid[-1] >= 256 ** (5 - len(valid)):
        return None, invalid
    value = valid[-1]
    for index, number in enumerate(valid[:-1]):
        value += number << (8 * (3 - index))
    return IPv4Address(value), None


def _parse_host(host: str) -> tuple[IPAddress | None, str | None]:
    """Interpret ``host`` as a browser, curl or getaddrinfo would.

    Returns:
        ``(address, None)`` for an IP literal in any spelling; ``(None, None)`` for a name;
        ``(None, problem)`` for something that is neither a name nor a valid literal.
    """
    # A browser percent-decodes the host and maps it through UTS 46 (fullwidth digits, ideographic
    # full stops) before it looks for an address; doing the same can only find more addresses.
    text = unicodedata.normalize("NFKC", unquote(host)).translate(_DOTS).lower()
    bracketed = text.startswith("[") and text.endswith("]")
    if bracketed:
        text = text[1:-1]
    if bracketed or ":" in text:
        # A zone id (fe80::1%eth0, %25 in a URL) picks an interface, not another address.
        bare = text.split("%", 1)[0]
        try:
            return IPv6Address(bare), None
        except ValueError:
            return None, f"{host!r} is neither a host name nor a valid IPv6 address"
    # A trailing dot ends a fully qualified name (aiohttp turns several into one); drop them all.
    return _parse_ipv4(text.rstrip("."), host)


def parse_literal_host(host: str) -> IPAddress | None:
    """Return the address that a literal host means, in any spelling, or None for a name.

    Follows the WHATWG URL Standard's IPv4 parser, which agrees with ``inet_aton`` (and so with
    curl and getaddrinfo) on every valid spelling: each of up to four dot-separated parts is
    decimal, octal (leading ``0``) or hexadecimal (``0x``), and the last part fills the remaining
    bytes. So ``2852039166``, ``0251.0376.0251.0376``, ``0xa9.0xfe.0xa9.0xfe``, ``0xa9fea9fe`` and
    ``169.254.43518`` are all 169.254.169.254, and ``127.1`` is 127.0.0.1. A trailing dot is
    ignored; percent-escapes, fullwidth digits and ideographic full stops are decoded first, as a
    browser does. IPv6 is taken bracketed (``[::1]``) or bare, with any zone id dropped.

    Args:
        host: The host part of a URL.

    Returns:
        The address, or None when ``host`` is a name, or looks like a literal but is not a valid
        one (:meth:`CallbackPolicy.check_url_host` refuses those).
    """
    return _parse_host(host)[0]


_VERDICTS_KEPT = 4096
"""How many URL verdicts a :class:`CallbackPolicy` remembers before it starts afresh."""


class CallbackPolicy:
    """Which addresses callbacks may connect to.

    An address is refused when it is in a denied network, or when an allow list is set and it is
    in none of the allowed networks; deny wins over allow. An IPv6 address that embeds an IPv4
    address (see :func:`embedded_ipv4`) is refused when either form is denied, and an allow list
    must allow the IPv4 address, which is where the connection goes.

    Args:
        deny: The denied networks; default :data:`DEFAULT_DENY`. Empty denies nothing.
        allow: The only networks allowed, or None (default) to allow every address not denied.
            An empty sequence allows nothing.
    """

    def __init__(
        self, deny: Sequence[IPNetwork] = DEFAULT_DENY, allow: Sequence[IPNetwork] | None = None
    ) -> None:
        self.deny: tuple[IPNetwork, ...] = tuple(deny)
        self.allow: tuple[IPNetwork, ...] | None = None if allow is None else tuple(allow)
        self._verdicts: dict[str, str | None] = {}

    def __repr__(self) -> str:
        deny = [str(network) for network in self.deny]
        allow = None if self.allow is None else [str(network) for network in self.allow]
        return f"CallbackPolicy(deny={deny}, allow={allow})"

    def check_address(self, ip: IPAddress) -> str | None:
        """Return why a callback may not connect to ``ip``, or None if it may.

        Args:
            ip: The address; an IPv6 zone id is ignored.

        Returns:
            The reason, naming the address, the network and the setting, such as
            ``"169.254.169.254 is in the denied network 169.254.0.0/16
            (TASKPLATFORM_CALLBACK_DENY_NETWORKS)"``; None when the address is allowed.
        """
        if isinstance(ip, IPv6Address) and ip.scope_id is not None:
            ip = IPv6Address(int(ip))
        shown = str(ip)
        target: IPAddress = ip
        forms: list[IPAddress] = [ip]
        if isinstance(ip, IPv6Address) and (embedded := embedded_ipv4(ip)) is not None:
            target, form = embedded
            forms.append(target)
            shown = f"{ip} ({form} {target})"
        for address in forms:
            for network in self.deny:
                if network.version == address.version and address in network:
                    return f"{shown} is in the denied network {network} ({DENY_SETTING})"
        if self.allow is not None and not any(
            network.version == target.version and target in network for network in self.allow
        ):
            return f"{shown} is not in the allowed networks ({ALLOW_SETTING})"
        return None

    def check_url_host(self, host: str) -> str | None:
        """Return why a callback may not go to ``host`` as written, or None.

        A literal host, in any spelling :func:`parse_literal_host` reads, is judged by
        :meth:`check_address`. A name passes: its addresses are judged after resolution, by
        :class:`PolicyResolver`. Call this before every request: aiohttp skips its resolver for a
        host it sees as an IP literal, so this is the only check such a host gets.

        Args:
            host: The host part of the URL, bracketed or not (``urlsplit(url).hostname`` or
                ``yarl.URL(url).raw_host``).

        Returns:
            The reason the host is refused; None for an allowed address or a name.
        """
        address, problem = _parse_host(host)
        if problem is not None:
            return problem
        if address is None:
            return None
        reason = self.check_address(address)
        if reason is not None and host.strip("[]").lower() != str(address):
            reason += f"; the host {host!r} is that address"
        return reason

    def check_url(self, url: str | URL) -> str | None:
        """Return why a callback may not go to ``url`` as written, or None.

        Reads the host the way aiohttp does (with yarl, as ``raw_host``) and applies
        :meth:`check_url_host` to it.

        Args:
            url: An absolute URL.

        Returns:
            The reason the URL is refused (including "no host"); None when its host is an allowed
            address or a name.
        """
        if isinstance(url, URL):
            return self._judge(url)
        # A pure function of the URL for this policy, asked at every create and every callback
        # with the same few URLs: remember the verdicts (a bounded number of them).
        try:
            return self._verdicts[url]
        except KeyError:
            pass
        try:
            verdict = self._judge(URL(url))
        except ValueError as exc:
            verdict = f"not a valid URL: {exc}"
        if len(self._verdicts) >= _VERDICTS_KEPT:
            self._verdicts.clear()
        self._verdicts[url] = verdict
        return verdict

    def _judge(self, url: URL) -> str | None:
        try:
            host = url.raw_host
        except ValueError as exc:
            return f"not a valid URL: {exc}"
        if not host:
            return "the URL has no host"
        return self.check_url_host(host)


def _check_resolved(policy: CallbackPolicy, host: str) -> str | None:
    """Judge one address a resolver returned, as text; refuse one that does not parse."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return f"the resolver returned {host!r}, which is not an IP address"
    return policy.check_address(address)


def _literal_result(
    host: str, address: IPAddress, port: int, family: socket.AddressFamily
) -> ResolveResult:
    """Answer a lookup of a literal ``host`` with the ``address`` it spells, as getaddrinfo does.

    Raises:
        OSError: ``family`` asks for the other IP version (getaddrinfo's ``EAI_ADDRFAMILY``).
    """
    found = socket.AF_INET if address.version == 4 else socket.AF_INET6
    if family not in (socket.AF_UNSPEC, found):
        shown = socket.AddressFamily(family).name
        raise OSError(None, f"{host} is an IPv{address.version} address, and {shown} was asked")
    return ResolveResult(
        hostname=host,
        host=str(address),
        port=port,
        family=found,
        proto=0,
        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
    )


class PolicyResolver(AbstractResolver):
    """An aiohttp resolver that returns only the addresses a :class:`CallbackPolicy` allows.

    Give it to the connector: ``aiohttp.TCPConnector(resolver=PolicyResolver(policy))``. aiohttp
    connects only to the addresses its resolver returns, so every connection to a name goes to an
    address this resolver judged, at the time of the connection (answers cached by the connector
    were judged when they were resolved). A name whose every address is refused raises
    :class:`CallbackRefused`; a name with some allowed addresses resolves to those alone.

    aiohttp does not call its resolver for a host it takes for an IP literal (``127.0.0.1``,
    ``[::ffff:169.254.169.254]``): check every URL with :meth:`CallbackPolicy.check_url_host`
    before sending it.

    A literal that reaches this resolver (aiohttp passes spellings such as ``0xa9fea9fe`` as
    names) is answered here as the address it spells, judged, and never looked up: c-ares, unlike
    getaddrinfo, would send such a spelling to DNS.

    Names are looked up by ``aiohttp.AsyncResolver`` (c-ares, through aiodns), not by getaddrinfo
    in a thread (aiohttp's ``ThreadedResolver``): a lookup that the callback's timeout gives up
    on stops being awaited at once and holds no thread, while getaddrinfo cannot be stopped and
    held one of the loop's few resolver threads for the system resolver's own timeout (5 s per
    try, per name server), so a few names whose name server never answers made every other
    callback of the process wait for a thread and time out unsent. c-ares itself still waits out
    its own timeout for that query's answer, in its one event thread, blocking no other lookup.
    c-ares reads /etc/hosts and /etc/resolv.conf (name servers, ``search``, ``ndots``,
    ``timeout``, ``attempts``) as glibc does, and the ``files`` and ``dns`` sources of the
    ``hosts:`` line of /etc/nsswitch.conf, but no other NSS module (``myhostname``, ``mdns``,
    ``resolve``, LDAP); it keeps answers for their TTL, which are judged again at each use.

    The connector does not own a resolver it was given: close this one after the session.

    Args:
        policy: The policy to enforce.
        inner: The resolver that does the lookups; default an ``aiohttp.AsyncResolver``, created
            on first use (so, from a running event loop). Closed by :meth:`close`.
    """

    def __init__(self, policy: CallbackPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host`` and return only the addresses the policy allows.

        Args:
            host: The name (or literal) to resolve.
            port: The port, passed through to the results.
            family: ``AF_INET``, ``AF_INET6`` or ``AF_UNSPEC``, as the inner resolver takes it.

        Returns:
            The allowed results, in the inner resolver's order; for a literal, the one address
            it spells.

        Raises:
            CallbackRefused: ``host`` is a refused literal, or every address it resolves to is
                refused.
            OSError: the lookup failed (an unknown name, a name server that did not answer), or
                a literal is not of the ``family`` asked for. aiohttp turns it into
                ``aiohttp.ClientConnectorDNSError``.
        """
        address, problem = _parse_host(host)
        if problem is not None:
            raise CallbackRefused(host, problem)
        if address is not None:
            if (reason := self.policy.check_address(address)) is not None:
                raise CallbackRefused(host, reason)
            return [_literal_result(host, address, port, family)]
        if self._inner is None:
            self._inner = aiohttp.AsyncResolver()
        results = await self._inner.resolve(host, port, family)
        allowed: list[ResolveResult] = []
        refused: list[str] = []
        for result in results:
            reason = _check_resolved(self.policy, result["host"])
            if reason is None:
                allowed.append(result)
            elif reason not in refused:
                refused.append(reason)
        if refused and not allowed:
            raise CallbackRefused(
                host, f"{host} resolves only to refused addresses: " + "; ".join(refused)
            )
        if refused:
            logger.warning(
                "callback host %s resolves to refused addresses, left out: %s",
                host,
                "; ".join(refused),
            )
        return allowed

    async def close(self) -> None:
        """Close the inner resolver."""
        if self._inner is not None:
            await self._inner.close()
