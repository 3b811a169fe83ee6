"""Unit tests of the callback URL policy: addresses, literal spellings, the resolver, a session.

The resolver and session tests use loopback only: the real system resolver on ``localhost`` and
a tiny aiohttp server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import given
from hypothesis import strategies as st

from taskplatform.dispatch import sender_from_settings
from taskplatform.dispatch.callback import _describe_connect_error
from taskplatform.dispatch.policy import (
    ALLOW_SETTING,
    DEFAULT_DENY,
    DENY_SETTING,
    CallbackPolicy,
    CallbackRefused,
    IPNetwork,
    PolicyResolver,
    embedded_ipv4,
    parse_literal_host,
    parse_networks,
)
from taskplatform.settings import Settings

METADATA = IPv4Address("169.254.169.254")
LOOPBACK_DENIED = CallbackPolicy(
    deny=[*DEFAULT_DENY, IPv4Network("127.0.0.0/8"), IPv6Network("::1/128")]
)


# --- addresses -------------------------------------------------------------------------------


def test_default_deny_is_exactly_the_documented_networks() -> None:
    assert {str(network) for network in DEFAULT_DENY} == {
        "169.254.0.0/16",
        "fe80::/10",
        "0.0.0.0/8",
        "::/128",
        "255.255.255.255/32",
        "224.0.0.0/4",
        "ff00::/8",
        "fd00:ec2::254/128",
        "100.100.100.200/32",
        "168.63.129.16/32",
    }


def test_the_settings_default_is_the_policy_default() -> None:
    default = Settings().callback_deny_networks.split(",")
    assert {str(network) for network in parse_networks(default)} == {
        str(network) for network in DEFAULT_DENY
    }


def test_a_deny_list_that_drops_defaults_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    custom = Settings(callback_deny_networks="169.254.0.0/16,10.0.0.0/8")
    with caplog.at_level(logging.WARNING):
        sender_from_settings(custom)
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert "fe80::/10" in warned
    assert "168.63.129.16/32" in warned
    assert "169.254.0.0/16" not in warned
    caplog.clear()
    wider = Settings(callback_deny_networks=Settings().callback_deny_networks + ",10.0.0.0/8")
    with caplog.at_level(logging.WARNING):
        sender_from_settings(wider)
    assert not caplog.records


@pytest.mark.parametrize("network", DEFAULT_DENY, ids=str)
def test_every_default_denied_network_is_refused_throughout(network: IPNetwork) -> None:
    policy = CallbackPolicy()
    middle = network.network_address + network.num_addresses // 2
    for address in (network.network_address, middle, network.broadcast_address):
        reason = policy.check_address(address)
        assert reason == f"{address} is in the denied network {network} ({DENY_SETTING})"


@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "fe80::a9fe:a9fe"])
def test_cloud_metadata_addresses_are_refused(address: str) -> None:
    assert CallbackPolicy().check_address(ip_address(address)) is not None


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "::1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.10",
        "100.64.0.1",
        "fd12:3456::1",
        "::ffff:127.0.0.1",
        "::ffff:10.1.2.3",
        "93.184.216.34",
        "2606:4700:4700::1111",
        "169.253.255.255",
        "169.255.0.0",
        "223.255.255.255",
        "255.255.255.254",
        "fd00:ec2::253",
    ],
)
def test_loopback_private_and_public_addresses_are_allowed_by_default(address: str) -> None:
    assert CallbackPolicy().check_address(ip_address(address)) is None


def test_an_ipv6_zone_id_does_not_hide_a_link_local_address() -> None:
    assert CallbackPolicy().check_address(IPv6Address("fe80::1%eth0")) is not None


@pytest.mark.parametrize(
    ("address", "form"),
    [
        ("::ffff:169.254.169.254", "IPv4-mapped"),
        ("::ffff:0:169.254.169.254", "IPv4-translated"),
        ("::169.254.169.254", "IPv4-compatible"),
        ("64:ff9b::a9fe:a9fe", "NAT64"),
        ("64:ff9b::169.254.169.254", "NAT64"),
        ("2002:a9fe:a9fe::1", "6to4"),
        ("2001:0:4136:e378:8000:63bf:5601:5601", "Teredo"),  # client 169.254.169.254 (obfuscated)
    ],
)
def test_ipv6_forms_are_judged_by_the_ipv4_address_they_embed(address: str, form: str) -> None:
    ip = IPv6Address(address)
    assert embedded_ipv4(ip) == (METADATA, form)
    reason = CallbackPolicy().check_address(ip)
    assert reason == (
        f"{ip} ({form} 169.254.169.254) is in the denied network 169.254.0.0/16 ({DENY_SETTING})"
    )


@pytest.mark.parametrize("address", ["::", "::1", "2001:db8::1", "fd00::1"])
def test_plain_ipv6_addresses_embed_nothing(address: str) -> None:
    assert embedded_ipv4(IPv6Address(address)) is None


def test_mapped_addresses_of_denied_v4_ranges_are_refused_for_each_range() -> None:
    policy = CallbackPolicy()
    for text in ("::ffff:0.0.0.0", "::ffff:224.0.0.1", "::ffff:255.255.255.255", "::0.0.0.7"):
        assert policy.check_address(IPv6Address(text)) is not None, text


def test_a_denied_ipv6_form_is_refused_even_when_its_ipv4_is_allowed() -> None:
    policy = CallbackPolicy(deny=[IPv6Network("64:ff9b::/96")])
    assert policy.check_address(IPv6Address("64:ff9b::10.0.0.1")) is not None
    assert policy.check_address(IPv4Address("10.0.0.1")) is None


# --- allow list --------------------------------------------------------------------------------


def test_an_allow_list_allows_only_its_networks() -> None:
    policy = CallbackPolicy(allow=[IPv4Network("10.0.0.0/8"), IPv6Network("2001:db8::/32")])
    assert policy.check_address(IPv4Address("10.20.30.40")) is None
    assert policy.check_address(IPv6Address("2001:db8::7")) is None
    assert policy.check_address(IPv4Address("192.168.1.1")) == (
        f"192.168.1.1 is not in the allowed networks ({ALLOW_SETTING})"
    )
    assert policy.check_address(IPv6Address("::1")) is not None
    assert policy.check_address(IPv4Address("127.0.0.1")) is not None


def test_an_allow_list_judges_an_embedded_ipv4_by_its_ipv4_address() -> None:
    policy = CallbackPolicy(allow=[IPv4Network("10.0.0.0/8")])
    assert policy.check_address(IPv6Address("::ffff:10.1.2.3")) is None
    assert policy.check_address(IPv6Address("::ffff:192.168.1.1")) is not None


def test_deny_wins_over_allow() -> None:
    policy = CallbackPolicy(allow=[IPv4Network("0.0.0.0/0"), IPv6Network("::/0")])
    assert policy.check_address(METADATA) is not None
    assert policy.check_address(IPv6Address("::ffff:169.254.169.254")) is not None
    assert policy.check_address(IPv4Address("8.8.8.8")) is None


def test_an_empty_allow_list_allows_nothing_and_an_empty_deny_list_denies_nothing() -> None:
    assert CallbackPolicy(allow=[]).check_address(IPv4Address("8.8.8.8")) is not None
    assert CallbackPolicy(deny=[]).check_address(METADATA) is None


def test_parse_networks_reads_networks_and_single_addresses() -> None:
    assert parse_networks([" 10.0.0.0/8", "", "fd00::/8 ", "192.0.2.7"]) == (
        IPv4Network("10.0.0.0/8"),
        IPv6Network("fd00::/8"),
        IPv4Network("192.0.2.7/32"),
    )


@pytest.mark.parametrize("value", ["10.0.0.1/8", "example.com", "10.0.0.0/33"])
def test_parse_networks_names_the_setting_and_the_bad_value(value: str) -> None:
    with pytest.raises(ValueError, match=rf"^{ALLOW_SETTING}: '{value}' is not an IP network"):
        parse_networks([value], setting=ALLOW_SETTING)


# --- literal hosts -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("169.254.169.254", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),  # one decimal number
        ("0251.0376.0251.0376", "169.254.169.254"),  # octal parts
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),  # hexadecimal parts
        ("0XA9.0XFE.0XA9.0XFE", "169.254.169.254"),
        ("0xa9fea9fe", "169.254.169.254"),  # one hexadecimal number
        ("025177524776", "169.254.169.254"),  # one octal number
        ("169.254.43518", "169.254.169.254"),  # a.b.c with c 16 bits
        ("169.16689662", "169.254.169.254"),  # a.b with b 24 bits
        ("0xa9.254.0251.0xfe", "169.254.169.254"),  # mixed
        ("169.254.169.254.", "169.254.169.254"),  # trailing dot
        ("169.254.169.254..", "169.254.169.254"),
        ("%31%36%39.254.169.254", "169.254.169.254"),  # percent-escapes, decoded by browsers
        ("１６９.２５４.１６９.２５４", "169.254.169.254"),  # fullwidth digits (UTS 46)
        ("169。254。169。254", "169.254.169.254"),  # ideographic full stops
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0x", "0.0.0.0"),  # an empty hexadecimal number is 0 (WHATWG)
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[::ffff:169.254.169.254]", "::ffff:169.254.169.254"),
        ("::ffff:169.254.169.254", "::ffff:169.254.169.254"),
        ("[::ffff:a9fe:a9fe]", "::ffff:169.254.169.254"),
        ("[64:ff9b::a9fe:a9fe]", "64:ff9b::169.254.169.254"),
        ("[FE80::1%25eth0]", "fe80::1"),  # zone id dropped
        ("fe80::1%eth0", "fe80::1"),
    ],
)
def test_every_literal_spelling_is_read_as_its_address(host: str, address: str) -> None:
    assert parse_literal_host(host) == ip_address(address)


@pytest.mark.parametrize(
    "host",
    [
        "2852039166",
        "0251.0376.0251.0376",
        "0xa9.0xfe.0xa9.0xfe",
        "0xa9fea9fe",
        "169.254.43518",
        "169.254.169.254.",
        "[::ffff:169.254.169.254]",
        "::ffff:169.254.169.254",
        "[64:ff9b::a9fe:a9fe]",
        "[::a9fe:a9fe]",
        "[fe80::1%25eth0]",
        "[fd00:ec2::254]",
        "0.0.0.0",
        "0",
        "[::]",
        "255.255.255.255",
        "4294967295",
        "224.0.0.1",
    ],
)
def test_check_url_host_refuses_every_spelling_of_a_denied_address(host: str) -> None:
    reason = CallbackPolicy().check_url_host(host)
    assert reason is not None
    assert "is in the denied network" in reason


def test_check_url_host_names_the_spelling_when_it_is_not_the_plain_address() -> None:
    assert CallbackPolicy().check_url_host("0xa9fea9fe") == (
        f"169.254.169.254 is in the denied network 169.254.0.0/16 ({DENY_SETTING}); "
        "the host '0xa9fea9fe' is that address"
    )


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.1", "2130706433", "[::1]", "10.0.0.1", "0x0a000001", "192.168.0.1"]
)
def test_check_url_host_allows_loopback_and_private_literals_by_default(host: str) -> None:
    assert CallbackPolicy().check_url_host(host) is None


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "localhost",
        "metadata.google.internal",
        "0xg",
        "1.2.3.example",
        "a0x1",
        "0x1.example",
        "xn--nxasmq6b.example",
        "١٢٧.٠.٠.١",  # Arabic-Indic digits: a name, not an address, to WHATWG
    ],
)
def test_names_are_not_literals_and_pass_until_resolved(host: str) -> None:
    assert parse_literal_host(host) is None
    assert CallbackPolicy().check_url_host(host) is None


@pytest.mark.parametrize(
    "host",
    [
        "1.2.3.4.5",
        "256.0.0.1",
        "1.2.3.256",
        "1.2.65536",
        "1.16777216",
        "4294967296",
        "08.0.0.1",
        "example.123",
    ],
)
def test_a_host_ending_in_a_number_that_is_no_valid_ipv4_is_refused(host: str) -> None:
    assert parse_literal_host(host) is None
    reason = CallbackPolicy().check_url_host(host)
    assert reason is not None
    assert "ends in a number" in reason


@pytest.mark.parametrize("host", ["[example.com]", "[1:2]", "1:2:3", "[::ffff:0251.0.0.1]"])
def test_a_malformed_ipv6_literal_is_refused(host: str) -> None:
    assert parse_literal_host(host) is None
    assert CallbackPolicy().check_url_host(host) == (
        f"{host!r} is neither a host name nor a valid IPv6 address"
    )


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://0xa9fea9fe/latest/meta-data/", True),
        ("http://[::ffff:169.254.169.254]:8080/x", True),
        ("https://169.254.169.254./", True),
        ("http://０ｘａ９ｆｅａ９ｆｅ/", True),
        ("http://example.com/hook", False),
        ("http://127.0.0.1:9000/orders", False),
        ("/relative/path", True),
    ],
)
def test_check_url_reads_the_host_as_aiohttp_does(url: str, refused: bool) -> None:
    assert (CallbackPolicy().check_url(url) is not None) is refused


_SPELLINGS = st.sampled_from(["decimal", "octal", "hex", "HEX"])


def _spell(value: int, how: str) -> str:
    if how == "octal":
        return f"0{value:o}"
    if how == "hex":
        return f"0x{value:x}"
    if how == "HEX":
        return f"0X{value:X}"
    return str(value)


@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.lists(_SPELLINGS, min_size=4, max_size=4))
def test_parse_agrees_with_inet_aton_on_every_spelling(
    value: int, count: int, spellings: list[str]
) -> None:
    """Each of up to four parts in any radix means what the C library's inet_aton says."""
    octets = value.to_bytes(4, "big")
    numbers = [*octets[: count - 1], int.from_bytes(octets[count - 1 :], "big")]
    host = ".".join(_spell(number, how) for number, how in zip(numbers, spellings, strict=False))
    assert parse_literal_host(host) == IPv4Address(value)
    assert parse_literal_host(host) == IPv4Address(socket.inet_aton(host))


