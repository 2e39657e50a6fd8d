"""Hosts, IP addresses and URLs, read the way the client that connects would read them.

An SSRF filter is only as good as its parser: `http://0xa9fea9fe/`, `http://169.254.43518/` and
`http://[::ffff:a9fe:a9fe]/` all reach the cloud metadata service, because curl, browsers and most libraries resolve
hosts with inet_aton's legacy rules (one to four parts, each decimal, 0-octal or 0x-hex) or the WHATWG URL rules that
copy them. So this module parses with those rules, and where popular parsers disagree (leading zeros, `#@`, `\\@`) it
reports every reading, so the caller can judge the worst one.

Everything here is plain string work on bounded slices: no regular expressions, nothing that can raise on any input.
"""

from __future__ import annotations

import enum
import ipaddress
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_HOST_CHARS = 255  # DNS names stop at 253; anything longer is not a host we need to read precisely
MAX_URL_CHARS = 8192

# Schemes the WHATWG URL standard treats as "special": slashes and backslashes after the colon are skipped.
SPECIAL_SCHEMES = frozenset({"http", "https", "ws", "wss", "ftp"})


class HostKind(enum.IntEnum):
    """Where a host leads, ordered by how bad it is for an agent to reach it (worst last)."""

    PUBLIC = 0
    INTERNAL_NAME = 1  # a name that only resolves inside a network: `jenkins`, `db.internal`, `printer.local`
    PRIVATE = 2  # RFC 1918, CGNAT, IPv6 unique-local and link-local
    LOOPBACK = 3  # this machine: 127/8, ::1, 0.0.0.0, localhost
    CLUSTER = 4  # the Kubernetes API server: a service account token away from the cluster
    LINK_LOCAL = 5  # 169.254/16: where cloud platforms put their own services
    METADATA = 6  # a cloud instance metadata service: credentials for the machine's role


# Cloud instance metadata and platform services: reaching one hands out the machine's credentials.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle, Hetzner, ...
        "169.254.170.2",  # AWS ECS task metadata and credentials
        "169.254.170.23",  # AWS EKS pod identity agent
        "169.254.0.23",  # Tencent Cloud
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer
        "192.0.0.192",  # Oracle Cloud (legacy)
        "fd00:ec2::254",  # AWS, IPv6
        "fd00:ec2::23",  # AWS EKS pod identity agent, IPv6
    )
)

METADATA_HOSTNAMES = frozenset(
    {
        "metadata",  # GCP's short name, resolvable on every GCE instance
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.com",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
        "metadata.packet.net",
    }
)

CLUSTER_HOSTNAMES = frozenset(
    {"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
)

LOOPBACK_HOSTNAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})

# Public DNS names that always resolve to 127.0.0.1 (handy for local development, and for dodging a filter).
LOOPBACK_DOMAINS = frozenset({"localtest.me", "lvh.me", "vcap.me", "localh.st", "fuf.me", "127.0.0.1.nip.io"})

# Wildcard-DNS and DNS-rebinding services: the address is written into the name (`169.254.169.254.nip.io`,
# `169-254-169-254.sslip.io`, `a9fea9fe.nip.io`, `7f000001.a9fea9fe.rbndr.us`).
REBINDING_DOMAINS = frozenset(
    {"nip.io", "sslip.io", "xip.io", "traefik.me", "1u.ms", "rbndr.us", "lock.cmpxchg8b.com", "backname.io"}
)

# Suffixes that only resolve on a private network.
INTERNAL_SUFFIXES = (
    ".internal",
    ".local",
    ".localdomain",
    ".lan",
    ".home.arpa",
    ".corp",
    ".intranet",
    ".cluster.local",
    ".svc",
)

_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7", "fe80::/10")
)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # 0.0.0.0 connects to the local host on Linux and macOS
_LINK_LOCAL_V4 = ipaddress.ip_network("169.254.0.0/16")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # SIIT, RFC 2765
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated, still routed to the IPv4 address by some stacks

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_DEC_DIGITS = frozenset("0123456789")
_OCT_DIGITS = frozenset("01234567")
_IPV4_CHARS = frozenset("0123456789abcdefxABCDEFX.")
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_MAX_NUMBER_CHARS = 40  # 2**32 in octal has 11 digits; leave room for zero padding, refuse absurd inputs

# Full stops that IDNA maps to "." (NFKC folds the fullwidth one, not the ideographic one).
_DOT_VARIANTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


