"""Network risk scanner: server-side request forgery, data exfiltration, and plain HTTP.

Where hosts come from: URLs written with a scheme anywhere in a string, the whole value of a URL-like argument
(`url`, `endpoint`, `host`; scheme-less `host:port` too), and the argv of network programs (curl, wget, httpie, nc,
socat, ssh, scp, rsync, git, openssl, PowerShell's Invoke-WebRequest), including `/dev/tcp/host/port` redirects.
Hosts are read by `aegis_proxy.netaddr`, which decodes every IPv4/IPv6 spelling a client would accept.

How much it matters depends on what the call does with the string (its Reach): a fetching tool's URL argument or an
executed command connects now; a URL handed to a service (a webhook URL) will be fetched by that service; a script
that is only written down connects later if ever; a URL in prose connects never.

Loopback and private addresses are MEDIUM only for HTTP-fetching tools: a coding agent's shell talks to its own dev
server all day (`curl localhost:3000`), so there it is LOW, unless the port is a control plane that gives away the
host (Docker API, kubelet, Chrome DevTools, ...), which raises it one level.

Exfiltration is data leaving for a host outside `settings.allowed_hosts`: a secret-looking value, a sensitive file,
or a large body in a call that sends (by tool/argument names, curl -d/-F/-T, nc with input, scp to a remote, DNS names
built from command output), or a secret or long base64 blob in a URL's query. A body that is only large is MEDIUM,
not HIGH: a big JSON POST to an unknown API is worth a look, not a block. Known paste/callback sinks are MEDIUM as
destinations. `allowed_hosts` silences exfiltration and internal-host findings, never a metadata service.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import ClassVar, NamedTuple
from urllib.parse import unquote

from aegis_proxy.models import Finding, Severity, ToolCall
from aegis_proxy.netaddr import (
    HostInfo,
    HostKind,
    ParsedUrl,
    classify_host,
    email_domain,
    find_urls,
    host_matches,
    parse_url,
    remote_host,
)
from aegis_proxy.safe_regex import compile_pattern
from aegis_proxy.scanners.base import FindingSink, Scanner, ScanSettings, ScanTarget, text_cache
from aegis_proxy.scanners.paths import (
    TEXT_PROGRAMS,
    Access,
    path_tokens,
    sensitive_path,
    shell_path_uses,
    walk_options,
)
from aegis_proxy.scanners.vocabulary import FETCH_WORDS, SEND_VERBS, argument_words, name_words
from aegis_proxy.shell import ShellCommand

CRITICAL, HIGH, MEDIUM, LOW = Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW

MAX_FINDINGS = 64
MAX_URLS_PER_TEXT = 64


class Reach(enum.IntEnum):
    """How directly this call connects to what a string names."""

    MENTION = 0  # prose or data: nothing connects to it
    SCRIPT = 1  # a command in a script that is written down or sent, not run by this call
    LINK = 2  # a URL argument of a tool that stores or forwards it (webhook_url, callback): a service may fetch it
    EXEC = 3  # a command line or code that this call runs
    FETCH = 4  # the URL an HTTP-fetching tool opens now


_REACH_PHRASE = {
    Reach.MENTION: "mentions",
    Reach.SCRIPT: "script connects to",
    Reach.LINK: "passes on a URL to",
    Reach.EXEC: "connects to",
    Reach.FETCH: "fetches",
}

# --- Knowledge tables -----------------------------------------------------------------------------------------------

# Severity of reaching each kind of host, by Reach (MENTION, SCRIPT, LINK, EXEC, FETCH). None: no finding.
SSRF_SEVERITY: Mapping[HostKind, tuple[Severity | None, ...]] = MappingProxyType(
    {
        # A script that is only written down may be a legitimate cloud-init/user-data script: ask, do not block.
        HostKind.METADATA: (LOW, MEDIUM, HIGH, CRITICAL, CRITICAL),
        HostKind.LINK_LOCAL: (None, LOW, MEDIUM, HIGH, HIGH),
        HostKind.CLUSTER: (None, LOW, MEDIUM, MEDIUM, HIGH),
        HostKind.LOOPBACK: (None, None, LOW, LOW, MEDIUM),
        HostKind.PRIVATE: (None, None, LOW, LOW, MEDIUM),
        HostKind.INTERNAL_NAME: (None, None, LOW, LOW, MEDIUM),
    }
)
HOST_KIND_LABEL = MappingProxyType(
    {
        HostKind.METADATA: "cloud metadata service",
        HostKind.LINK_LOCAL: "link-local address",
        HostKind.CLUSTER: "Kubernetes API server",
        HostKind.LOOPBACK: "loopback address",
        HostKind.PRIVATE: "private network address",
        HostKind.INTERNAL_NAME: "internal host name",
    }
)

# Local services whose API is a takeover of the host or cluster; reaching them raises the severity one level.
CONTROL_PLANE_PORTS: Mapping[int, str] = MappingProxyType(
    {
        2375: "Docker API",
        2376: "Docker API",
        2379: "etcd",
        2380: "etcd",
        4646: "Nomad",
        6443: "Kubernetes API",
        6379: "Redis",
        8200: "Vault",
        8500: "Consul",
        9222: "Chrome DevTools",
        9229: "Node inspector",
        10250: "kubelet",
        10255: "kubelet",
        11211: "memcached",
        15000: "Envoy admin",
    }
)

# Schemes that turn an HTTP fetcher into a raw-socket client (Redis, SMTP, memcached via gopher://).
SMUGGLING_SCHEMES = frozenset({"gopher", "dict", "ldap", "tftp", "jar", "netdoc"})
UNENCRYPTED_SCHEMES = frozenset({"http", "ws", "ftp"})

# Paste sites, request catchers, tunnels and out-of-band collaborators: destinations of choice for exfiltration.
SINK_DOMAINS = frozenset(
    {
        "pastebin.com", "paste.ee", "hastebin.com", "ghostbin.com", "termbin.com", "ix.io", "0x0.st", "dpaste.com",
        "transfer.sh", "temp.sh", "file.io", "bashupload.com", "oshi.at",
        "webhook.site", "requestbin.com", "requestbin.net", "pipedream.net", "hookbin.com", "beeceptor.com",
        "requestcatcher.com", "postb.in", "ptsv2.com", "ptsv3.com",
        "ngrok.io", "ngrok-free.app", "ngrok.app", "ngrok.dev", "trycloudflare.com", "serveo.net", "loca.lt",
        "localhost.run", "pinggy.link",
        "burpcollaborator.net", "oastify.com", "interact.sh", "interactsh.com", "oast.fun", "oast.pro",
        "oast.live", "oast.site", "oast.online", "oast.me", "canarytokens.com", "dnslog.cn", "ceye.io",
    }
)  # fmt: skip

# Cloud metadata requests carry these headers; seeing one means the target is metadata, however it is spelled.
METADATA_HEADERS = ("x-aws-ec2-metadata-token", "metadata-flavor: google", "metadata-flavor:google")
# Literal metadata hosts worth noticing even in text we cannot parse (prose, code).
METADATA_LITERALS = ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254", "metadata.google.internal")

# Words in argument names (tool-name words are in scanners.vocabulary).
DESTINATION_ARGS = frozenset(
    {
        "url", "uri", "href", "endpoint", "host", "hostname", "address", "addr", "domain", "server", "ip",
        "webhook", "callback", "link", "site", "website", "proxy",  # not "base"/"origin": git branches and remotes
    }
)  # fmt: skip
RECIPIENT_ARGS = frozenset({"to", "cc", "bcc", "recipient", "recipients", "email", "emails", "reply"})
# Sent as authentication to the destination, not as data: a token in an Authorization header is its normal use.
AUTH_ARGS = frozenset({"header", "headers", "authorization", "auth", "cookie", "cookies", "token", "password", "key"})
PAYLOAD_ARGS = frozenset(
    {
        "body", "data", "payload", "content", "text", "message", "json", "form", "params", "file", "files",
        "attachment", "attachments", "html", "markdown", "subject", "comment", "note", "blocks", "fields",
    }
)  # fmt: skip

ATTACHMENT_ARGS = frozenset({"file", "files", "attachment", "attachments", "path", "paths", "filename", "filepath"})

# Where each kind of secret is normally sent: a GitHub token going to api.github.com is not exfiltration.
SECRET_HOME_HOSTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "an AWS access key id": ("*.amazonaws.com", "*.aws.amazon.com"),
        "a GitHub token": ("*.github.com", "*.githubusercontent.com"),
        "a Slack token": ("*.slack.com",),
        "an API secret key (sk-)": ("*.openai.com", "*.anthropic.com"),
        "a Stripe secret key": ("*.stripe.com",),
        "a Google API key": ("*.googleapis.com", "*.google.com"),
        "a GitLab token": ("*.gitlab.com",),
        "an npm token": ("*.npmjs.org", "*.npmjs.com"),
    }
)

# A small local detector (the secrets scanner is the thorough one): distinctive prefixes only.
_SECRET_PATTERN = compile_pattern(
    r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}"
    r"|\bgithub_pat_[A-Za-z0-9_]{40,}"
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
    r"|\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}"
    r"|\bsk_live_[A-Za-z0-9]{16,}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|\bAIza[0-9A-Za-z_-]{35}"
    r"|\bglpat-[A-Za-z0-9_-]{20,}"
    r"|\bnpm_[A-Za-z0-9]{36}"
)


def _may_hold_secret(text: str) -> bool:
    """Cheap prefilter for _SECRET_PATTERN: one of the fixed prefixes occurs (plain `in`, no regex call)."""
    return (
        "PRIVATE KEY" in text or "AKIA" in text or "ASIA" in text or ("gh" in text and "_" in text) or "xox" in text
        or "sk-" in text or "sk_live_" in text or "eyJ" in text or "AIza" in text or "glpat-" in text
        or "npm_" in text
    )  # fmt: skip


_SECRET_KINDS: tuple[tuple[str, str], ...] = (  # (match prefix, kind), checked in order
    ("-----BEGIN", "a private key"),
    ("AKIA", "an AWS access key id"),
    ("ASIA", "an AWS access key id"),
    ("github_pat_", "a GitHub token"),
    ("gh", "a GitHub token"),
    ("xox", "a Slack token"),
    ("sk_live_", "a Stripe secret key"),
    ("sk-", "an API secret key (sk-)"),
    ("eyJ", "a JWT"),
    ("AIza", "a Google API key"),
    ("glpat-", "a GitLab token"),
    ("npm_", "an npm token"),
)
_BASE64_BLOB = compile_pattern(r"[A-Za-z0-9+/_-]{512}")
MAX_SECRET_MATCHES = 16

# Command output spliced into a name that gets resolved, in text we could not parse as shell: a DNS tool with a
# substitution or variable in its arguments, or a substitution inside a URL's host. (`backup-$(date).tar.gz` is not.)
_DNS_EXFIL = compile_pattern(
    r"\b(?:nslookup|dig|host|drill|ping)\s[^\n;|&]{0,200}(?:\$\(|`|\$\{?[A-Za-z_])"
    r"|://[^\s/?#]{0,200}(?:\$\(|`)"
)
DNS_PROGRAMS = frozenset({"nslookup", "dig", "host", "drill", "ping", "ping6", "getent", "resolvectl", "traceroute"})


@dataclass(frozen=True, slots=True)
class NetProgram:
    """How a network program's argv names hosts and data."""

    operands: str  # "urls": each operand is a URL; "host": the first is a host; "remote": scp-style; or the program
    value_options: frozenset[str] = frozenset()  # options that take a value (so the value is not an operand)
    data_options: frozenset[str] = frozenset()  # the value is sent; `@file` sends a file, `@-` stdin
    file_options: frozenset[str] = frozenset()  # the value is a file that is sent
    url_options: frozenset[str] = frozenset()  # the value is a URL or host connected to
    override_options: frozenset[str] = frozenset()  # `--resolve host:port:addr`: the connection goes to addr
    sends_stdin: bool = False  # sends what is piped or redirected into it


