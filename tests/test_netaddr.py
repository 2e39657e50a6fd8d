from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_proxy.netaddr import (
    HostKind,
    classify_host,
    email_domain,
    find_urls,
    glob_match,
    host_matches,
    ipv4_readings,
    parse_ipv4,
    parse_url,
    remote_host,
)

METADATA = ipaddress.IPv4Address("169.254.169.254")


@pytest.mark.parametrize(
    "text",
    [
        "169.254.169.254",
        "2852039166",  # one 32-bit decimal
        "0xa9fea9fe",
        "0XA9FEA9FE",
        "0xA9.0xFE.0xA9.0xFE",
        "0251.0376.0251.0376",  # octal
        "0251.254.0xa9.254",  # mixed
        "169.254.43518",  # a.b.c: c is 16 bits
        "169.16689662",  # a.b: b is 24 bits
        "0xa9.16689662",
        "00000251.0376.0251.0376",  # zero padding
        "169.254.169.254.",  # trailing dot
    ],
)
def test_inet_aton_spellings_of_the_metadata_address(text: str) -> None:
    assert parse_ipv4(text) == METADATA


@pytest.mark.parametrize(
    "text",
    [
        "256.1.1.1",  # octet overflow
        "1.2.3.4.5",  # five parts
        "169.254.65536",  # c above 16 bits
        "4294967296",  # above 32 bits
        "08.1.1.1",  # 8 is not octal
        "0xg1.1.1.1",
        "1..2.3",
        "",
        ".",
        "1.2.3.4..",
        "abc",
        "١٢٣.1.1.1",  # non-ASCII digits are not digits to inet_aton
        "9" * 100,
    ],
)
def test_not_ipv4(text: str) -> None:
    assert parse_ipv4(text) is None


def test_leading_zeros_are_read_both_ways() -> None:
    # inet_aton reads 0169 as invalid octal; parsers that strip zeros read 169. We keep every reading.
    assert METADATA in ipv4_readings("0169.0254.0169.0254")
    assert ipv4_readings("010.0.0.1") == (ipaddress.IPv4Address("8.0.0.1"), ipaddress.IPv4Address("10.0.0.1"))
    assert ipv4_readings("1.2.3.4") == (ipaddress.IPv4Address("1.2.3.4"),)


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        # Cloud metadata, every spelling.
        ("169.254.169.254", HostKind.METADATA),
        ("2852039166", HostKind.METADATA),
        ("0xa9fea9fe", HostKind.METADATA),
        ("0xA9.0xFE.0xA9.0xFE", HostKind.METADATA),
        ("0251.0376.0251.0376", HostKind.METADATA),
        ("169.254.43518", HostKind.METADATA),
        ("0169.0254.0169.0254", HostKind.METADATA),
        ("[::ffff:169.254.169.254]", HostKind.METADATA),
        ("::ffff:a9fe:a9fe", HostKind.METADATA),
        ("[0:0:0:0:0:ffff:a9fe:a9fe]", HostKind.METADATA),
        ("[64:ff9b::a9fe:a9fe]", HostKind.METADATA),  # NAT64
        ("[2002:a9fe:a9fe::]", HostKind.METADATA),  # 6to4
        ("[::a9fe:a9fe]", HostKind.METADATA),  # IPv4-compatible
        ("[fd00:ec2::254]", HostKind.METADATA),
        ("metadata.google.internal", HostKind.METADATA),
        ("METADATA.GOOGLE.INTERNAL.", HostKind.METADATA),
        ("metadata.azure.com", HostKind.METADATA),
        ("100.100.100.200", HostKind.METADATA),  # Alibaba
        ("169.254.170.2", HostKind.METADATA),  # ECS
        ("%31%36%39.254.169.254", HostKind.METADATA),  # percent-encoded host
        ("169。254。169。254", HostKind.METADATA),  # ideographic full stops
        ("１６９．２５４．１６９．２５４", HostKind.METADATA),  # fullwidth, if extraction did not fold it
        # Rebinding and wildcard DNS names carrying an address.
        ("169.254.169.254.nip.io", HostKind.METADATA),
        ("169-254-169-254.sslip.io", HostKind.METADATA),
        ("a9fea9fe.nip.io", HostKind.METADATA),
        ("7f000001.a9fea9fe.rbndr.us", HostKind.METADATA),
        ("169.254.169.254.attacker.example", HostKind.METADATA),
        ("app.127.0.0.1.sslip.io", HostKind.LOOPBACK),
        ("10.0.0.5.nip.io", HostKind.PRIVATE),
        ("lvh.me", HostKind.LOOPBACK),
        ("api.localtest.me", HostKind.LOOPBACK),
        # Loopback.
        ("localhost", HostKind.LOOPBACK),
        ("localhost.", HostKind.LOOPBACK),
        ("LocalHost", HostKind.LOOPBACK),
        ("app.localhost", HostKind.LOOPBACK),
        ("127.0.0.1", HostKind.LOOPBACK),
        ("127.1", HostKind.LOOPBACK),
        ("2130706433", HostKind.LOOPBACK),
        ("0x7f000001", HostKind.LOOPBACK),
        ("017700000001", HostKind.LOOPBACK),
        ("0.0.0.0", HostKind.LOOPBACK),
        ("0", HostKind.LOOPBACK),
        ("[::1]", HostKind.LOOPBACK),
        ("[::]", HostKind.LOOPBACK),
        ("[::ffff:127.0.0.1]", HostKind.LOOPBACK),
        # Private networks and internal names.
        ("10.0.0.1", HostKind.PRIVATE),
        ("172.16.5.4", HostKind.PRIVATE),
        ("192.168.1.1", HostKind.PRIVATE),
        ("100.64.0.1", HostKind.PRIVATE),
        ("[fc00::1]", HostKind.PRIVATE),
        ("[fe80::1%25eth0]", HostKind.PRIVATE),
        ("169.254.1.1", HostKind.LINK_LOCAL),
        ("kubernetes.default.svc", HostKind.CLUSTER),
        ("jenkins", HostKind.INTERNAL_NAME),
        ("db.internal", HostKind.INTERNAL_NAME),
        ("printer.local", HostKind.INTERNAL_NAME),
        # Public.
        ("1.2.3.4", HostKind.PUBLIC),
        ("8.8.8.8", HostKind.PUBLIC),
        ("172.32.0.1", HostKind.PUBLIC),
        ("docs.python.org", HostKind.PUBLIC),
        ("ec2-3-4-5-6.compute-1.amazonaws.com", HostKind.PUBLIC),
        ("[2606:4700::1111]", HostKind.PUBLIC),
        ("", HostKind.PUBLIC),
    ],
)
def test_classify_host(host: str, kind: HostKind) -> None:
    assert classify_host(host).kind == kind