@given(st.text(max_size=60))
def test_any_host_text_gets_an_answer_not_an_exception(host: str) -> None:
    result = CallbackPolicy().check_url_host(host)
    assert result is None or isinstance(result, str)


# --- the resolver ------------------------------------------------------------------------------


def _result(host: str, address: str, port: int = 443) -> ResolveResult:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return {
        "hostname": host,
        "host": address,
        "port": port,
        "family": family,
        "proto": 0,
        "flags": 0,
    }


@dataclass
class FakeResolver(AbstractResolver):
    """Answers each lookup with the next list of addresses in ``answers``; records the calls."""

    answers: list[list[str]]
    calls: list[tuple[str, int, int]] = field(default_factory=list)
    closed: bool = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append((host, port, family))
        return [_result(host, address, port) for address in self.answers.pop(0)]

    async def close(self) -> None:
        self.closed = True


async def test_a_name_resolving_to_a_denied_address_is_refused() -> None:
    resolver = PolicyResolver(CallbackPolicy(), FakeResolver([["169.254.169.254"]]))
    with pytest.raises(CallbackRefused) as info:
        await resolver.resolve("metadata.test", 80, socket.AF_UNSPEC)
    assert str(info.value) == (
        "callback refused by the URL policy: metadata.test resolves only to refused addresses: "
        f"169.254.169.254 is in the denied network 169.254.0.0/16 ({DENY_SETTING})"
    )
    assert info.value.host == "metadata.test"
    assert isinstance(info.value, OSError)