def _opts(text: str) -> frozenset[str]:
    return frozenset(text.split())


_CURL = NetProgram(
    operands="urls",
    value_options=_opts(
        "-A -b -c -C -d -D -e -E -F -H -K -m -o -P -Q -r -T -t -u -U -w -x -X -y -Y -z --data --data-ascii "
        "--data-binary --data-raw --data-urlencode --json --form --form-string --upload-file --header --request "
        "--output --user --user-agent --referer --cookie --cookie-jar --proxy --preproxy --max-time "
        "--connect-timeout --write-out --config --resolve --connect-to --cert --key --cacert --capath --retry "
        "--retry-delay --retry-max-time --range --proxy-user --continue-at --time-cond --limit-rate --url "
        "--unix-socket --abstract-unix-socket --interface --dump-header --trace --trace-ascii --stderr "
        "--max-filesize --max-redirs --oauth2-bearer --noproxy --proto --proto-redir --dns-servers --local-port "
        "--ciphers --pass --mail-from --mail-rcpt --mail-auth --output-dir --variable --netrc-file --cert-type "
        "--key-type --aws-sigv4 --expect100-timeout"
    ),
    data_options=_opts(
        "-d --data --data-ascii --data-binary --data-raw --data-urlencode --json -F --form --form-string"
    ),
    file_options=_opts("-T --upload-file"),
    url_options=_opts("--url -x --proxy --preproxy"),
    override_options=_opts("--resolve --connect-to"),
)
_WGET = NetProgram(
    operands="urls",
    value_options=_opts(
        "-O -o -a -P -e -i -t -T -w -U -Q -B -l -A -R -D -I -X --output-document --output-file --append-output "
        "--directory-prefix --execute --input-file --tries --timeout --wait --user-agent --quota --base --level "
        "--accept --reject --domains --include-directories --exclude-directories --post-data --post-file "
        "--body-data --body-file --method --header --user --password --http-user --http-password --referer "
        "--load-cookies --save-cookies --bind-address --limit-rate --ca-certificate --certificate --private-key "
        "--proxy-user --proxy-password"
    ),
    data_options=_opts("--post-data --body-data"),
    file_options=_opts("--post-file --body-file"),
)
_HTTPIE = NetProgram(
    operands="httpie",
    value_options=_opts(
        "-a --auth -A --auth-type -o --output --session --session-read-only --verify --cert --cert-key --proxy "
        "--timeout -p --print -s --style --boundary --max-redirects"
    ),
    url_options=_opts("--proxy"),
)
_NETCAT = NetProgram(operands="host", value_options=_opts("-p -s -w -i -q -x -X -g -G -O -I -T"), sends_stdin=True)
_SSH = NetProgram(
    operands="host",
    value_options=_opts("-b -c -D -E -e -F -I -i -J -L -l -m -O -o -p -Q -R -S -W -w -B"),
    url_options=_opts("-J"),
    sends_stdin=True,
)
_SCP = NetProgram(operands="remote", value_options=_opts("-c -F -i -J -l -o -P -S -X -D"), url_options=_opts("-J"))
_RSYNC = NetProgram(
    operands="remote",
    value_options=_opts(
        "-e --rsh --exclude --include --filter -f --exclude-from --include-from --files-from --port "
        "--password-file --log-file --temp-dir -T --partial-dir --bwlimit --timeout --contimeout --chmod --chown "
        "-M --remote-option --out-format --compare-dest --copy-dest --link-dest --backup-dir --suffix --max-size "
        "--min-size --iconv --info --debug --rsync-path"
    ),
)
_POWERSHELL_WEB = NetProgram(
    operands="urls",
    value_options=_opts(
        "-uri -method -body -infile -outfile -headers -contenttype -usercredential -credential -proxy -timeoutsec "
        "-useragent -websession -sessionvariable -form"
    ),
    data_options=_opts("-body -form"),
    file_options=_opts("-infile"),
    url_options=_opts("-uri -proxy"),
)