def test_host_info_describes_the_trick() -> None:
    assert classify_host("0xa9fea9fe").describe() == "169.254.169.254 (written as 0xa9fea9fe)"
    assert "nip.io" in classify_host("a9fea9fe.nip.io").describe()
    assert classify_host("169.254.169.254").describe() == "169.254.169.254"


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "alternates"),
    [
        ("https://docs.python.org/3/library/", "https", "docs.python.org", None, ()),
        ("http://allowed.com@169.254.169.254/", "http", "169.254.169.254", None, ()),
        ("http://169.254.169.254#@allowed.com", "http", "169.254.169.254", None, ("allowed.com",)),
        ("http://allowed.com#@169.254.169.254/", "http", "allowed.com", None, ("169.254.169.254",)),
        ("http://allowed.com\\@169.254.169.254/", "http", "allowed.com", None, ("169.254.169.254",)),
        ("http://a@b@169.254.169.254/", "http", "169.254.169.254", None, ()),
        ("http:\\\\169.254.169.254\\latest", "http", "169.254.169.254", None, ()),
        ("http:169.254.169.254/x", "http", "169.254.169.254", None, ()),
        ("HTTP://LOCALHOST:8080/x", "http", "localhost", 8080, ()),
        ("https://user:pw@[::1]:8443/p?q=1#f", "https", "::1", 8443, ()),
        ("gopher://127.0.0.1:6379/_INFO", "gopher", "127.0.0.1", 6379, ()),
        ("http://169.254.169\t.254/", "http", "169.254.169.254", None, ()),  # WHATWG drops tabs
    ],
)
def test_parse_url(url: str, scheme: str, host: str, port: int | None, alternates: tuple[str, ...]) -> None:
    parsed = parse_url(url)
    assert parsed is not None
    assert (parsed.scheme, parsed.host, parsed.port, parsed.alternate_hosts) == (scheme, host, port, alternates)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("localhost:3000", "localhost", 3000),
        ("localhost:3000/api/users", "localhost", 3000),
        ("169.254.169.254/latest/meta-data", "169.254.169.254", None),
        ("user@example.com", "example.com", None),
        ("[::1]:22", "::1", 22),
        ("example.com?q=1", "example.com", None),
    ],
)
def test_parse_url_without_scheme(text: str, host: str, port: int | None) -> None:
    parsed = parse_url(text, default_scheme="http")
    assert parsed is not None
    assert (parsed.scheme, parsed.host, parsed.port) == ("", host, port)