async def test_only_the_allowed_addresses_of_a_mixed_answer_are_returned() -> None:
    answer = ["169.254.169.254", "10.0.0.5", "::ffff:169.254.169.254", "fe80::1%eth0", "::1"]
    resolver = PolicyResolver(CallbackPolicy(), FakeResolver([answer]))
    results = await resolver.resolve("mixed.test", 8443, socket.AF_UNSPEC)
    assert [result["host"] for result in results] == ["10.0.0.5", "::1"]
    assert all(result["port"] == 8443 for result in results)


async def test_each_resolution_is_judged_so_dns_rebinding_gets_no_connection() -> None:
    fake = FakeResolver([["93.184.216.34"], ["169.254.169.254"]])
    resolver = PolicyResolver(CallbackPolicy(), fake)
    assert [r["host"] for r in await resolver.resolve("rebind.test", 80)] == ["93.184.216.34"]
    with pytest.raises(CallbackRefused):
        await resolver.resolve("rebind.test", 80)
    assert len(fake.calls) == 2


async def test_an_answer_that_is_not_an_address_is_refused() -> None:
    resolver = PolicyResolver(CallbackPolicy(), FakeResolver([["not-an-address"]]))
    with pytest.raises(CallbackRefused, match="which is not an IP address"):
        await resolver.resolve("odd.test", 80)


