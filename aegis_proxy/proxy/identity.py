"""Who is calling: the session and agent ids of a request, from headers or derived. Pure; no mitmproxy.

- Session: the `X-Aegis-Session` header, else a hash of the conversation's opening (system text and first user
  message), which stays the same across the turns of one conversation.
- Agent: the `X-Aegis-Agent` header, else a hash of the credential (Authorization, x-api-key or api-key header).
  The credential itself is never stored or logged; only a domain-separated SHA-256 prefix of it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence

from aegis_proxy.models import Message, Role

SESSION_HEADER = "x-aegis-session"
AGENT_HEADER = "x-aegis-agent"
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key")
_LABEL = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces: it ends up in logs and terminals
_READ = frozenset(name.encode() for name in (SESSION_HEADER, AGENT_HEADER, *CREDENTIAL_HEADERS))


def identity_headers(fields: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The headers this module reads, from raw header fields (name, value) in one pass, by lower-case name: a lookup
    in mitmproxy's Headers scans and decodes every field, and one request needs up to five lookups (measured: about
    15 us per request). Values are decoded and repeated fields joined with ", " exactly as Headers does."""
    found: dict[str, str] = {}
    for raw_name, raw_value in fields:
        lowered = raw_name.lower()
        if lowered in _READ:
            name, value = lowered.decode("ascii"), raw_value.decode("utf-8", "surrogateescape")
            found[name] = f"{found[name]}, {value}" if name in found else value
    return found


def digest_of(domain: str, *parts: str) -> str:
    hasher = hashlib.sha256(f"aegis-proxy/identity/v1 {domain}\n".encode())
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        hasher.update(len(data).to_bytes(8, "big") + data)  # length-prefixed: no two part lists collide
    return hasher.hexdigest()[:24]


def _label(value: str | None) -> str | None:
    """A header value usable as an id, or None (absent or unusable: then the id is derived)."""
    if value is None:
        return None
    value = value.strip()
    return value if _LABEL.match(value) else None


def session_id(headers: Mapping[str, str], messages: Sequence[Message]) -> str | None:
    given = _label(headers.get(SESSION_HEADER))
    if given:
        return given
    system = "\n".join(m.content for m in messages if m.role is Role.SYSTEM)
    first_user = next((m.content for m in messages if m.role is Role.USER), None)
    if first_user is None and not system:
        return None
    return "conv-" + digest_of("session", system, first_user or "")


def agent_id(headers: Mapping[str, str]) -> str | None:
    given = _label(headers.get(AGENT_HEADER))
    if given:
        return given
    for name in CREDENTIAL_HEADERS:
        credential = headers.get(name)
        if credential:
            return "key-" + digest_of("credential", name, credential.strip())
    return None