NET_PROGRAMS: Mapping[str, NetProgram] = MappingProxyType(
    {
        "curl": _CURL,
        "wget": _WGET,
        "wget2": _WGET,
        "aria2c": NetProgram(operands="urls", value_options=_opts("-o -d --out --dir")),
        "lynx": NetProgram(operands="urls"),
        "links": NetProgram(operands="urls"),
        "w3m": NetProgram(operands="urls"),
        "http": _HTTPIE,
        "https": _HTTPIE,
        "xh": _HTTPIE,
        "xhs": _HTTPIE,
        "nc": _NETCAT,
        "ncat": _NETCAT,
        "netcat": _NETCAT,
        "telnet": NetProgram(operands="host", sends_stdin=True),
        "socat": NetProgram(operands="socat", value_options=_opts("-d -D -ly -lf -lp -t -T"), sends_stdin=True),
        "ssh": _SSH,
        "autossh": _SSH,
        "scp": _SCP,
        "sftp": _SCP,
        "rsync": _RSYNC,
        "git": NetProgram(operands="git", value_options=_opts("-C -c --git-dir --work-tree --namespace")),
        "openssl": NetProgram(operands="openssl", value_options=_opts("-connect -servername -proxy")),
        "invoke-webrequest": _POWERSHELL_WEB,
        "invoke-restmethod": _POWERSHELL_WEB,
        "iwr": _POWERSHELL_WEB,
        "irm": _POWERSHELL_WEB,
    }
)
_HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