@pytest.mark.parametrize(
    "host", ["169.254.169.254", "0xa9fea9fe", "2852039166", "::ffff:169.254.169.254", "1.2.3.4.5"]
)
async def test_a_refused_literal_is_refused_without_a_lookup(host: str) -> None:
    fake = FakeResolver([])
    resolver = PolicyResolver(CallbackPolicy(), fake)
    with pytest.raises(CallbackRefused):
        await resolver.resolve(host, 80)
    assert fake.calls == []


async def test_a_refused_literal_message_names_the_policy_the_address_and_the_setting() -> None:
    resolver = PolicyResolver(CallbackPolicy(), FakeResolver([]))
    with pytest.raises(CallbackRefused) as info:
        await resolver.resolve("169.254.169.254", 80)
    assert str(info.value) == (
        "callback refused by the URL policy: 169.254.169.254 is in the denied network "
        "169.254.0.0/16 (TASKPLATFORM_CALLBACK_DENY_NETWORKS)"
    )


async def test_an_allowed_literal_is_answered_as_the_address_it_spells_without_a_lookup() -> None:
    """c-ares, unlike getaddrinfo, would send ``0x0a000001`` to DNS as a name."""
    fake = FakeResolver([])
    resolver = PolicyResolver(CallbackPolicy(), fake)
    assert await resolver.resolve("0x0a000001", 80) == [
        {
            "hostname": "0x0a000001",
            "host": "10.0.0.1",
            "port": 80,
            "family": socket.AF_INET,
            "proto": 0,
            "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
        }
    ]
    results = await resolver.resolve("0x0a000001.", 443, socket.AF_UNSPEC)
    assert [(r["host"], r["port"]) for r in results] == [("10.0.0.1", 443)]
    assert fake.calls == []