# --- IP addresses -------------------------------------------------------------------------------------------------


def _parse_ipv4_number(part: str) -> int | None:
    """One inet_aton part: `0x`-prefixed hex, `0`-prefixed octal, or decimal. None if it is none of them."""
    if not part or len(part) > _MAX_NUMBER_CHARS:
        return None
    if part[:2] in ("0x", "0X"):
        digits = part[2:]
        if not digits:
            return 0  # WHATWG reads a bare "0x" as zero
        return int(digits, 16) if set(digits) <= _HEX_DIGITS else None
    if not set(part) <= _DEC_DIGITS:
        return None
    if len(part) > 1 and part[0] == "0":
        return int(part, 8) if set(part) <= _OCT_DIGITS else None
    return int(part)


def parse_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """Parse `text` with inet_aton(3)'s rules, as curl, browsers (WHATWG) and getaddrinfo do.

    `a` is 32 bits, `a.b` is 8.24, `a.b.c` is 8.8.16, `a.b.c.d` is 8.8.8.8; each part decimal, octal or hex.
    A single trailing dot is accepted (WHATWG and resolvers ignore it).
    """
    if not text or len(text) > 4 * (_MAX_NUMBER_CHARS + 1):
        return None
    if text.endswith("."):
        text = text[:-1]
    parts = text.split(".")
    if len(parts) > 4:
        return None
    values: list[int] = []
    for part in parts:
        value = _parse_ipv4_number(part)
        if value is None:
            return None
        values.append(value)
    *head, last = values
    if any(value > 255 for value in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for index, value in enumerate(head):
        number += value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def _parse_ipv4_leading_zero_decimal(text: str) -> ipaddress.IPv4Address | None:
    """The other reading of `0169.0254.0169.0254`: parsers that strip leading zeros instead of reading octal."""
    parts = text.rstrip(".").split(".")
    if len(parts) != 4 or not all(part and len(part) <= 8 and set(part) <= _DEC_DIGITS for part in parts):
        return None
    if not any(len(part) > 1 and part[0] == "0" for part in parts):
        return None
    values = [int(part) for part in parts]
    if any(value > 255 for value in values):
        return None
    return ipaddress.IPv4Address(".".join(map(str, values)))


def ipv4_readings(text: str) -> tuple[ipaddress.IPv4Address, ...]:
    """Every IPv4 address a common client could take `text` for (usually zero or one)."""
    readings: list[ipaddress.IPv4Address] = []
    for reading in (parse_ipv4(text), _parse_ipv4_leading_zero_decimal(text)):
        if reading is not None and reading not in readings:
            readings.append(reading)
    return tuple(readings)


def parse_ipv6(text: str) -> ipaddress.IPv6Address | None:
    """An IPv6 literal, with or without brackets and zone id (`[fe80::1%25eth0]`)."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" not in text or len(text) > 64:
        return None
    text = text.split("%", 1)[0]  # the zone id does not change where the address is
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, translated, NAT64, 6to4, Teredo, compatible), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    for network in (_IPV4_TRANSLATED, _NAT64, _IPV4_COMPATIBLE):
        if address in network and int(address) > 1:  # not :: or ::1
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def classify_address(address: IPAddress) -> HostKind:
    """The kind of one IP address, looking through IPv6 forms that carry an IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        own = _classify_plain(address)
        return max(own, classify_address(inner)) if inner is not None else own
    return _classify_plain(address)


def _classify_plain(address: IPAddress) -> HostKind:
    if address in METADATA_ADDRESSES:
        return HostKind.METADATA
    if address.is_loopback or address.is_unspecified or address in _THIS_NETWORK:
        return HostKind.LOOPBACK
    if address in _LINK_LOCAL_V4:
        return HostKind.LINK_LOCAL
    if any(address in network for network in _PRIVATE_NETWORKS):
        return HostKind.PRIVATE
    return HostKind.PUBLIC


# --- Host names -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostInfo:
    host: str  # as normalised: lower case, no brackets, no trailing dot, percent-decoded
    kind: HostKind
    address: IPAddress | None = None  # the address the kind was decided on, when there is one
    note: str = ""  # how it was written when that is a trick, e.g. "written as 0xa9fea9fe"

    def describe(self) -> str:
        """`169.254.169.254 (written as 0xa9fea9fe)`, for finding messages."""
        shown = str(self.address) if self.address is not None else self.host
        return f"{shown} ({self.note})" if self.note else shown


def normalise_host(host: str) -> str:
    """Lower case, percent-decoded, IDNA full stops folded, brackets and one trailing dot removed."""
    host = host[:MAX_HOST_CHARS].strip()
    if "%" in host and not host.startswith("["):
        host = unquote(host)
    if not host.isascii():  # fullwidth digits and dots, as IDNA would fold them (extraction usually did already)
        host = unicodedata.normalize("NFKC", host.translate(_DOT_VARIANTS))
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    return host


def _ends_in_number(host: str) -> bool:
    """WHATWG's test for "this host is an IPv4 address": its last label is a number."""
    if not host or not set(host) <= _IPV4_CHARS:
        return False
    last = host.rstrip(".").rsplit(".", 1)[-1]
    return bool(last) and (set(last) <= _DEC_DIGITS or (last[:2] in ("0x", "0X") and set(last[2:]) <= _HEX_DIGITS))


def _suffix_match(host: str, domains: frozenset[str]) -> str | None:
    """The domain in `domains` that `host` is, or is a subdomain of."""
    labels = host.split(".")
    for index in range(len(labels)):
        candidate = ".".join(labels[index:])
        if candidate in domains:
            return candidate
    return None


def _octet(text: str) -> bool:
    return 0 < len(text) <= 3 and set(text) <= _DEC_DIGITS and int(text) <= 255


def _embedded_dotted_quads(labels: list[str]) -> list[ipaddress.IPv4Address]:
    """Addresses written into a DNS name: four numeric labels in a row, or one label `169-254-169-254`."""
    found: list[ipaddress.IPv4Address] = []
    for index in range(len(labels) - 3):
        window = labels[index : index + 4]
        if all(_octet(label) for label in window):
            found.append(ipaddress.IPv4Address(".".join(str(int(label)) for label in window)))
    for label in labels:
        pieces = label.split("-")
        for index in range(len(pieces) - 3):
            window = pieces[index : index + 4]
            if all(_octet(piece) for piece in window):
                found.append(ipaddress.IPv4Address(".".join(str(int(piece)) for piece in window)))
    return found


def classify_host(host: str) -> HostInfo:
    """Decide where `host` (a name or an address in any encoding) leads. Never raises."""
    return _classify_normalised(normalise_host(host))


@lru_cache(maxsize=4096)
def _classify_normalised(host: str) -> HostInfo:  # cached: the same few hosts come back call after call
    if not host:
        return HostInfo(host, HostKind.PUBLIC)
    if ":" in host:
        address6 = parse_ipv6(host)
        if address6 is not None:
            inner = embedded_ipv4(address6)
            kind = classify_address(address6)
            if inner is not None and _classify_plain(inner) == kind and kind != HostKind.PUBLIC:
                return HostInfo(host, kind, inner, f"written as [{host}]")
            return HostInfo(host, kind, address6)
        return HostInfo(host, HostKind.PUBLIC)
    if _ends_in_number(host):
        best: HostInfo | None = None
        for reading in ipv4_readings(host):
            kind = _classify_plain(reading)
            note = "" if str(reading) == host else f"written as {host}"
            if best is None or kind > best.kind:
                best = HostInfo(host, kind, reading, note)
        return best if best is not None else HostInfo(host, HostKind.PUBLIC)
    return _classify_name(host)


def _classify_name(host: str) -> HostInfo:
    if host in METADATA_HOSTNAMES:
        return HostInfo(host, HostKind.METADATA)
    if host in CLUSTER_HOSTNAMES:
        return HostInfo(host, HostKind.CLUSTER)
    if host in LOOPBACK_HOSTNAMES or host.endswith(".localhost"):
        return HostInfo(host, HostKind.LOOPBACK)
    fixed = _suffix_match(host, LOOPBACK_DOMAINS)
    if fixed is not None:
        return HostInfo(host, HostKind.LOOPBACK, ipaddress.IPv4Address("127.0.0.1"), f"{fixed} resolves to loopback")
    labels = host.split(".")
    rebinding = _suffix_match(host, REBINDING_DOMAINS)
    embedded = _embedded_dotted_quads(labels)
    if rebinding is not None:
        # These services also spell the address as 8 hex digits (`a9fea9fe.nip.io`, `7f000001.c0a80001.rbndr.us`).
        embedded += [
            ipaddress.IPv4Address(int(label, 16)) for label in labels if len(label) == 8 and set(label) <= _HEX_DIGITS
        ]
    worst: HostInfo | None = None
    for address in embedded:
        kind = _classify_plain(address)
        # Any wildcard-DNS name can embed an address; only a rebinding service makes a private one notable.
        if rebinding is None and kind not in (HostKind.METADATA, HostKind.LINK_LOCAL, HostKind.LOOPBACK):
            continue
        if kind != HostKind.PUBLIC and (worst is None or kind > worst.kind):
            via = rebinding or "a wildcard DNS name"
            worst = HostInfo(host, kind, address, f"{host} embeds {address} via {via}")
    if worst is not None:
        return worst
    if "." not in host or host.endswith(INTERNAL_SUFFIXES):
        return HostInfo(host, HostKind.INTERNAL_NAME)
    return HostInfo(host, HostKind.PUBLIC)


# --- Host patterns --------------------------------------------------------------------------------------------------


def glob_match(text: str, pattern: str) -> bool:
    """Glob match with `*` (any run, dots and slashes included) and `?`. Iterative, O(len(text) * len(pattern))."""
    t = p = 0
    star_p, star_t = -1, 0
    while t < len(text):
        if p < len(pattern) and (pattern[p] == "?" or pattern[p] == text[t]):
            t += 1
            p += 1
        elif p < len(pattern) and pattern[p] == "*":
            star_p, star_t = p, t
            p += 1
        elif star_p != -1:
            p = star_p + 1
            star_t += 1
            t = star_t
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def host_matches(host: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """Does `host` match one of `patterns`? `*.example.com` matches `example.com` and every subdomain of it."""
    if not patterns:
        return False
    host = normalise_host(host)
    if not host:
        return False
    for raw in patterns:
        pattern = raw.strip().lower().rstrip(".")
        if not pattern:
            continue
        if pattern.startswith("*.") and "*" not in pattern[2:] and "?" not in pattern[2:]:
            apex = pattern[2:]
            if host == apex or host.endswith("." + apex):
                return True
        elif glob_match(host, pattern):
            return True
    return False


# --- URLs -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedUrl:
    scheme: str  # lower case; "" when the text had none (a bare `host:port/path`)
    userinfo: str
    host: str  # normalised, as a WHATWG parser (browsers, Node, Python's requests via urllib3) reads it
    port: int | None
    path: str
    query: str
    fragment: str
    # Hosts that other popular parsers would connect to instead (`http://a.com#@b.com` is b.com to a naive one).
    alternate_hosts: tuple[str, ...] = ()

    @property
    def hosts(self) -> tuple[str, ...]:
        return (self.host, *self.alternate_hosts) if self.host else self.alternate_hosts


def _split_host_port(authority: str) -> tuple[str, int | None]:
    """`[::1]:80` -> ("::1", 80); `host:8080` -> ("host", 8080); `::1` (unbracketed) stays whole."""
    if authority.startswith("["):
        close = authority.find("]")
        if close == -1:
            return authority[1:], None
        rest = authority[close + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
        return authority[1:close], _port(port_text)
    if authority.count(":") == 1:
        host, port_text = authority.split(":")
        return host, _port(port_text)
    return authority, None


def _port(text: str) -> int | None:
    if text and len(text) <= 5 and set(text) <= _DEC_DIGITS:
        value = int(text)
        return value if value <= 65535 else None
    return None


def _host_of(authority: str) -> str:
    """The host part of an authority: after the last `@`, without the port."""
    host, _ = _split_host_port(authority.rsplit("@", 1)[-1])
    return normalise_host(host)


def _scheme_of(text: str) -> str | None:
    colon = text.find(":", 0, 33)
    if colon < 1 or not text[0].isascii() or not text[0].isalpha():
        return None
    scheme = text[:colon]
    return scheme.lower() if set(scheme) <= _SCHEME_CHARS else None


def parse_url(text: str, *, default_scheme: str = "") -> ParsedUrl | None:
    """Parse an absolute URL, or with `default_scheme` a scheme-less `host[:port][/path]` (what curl accepts).

    Returns None when `text` is not a URL (`mailto:`, `note: text`, empty host). Never raises.
    """
    text = text.strip()[:MAX_URL_CHARS]
    # WHATWG removes tabs and newlines anywhere in a URL before parsing it.
    if "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\t", "").replace("\n", "").replace("\r", "")
    scheme = _scheme_of(text)
    rest: str
    if scheme is not None and text[len(scheme) + 1 : len(scheme) + 3] == "//":
        rest = text[len(scheme) + 3 :]
        if scheme in SPECIAL_SCHEMES:
            rest = rest.lstrip("/\\")
    elif scheme is not None and scheme in SPECIAL_SCHEMES:
        rest = text[len(scheme) + 1 :].lstrip("/\\")  # `http:host`, `http:\\host` are valid special URLs
    elif default_scheme and not text.startswith(("/", "\\", ".")):
        if scheme is not None and not text[len(scheme) + 1 : len(scheme) + 2].isdigit():
            return None  # `mailto:x@y`, `urn:isbn:...`: a scheme without an authority, not `host:port`
        scheme, rest = "", text
    else:
        return None
    special = scheme in SPECIAL_SCHEMES or scheme == ""
    stops = "/?#\\" if special else "/?#"
    end = len(rest)
    for stop in stops:
        index = rest.find(stop, 0, end)
        if index != -1:
            end = index
    authority, remainder = rest[:end], rest[end:]
    userinfo, _, host_port = authority.rpartition("@")
    host_text, port = _split_host_port(host_port)
    host = normalise_host(host_text)
    if not host and scheme != "file":
        return None
    remainder = remainder.replace("\\", "/") if special else remainder
    before_fragment, _, fragment = remainder.partition("#")
    path, _, query = before_fragment.partition("?")
    alternates: list[str] = []
    slash = rest.find("/")
    naive_authority = rest if slash == -1 else rest[:slash]
    if "@" in naive_authority:
        # A naive parser ends the authority at the first "/" only, so `a.com#@b.com` or `a.com\@b.com` is b.com to
        # it, and one that splits at the first "@" reads `a@b@c` as b@c.
        first_at = _host_of(authority.split("@", 1)[-1]) if "@" in authority else ""
        for candidate in (_host_of(naive_authority), first_at):
            if candidate and candidate != host and candidate not in alternates and "\\" not in candidate:
                alternates.append(candidate)
    return ParsedUrl(scheme, userinfo, host, port, path, query, fragment, tuple(alternates))


_URL_STOPS = (" ", "\t", "\n", "\r", "\f", "\v", '"', "'", "<", ">", "`", "\u00a0", "\u3000")
_URL_TRAILING = ".,;:!?)]}'\"*"


def find_urls(text: str, *, limit: int = 64) -> list[str]:
    """URLs written with a scheme (`https://...`, `gopher://...`, `http:\\\\...`) inside free text, in order."""
    found: list[str] = []
    for marker in ("://", ":\\"):
        position = text.find(marker)
        while position != -1 and len(found) < limit:
            start = position
            while start > 0 and position - start < 32 and text[start - 1] in _SCHEME_CHARS:
                start -= 1
            while start < position and not text[start].isalpha():
                start += 1
            scheme = text[start:position].lower()
            window_end = min(len(text), position + MAX_URL_CHARS)
            end = window_end
            for stop in _URL_STOPS:
                index = text.find(stop, position + len(marker), end)
                if index != -1:
                    end = index
            if scheme and (marker == "://" or scheme in SPECIAL_SCHEMES):
                url = text[start:end].rstrip(_URL_TRAILING)
                if len(url) > len(scheme) + len(marker):
                    found.append(url)
            position = text.find(marker, max(end, position + len(marker)))
    return found


def remote_host(spec: str) -> str | None:
    """The host of an scp/rsync/git remote `[user@]host:path` or `host::module`; None for a local path.

    `C:\\dir` and `./a:b` are local; so is anything with a `/` before the first `:`.
    """
    colon = spec.find(":")
    if colon <= 0 or "/" in spec[:colon] or "://" in spec:
        return None
    authority = spec[:colon]
    if authority.startswith("["):  # [::1]:path
        close = spec.find("]")
        if close == -1:
            return None
        authority = spec[: close + 1]
    host = normalise_host(authority.rsplit("@", 1)[-1])
    if len(host) == 1 and host.isalpha():  # a Windows drive letter
        return None
    return host or None


def email_domain(address: str) -> str | None:
    """The domain of `Name <user@example.com>` or `user@example.com`; None if it is not an address."""
    address = address.strip()[: MAX_HOST_CHARS * 2]
    if "<" in address and address.endswith(">"):
        address = address[address.rfind("<") + 1 : -1]
    local, at, domain = address.rpartition("@")
    if not at or not local or " " in local or not domain or " " in domain:
        return None
    domain = normalise_host(domain)
    return domain if "." in domain else None