# --- Small helpers --------------------------------------------------------------------------------------------------


def secret_kinds(text: str) -> list[str]:
    """Kinds of secret-looking values in `text` (never the values themselves)."""
    if not _may_hold_secret(text):
        return []
    return list(_secret_kinds(text))


@text_cache
def _secret_kinds(text: str) -> tuple[str, ...]:
    kinds: list[str] = []
    for count, match in enumerate(_SECRET_PATTERN.finditer(text)):
        value = match.group(0)
        kind = next((name for prefix, name in _SECRET_KINDS if value.startswith(prefix)), "a secret")
        if kind not in kinds:
            kinds.append(kind)
        if count + 1 >= MAX_SECRET_MATCHES:
            break
    return tuple(kinds)


def _secret_is_at_home(kind: str, hosts: Iterable[str]) -> bool:
    homes = SECRET_HOME_HOSTS.get(kind)
    return homes is not None and all(host_matches(host, homes) for host in hosts)


def _is_sink(host: str) -> bool:
    labels = host.split(".")
    return any(".".join(labels[index:]) in SINK_DOMAINS for index in range(len(labels) - 1))


class Endpoint(NamedTuple):
    url: ParsedUrl
    reach: Reach
    via: str  # "url", "curl", "/dev/tcp", ...


@dataclass(slots=True)
class _Invocation:
    """One network program run: where it connects and what it sends."""

    program: str
    urls: list[ParsedUrl] = field(default_factory=list)
    payloads: list[str] = field(default_factory=list)  # inline data sent
    files: list[str] = field(default_factory=list)  # files whose contents are sent
    sends_stdin: bool = False
    dns_names: list[str] = field(default_factory=list)  # names only resolved (dig, nslookup)

    unknown_host: bool = False  # the parser unwrapped `ssh host cmd` and kept only cmd: somewhere remote

    @property
    def carries_data(self) -> bool:
        """It sends a body, a file, its input, or command output spliced into the URL (`/$(cat key)`)."""
        if self.payloads or self.files or self.sends_stdin:
            return True
        return any("$(" in url.path or "$(" in url.query or "`" in url.path for url in self.urls)


def _endpoint_url(text: str) -> ParsedUrl | None:
    """A URL or bare `host[:port][/path]` (as curl and fetch tools accept), or None for anything with spaces."""
    if not text or len(text) > 8192:
        return None
    return _parse_endpoint(text.strip()) if len(text) <= 1024 else _parse_endpoint.__wrapped__(text.strip())


@lru_cache(maxsize=2048)
def _parse_endpoint(text: str) -> ParsedUrl | None:  # cached: agents call the same endpoints over and over
    if not text or " " in text:
        return None
    return parse_url(text, default_scheme="http")


def _invocation(command: ShellCommand) -> _Invocation | None:
    program_name = command.program.lower()
    program = NET_PROGRAMS.get(program_name)
    if program is None:
        return _dns_invocation(command) if program_name in DNS_PROGRAMS else None
    fold_case = program is _POWERSHELL_WEB
    found = _Invocation(program_name)
    operands: list[str] = []
    for option, value in walk_options(command.argv, program.value_options, fold_case=fold_case):
        if not option:
            operands.append(value or "")
        elif value is None:
            continue
        elif option in program.data_options:
            if value.startswith("@") and value not in ("@-", "@"):
                found.files.append(value[1:])
            elif value in ("@-", "-"):
                found.sends_stdin = True
            elif "=@" in value or (option in ("-F", "--form") and "=<" in value):  # -F file=@path, -F x=<path
                found.files.append(value.split("=", 1)[1].lstrip("@<").split(";", 1)[0])
            else:
                found.payloads.append(value)
        elif option in program.file_options:
            if value in ("-", "."):
                found.sends_stdin = True
            else:
                found.files.append(value)
        elif option in program.url_options:
            _add_url(found, value)
        elif option in program.override_options:
            for address in _override_addresses(option, value):
                _add_url(found, address)
        elif program.operands == "openssl" and option == "-connect":
            _add_url(found, value)
    for operator, target in command.redirects:
        if operator in ("<", "0<") and target:
            found.files.append(target)
    if program.sends_stdin and command.stage > 0:
        found.sends_stdin = True
    _read_operands(program, found, operands)
    return found


def _override_addresses(option: str, value: str) -> list[str]:
    """Where curl really connects: `--resolve host:port:addr[,addr]`, `--connect-to host:port:host2:port2`."""
    if option == "--resolve":
        addresses = value.lstrip("+-").split(":", 2)[2:]  # `+host:port:addr` / `-host:port` also exist
        return [address.strip("[]") for address in addresses[0].split(",")] if addresses else []
    if value.count("[") == 0:
        pieces = value.split(":")
        return [pieces[2]] if len(pieces) == 4 and pieces[2] else []
    close = value.rfind("]")  # --connect-to ::[fd00:ec2::254]:80
    open_ = value.rfind("[", 0, close)
    return [value[open_ + 1 : close]] if open_ != -1 else []