async def test_a_literal_of_the_other_family_does_not_resolve() -> None:
    resolver = PolicyResolver(CallbackPolicy(), FakeResolver([]))
    with pytest.raises(OSError, match="is an IPv4 address, and AF_INET6 was asked") as info:
        await resolver.resolve("2130706433", 80, socket.AF_INET6)
    assert not isinstance(info.value, CallbackRefused)


async def test_close_closes_the_inner_resolver() -> None:
    fake = FakeResolver([])
    await PolicyResolver(CallbackPolicy(), fake).close()
    assert fake.closed


async def test_the_real_resolver_refuses_localhost_when_loopback_is_denied() -> None:
    resolver = PolicyResolver(LOOPBACK_DENIED)  # the default inner: aiohttp's AsyncResolver
    try:
        with pytest.raises(CallbackRefused, match="localhost resolves only to refused") as info:
            await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
        assert "127.0.0.1 is in the denied network 127.0.0.0/8" in str(info.value)
        allowed = await PolicyResolver(CallbackPolicy()).resolve("localhost", 80, socket.AF_UNSPEC)
        assert {r["host"] for r in allowed} <= {"127.0.0.1", "::1"}
        assert allowed
    finally:
        await resolver.close()


# --- lookups by c-ares: given up with the callback, holding no thread ---------------------------


