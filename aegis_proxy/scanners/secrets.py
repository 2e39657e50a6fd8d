"""Secrets: find credentials in argument text, judge them by where they are going, and redact them.

A secret in a tool call is not by itself an attack: a coding agent writes config files, a devops agent sets environment
variables, an HTTP tool sends its own API token. What matters is where the secret is going. A private key or a cloud
credential in an outbound message (email, chat, HTTP request to an unrelated host, issue, gist) is exfiltration and is
HIGH; the same secret written to a file, exported in a shell, or sent to the provider it belongs to is LOW (MEDIUM for
private keys: a key on disk or in a tool argument is still worth a human look). Generic high-entropy strings are
never more than LOW: they are often just hashes or ids, and the audit log redacts them regardless.

`redact()` is what the audit log calls before writing anything, so it is the hot path: every detector has a cheap
literal prefilter, all patterns are RE2 (linear time) compiled at import, and it fails closed (redacts everything)
rather than raising.

Decisions worth knowing:
- `AKIAIOSFODNN7EXAMPLE` and the matching secret key from the AWS documentation, and any value containing a placeholder
  marker (`EXAMPLE`, `xxxx`, `<your-token>`, `${VAR}`, `changeme`, ...) are not secrets: not reported, not redacted.
- The redaction marker shows the first 4 characters of the secret only when the secret has at least 16 characters
  (a token's type prefix such as `ghp_` or `AKIA`); shorter secrets, typically human passwords, show none.
- Overlapping detections are merged into their union and named after the most specific detector, so nothing of a
  secret is left behind and a second `redact()` changes nothing (text inside an existing marker is never re-matched).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import re2
from re2 import escape as re2_escape

from aegis_proxy.models import Finding, Severity, ToolCall
from aegis_proxy.safe_regex import Match, Pattern, compile_pattern
from aegis_proxy.scanners.base import FindingSink, Scanner, ScanSettings, ScanTarget, text_cache
from aegis_proxy.scanners.vocabulary import MESSAGE_VERBS, SEND_VERBS, argument_words, name_words


def _split(words: str) -> tuple[str, ...]:
    """Word tables are written as whitespace-separated text: easier to read and review than a column of strings."""
    return tuple(words.split())


class SecretClass(enum.Enum):
    """How much damage the secret does in the wrong hands; rows of the severity table."""

    PRIVATE_KEY = "private_key"  # asymmetric key material
    CLOUD = "cloud"  # AWS / GCP / Azure credentials: usually the keys to the whole account
    SERVICE = "service"  # a named provider's API token (GitHub, Slack, Stripe, OpenAI, ...)
    CREDENTIAL = "credential"  # passwords, bearer tokens, JWTs, `token=` assignments of unknown provenance
    GENERIC = "generic"  # high-entropy string with no other evidence


CATEGORY_BY_CLASS: dict[SecretClass, str] = {
    SecretClass.PRIVATE_KEY: "secrets.private_key",
    SecretClass.CLOUD: "secrets.token",
    SecretClass.SERVICE: "secrets.token",
    SecretClass.CREDENTIAL: "secrets.token",
    SecretClass.GENERIC: "secrets.high_entropy",
}


@dataclass(frozen=True, slots=True)
class SecretPattern:
    """One detector. `groups` are the capture groups that may hold the secret; the first that matched is used."""

    kind: str  # stable snake_case name, shown in redaction markers
    secret_class: SecretClass
    pattern: str
    # Literals, one of which must occur for the regex to run (empty: always run). Matched exactly, or ignoring case
    # when the detector ignores case (then they are written lowercase).
    needles: tuple[str, ...] = ()
    groups: tuple[int, ...] = (0,)
    ignore_case: bool = False
    check: str = ""  # extra validation, see _VALIDATORS
    providers: tuple[str, ...] = ()  # hosts that legitimately receive this secret (suffix match)


_PEM_LABEL = r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----"
_PEM_END = r"-----END[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----"
# Assignment keywords: the name must *end* with one of these (`GITHUB_TOKEN`, `db_password`), so `max_tokens` and
# `tokenizer` do not count. `pwd` is left out: `PWD=/home/user` is a directory.
_ASSIGN_KEYWORDS = (
    r"(?:password|passwd|passphrase|secret|secret_?key|token|api_?key|apikey|access_?key|auth_?key|private_?key"
    r"|client_?secret|credentials?)"
)
_QUOTE = r"(?:\\?[\"'])?"  # an optional quote around a key, possibly escaped (JSON inside JSON)
_AWS = ("amazonaws.com", "aws.amazon.com")
_GOOGLE = ("googleapis.com", "google.com")
_AZURE = ("windows.net", "azure.com", "azure.net", "microsoft.com", "microsoftonline.com")

# Ordered most specific first: when detections overlap, the earlier row names the merged secret.
SECRET_PATTERNS: tuple[SecretPattern, ...] = (
    # --- private keys ------------------------------------------------------------------------------------------------
    SecretPattern(
        kind="private_key",
        secret_class=SecretClass.PRIVATE_KEY,
        pattern=_PEM_LABEL + r"([\s\S]*?)" + _PEM_END,
        needles=("PRIVATE KEY",),
        groups=(1,),  # the body: the BEGIN/END lines stay readable in the audit log
        check="pem",
    ),
    # A key cut short (head -c, a log line limit) is still a key: header lines plus whatever base64 follows.
    SecretPattern(
        kind="private_key",
        secret_class=SecretClass.PRIVATE_KEY,
        pattern=_PEM_LABEL
        + r"((?:\s*[A-Za-z\-]{1,20}: [^\r\n\\]{0,200}(?:\r?\n|\\r?\\n))*(?:[\r\n\t]|\\[nr]|[A-Za-z0-9+/=])+)",
        needles=("PRIVATE KEY",),
        groups=(1,),
        check="pem",
    ),
    SecretPattern(
        kind="putty_private_key",
        secret_class=SecretClass.PRIVATE_KEY,
        pattern=r"Private-Lines: *[0-9]+(?:\r?\n|\\r?\\n)((?:[A-Za-z0-9+/=]{1,128}(?:\r?\n|\\r?\\n))+)",
        needles=("Private-Lines",),
        groups=(1,),
    ),
    # Base64 of a PEM file (Kubernetes secrets, CI variables): "-----BEGIN" encodes to "LS0tLS1CRUdJTi".
    SecretPattern(
        kind="private_key_base64",
        secret_class=SecretClass.PRIVATE_KEY,
        pattern=r"LS0tLS1CRUdJTi[A-Za-z0-9+/]{40,}={0,2}",
        needles=("LS0tLS1CRUdJTi",),
        check="pem_base64",
    ),
    # --- cloud -------------------------------------------------------------------------------------------------------
    SecretPattern(
        kind="aws_access_key_id",
        secret_class=SecretClass.CLOUD,
        pattern=r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
        needles=("AKIA", "ASIA"),
        providers=_AWS,
    ),
    SecretPattern(
        kind="aws_secret_access_key",
        secret_class=SecretClass.CLOUD,
        pattern=r"(?:aws_?secret_?access_?key|aws_?secret_?key|secret_?access_?key)"
        + _QUOTE
        + r"\s*(?:=|:|=>)\s*"
        + _QUOTE
        + r"([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)",
        needles=("secret",),
        groups=(1,),
        ignore_case=True,
        providers=_AWS,
    ),
    SecretPattern(
        kind="gcp_oauth_client_secret",
        secret_class=SecretClass.CLOUD,
        pattern=r"\bGOCSPX-[A-Za-z0-9_\-]{28}",
        needles=("GOCSPX-",),
        providers=_GOOGLE,
    ),
    SecretPattern(
        kind="google_api_key",
        secret_class=SecretClass.CLOUD,
        pattern=r"\bAIza[0-9A-Za-z_\-]{35}",
        needles=("AIza",),
        providers=_GOOGLE,
    ),
    SecretPattern(
        kind="azure_storage_key",
        secret_class=SecretClass.CLOUD,
        pattern=r"(?:AccountKey|SharedAccessKey|azure_?storage_?(?:account_?)?key|azure_?client_?secret)"
        + _QUOTE
        + r"\s*[=:]\s*"
        + _QUOTE
        + r"([A-Za-z0-9+/=_.~\-]{20,})",
        needles=("key", "secret"),
        groups=(1,),
        ignore_case=True,
        check="mixed",
        providers=_AZURE,
    ),
    SecretPattern(
        kind="azure_sas_signature",
        secret_class=SecretClass.CLOUD,
        pattern=r"[?&;]sig=([A-Za-z0-9%+/=]{20,})",
        needles=("sig=",),
        groups=(1,),
        providers=_AZURE,
    ),
    SecretPattern(
        kind="azure_client_secret",
        secret_class=SecretClass.CLOUD,
        pattern=r"\b[A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.\-]{31,34}",
        needles=("Q~",),
        providers=_AZURE,
    ),
    # --- named services ----------------------------------------------------------------------------------------------
    SecretPattern(
        kind="github_token",
        secret_class=SecretClass.SERVICE,
        pattern=r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}\b|\bgithub_pat_[A-Za-z0-9_]{22,255}",
        needles=("gh", "github_pat_"),
        providers=("github.com", "githubusercontent.com", "ghcr.io"),
    ),
    SecretPattern(
        kind="gitlab_token",
        secret_class=SecretClass.SERVICE,
        pattern=r"\bgl(?:pat|dt|rt|ptt|ft|soat|cbt)-[A-Za-z0-9_\-]{20,}",
        needles=("gl",),
        providers=("gitlab.com",),
    ),
    SecretPattern(
        kind="slack_token",
        secret_class=SecretClass.SERVICE,
        pattern=r"\bxox[abposre]-[A-Za-z0-9\-]{10,}",
        needles=("xox",),
        providers=("slack.com",),
    ),
    SecretPattern(
        kind="slack_webhook",
        secret_class=SecretClass.SERVICE,
        pattern=r"https://hooks\.slack\.com/(?:services|workflows|triggers)/([A-Za-z0-9_/+\-]{20,})",
        needles=("hooks.slack.com",),
        groups=(1,),
        providers=("hooks.slack.com",),
    ),
    SecretPattern(
        kind="discord_webhook",
        secret_class=SecretClass.SERVICE,
        pattern=r"https://(?:canary\.|ptb\.)?discord(?:app)?\.com/api/webhooks/[0-9]{5,}/([A-Za-z0-9_\-]{30,})",
        needles=("/api/webhooks/",),
        groups=(1,),
        providers=("discord.com", "discordapp.com"),
    ),
    SecretPattern(
        kind="stripe_key",
        secret_class=SecretClass.SERVICE,
        pattern=r"\b(?:sk|rk)_live_[A-Za-z0-9]{20,}",
        needles=("_live_",),
        providers=("stripe.com",),
    ),
    SecretPattern(
        kind="anthropic_key",
        secret_class=SecretClass.SERVICE,
        pattern=r"\bsk-ant-[A-Za-z0-9_\-]{20,}",
        needles=("sk-",),
        providers=("anthropic.com",),
    ),
    SecretPattern(
        kind="openai_key",
        secret_class=SecretClass.SERVICE,
        pattern=r"\bsk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_\-]{20,}",
        needles=("sk-",),
        providers=("openai.com",),
    ),
    SecretPattern(
        kind="openai_key",  # legacy format: sk- and 48 alphanumerics
        secret_class=SecretClass.SERVICE,
        pattern=r"\bsk-[A-Za-z0-9]{32,}\b",
        needles=("sk-",),
        check="mixed",
        providers=("openai.com",),
    ),
    SecretPattern(
        kind="twilio_api_key",
        secret_class=SecretClass.SERVICE,
        pattern=r"\bSK[0-9a-fA-F]{32}\b",
        needles=("SK",),
        check="hexmixed",
        providers=("twilio.com",),
    ),
    SecretPattern(
        kind="twilio_auth_token",
        secret_class=SecretClass.SERVICE,
        pattern=r"twilio[a-z_]{0,20}(?:auth_?token|secret)" + _QUOTE + r"\s*[:=]\s*" + _QUOTE + r"([0-9a-f]{32})\b",
        needles=("twilio",),
        groups=(1,),
        ignore_case=True,
        providers=("twilio.com",),
    ),
    SecretPattern(
        kind="sendgrid_key",
        secret_class=SecretClass.SERVICE,
        pattern=r"\bSG\.[A-Za-z0-9_\-]{16,32}\.[A-Za-z0-9_\-]{16,64}",
        needles=("SG.",),
        providers=("sendgrid.com", "sendgrid.net"),
    ),
    SecretPattern(
        kind="npm_token",
        secret_class=SecretClass.SERVICE,
        pattern=r"\bnpm_[A-Za-z0-9]{36}\b",
        needles=("npm_",),
        providers=("npmjs.org", "npmjs.com"),
    ),
    SecretPattern(
        kind="pypi_token",
        secret_class=SecretClass.SERVICE,
        pattern=r"\bpypi-AgE[A-Za-z0-9_\-]{50,}",
        needles=("pypi-AgE",),
        providers=("pypi.org",),
    ),
    SecretPattern(
        kind="heroku_key",
        secret_class=SecretClass.SERVICE,
        pattern=r"\bHRKU-[A-Za-z0-9_\-]{20,}",
        needles=("HRKU-",),
        providers=("heroku.com",),
    ),
    SecretPattern(
        kind="heroku_key",  # legacy: a UUID, recognisable only by its name
        secret_class=SecretClass.SERVICE,
        pattern=r"heroku[a-z_]{0,20}(?:api_?key|token|key)"
        + _QUOTE
        + r"\s*[:=]\s*"
        + _QUOTE
        + r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})",
        needles=("heroku",),
        groups=(1,),
        ignore_case=True,
        providers=("heroku.com",),
    ),
    SecretPattern(
        kind="digitalocean_token",
        secret_class=SecretClass.SERVICE,
        pattern=r"\bdo[opr]_v1_[a-f0-9]{64}\b",
        needles=("_v1_",),
        providers=("digitalocean.com",),
    ),
    SecretPattern(
        kind="huggingface_token",
        secret_class=SecretClass.SERVICE,
        pattern=r"\bhf_[A-Za-z0-9]{34,}\b",
        needles=("hf_",),
        check="mixed",
        providers=("huggingface.co",),
    ),
    SecretPattern(
        kind="telegram_bot_token",
        secret_class=SecretClass.SERVICE,
        pattern=r"\b[0-9]{8,10}:AA[A-Za-z0-9_\-]{33}\b",
        needles=(":AA",),
        providers=("api.telegram.org",),
    ),
    # --- credentials of unknown provenance ---------------------------------------------------------------------------
    SecretPattern(
        kind="jwt",
        secret_class=SecretClass.CREDENTIAL,
        pattern=r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*",
        needles=("eyJ",),
        check="jwt",
    ),
    SecretPattern(
        kind="url_password",
        secret_class=SecretClass.CREDENTIAL,
        pattern=r"\b[A-Za-z][A-Za-z0-9+.\-]{1,30}://[^\s:/?#@'\"<>\[\]]{0,128}:([^\s/?#@'\"<>]{1,256})@[A-Za-z0-9\[]",
        needles=("://",),
        groups=(1,),
        check="password",
    ),
    SecretPattern(
        kind="bearer_token",
        secret_class=SecretClass.CREDENTIAL,
        pattern=r"\bbearer\s+([A-Za-z0-9._~+/\-]{16,}=*)",
        needles=("bearer",),
        groups=(1,),
        ignore_case=True,
        check="password",
    ),
    SecretPattern(
        kind="basic_auth",
        secret_class=SecretClass.CREDENTIAL,
        pattern=r"authorization" + _QUOTE + r"\s*[:=]\s*" + _QUOTE + r"basic\s+([A-Za-z0-9+/]{8,}={0,2})",
        needles=("basic",),
        groups=(1,),
        ignore_case=True,
        check="password",
    ),
    SecretPattern(
        kind="sql_password",
        secret_class=SecretClass.CREDENTIAL,
        pattern=r"\b(?:password|identified\s+by)\s+'([^'\n]{4,128})'",
        needles=("password", "identified"),
        groups=(1,),
        ignore_case=True,
        check="password",
    ),
    SecretPattern(
        kind="assigned_secret",
        secret_class=SecretClass.CREDENTIAL,
        pattern=r""
        + _ASSIGN_KEYWORDS
        + _QUOTE
        + r"[ \t]*(?:=|:=|:|=>)[ \t]*"
        + r"(?:\\?\"([^\"\\\r\n]{1,256})\\?\"|'([^'\\\r\n]{1,256})'|([^\s\"'`,;&()\[\]{}<>]{1,256}))",
        needles=("pass", "secret", "token", "key", "credential"),
        groups=(1, 2, 3),  # double-quoted, single-quoted, bare: a bare value must not look like code
        ignore_case=True,
        check="assignment",
    ),
)

GENERIC_KIND = "high_entropy"
GENERIC_MIN_LEN = 24
GENERIC_MAX_LEN = 256  # longer runs are data (base64 files, images, bundles), not credentials
# Hex strings of these lengths are digests (md5, sha1/git, sha224, sha256, sha384, sha512), not secrets.
DIGEST_HEX_LENGTHS = frozenset({32, 40, 56, 64, 96, 128})
# Base64 starts of common binary formats: data, not secrets.
BINARY_BASE64_PREFIXES = ("iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR", "PHN2Zy", "JVBERi", "UEsDB", "AAAA")
INTEGRITY_PREFIXES = ("sha512-", "sha384-", "sha256-", "sha1-")

# A value containing any of these (compared lowercase) is a template or documentation, not a secret. Markers made of
# base64 letters are at least 5 long so that real random tokens almost never contain one by chance.
PLACEHOLDER_MARKERS = _split("""
    example xxxxx **** .... … < > ${ {{ $( %( your_ your- yourtoken yourkey changeme change_me change-me placeholder
    replace_me replace-me replaceme redacted dummy insert_ insert- fixme not_a_real notreal fake_ fake-
""")
TRIVIAL_VALUES = frozenset(
    _split("""
    password passwd secret token none null nil true false undefined test testing admin root pass string str bytes
    optional required hidden private empty 12345678 123456789 1234567890 qwerty abc123 letmein secret123 password1
    password123
""")
)
FILE_EXTENSIONS = frozenset(_split("json pem key txt yaml yml toml ini cfg conf env p12 pfx"))
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_HEX_CHARS = frozenset("0123456789abcdefABCDEF")
_PREFIX_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")

LABELS: dict[str, str] = {
    "private_key": "private key",
    "putty_private_key": "PuTTY private key",
    "private_key_base64": "base64-encoded private key",
    "gcp_service_account_key": "GCP service-account key",
    "aws_access_key_id": "AWS access key id",
    "aws_secret_access_key": "AWS secret access key",
    "gcp_oauth_client_secret": "Google OAuth client secret",
    "google_api_key": "Google API key",
    "azure_storage_key": "Azure key",
    "azure_sas_signature": "Azure SAS signature",
    "azure_client_secret": "Azure client secret",
    "github_token": "GitHub token",
    "gitlab_token": "GitLab token",
    "slack_token": "Slack token",
    "slack_webhook": "Slack webhook URL",
    "discord_webhook": "Discord webhook URL",
    "stripe_key": "Stripe live key",
    "anthropic_key": "Anthropic API key",
    "openai_key": "OpenAI API key",
    "twilio_api_key": "Twilio API key",
    "twilio_auth_token": "Twilio auth token",
    "sendgrid_key": "SendGrid API key",
    "npm_token": "npm token",
    "pypi_token": "PyPI token",
    "heroku_key": "Heroku API key",
    "digitalocean_token": "DigitalOcean token",
    "huggingface_token": "Hugging Face token",
    "telegram_bot_token": "Telegram bot token",
    "jwt": "JWT",
    "url_password": "password in URL",
    "bearer_token": "bearer token",
    "basic_auth": "basic-auth credentials",
    "sql_password": "SQL password",
    "assigned_secret": "secret assignment",
    GENERIC_KIND: "high-entropy string",
}

_COMPILED: tuple[tuple[SecretPattern, Pattern], ...] = tuple(
    (spec, compile_pattern(spec.pattern, ignore_case=spec.ignore_case)) for spec in SECRET_PATTERNS
)
# The two private-key detectors: a whole key (BEGIN ... END) and a key cut short (BEGIN and whatever base64 follows).
# Inside a whole key the second finds only a prefix of the same body, which the merge folds into the first: it is run
# only on the text around such keys (see _cut_key_matches), because on a long key it costs more than all the rest.
_PEM_WHOLE, _PEM_CUT = 0, 1
if not (
    SECRET_PATTERNS[_PEM_WHOLE].kind == SECRET_PATTERNS[_PEM_CUT].kind == "private_key"
    and SECRET_PATTERNS[_PEM_WHOLE].pattern.endswith(_PEM_END)
    and not SECRET_PATTERNS[_PEM_CUT].pattern.endswith(_PEM_END)
):
    raise AssertionError("_PEM_WHOLE and _PEM_CUT must name the whole-key and cut-key private key detectors")
_PRIORITY: dict[str, int] = {}
for _index, _spec in enumerate(SECRET_PATTERNS):
    _PRIORITY.setdefault(_spec.kind, _index)
_PRIORITY["gcp_service_account_key"] = -1
_PRIORITY[GENERIC_KIND] = len(SECRET_PATTERNS)
_CLASS_BY_KIND: dict[str, SecretClass] = {spec.kind: spec.secret_class for spec in SECRET_PATTERNS}
_CLASS_BY_KIND["gcp_service_account_key"] = SecretClass.PRIVATE_KEY
_CLASS_BY_KIND[GENERIC_KIND] = SecretClass.GENERIC
_PROVIDERS_BY_KIND: dict[str, tuple[str, ...]] = {spec.kind: spec.providers for spec in SECRET_PATTERNS}
_PROVIDERS_BY_KIND["gcp_service_account_key"] = ("googleapis.com", "google.com")

# Which detectors can match at all: the needles present (see _needles_present).
_EXACT_NEEDLES = tuple(sorted({n for spec in SECRET_PATTERNS if not spec.ignore_case for n in spec.needles}))
_FOLDED_NEEDLES = tuple(sorted({n for spec in SECRET_PATTERNS if spec.ignore_case for n in spec.needles}))


def _alternation(words: Iterable[str]) -> str:
    return "|".join(re2_escape(word) for word in sorted(words, key=len, reverse=True))


_NEEDLE_PATTERN = f"{_alternation(_EXACT_NEEDLES)}|(?i:{_alternation(_FOLDED_NEEDLES)})"
_NEEDLE_NAMES = (*_EXACT_NEEDLES, *_FOLDED_NEEDLES)


def _needle_set() -> re2.Set:
    """Every needle as its own pattern of one RE2 set: one linear pass says which of them occur, overlapping or not
    (an alternation reports only the leftmost of overlapping needles, so `password` would hide `pass`)."""
    options = re2.Options()
    options.max_mem = 64 << 20
    options.log_errors = False
    needles = re2.Set.SearchSet(options)
    for needle in _EXACT_NEEDLES:
        needles.Add(re2_escape(needle))
    for needle in _FOLDED_NEEDLES:
        needles.Add("(?i)" + re2_escape(needle))  # RE2's case folding, as in the detectors themselves
    needles.Compile()
    return needles


_NEEDLE_SET = _needle_set()
_DETECTORS_BY_NEEDLE: dict[str, tuple[int, ...]] = {
    needle: tuple(i for i, spec in enumerate(SECRET_PATTERNS) if needle in spec.needles)
    for needle in (*_EXACT_NEEDLES, *_FOLDED_NEEDLES)
}
_ALWAYS_RUN = tuple(i for i, spec in enumerate(SECRET_PATTERNS) if not spec.needles)
# Generic candidates: runs of base64/hex characters, not starting with "/" (a path is not a secret).
_CANDIDATE = r"[A-Za-z0-9+_\-][A-Za-z0-9+/_\-]{23,}"
_GENERIC_CANDIDATE = compile_pattern(r"(?:^|[^A-Za-z0-9+/_\-])(" + _CANDIDATE + r"={0,2})")
# The first question for every text: is there anything at all to look at? Most strings answer no in one pass.
_GENERIC_GATE = compile_pattern(r"(?:^|[^A-Za-z0-9+/_\-])" + _CANDIDATE)
_ANYTHING = compile_pattern(f"{_NEEDLE_PATTERN}|{_GENERIC_GATE.pattern}")  # any needle, or a generic candidate
QUICK_DISMISS_CHARS = 4096  # up to this length, a text with no needle and no generic candidate is dismissed early
_PUBLIC_PEM = compile_pattern(
    r"-----BEGIN (?:CERTIFICATE|TRUSTED CERTIFICATE|PUBLIC KEY|RSA PUBLIC KEY|SSH2 PUBLIC KEY|CERTIFICATE REQUEST|"
    r"NEW CERTIFICATE REQUEST|X509 CRL|PKCS7|DH PARAMETERS|EC PARAMETERS|PGP PUBLIC KEY BLOCK|PGP SIGNATURE)-----"
    r"[\s\S]*?-----END [A-Z0-9 ]{1,40}-----"
)
_UUID = compile_pattern(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_AWS_SECRET_NEAR_ID = compile_pattern(r"(?:^|[^A-Za-z0-9/+])([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)")
_AWS_SECRET_WINDOW = 256  # characters either side of an access key id searched for its secret key
_MARKER = compile_pattern(r"\[REDACTED:[a-z0-9_]{1,40}:[A-Za-z0-9_\-]{0,4}…\]")
MAX_CANDIDATES = 4_000  # regex hits per detector per text; beyond this the text is hostile, redact() masks the rest
MARKER_PREFIX_MIN_LEN = 16  # secrets shorter than this show no prefix in their redaction marker


@dataclass(frozen=True, slots=True)
class SecretMatch:
    """A secret found in a text. `value` is the secret itself: never log it, use `redacted`."""

    kind: str
    category: str
    start: int
    end: int
    value: str = field(repr=False)  # kept out of repr() so a logged or asserted match cannot leak it

    @property
    def secret_class(self) -> SecretClass:
        return _CLASS_BY_KIND.get(self.kind, SecretClass.GENERIC)

    @property
    def label(self) -> str:
        return LABELS.get(self.kind, self.kind)

    @property
    def redacted(self) -> str:
        return redaction_marker(self.kind, self.value)


def redaction_marker(kind: str, value: str) -> str:
    """`[REDACTED:<kind>:<first 4 chars>…]`; the prefix is omitted for short secrets and cut at odd characters."""
    prefix = ""
    if len(value) >= MARKER_PREFIX_MIN_LEN:
        for char in value[:4]:
            if char not in _PREFIX_CHARS:
                break
            prefix += char
    return f"[REDACTED:{kind}:{prefix}…]"


# --- validators (extra checks a regex cannot express) -----------------------------------------------------------------


# Any placeholder marker, in one pass: a PEM body or a long token is otherwise scanned once per marker.
_PLACEHOLDER = compile_pattern("|".join(re2_escape(marker) for marker in PLACEHOLDER_MARKERS))


def _is_placeholder(value: str) -> bool:
    lowered = value.lower()
    if lowered in TRIVIAL_VALUES or len(set(lowered)) <= 2:
        return True
    return _PLACEHOLDER.search(lowered) is not None


_ASCII_DIGITS = frozenset("0123456789")
_ASCII_LOWER = frozenset("abcdefghijklmnopqrstuvwxyz")
_ASCII_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HEX_LETTERS = frozenset("abcdefABCDEF")


def _has_mixed_classes(value: str) -> bool:
    """Upper, lower and digit all present: random tokens have them, words and identifiers mostly do not."""
    if value.isascii():  # the same answer as the per-character tests below, from three scans in C
        return not (_ASCII_DIGITS.isdisjoint(value) or _ASCII_LOWER.isdisjoint(value) or _ASCII_UPPER.isdisjoint(value))
    return any(c.isdigit() for c in value) and any(c.islower() for c in value) and any(c.isupper() for c in value)


def _pem_body_ok(value: str) -> bool:
    # Header lines (Proc-Type, DEK-Info, Comment) hold a colon; the rest must be base64 and long enough to be a key,
    # so `"-----BEGIN PRIVATE KEY-----\n" + body` in source code is not one.
    body = value.replace("\\n", "\n").replace("\\r", "\n")
    lines = [line.strip() for line in body.split("\n") if ":" not in line]
    compact = "".join(lines)
    return len(compact) >= 40 and set(compact) <= _B64_CHARS


def _pem_base64_ok(value: str) -> bool:
    try:
        head = base64.b64decode(value[:120] + "=" * (-len(value[:120]) % 4), validate=False)
    except (binascii.Error, ValueError):
        return False
    return b"PRIVATE KEY" in head


def _jwt_ok(value: str) -> bool:
    header = value.split(".", 1)[0]
    if len(header) > 2048:
        return False
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(decoded, dict) and "alg" in decoded


def _password_ok(value: str) -> bool:
    if _is_placeholder(value) or value.startswith(("$", "%")):
        return False
    return not (value.isdigit() and len(value) <= 5)  # `host:8080@` is a port, not a password


def _looks_like_location(value: str) -> bool:
    """A path or URL names where a secret lives (`GOOGLE_APPLICATION_CREDENTIALS=/etc/key.json`); it is not one."""
    if value.startswith(("/", "~/", "./", "../")) or "://" in value:
        return True
    return "." in value and value.rsplit(".", 1)[1].lower() in FILE_EXTENSIONS


def _assignment_ok(value: str, *, unquoted: bool) -> bool:
    if len(value) < (8 if unquoted else 6) or value.isdigit() or " " in value:
        return False
    if value.startswith(("$", "%", "-----", "[REDACTED:")) or _is_placeholder(value) or _looks_like_location(value):
        return False
    if unquoted and all(part.isidentifier() for part in value.split(".")):
        # `token = self.token`, `password: Optional[str]`, `api_key=os.environ.get(...)`: code, not a literal. An
        # identifier with a digit and no dots (`PASSWORD=hunter22`) is taken as a literal.
        return "." not in value and any(c.isdigit() for c in value)
    return True


def _hex_mixed(value: str) -> bool:
    body = value[2:]
    return any(c.isdigit() for c in body) and any(c.isalpha() for c in body)


_VALIDATORS = {
    "pem": _pem_body_ok,
    "hexmixed": _hex_mixed,
    "pem_base64": _pem_base64_ok,
    "mixed": _has_mixed_classes,
    "jwt": _jwt_ok,
    "password": _password_ok,
}


def shannon_entropy(value: str) -> float:
    """Bits per character of `value` (0 for the empty string)."""
    if not value:
        return 0.0
    length = len(value)
    return -sum(count / length * math.log2(count / length) for count in Counter(value).values())


def _base64_threshold(length: int) -> float:
    # Random base64 of length L scores about 0.9*log2(L) (its 5th percentile); identifiers and camelCase names score
    # about 4.0-4.2 at L=30. Capped because a 200-char token cannot exceed log2(64)=6 bits.
    return min(0.88 * math.log2(length), 4.9)


HEX_ENTROPY_THRESHOLD = 3.3  # random hex of length >= 32 scores ~3.6; repetitive hex scores less
HEX_MIN_LEN = 32  # shorter hex is ids (Mongo ObjectIds are 24)


def _generic_ok(text: str, start: int, value: str) -> bool:
    value = value.rstrip("=")
    length = len(value)
    if length < GENERIC_MIN_LEN or length > GENERIC_MAX_LEN:
        return False
    if value.startswith(INTEGRITY_PREFIXES) or value.startswith(BINARY_BASE64_PREFIXES):
        return False
    if text[max(0, start - 7) : start] == "base64," or _UUID.search(value):
        return False
    if value[0] == "/" or value.count("/") >= 3:  # paths
        return False
    if set(value) <= _HEX_CHARS:
        return (
            length >= HEX_MIN_LEN
            and length not in DIGEST_HEX_LENGTHS
            and not _ASCII_DIGITS.isdisjoint(value)  # hex characters: a digit ...
            and not _HEX_LETTERS.isdisjoint(value)  # ... and a letter
            and shannon_entropy(value) >= HEX_ENTROPY_THRESHOLD
        )
    if not _has_mixed_classes(value) or _is_placeholder(value):
        return False
    return shannon_entropy(value) >= _base64_threshold(length)


# --- finding ----------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Raw:
    kind: str
    start: int
    end: int


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """Shrink a span past surrounding whitespace and literal `\\n` escapes (PEM bodies inside JSON strings)."""
    while start < end:
        if text[start].isspace():
            start += 1
        elif text.startswith(("\\n", "\\r"), start):
            start += 2
        else:
            break
    while end > start:
        if text[end - 1].isspace():
            end -= 1
        elif end - start >= 2 and text[end - 2 : end] in ("\\n", "\\r"):
            end -= 2
        else:
            break
    return start, end


def _secret_span(spec: SecretPattern, match: Match) -> tuple[int, int, int]:
    """(start, end, group) of the secret inside `match`; group -1 when none of `spec.groups` took part."""
    for group in spec.groups:
        start, end = match.span(group)
        if start >= 0:
            return start, end, group
    return -1, -1, -1


def _needles_present(haystack: str | bytes) -> frozenset[str]:
    """The detector needles that occur in the text (as RE2 matches them: exactly, or ignoring case)."""
    data = haystack if isinstance(haystack, bytes) else haystack.encode("utf-8")
    return frozenset([_NEEDLE_NAMES[index] for index in _NEEDLE_SET.Match(data) or ()])


_NOT_CANDIDATE_BYTES = bytes(
    b if chr(b) in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-" else 32 for b in range(256)
)


def _covered(spans: list[tuple[int, int]], starts: list[int], start: int, end: int) -> bool:
    """Is [start, end) inside one of the sorted spans? (Spans may overlap; the nearest few are checked.)"""
    index = bisect_right(starts, start)
    return any(spans[i][1] >= end for i in range(max(0, index - 4), index))


def _public_pem_spans(text: str, haystack: str | bytes) -> list[tuple[int, int]]:
    """Certificates and public keys: base64 that is not secret, and should not be redacted as if it were."""
    if "-----BEGIN" not in text:
        return []
    spans = []
    for seen, match in enumerate(_PUBLIC_PEM.finditer(haystack)):
        if seen >= MAX_CANDIDATES:
            break
        spans.append(match.span())
    return spans


def _may_hold_generic(text: str, haystack: str | bytes) -> bool:
    """Is there a run of >= 24 base64 characters not starting with "/"? (What _GENERIC_GATE asks, without a regex
    call: bytes.translate and split run in C and cost far less than one RE2 call on a short string.)"""
    if isinstance(haystack, bytes):
        return any(len(run) >= 24 and run[0] != 47 for run in haystack.translate(_NOT_CANDIDATE_BYTES).split())
    return _GENERIC_GATE.search(haystack) is not None


def _raw_matches(text: str, haystack: str | bytes, present: frozenset[str] | None) -> tuple[list[_Raw], int]:
    """All detections, and the offset up to which the scan is complete (less than len(text) on hostile input)."""
    found: list[_Raw] = []
    cut = len(text)
    if present is None:
        wanted = range(len(_COMPILED))
    else:
        wanted = sorted(
            {*_ALWAYS_RUN, *(index for needle in present for index in _DETECTORS_BY_NEEDLE.get(needle, ()))}
        )
    whole_keys: list[tuple[int, int]] = []  # whole private keys found, whose text the cut-key detector may skip
    for index in wanted:
        spec, pattern = _COMPILED[index]
        validator = _VALIDATORS.get(spec.check)
        if index == _PEM_CUT and whole_keys:
            matches = _cut_key_matches(pattern, text, haystack, whole_keys)
        else:
            matches = pattern.finditer(haystack)
        for seen, match in enumerate(matches):
            if seen >= MAX_CANDIDATES:
                cut = min(cut, match.start())
                break
            start, end, group = _secret_span(spec, match)
            if start < 0:
                continue
            body_start, body_end = start, end
            start, end = _trim(text, start, end)
            if end <= start:
                continue
            value = text[start:end]
            if spec.check == "assignment":
                if not _assignment_ok(value, unquoted=group == spec.groups[-1]):
                    continue
            elif _is_placeholder(value) or (validator is not None and not validator(value)):
                continue
            found.append(_Raw(spec.kind, start, end))
            gap_start = whole_keys[-1][1] if whole_keys else 0
            if index == _PEM_WHOLE and _cut_key_skips(text, gap_start, match.start(), body_start, body_end):
                whole_keys.append((match.start(), match.end()))
            if spec.kind == "aws_access_key_id":
                found.extend(_aws_secret_near(text, start, end))
    # A candidate inside a named secret (or a certificate, a public key) adds nothing.
    covered = sorted([(r.start, r.end) for r in found] + _public_pem_spans(text, haystack))
    covered_starts = [start for start, _ in covered]
    for seen, match in enumerate(_GENERIC_CANDIDATE.finditer(haystack)):
        if seen >= MAX_CANDIDATES:
            cut = min(cut, match.start())
            break
        start, end = match.span(1)
        if end - start > GENERIC_MAX_LEN + 2 or _covered(covered, covered_starts, start, end):
            continue
        if _generic_ok(text, start, text[start:end]):
            found.append(_Raw(GENERIC_KIND, start, end))
    if cut < len(text):
        # Never report half a secret: move the cut back before any detection that straddles it.
        moved = True
        while moved:
            moved = False
            for raw in found:
                if raw.start < cut < raw.end:
                    cut, moved = raw.start, True
        found = [raw for raw in found if raw.end <= cut]
    return found, cut


def _cut_key_skips(text: str, gap_start: int, start: int, body_start: int, body_end: int) -> bool:
    """May the cut-key detector skip this whole key (match at `start`, body `text[body_start:body_end]`), searching
    from `gap_start` (the end of the last key it skips) up to `start` and going on after the key?

    Every cut-key match that starts inside the key then lies inside its body, so it adds nothing to the merged
    detection: with no ":" in the body no header line can start there, with no "-" no BEGIN line can, and the base64
    run stops at the "-" of END. A match that starts before the key and runs into it needs a BEGIN label in the gap
    ("PRIVATE KEY") and a header line reaching the key (a ":" on the key's line) or a label ending at it.
    """
    body = text[body_start:body_end]
    if ":" in body or "-" in body:
        return False
    if "PRIVATE KEY" not in text[gap_start:start]:
        return True
    line_start = max(text.rfind("\n", 0, start), text.rfind("\r", 0, start), text.rfind("\\", 0, start)) + 1
    before = text[line_start:start]
    return ":" not in before and "PRIVATE KEY" not in before


def _cut_key_matches(
    pattern: Pattern, text: str, haystack: str | bytes, keys: list[tuple[int, int]]
) -> Iterator[Match]:
    """The cut-key detector's matches outside `keys` (sorted, disjoint spans of whole keys that may be skipped), in
    order: what `pattern.finditer(haystack)` yields, less the matches that start inside those keys."""
    position = 0
    for key_start, key_end in keys:
        yield from pattern.finditer(haystack, position, key_start)
        position = key_end
    yield from pattern.finditer(haystack, position, len(text))


def _aws_secret_near(text: str, start: int, end: int) -> list[_Raw]:
    """A 40-character base64 string within a few lines of an access key id is its secret key."""
    lo = max(0, start - _AWS_SECRET_WINDOW)
    window = text[lo : end + _AWS_SECRET_WINDOW]
    found = []
    for match in _AWS_SECRET_NEAR_ID.finditer(window):
        s, e = match.span(1)
        value = window[s:e]
        if _has_mixed_classes(value) and not _is_placeholder(value):
            found.append(_Raw("aws_secret_access_key", lo + s, lo + e))
    return found


def _merge(raws: list[_Raw], markers: list[tuple[int, int]]) -> list[_Raw]:
    """Drop detections inside existing redaction markers; merge overlaps into their union, named by priority."""
    if markers:
        raws = [r for r in raws if not _overlaps_any(r, markers)]
    raws.sort(key=lambda r: (r.start, -r.end))
    merged: list[_Raw] = []
    for raw in raws:
        if merged and raw.start < merged[-1].end:
            last = merged[-1]
            if _PRIORITY.get(raw.kind, 999) < _PRIORITY.get(last.kind, 999):
                last.kind = raw.kind
            last.end = max(last.end, raw.end)
        else:
            merged.append(_Raw(raw.kind, raw.start, raw.end))
    return merged


def _overlaps_any(raw: _Raw, spans: list[tuple[int, int]]) -> bool:
    # `spans` is sorted and disjoint; a bisect would do, but markers are few.
    return any(raw.start < end and start < raw.end for start, end in spans)


def _sanitize(text: str) -> str:
    """RE2 needs valid UTF-8: lone surrogates (legal in a Python str, e.g. from JSON "\\ud800") become '?'."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def find_secrets(text: str) -> list[SecretMatch]:
    """Every secret in `text`, in order, non-overlapping. Never raises on str input.

    On hostile input (more than MAX_CANDIDATES candidates for one detector) the list covers only the start of the
    text; `redact()` then masks the unchecked rest.
    """
    if not isinstance(text, str) or not text:
        return []
    return list(_scan(_sanitize(text))[0])


@text_cache
def _scan(text: str) -> tuple[tuple[SecretMatch, ...], int]:
    """(secrets, offset up to which the text was checked). `text` must already be sanitised."""
    # ASCII text is searched as bytes: offsets are the same and RE2 skips a UTF-8 re-encoding per pattern.
    haystack: str | bytes = text.encode("ascii") if text.isascii() else text
    # One RE2 pass answers "nothing to look at" for most strings, faster than the substring tests below: every
    # detector's pattern holds one of its needles, and the generic gate is the candidate pattern itself.
    if not _ANYTHING.search(haystack):
        return (), len(text)
    present = _needles_present(haystack)
    if len(text) <= QUICK_DISMISS_CHARS and not present and not _may_hold_generic(text, haystack):
        return (), len(text)
    raws, cut = _raw_matches(text, haystack, present)
    if not raws:
        return (), cut
    markers = []
    if "[REDACTED:" in text:
        for seen, match in enumerate(_MARKER.finditer(haystack)):
            if seen >= MAX_CANDIDATES:
                break
            markers.append(match.span())
    merged = _merge(raws, markers)
    is_gcp = '"client_email"' in text or '\\"client_email\\"' in text
    results = []
    for raw in merged:
        kind = raw.kind
        if is_gcp and kind == "private_key":
            kind = "gcp_service_account_key"
        secret_class = _CLASS_BY_KIND.get(kind, SecretClass.GENERIC)
        value = text[raw.start : raw.end]
        results.append(SecretMatch(kind, CATEGORY_BY_CLASS[secret_class], raw.start, raw.end, value))
    return tuple(results), cut


def redact(text: str) -> str:
    """`text` with every secret replaced by its marker; idempotent. Fails closed: on any internal error the whole text
    is replaced, because the audit log must never write a secret it could not check."""
    if not isinstance(text, str):
        text = str(text)
    if not text:
        return text
    try:
        text = _sanitize(text)
        matches, cut = _scan(text)
        if not matches and cut == len(text):
            return text
        pieces = []
        position = 0
        for match in matches:
            pieces.append(text[position : match.start])
            pieces.append(match.redacted)
            position = match.end
        pieces.append(text[position:cut])
        if cut < len(text):
            # Too many candidates to check them all: what we did not inspect may hold more secrets.
            pieces.append(redaction_marker("unscanned", ""))
        return "".join(pieces)
    except Exception:  # fail closed: a redactor that raises would make the audit log drop the record
        return redaction_marker("unscannable", "")


# --- context: where is the secret going? ------------------------------------------------------------------------------

# Tool-name words that mean the arguments leave the machine.
OUTBOUND_WORDS = (
    MESSAGE_VERBS
    | SEND_VERBS
    | frozenset(
        _split("""
    gmail messages http https request fetch curl wget gist notification telegram teams paste pastebin url navigate
    browse browser invite pr pull
""")
    )
)
OUTBOUND_SUBSTRINGS = ("email", "webhook", "upload", "gist", "tweet", "slack", "discord", "telegram", "message")
# Argument names that hold a credential the tool uses (as opposed to content it carries).
CREDENTIAL_ARG_WORDS = frozenset(
    _split("authorization auth token apikey api key password passwd secret credential credentials bearer cookie")
)
# Programs that send data over the network when they appear in a shell command.
NETWORK_PROGRAMS = frozenset(_split("curl wget nc ncat netcat socat http https xh scp sftp ftp telnet rsync"))
_URL_HOST = compile_pattern(r"[A-Za-z][A-Za-z0-9+.\-]{0,30}://(?:[^/?#@\s'\"]*@)?(\[[0-9A-Fa-f:.]+\]|[^/?#:\s'\"\\]+)")
_NETWORK_WORD = compile_pattern(r"(?:^|[\s;|&(`])(?:curl|wget|nc|ncat|netcat|socat|scp|sftp|ftp|telnet)\s")
MAX_HOSTS = 32


def _is_outbound_tool(tool: str, words: frozenset[str]) -> bool:
    lowered = tool[:200].lower()
    return bool(words & OUTBOUND_WORDS) or any(part in lowered for part in OUTBOUND_SUBSTRINGS)


def _hosts_in(text: str) -> list[str]:
    hosts = []
    for match in _URL_HOST.finditer(text[:65_536]):
        hosts.append(match.group(1).lower().rstrip("."))
        if len(hosts) >= MAX_HOSTS:
            break
    return hosts


def host_matches(host: str, suffixes: Iterable[str]) -> bool:
    """`api.github.com` matches `github.com`; a pattern `*.example.com` matches subdomains and the domain itself."""
    for suffix in suffixes:
        bare = suffix.lower().removeprefix("*.")
        if host == bare or host.endswith("." + bare):
            return True
    return False


@dataclass(frozen=True, slots=True)
class _Context:
    tool_repr: str
    outbound_tool: bool
    call_hosts: tuple[str, ...]  # destinations named by whole-URL arguments of the call


# Severity by (where the secret is, what it is). See the module docstring for the reasoning.
#                      private key      cloud            service          credential       generic
_SEVERITY: dict[str, tuple[Severity, ...]] = {
    "outbound": (Severity.HIGH, Severity.HIGH, Severity.HIGH, Severity.MEDIUM, Severity.LOW),
    "credential_use": (Severity.MEDIUM, Severity.LOW, Severity.LOW, Severity.LOW, Severity.INFO),
    "local": (Severity.MEDIUM, Severity.LOW, Severity.LOW, Severity.LOW, Severity.INFO),
}
_CLASS_COLUMN = {
    SecretClass.PRIVATE_KEY: 0,
    SecretClass.CLOUD: 1,
    SecretClass.SERVICE: 2,
    SecretClass.CREDENTIAL: 3,
    SecretClass.GENERIC: 4,
}
_WHERE = {
    "outbound": "leaving the machine",
    "credential_use": "used as the tool's own credential",
    "local": "in a local argument",
}


class SecretScanner(Scanner):
    name = "secrets"
    categories = frozenset({"secrets.private_key", "secrets.token", "secrets.high_entropy"})

    def scan(self, call: ToolCall, targets: Sequence[ScanTarget], settings: ScanSettings) -> Iterable[Finding]:
        sink = FindingSink(self.name)
        context: _Context | None = None
        for target in targets:
            matches = find_secrets(target.text)
            if not matches:
                continue
            if context is None:
                context = self._context(call, targets)
            self._report(sink, target, matches, context, settings)
        return sink.findings

    @staticmethod
    def _context(call: ToolCall, targets: Sequence[ScanTarget]) -> _Context:
        hosts = []
        for target in targets:
            host = _single_url_host(target.text)
            if host is not None and len(hosts) < MAX_HOSTS:
                hosts.append(host)
        tool = call.tool if len(call.tool) <= 64 else call.tool[:61] + "..."
        return _Context(repr(tool), _is_outbound_tool(call.tool, name_words(call.tool)), tuple(hosts))

    def _report(
        self,
        sink: FindingSink,
        target: ScanTarget,
        matches: list[SecretMatch],
        context: _Context,
        settings: ScanSettings,
    ) -> None:
        by_category: dict[str, tuple[Severity, str, list[SecretMatch]]] = {}
        for match in matches:
            where = self._where(target, match, context, settings)
            row = _SEVERITY[where]
            severity = row[_CLASS_COLUMN[match.secret_class]]
            current = by_category.get(match.category)
            if current is None:
                by_category[match.category] = (severity, where, [match])
            else:
                worst, worst_where = (severity, where) if severity > current[0] else (current[0], current[1])
                by_category[match.category] = (worst, worst_where, [*current[2], match])
        for category, (severity, where, found) in by_category.items():
            shown = ", ".join(f"{m.label} {m.redacted}" for m in found[:3])
            more = f" and {len(found) - 3} more" if len(found) > 3 else ""
            sink.add(target, category, severity, f"{shown}{more} {_WHERE[where]} (tool {context.tool_repr})")

    @staticmethod
    def _where(target: ScanTarget, match: SecretMatch, context: _Context, settings: ScanSettings) -> str:
        """ "outbound", "credential_use" or "local": the row of the severity table."""
        providers = _PROVIDERS_BY_KIND.get(match.kind, ())
        url_host = _single_url_host(target.text)
        if url_host is not None:
            hosts = [url_host]
        elif target.exec_position:
            hosts = _hosts_in(target.text)
        else:
            hosts = list(context.call_hosts)
        outbound = (
            context.outbound_tool
            or (target.exec_position and _shell_sends(target))
            or (url_host is not None and bool(providers))  # a URL carrying a provider token is fetched somewhere
        )
        if not outbound:
            return "local"
        if hosts and all(host_matches(h, providers) or host_matches(h, settings.allowed_hosts) for h in hosts):
            return "credential_use"  # e.g. a GitHub token in a request to api.github.com
        words = name_words(target.path[-200:])
        credential_arg = not target.is_key and bool(
            argument_words(target.path) & CREDENTIAL_ARG_WORDS or words & {"header", "headers"}
        )
        in_link = match.kind in LINK_TOKEN_KINDS and _inside_url(target.text, match.start)
        if not providers and (credential_arg or url_host is not None or in_link):
            # A password, bearer token or JWT in an auth header or a URL's userinfo authenticates to that host:
            # that is what it is for, and we cannot tell whose it is.
            return "credential_use"
        if providers and credential_arg and not hosts:
            return "credential_use"  # the tool's own token, destination not visible (SDK-style tools)
        return "outbound"


# Kinds that, inside a link in a message, are that link's own token (reset, invite, unsubscribe, magic-login links).
LINK_TOKEN_KINDS = frozenset({"assigned_secret", "jwt"})


def _inside_url(text: str, position: int) -> bool:
    """Is `position` inside a URL written in `text` (a token in a link, as in a password-reset or invite link)?"""
    start = position
    floor = max(0, position - 2048)
    while start > floor and not text[start - 1].isspace() and text[start - 1] not in "\"'<>()[]`":
        start -= 1
    return "://" in text[start:position]


def _single_url_host(text: str) -> str | None:
    """The host when `text` is exactly one URL (no spaces), else None."""
    stripped = text.strip()
    if len(stripped) > 8192 or "://" not in stripped or len(stripped.split(maxsplit=1)) > 1:
        return None
    match = _URL_HOST.match(stripped)
    return match.group(1).lower().rstrip(".") if match else None


def _shell_sends(target: ScanTarget) -> bool:
    if target.commands:
        return any(command.program in NETWORK_PROGRAMS for command in target.commands)
    return _NETWORK_WORD.search(target.text) is not None