def _add_url(found: _Invocation, text: str) -> None:
    url = _endpoint_url(text)
    if url is not None:
        found.urls.append(url)


def _read_operands(program: NetProgram, found: _Invocation, operands: list[str]) -> None:
    style = program.operands
    if style == "urls":
        for operand in operands:
            _add_url(found, operand)
    elif style == "host":
        if operands:
            _add_url(found, operands[0])
    elif style == "remote":
        remotes = [(operand, remote_host(operand)) for operand in operands if not operand.startswith("/")]
        for operand, host in remotes:
            if host is not None:
                _add_url(found, host if ":" not in host else f"[{host}]")
            elif "://" in operand:
                _add_url(found, operand)
        if len(operands) >= 2 and remote_host(operands[-1]) is not None:
            found.files.extend(operand for operand in operands[:-1] if remote_host(operand) is None)
    elif style == "httpie":
        rest = operands[1:] if operands and operands[0].upper() in _HTTP_METHODS else operands
        if rest:
            target = rest[0]
            _add_url(found, "localhost" + target if target.startswith(":") else target)  # `http :3000/api`
        for item in rest[1:]:
            _httpie_item(found, item)
    elif style == "socat":
        for operand in operands:
            kind, _, address = operand.partition(":")
            if kind.upper().startswith(("TCP", "UDP", "SSL", "OPENSSL", "SCTP", "PROXY")) and address:
                host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address.split(":", 1)[0]
                _add_url(found, host.split(",", 1)[0])
            elif kind.upper() in ("FILE", "OPEN", "GOPEN", "CREATE") and address:
                found.files.append(address.split(",", 1)[0])
    elif style == "git":
        for operand in operands:
            if "://" in operand:
                _add_url(found, operand)
            elif "@" in operand and remote_host(operand) is not None:
                _add_url(found, str(remote_host(operand)))


def _httpie_item(found: _Invocation, item: str) -> None:
    for separator in (":=@", "=@", "@"):
        if separator in item:
            found.files.append(item.split(separator, 1)[1])
            return
    if "==" in item or ":=" in item or "=" in item:
        found.payloads.append(item)


def _dns_invocation(command: ShellCommand) -> _Invocation:
    found = _Invocation(command.program.lower())
    for arg in command.argv[1:]:
        if arg.startswith("@"):
            _add_url(found, arg[1:])
        elif not arg.startswith("-"):
            found.dns_names.append(arg)
    return found


def _dev_tcp(command: ShellCommand) -> Iterator[tuple[ParsedUrl, bool]]:
    """Bash's /dev/tcp/host/port redirects: (where, whether data is written to it)."""
    for operator, target in command.redirects:
        if target.startswith(("/dev/tcp/", "/dev/udp/")):
            pieces = target.split("/")
            if len(pieces) >= 4 and pieces[3]:
                url = _endpoint_url(pieces[3] + (":" + pieces[4] if len(pieces) > 4 and pieces[4] else ""))
                if url is not None:
                    yield url, ">" in operator


# --- The scanner ----------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Context:
    call: ToolCall
    settings: ScanSettings
    tool_words: frozenset[str]
    fetching: bool
    sink: FindingSink | None = None  # made on the first finding: most calls have none
    seen: set[tuple[str, str, str]] = field(default_factory=set)
    # Unlisted hosts that each argument's URLs go to: a decoded copy of the argument (a base64 query parameter
    # that extraction decoded) is carried to the same hosts.
    url_destinations: dict[str, list[str]] = field(default_factory=dict)

    def add(self, target: ScanTarget, category: str, severity: Severity | None, message: str) -> None:
        if severity is None:
            return
        key = (category, target.path, message)
        if key in self.seen or len(self.seen) >= MAX_FINDINGS:
            return
        self.seen.add(key)
        if self.sink is None:
            self.sink = FindingSink(NetworkScanner.name)
        self.sink.add(target, category, severity, message)

    def unlisted(self, hosts: Iterable[str]) -> list[str]:
        """Hosts outside `allowed_hosts` that lead off the machine's networks (where exfiltration goes)."""
        allowed = self.settings.allowed_hosts
        return [
            host
            for host in hosts
            if host and not host_matches(host, allowed) and classify_host(host).kind == HostKind.PUBLIC
        ]


class NetworkScanner(Scanner):
    name: ClassVar[str] = "network"
    categories: ClassVar[frozenset[str]] = frozenset({"network.ssrf", "network.exfiltration", "network.plain_http"})

    def scan(self, call: ToolCall, targets: Sequence[ScanTarget], settings: ScanSettings) -> Iterable[Finding]:
        tool_words = name_words(call.tool)
        context = _Context(call, settings, tool_words, bool(tool_words & FETCH_WORDS))
        for target in targets:
            _scan_target(target, context)
        if context.url_destinations:
            _decoded_url_secrets(targets, context)
        _tool_exfiltration(targets, context)
        return context.sink.findings if context.sink is not None else []


def _reach(target: ScanTarget, words: frozenset[str], context: _Context) -> Reach:
    if target.exec_position:
        return Reach.EXEC
    if words & DESTINATION_ARGS and not target.is_key:
        return Reach.FETCH if context.fetching else Reach.LINK
    if target.commands:
        return Reach.SCRIPT
    return Reach.MENTION