@dataclass
class NameServer:
    """A DNS server on 127.0.0.1 (UDP): ``answers`` maps a name to its A and AAAA addresses
    (TTL 0, so nothing is cached); a name starting with ``silent`` is read and never answered,
    as a name server that a client controls can do; any other name does not exist (NXDOMAIN).
    ``queries`` counts the questions per name."""

    port: int = 0
    answers: dict[str, list[str]] = field(default_factory=dict)
    queries: Counter[str] = field(default_factory=Counter)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def answer(self, query: bytes) -> bytes | None:
        """The reply to one query (RFC 1035 4.1), or None for a name left unanswered."""
        end, labels = 12, []
        while query[end]:
            labels.append(query[end + 1 : end + 1 + query[end]].decode())
            end += 1 + query[end]
        name = ".".join(labels).lower()
        qtype = int.from_bytes(query[end + 1 : end + 3])
        question = query[12 : end + 5]
        self.queries[name] += 1
        if name.startswith("silent"):
            return None
        if name not in self.answers:  # rcode 3: no such name
            return query[:2] + struct.pack("!5H", 0x8183, 1, 0, 0, 0) + question
        records = []
        for text in self.answers[name]:
            address = ip_address(text)
            if (address.version, qtype) in ((4, 1), (6, 28)):
                records.append(
                    struct.pack("!3HIH", 0xC00C, qtype, 1, 0, len(address.packed)) + address.packed
                )
        header = struct.pack("!5H", 0x8180, 1, len(records), 0, 0)
        return query[:2] + header + question + b"".join(records)


@pytest.fixture
def name_server() -> Iterator[NameServer]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    state = NameServer(port=sock.getsockname()[1])

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                query, peer = sock.recvfrom(4096)
                if (reply := state.answer(query)) is not None:
                    sock.sendto(reply, peer)

    threading.Thread(target=serve, daemon=True).start()
    yield state
    sock.close()


def _c_ares(name_server: NameServer) -> aiohttp.AsyncResolver:
    """aiohttp's c-ares resolver, as PolicyResolver makes it, asking only ``name_server``."""
    return aiohttp.AsyncResolver(nameservers=[name_server.address])


async def test_the_default_lookups_are_c_ares_not_getaddrinfo_in_a_thread() -> None:
    resolver = PolicyResolver(CallbackPolicy())
    try:
        assert await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
        assert type(resolver._inner) is aiohttp.AsyncResolver
    finally:
        await resolver.close()


async def test_lookups_given_up_with_their_callbacks_hold_no_thread_and_block_no_other(
    name_server: NameServer,
) -> None:
    """A callback's timeout cancels its lookup. getaddrinfo cannot be stopped and held a thread
    of a small pool for the system resolver's own timeout (5 s per try, per name server), so a
    few names whose name server never answers made every other lookup of the process wait.
    Here 200 such lookups, more than any pool holds threads, are given up at once, and a name
    that is answered, and one in /etc/hosts, resolve at once while c-ares still waits for
    theirs."""
    name_server.answers["ok.test"] = ["127.0.0.1", "::1"]
    resolver = PolicyResolver(CallbackPolicy(), _c_ares(name_server))
    threads = threading.active_count()

    async def callback(n: int) -> None:
        async with asyncio.timeout(0.2):
            await resolver.resolve(f"silent-{n}.test", 80, socket.AF_UNSPEC)

    try:
        started = time.monotonic()
        outcomes = await asyncio.gather(*(callback(n) for n in range(200)), return_exceptions=True)
        assert all(isinstance(outcome, TimeoutError) for outcome in outcomes), outcomes[:3]
        assert time.monotonic() - started < 2
        assert threading.active_count() <= threads + 1  # c-ares's one event thread
        assert name_server.queries["silent-199.test"] >= 1  # asked, and still unanswered
        started = time.monotonic()
        async with asyncio.timeout(1):
            answered = await resolver.resolve("ok.test", 80, socket.AF_UNSPEC)
            from_hosts = await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
        assert time.monotonic() - started < 1
        assert {r["host"] for r in answered} == {"127.0.0.1", "::1"}
        assert {r["host"] for r in from_hosts} <= {"127.0.0.1", "::1"}
        assert "localhost" not in name_server.queries  # /etc/hosts, as getaddrinfo reads it
    finally:
        await resolver.close()