@pytest.mark.parametrize(
    "text", ["mailto:bob@example.com", "note: remember", "/etc/passwd", "./run.sh", "", "http://", "urn:isbn:123"]
)
def test_not_a_url(text: str) -> None:
    assert parse_url(text, default_scheme="http") is None


def test_file_url_has_a_path_and_no_host() -> None:
    parsed = parse_url("file:///etc/shadow")
    assert parsed is not None and parsed.scheme == "file" and parsed.host == "" and parsed.path == "/etc/shadow"


@pytest.mark.parametrize(
    ("text", "urls"),
    [
        ("see https://docs.python.org/3/. Thanks", ["https://docs.python.org/3/"]),
        ("[docs](https://example.com/a_(b)) and (http://x.io/y)", ["https://example.com/a_(b", "http://x.io/y"]),
        ('curl "http://169.254.169.254/latest"', ["http://169.254.169.254/latest"]),
        ("gopher://h:70/_x and ftp://f.example/x", ["gopher://h:70/_x", "ftp://f.example/x"]),
        ("open http:\\\\evil.example\\x now", ["http:\\\\evil.example\\x"]),
        ("C:\\Users\\bob and ://nothing", []),
        ("no urls here, version 1.2.3 on 2024.01.02", []),
    ],
)
def test_find_urls(text: str, urls: list[str]) -> None:
    assert find_urls(text) == urls


def test_find_urls_is_bounded() -> None:
    assert len(find_urls("http://a.example/ " * 10_000)) == 64


@pytest.mark.parametrize(
    ("host", "patterns", "expected"),
    [
        ("api.github.com", ("*.github.com",), True),
        ("github.com", ("*.github.com",), True),  # the apex too: what people mean by *.github.com
        ("evilgithub.com", ("*.github.com",), False),
        ("github.com.evil.com", ("*.github.com",), False),
        ("API.GitHub.com.", ("*.github.com",), True),
        ("hooks.slack.com", ("hooks.slack.com",), True),
        ("a.b.example", ("a*example",), True),
        ("example.org", ("example.com", "*.example.com"), False),
        ("anything", (), False),
        ("x.example", ("",), False),
    ],
)
def test_host_matches(host: str, patterns: tuple[str, ...], expected: bool) -> None:
    assert host_matches(host, patterns) is expected


def test_glob_match_is_linear_on_hostile_patterns() -> None:
    assert not glob_match("a" * 5000 + "b", "*a*a*a*a*a*a*a*a*c")


@pytest.mark.parametrize(
    ("spec", "host"),
    [
        ("user@evil.example:/tmp/", "evil.example"),
        ("git@github.com:org/repo.git", "github.com"),
        ("backup:/srv", "backup"),
        ("host::module", "host"),
        ("[::1]:/x", "::1"),
        ("C:\\Users\\bob", None),
        ("./a:b", None),
        ("/abs/path:with-colon", None),
        ("file.txt", None),
        ("https://example.com/x", None),
    ],
)
def test_remote_host(spec: str, host: str | None) -> None:
    assert remote_host(spec) == host


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        ("bob@evil.example", "evil.example"),
        ("Bob Smith <Bob@Example.COM>", "example.com"),
        ("not an address", None),
        ("@example.com", None),
        ("bob@localhost", None),
    ],
)
def test_email_domain(text: str, domain: str | None) -> None:
    assert email_domain(text) == domain


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_parsers_never_raise(text: str) -> None:
    parse_ipv4(text)
    classify_host(text)
    parse_url(text)
    parse_url(text, default_scheme="http")
    find_urls(text)
    remote_host(text)
    email_domain(text)
    host_matches(text, ("*.example.com", "a*b?c"))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789abcdefxX.:[]%@/#\\?-", max_size=80))
def test_parsers_never_raise_on_address_like_text(text: str) -> None:
    classify_host(text)
    parse_url("http://" + text)
    parse_url(text, default_scheme="http")