def _scan_target(target: ScanTarget, context: _Context) -> None:
    text = target.text
    if not target.commands and not target.exec_position and _bare_text(text):
        return
    words = argument_words(target.path)
    reach = _reach(target, words, context)
    endpoints: list[Endpoint] = []
    if reach in (Reach.FETCH, Reach.LINK) or (context.fetching and not target.is_key and "://" in text[:16]):
        url = _endpoint_url(text)
        if url is not None and not _bare_word(url):
            endpoints.append(Endpoint(url, Reach.FETCH if context.fetching else reach, "url"))
    # Prose URLs connect nowhere; only a metadata address there is worth a note (see _metadata_literals). In a
    # parsed script, network programs' URLs come from their argv below; other commands' words may hold code that
    # connects (`python -c "urlopen('http://...')"`), but `echo http://...` only prints.
    if not endpoints and reach > Reach.MENTION and ("://" in text or ":\\" in text):
        if target.commands:
            sources = [
                word
                for command in target.commands
                if command.program.lower() not in NET_PROGRAMS and command.program.lower() not in TEXT_PROGRAMS
                for word in command.argv[1:]
                if "://" in word or ":\\" in word
            ]
        else:
            sources = [text]
        for source in sources:
            for raw in find_urls(source, limit=MAX_URLS_PER_TEXT):
                url = parse_url(raw)
                if url is not None:
                    endpoints.append(Endpoint(url, reach, "url"))
    invocations: list[_Invocation] = []
    if target.commands:
        command_reach = Reach.EXEC if target.exec_position else Reach.SCRIPT
        for command in target.commands:
            _served_directory(target, command, command_reach, context)
            invocation = _invocation(command)
            if invocation is None and "ssh" in command.wrappers:
                # `cat key | ssh host 'cat > k'`: the parser unwraps ssh and keeps only the remote command (and
                # not whether it was piped into), so the host is unknown and ssh counts as a channel out.
                invocation = _Invocation("ssh", sends_stdin=True, unknown_host=True)
            for url, writes in _dev_tcp(command):
                invocation = invocation or _Invocation("/dev/tcp")
                invocation.urls.append(url)
                invocation.sends_stdin = invocation.sends_stdin or writes
            if invocation is not None:
                invocations.append(invocation)
                endpoints.extend(Endpoint(url, command_reach, invocation.program) for url in invocation.urls)
    reported_metadata = False
    for endpoint in endpoints:
        reported_metadata |= _judge_endpoint(target, endpoint, context)
    if not reported_metadata:
        _metadata_literals(target, reach, context)
    if reach >= Reach.SCRIPT:
        _dns_exfiltration(target, reach, invocations, context)
        _script_exfiltration(target, reach, invocations, endpoints, context)


_NO_HOST_CHARS = frozenset(".:/@\\[%").isdisjoint


def _bare_text(text: str) -> bool:
    """`hiking trip`, `recipients`: no dot, colon, slash or @, so no URL or address in it. A bare word still
    matters if it names this machine or a metadata service, or is an address written as one number."""
    return (
        _NO_HOST_CHARS(text)
        and not text.isdigit()
        and "localhost" not in text
        and "etadata" not in text
        and "kubernetes" not in text
    )


def _bare_word(url: ParsedUrl) -> bool:
    """`main`, `prod`: a word in a URL-ish argument (a git base branch, an environment), not a host to fetch."""
    return (
        not url.scheme
        and url.port is None
        and "." not in url.host
        and ":" not in url.host
        and classify_host(url.host).kind == HostKind.INTERNAL_NAME
    )


def _judge_endpoint(target: ScanTarget, endpoint: Endpoint, context: _Context) -> bool:
    """Findings for one URL or host. Returns True if it reached a metadata service (so literals need no report)."""
    url, reach = endpoint.url, endpoint.reach
    infos = [classify_host(host) for host in url.hosts[:4]]
    worst: HostInfo | None = max(infos, key=lambda info: info.kind, default=None)
    metadata = False
    if worst is not None and worst.kind != HostKind.PUBLIC:
        severity = SSRF_SEVERITY[worst.kind][reach]
        port_note = ""
        if severity is not None and severity < HIGH and url.port in CONTROL_PLANE_PORTS and reach >= Reach.LINK:
            severity = Severity(severity + 1)
            port_note = f" port {url.port} ({CONTROL_PLANE_PORTS[url.port]})"
        if worst.kind in (HostKind.LOOPBACK, HostKind.PRIVATE, HostKind.INTERNAL_NAME) and host_matches(
            worst.host, context.settings.allowed_hosts
        ):
            severity = None  # the deployment said this internal host is fine
        trick = ""
        if worst.host != url.host:
            trick = " (the URL's host is read differently by other parsers)"
        elif url.userinfo and worst.kind >= HostKind.LOOPBACK:
            trick = f" (behind userinfo {url.userinfo[:40]!r})"
        label = HOST_KIND_LABEL[worst.kind]
        context.add(
            target,
            "network.ssrf",
            severity,
            f"{_REACH_PHRASE[reach]} {label} {worst.describe()}{port_note}{trick}",
        )
        metadata = worst.kind == HostKind.METADATA
    if url.scheme in SMUGGLING_SCHEMES and reach >= Reach.SCRIPT:
        severity = HIGH if reach >= Reach.LINK else MEDIUM
        context.add(target, "network.ssrf", severity, f"{url.scheme}:// URL (raw-socket protocol smuggling)")
    if reach < Reach.SCRIPT:
        return metadata
    unlisted = context.unlisted(url.hosts[:4])
    if unlisted:
        if not target.chain:
            context.url_destinations.setdefault(target.path, []).extend(unlisted)
        _url_exfiltration(target, url, unlisted, reach, context)
        sink = next((host for host in unlisted if _is_sink(host)), None)
        if sink is not None:
            severity = MEDIUM if reach >= Reach.LINK else LOW
            context.add(
                target, "network.exfiltration", severity, f"{_REACH_PHRASE[reach]} known exfiltration sink {sink}"
            )
        if url.scheme in UNENCRYPTED_SCHEMES:
            context.add(target, "network.plain_http", LOW, f"unencrypted {url.scheme}:// to {unlisted[0]}")
    return metadata