async def test_c_ares_answers_are_judged_again_at_each_lookup(name_server: NameServer) -> None:
    """DNS rebinding through the real resolver: an answer that changes is judged anew."""
    name_server.answers["rebind.test"] = ["93.184.216.34", "2606:2800:220:1::1"]
    resolver = PolicyResolver(CallbackPolicy(), _c_ares(name_server))
    try:
        first = await resolver.resolve("rebind.test", 80, socket.AF_UNSPEC)
        assert {(r["host"], r["family"]) for r in first} == {
            ("93.184.216.34", socket.AF_INET),
            ("2606:2800:220:1::1", socket.AF_INET6),
        }
        only_v4 = await resolver.resolve("rebind.test", 80, socket.AF_INET)
        assert [r["host"] for r in only_v4] == ["93.184.216.34"]
        name_server.answers["rebind.test"] = ["169.254.169.254", "fe80::1"]
        with pytest.raises(CallbackRefused, match=r"rebind\.test resolves only to refused"):
            await resolver.resolve("rebind.test", 80, socket.AF_UNSPEC)
    finally:
        await resolver.close()


async def test_a_name_that_does_not_exist_fails_in_words(name_server: NameServer) -> None:
    resolver = PolicyResolver(CallbackPolicy(), _c_ares(name_server))
    try:
        connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            with pytest.raises(aiohttp.ClientConnectorDNSError) as info:
                await session.get("http://nowhere.test:8080/")
    finally:
        await resolver.close()
    assert not isinstance(info.value.os_error, CallbackRefused)
    assert _describe_connect_error(info.value) == "cannot resolve host 'nowhere.test'"
    assert name_server.queries["nowhere.test"] >= 1


# --- a real session ----------------------------------------------------------------------------


@dataclass
class CountingServer:
    """An aiohttp.web server on 127.0.0.1 that counts the TCP connections it accepts."""

    port: int = 0
    accepted: int = 0


@pytest.fixture
async def counting_server() -> AsyncIterator[CountingServer]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    handler = runner.server
    assert handler is not None
    state = CountingServer()

    def accept() -> asyncio.Protocol:
        state.accepted += 1
        return handler()

    server = await asyncio.get_running_loop().create_server(accept, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()
        await runner.cleanup()


async def _get(policy: CallbackPolicy, url: str) -> int:
    resolver = PolicyResolver(policy)
    try:
        connector = aiohttp.TCPConnector(resolver=resolver, ttl_dns_cache=10)
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.get(url, allow_redirects=False) as response,
        ):
            await response.read()
            return response.status
    finally:
        await resolver.close()


async def test_a_session_reaches_localhost_under_the_default_policy(
    counting_server: CountingServer,
) -> None:
    assert await _get(CallbackPolicy(), f"http://localhost:{counting_server.port}/") == 200
    assert counting_server.accepted >= 1


async def test_a_session_never_connects_to_a_name_the_policy_refuses(
    counting_server: CountingServer,
) -> None:
    url = f"http://localhost:{counting_server.port}/"
    with pytest.raises(aiohttp.ClientConnectorDNSError) as info:
        await _get(LOOPBACK_DENIED, url)
    assert isinstance(info.value.os_error, CallbackRefused)
    assert "callback refused by the URL policy: localhost resolves only to refused" in str(
        info.value
    )
    await asyncio.sleep(0.05)  # a connection, had one been opened, would have been accepted
    assert counting_server.accepted == 0
    # The literal spelling of the same server skips aiohttp's resolver: the URL check refuses it.
    for host in ("127.0.0.1", "127.1", "2130706433", "[::ffff:127.0.0.1]"):
        assert LOOPBACK_DENIED.check_url(f"http://{host}:{counting_server.port}/") is not None


def _networks(texts: Sequence[str]) -> list[IPNetwork]:
    return [ip_network(text) for text in texts]


def test_repr_lists_the_networks() -> None:
    policy = CallbackPolicy(deny=_networks(["169.254.0.0/16"]), allow=_networks(["10.0.0.0/8"]))
    assert repr(policy) == "CallbackPolicy(deny=['169.254.0.0/16'], allow=['10.0.0.0/8'])"