def _url_exfiltration(target: ScanTarget, url: ParsedUrl, hosts: list[str], reach: Reach, context: _Context) -> None:
    severity = HIGH if reach >= Reach.LINK else MEDIUM
    carried = url.path + "?" + url.query if url.query else url.path
    if "%" in carried:
        carried = unquote(carried)
    for kind in secret_kinds(carried):
        if not _secret_is_at_home(kind, hosts):
            context.add(target, "network.exfiltration", severity, f"URL to {hosts[0]} carries {kind}")
    if len(url.query) >= 512 and _BASE64_BLOB.search(unquote(url.query)) is not None:
        context.add(target, "network.exfiltration", severity, f"URL to {hosts[0]} carries a long encoded blob")


def _decoded_url_secrets(targets: Sequence[ScanTarget], context: _Context) -> None:
    """A secret in a decoded part of a URL argument (`?d=<base64 of an AWS key>`) travels with that URL."""
    for target in targets:
        hosts = context.url_destinations.get(target.path) if target.chain else None
        if hosts:
            for kind in secret_kinds(target.text):
                if not _secret_is_at_home(kind, hosts):
                    decoded = "/".join(target.chain)
                    context.add(target, "network.exfiltration", HIGH, f"URL to {hosts[0]} carries {kind} ({decoded})")


def _metadata_literals(target: ScanTarget, reach: Reach, context: _Context) -> None:
    """A metadata address or header in text we could not read as a URL (prose, code, a header argument)."""
    text = target.text
    if target.commands and ("169.254." in text or "etadata" in text):  # `echo 169.254.169.254` only prints
        text = "\n".join(
            word for command in target.commands if command.program.lower() not in TEXT_PROGRAMS for word in command.argv
        )
    if "169.254." in text or "100.100.100.200" in text or "fd00:ec2" in text or "etadata" in text:
        literal = next((item for item in METADATA_LITERALS if item in text.lower()), None)
        if literal is not None:
            # Outside a recognised URL or network command: a mention unless the text is run or fetched now.
            severity = LOW if reach <= Reach.SCRIPT else HIGH
            context.add(target, "network.ssrf", severity, f"{_REACH_PHRASE[reach]} cloud metadata address {literal}")
        elif reach >= Reach.LINK or context.fetching:
            lowered = text.lower()
            header = next((item for item in METADATA_HEADERS if item in lowered), None)
            if header is not None:
                context.add(target, "network.ssrf", HIGH, f"cloud metadata request header {header!r}")


def _served_directory(target: ScanTarget, command: ShellCommand, reach: Reach, context: _Context) -> None:
    """`python -m http.server --directory /` or `php -S 0.0.0.0:80 -t ~`: the files are handed to whoever asks."""
    argv = command.argv
    program = command.program.lower()
    if program.startswith("python") and "http.server" in argv[1:3]:
        directory, bind = ".", "0.0.0.0"  # http.server binds every interface by default
        for option, value in walk_options(argv, _opts("-m -d --directory -b --bind")):
            if option in ("-d", "--directory") and value:
                directory = value
            elif option in ("-b", "--bind") and value:
                bind = value
    elif program == "php" and "-S" in argv:
        directory, bind = ".", "localhost"
        for option, value in walk_options(argv, _opts("-S -t -c -d")):
            if option == "-S" and value:
                bind = value.rsplit(":", 1)[0]
            elif option == "-t" and value:
                directory = value
    else:
        return
    home = context.settings.home
    expanded = home + directory[1:] if directory.startswith("~") else directory.rstrip("/") or "/"
    hit = sensitive_path(directory, home)
    if expanded in ("/", home, "/home", "/root", "/etc", "/Users") or hit is not None:
        exposed = bind.strip("[]") in ("0.0.0.0", "::", "", "*") or classify_host(bind).kind != HostKind.LOOPBACK
        severity = (HIGH if exposed else MEDIUM) if reach >= Reach.EXEC else LOW
        where = "the network" if exposed else "local processes"
        context.add(target, "network.exfiltration", severity, f"serves {expanded} over HTTP to {where}")


def _dns_exfiltration(target: ScanTarget, reach: Reach, invocations: list[_Invocation], context: _Context) -> None:
    severity = HIGH if reach >= Reach.EXEC else MEDIUM
    for invocation in invocations:
        names = [*invocation.dns_names, *(url.host for url in invocation.urls)]
        if any("$(" in name or "`" in name for name in names):
            context.add(target, "network.exfiltration", severity, "command output spliced into a DNS name")
            return
    text = target.text
    if ("$" in text or "`" in text) and _DNS_EXFIL.search(text) is not None:
        context.add(target, "network.exfiltration", severity, "command output spliced into a DNS name")


def _sensitive_reads(target: ScanTarget, context: _Context) -> list[str]:
    """Labels of sensitive files the script or code reads (not ones it only uses as an ssh/curl identity)."""
    home = context.settings.home
    raws: list[str] = []
    if target.commands:
        for command in target.commands:
            if command.program.lower() in NET_PROGRAMS:
                continue  # their file arguments are judged as uploads
            raws.extend(raw for raw, access in shell_path_uses(command) if access is Access.READ)
    else:
        raws.extend(path_tokens(target.text))
    labels: list[str] = []
    dumps_env = "environ" in target.text or "process.env" in target.text or "getenv" in target.text
    for command in target.commands:
        program = command.program.lower()
        if program == "printenv" or (program == "env" and all(arg.startswith("-") for arg in command.argv[1:])):
            dumps_env = True
    if dumps_env:
        labels.append("environment variables")
    for raw in raws:
        hit = sensitive_path(raw, home)
        if hit is not None and hit[1].read is not None and hit[1].read >= MEDIUM and hit[1].label not in labels:
            labels.append(hit[1].label)
    return labels


def _sent_files(files: list[str], context: _Context) -> list[str]:
    labels = []
    for raw in files:
        hit = sensitive_path(raw, context.settings.home)
        if hit is not None and hit[1].read is not None and hit[1].read >= MEDIUM:
            labels.append(f"{hit[0].normal} ({hit[1].label})")
    return labels


def _script_exfiltration(
    target: ScanTarget, reach: Reach, invocations: list[_Invocation], endpoints: list[Endpoint], context: _Context
) -> None:
    """Commands or code that send data out: secrets, sensitive files, large bodies."""
    severity = HIGH if reach >= Reach.EXEC else MEDIUM
    reads: list[str] | None = None  # computed lazily: only scripts that talk to an unlisted host need it
    for invocation in invocations:
        unlisted = context.unlisted(host for url in invocation.urls for host in url.hosts[:4])
        if invocation.unknown_host:
            unlisted.append("a remote host")
        if not unlisted:
            continue
        destination = unlisted[0]
        for label in _sent_files(invocation.files, context):
            context.add(
                target, "network.exfiltration", severity, f"{invocation.program} sends {label} to {destination}"
            )
        payload = "\n".join(invocation.payloads)
        for kind in secret_kinds(payload):
            if not _secret_is_at_home(kind, unlisted):
                context.add(
                    target, "network.exfiltration", severity, f"{invocation.program} sends {kind} to {destination}"
                )
        for token in path_tokens(payload) if "/" in payload or "~" in payload else ():
            hit = sensitive_path(token, context.settings.home)
            if hit is not None and hit[1].read is not None and hit[1].read >= MEDIUM:
                context.add(
                    target,
                    "network.exfiltration",
                    severity,
                    f"{invocation.program} sends {hit[1].label} to {destination}",
                )
        if len(payload) > context.settings.large_payload_bytes:
            context.add(
                target,
                "network.exfiltration",
                MEDIUM,
                f"{invocation.program} sends {len(payload)} characters to {destination}",
            )
        if invocation.carries_data:
            # Data flow inside a script is not tracked exactly (pipes, substitutions, temp files): a secret read
            # anywhere in it plus data sent to an outside host is enough.
            if reads is None:
                reads = _sensitive_reads(target, context)
            if reads:
                context.add(
                    target,
                    "network.exfiltration",
                    severity,
                    f"script reads {', '.join(reads[:3])} and {invocation.program} sends data to {destination}",
                )
    # Code (a code tool, or `python -c` in a script): a secret and an outside URL in the same text.
    code_hosts = (host for endpoint in endpoints if endpoint.via == "url" for host in endpoint.url.hosts[:4])
    unlisted = context.unlisted(code_hosts)
    if unlisted:
        reads = _sensitive_reads(target, context)
        reads += [kind for kind in secret_kinds(target.text) if not _secret_is_at_home(kind, unlisted)]
        if reads:
            context.add(
                target,
                "network.exfiltration",
                severity,
                f"code reads {', '.join(reads[:3])} and contacts {unlisted[0]}",
            )


def _tool_exfiltration(targets: Sequence[ScanTarget], context: _Context) -> None:
    """A sending tool (email, chat, webhook, HTTP POST) whose payload carries secrets to an unlisted destination."""
    sending_tool = bool(context.tool_words & SEND_VERBS)
    destination_targets: list[tuple[ScanTarget, bool]] = []  # (target, is a recipient address)
    payload_targets: list[ScanTarget] = []
    has_payload_arg = False
    for target in targets:
        if target.exec_position or target.is_key:
            continue
        words = argument_words(target.path)
        if words & RECIPIENT_ARGS and "@" in target.text:
            destination_targets.append((target, True))
        elif words & DESTINATION_ARGS:
            destination_targets.append((target, False))
        elif not (words & AUTH_ARGS or "method" in words):
            has_payload_arg |= bool(words & PAYLOAD_ARGS)
            payload_targets.append(target)
    if not destination_targets or not payload_targets or not (sending_tool or has_payload_arg):
        return
    destinations: list[str] = []
    for target, recipient in destination_targets:
        if recipient:
            domain = email_domain(target.text)
            destinations.extend((domain,) if domain is not None else ())
        else:
            url = _endpoint_url(target.text)
            destinations.extend(url.hosts[:4] if url is not None else ())
    unlisted = context.unlisted(destinations)
    if not unlisted:
        return
    destination = unlisted[0]
    total = 0
    for target in payload_targets:
        total += len(target.text)
        for kind in secret_kinds(target.text):
            if not _secret_is_at_home(kind, unlisted):
                context.add(target, "network.exfiltration", HIGH, f"sends {kind} to {destination}")
        words = argument_words(target.path)
        if words & ATTACHMENT_ARGS and "\n" not in target.text and len(target.text) <= 4096:
            for label in _sent_files([target.text], context):
                context.add(target, "network.exfiltration", HIGH, f"sends {label} to {destination}")
    if total > context.settings.large_payload_bytes:
        context.add(payload_targets[0], "network.exfiltration", MEDIUM, f"sends {total} characters to {destination}")
