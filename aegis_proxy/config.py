"""`aegis.toml`: the proxy's configuration. Command-line flags beat the file, the file beats the defaults.

`load_config(path, overrides)` reads the TOML file (or `./aegis.toml` when it exists, or nothing), applies the flags
(dotted keys: `{"audit.db": URL}`; mappings merge per key, lists replace, None means "flag not given") and validates
the result strictly: unknown keys, wrong types and unusable values are ConfigErrors naming `file:line` and the key.

Relative paths in the file are relative to the file's folder; relative paths from flags or defaults are relative to
the working directory. Everything is absolute after loading. `fail_mode` exists only to be refused when it is not
"closed": aegis-proxy never lets a call through because something failed.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from aegis_proxy.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DEFAULT_CONFIG_FILE = "aegis.toml"
DEFAULT_DATA_DIR = ".aegis"
DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_ADMIN = "127.0.0.1:9464"  # /healthz, /readyz, /metrics (aegis_proxy.admin); "off" disables it
PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAX_CONFIG_BYTES = 1 << 20

_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_ORIGIN = re.compile(r"^[\x21-\x7e]{1,256}$")  # the audit record schema's origin: printable ASCII, no spaces
_LABEL = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")
_ROUTE_HINT = 'write a route as NAME = URL, e.g. openai = "https://api.openai.com" or "mcp/files" = URL'
_FAIL_OPEN_HINT = (
    "aegis-proxy only fails closed: when a check, the policy or the audit log fails, the call is denied. "
    'Remove fail_mode or set fail_mode = "closed"; if calls are denied because something is down, fix that.'
)


def default_policy() -> Path:
    """./policies/default.aegis when the project has its own, else the shipped one."""
    local = Path("policies") / "default.aegis"
    return (local if local.is_file() else PROJECT_ROOT / "policies" / "default.aegis").resolve()


def default_replica() -> str:
    name = socket.gethostname() or "aegis"
    return re.sub(r"[^\x21-\x7e]", "-", name)[:256]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class AuditSettings(_Strict):
    db: str = Field(min_length=1)  # SQLAlchemy URL
    key: Path  # Ed25519 signing key file (generated 0600 on first run)
    origin: str  # the log's identity; replicas writing one chain share it
    trusted_keys: Path | None = None  # verifiers' trusted-keys file (aegis audit verify)
    checkpoint_records: int = Field(default=1000, ge=1)
    checkpoint_seconds: float = Field(default=60.0, gt=0)
    # "full": each record is fsync'd before the call proceeds (survives power loss); "normal": survives a crash of
    # the proxy at once and power loss within sync_interval, and takes the fsync off the request path (see
    # docs/proxy.md, Latency).
    sync: Literal["full", "normal"] = "full"
    # With "normal" on SQLite: the WAL is fsync'd at most this many seconds after a commit, which bounds what a power
    # loss can take (docs/proxy.md, Latency).
    sync_interval: float = Field(default=0.2, gt=0, le=60)

    @field_validator("db")
    @classmethod
    def _url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError("must be an SQLAlchemy URL such as sqlite:///audit.db or postgresql+psycopg2://host/db")
        return value

    @field_validator("origin")
    @classmethod
    def _origin(cls, value: str) -> str:
        if not _ORIGIN.match(value):
            raise ValueError("must be 1-256 printable ASCII characters without spaces, e.g. proxy.example/prod")
        return value


class ProbeConfig(_Strict):
    """The hidden-state probe (the `probe` extra). Off by default: it needs torch and costs milliseconds per call."""

    backbone: str = Field(default="off", min_length=1)  # "off", "minilm", "smollm2", or a local HF model directory
    heads_dir: Path | None = None  # default: the trained heads shipped in probes/<backbone>/
    timeout: float = Field(default=0.25, gt=0, le=10)  # seconds a call waits for its scores; then they are unknown
    # The backbone's matrix products (probes/README.md, Precision): auto = the fastest this machine runs well that
    # the heads' cards validate; an explicit one the machine or the cards refuse switches the probe off (unknown).
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"


class AegisConfig(_Strict):
    source: Path | None = None  # the file this came from; None for defaults and flags only
    data_dir: Path
    listen: str = DEFAULT_LISTEN
    admin: str = DEFAULT_ADMIN
    mode: Literal["reverse", "forward", "transparent"] = "reverse"
    routes: dict[str, str] = Field(default_factory=dict)
    policies: tuple[Path, ...]
    audit: AuditSettings
    replica: str
    approval_timeout: float = Field(default=300.0, gt=0, le=7 * 24 * 3600)
    approval_grace: float = Field(default=600.0, gt=0, le=7 * 24 * 3600)
    policy_reload_interval: float = Field(default=1.0, gt=0, le=3600)
    fail_mode: Literal["closed"] = "closed"
    probe: ProbeConfig = Field(default_factory=ProbeConfig)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        _split_listen(value)
        return value

    @field_validator("admin")
    @classmethod
    def _admin(cls, value: str) -> str:
        if value != "off":
            _split_listen(value)
        return value

    @field_validator("routes")
    @classmethod
    def _routes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, url in value.items():
            problem = route_problem(name, url)
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("policies")
    @classmethod
    def _policies(cls, value: tuple[Path, ...], info: ValidationInfo) -> tuple[Path, ...]:
        if not value:
            raise ValueError("give at least one policy file (the shipped one is policies/default.aegis)")
        missing = [str(path) for path in value if not path.is_file()]
        if missing and (info.context or {}).get("check_files", True):
            raise ValueError(f"policy file(s) not found: {', '.join(missing)}")
        return value

    @field_validator("replica")
    @classmethod
    def _replica(cls, value: str) -> str:
        if not _LABEL.match(value):
            raise ValueError("must be 1-256 characters without control characters")
        return value

    @property
    def listen_host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return _split_listen(self.listen)[1]


def route_problem(name: str, url: str) -> str:
    """Why NAME=URL is not a usable route ("" when it is). The same rules as the proxy's route table."""
    if not _ROUTE_NAME.match(name):
        return f"route name {name!r} must be NAME or mcp/NAME (letters, digits, . _ -)"
    if not isinstance(url, str):
        return f"route {name}: the URL must be a string"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"route {name}: {url!r} is not an http(s) URL"
    if parts.query or parts.fragment or parts.username or parts.password:
        return f"route {name}: the URL may not carry a query, fragment or credentials"
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as error:
        return f"route {name}: {error}"
    return ""


def _split_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1]:8080
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT, e.g. 127.0.0.1:8080")
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port {number} is outside 1-65535")
    return host, number


# -- loading ----------------------------------------------------------------------------------------------------------

_EXPLAIN_FAIL_MODE = ("fail_mode",)


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    check_files: bool = True,
) -> AegisConfig:
    """The configuration: defaults, then the file (given, else ./aegis.toml if present), then `overrides` (flags).
    `check_files=False` skips checking that the policy files exist (commands that only read the audit settings)."""
    file_path: Path | None
    if path is not None:
        file_path = Path(path)
        if not file_path.is_file():
            raise ConfigError(f"config file {path} not found", hint="give an existing .toml file, or omit --config")
    else:
        file_path = Path(DEFAULT_CONFIG_FILE) if Path(DEFAULT_CONFIG_FILE).is_file() else None
    text, data = ("", {}) if file_path is None else _read_toml(file_path)
    base = file_path.resolve().parent if file_path is not None else Path.cwd()
    if file_path is not None:
        data = _resolve_paths(data, base)
    merged = _merge(data, _unflatten(overrides or {}))
    merged = _resolve_paths(merged, Path.cwd())  # flags' relative paths (the file's are absolute by now)
    _refuse_fail_open(merged, text, file_path)
    return _build(merged, text, file_path, check_files)


def _read_toml(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}", hint="check the path") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than 1 MiB", hint="a config is a page of settings")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text", hint="save it as UTF-8") from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        match = re.search(r"\(at line (\d+), column (\d+)\)", str(error))
        where = f"{path}:{match.group(1)}:{match.group(2)}" if match else str(path)
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(error))
        raise ConfigError(f"{where}: invalid TOML: {reason}", hint="see aegis.example.toml for the syntax") from None


def _unflatten(overrides: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in overrides.items():
        if value is None:
            continue  # an argparse flag that was not given
        parts = dotted.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = list(value) if isinstance(value, tuple) else value
    return nested


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _resolve_paths(data: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """Make the path-valued keys absolute against `base` (strings only; other types fail validation later)."""
    out = dict(data)

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value:
            candidate = Path(value).expanduser()
            return str(candidate if candidate.is_absolute() else base / candidate)
        return value

    if "data_dir" in out:
        out["data_dir"] = fix(out["data_dir"])
    if isinstance(out.get("policies"), list):
        out["policies"] = [fix(item) for item in out["policies"]]
    if isinstance(out.get("audit"), Mapping):
        audit = dict(out["audit"])
        for key in ("key", "trusted_keys"):
            if key in audit:
                audit[key] = fix(audit[key])
        db = audit.get("db")
        if isinstance(db, str) and db.startswith("sqlite:///") and not db.startswith("sqlite:////"):
            rest = db[len("sqlite:///") :]
            if rest and not rest.startswith(":memory:") and not Path(rest).is_absolute():
                audit["db"] = "sqlite:///" + str(base / rest)
        out["audit"] = audit
    if isinstance(out.get("probe"), Mapping) and "heads_dir" in out["probe"]:
        out["probe"] = {**out["probe"], "heads_dir": fix(out["probe"]["heads_dir"])}
    return out


def _refuse_fail_open(data: Mapping[str, Any], text: str, file_path: Path | None) -> None:
    mode = data.get("fail_mode", "closed")
    if mode != "closed":
        where = _locate(text, file_path, _EXPLAIN_FAIL_MODE)
        raise ConfigError(
            f"{where}fail_mode = {mode!r} is refused: nothing in aegis-proxy fails open", hint=_FAIL_OPEN_HINT
        )


def _build(data: dict[str, Any], text: str, file_path: Path | None, check_files: bool) -> AegisConfig:
    values = dict(data)
    values.setdefault("data_dir", str(Path.cwd() / DEFAULT_DATA_DIR))
    # Defaults under the data dir; a data_dir of the wrong type fails validation below, the defaults then use ./.aegis.
    data_dir = Path(values["data_dir"]) if isinstance(values["data_dir"], str) else Path.cwd() / DEFAULT_DATA_DIR
    audit = values.setdefault("audit", {})
    if isinstance(audit, Mapping):
        audit = dict(audit)
        audit.setdefault("db", f"sqlite:///{data_dir / 'audit.db'}")
        audit.setdefault("key", str(data_dir / "audit.key"))
        audit.setdefault("origin", f"aegis-proxy/{default_replica()}")
        values["audit"] = audit
    values.setdefault("policies", [str(default_policy())])
    values.setdefault("replica", default_replica())
    values["source"] = None if file_path is None else str(file_path.resolve())
    routes = values.get("routes")
    if isinstance(routes, Mapping):  # checked here first, so the error names the route's own line
        for name, url in routes.items():
            problem = route_problem(str(name), url)
            if problem:
                where = _locate(text, file_path, ("routes", str(name)))
                raise ConfigError(f"{where}routes.{name}: {problem}", hint=_ROUTE_HINT)
    try:
        return AegisConfig.model_validate(_typed(values), context={"check_files": check_files})
    except ValidationError as error:
        problem = error.errors()[0]
        loc = tuple(str(part) for part in problem["loc"])
        key = ".".join(loc) or "config"
        where = _locate(text, file_path, loc)
        message = problem["msg"].removeprefix("Value error, ")
        got = problem.get("input")
        plain = problem["type"] in ("missing", "extra_forbidden") or isinstance(got, dict | list | tuple)
        shown = "" if plain else f" (got {got!r:.80})"
        if problem["type"] == "extra_forbidden":
            hint = f"{key} is not a setting; aegis.example.toml documents every key"
        else:
            hint = "aegis.example.toml documents every key and its allowed values"
        more = len(error.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ConfigError(f"{where}{key}: {message}{shown}{suffix}", hint=hint) from None


def _typed(values: dict[str, Any]) -> dict[str, Any]:
    """Strings where the model wants Paths (strict mode accepts no str for Path); other types are left to fail."""
    out = dict(values)

    def as_path(value: Any) -> Any:
        return Path(value) if isinstance(value, str) else value

    out["data_dir"] = as_path(out.get("data_dir"))
    if out.get("source") is not None:
        out["source"] = as_path(out["source"])
    if isinstance(out.get("policies"), list):
        out["policies"] = tuple(as_path(item) for item in out["policies"])
    if isinstance(out.get("audit"), Mapping):
        audit = dict(out["audit"])
        for key in ("key", "trusted_keys"):
            if key in audit:
                audit[key] = as_path(audit[key])
        for key in ("checkpoint_seconds",):
            if isinstance(audit.get(key), int) and not isinstance(audit.get(key), bool):
                audit[key] = float(audit[key])
        out["audit"] = audit
    if isinstance(out.get("probe"), Mapping):
        probe = dict(out["probe"])
        if "heads_dir" in probe:
            probe["heads_dir"] = as_path(probe["heads_dir"])
        if isinstance(probe.get("timeout"), int) and not isinstance(probe.get("timeout"), bool):
            probe["timeout"] = float(probe["timeout"])
        out["probe"] = probe
    for key in ("approval_timeout", "approval_grace", "policy_reload_interval"):
        if isinstance(out.get(key), int) and not isinstance(out.get(key), bool):
            out[key] = float(out[key])  # `approval_timeout = 30` is a number of seconds, not a type error
    return out


_KEY_PART = r"""(?:"(?:[^"\\]|\\.)*"|'[^']*'|[A-Za-z0-9_\-]+)"""
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER = re.compile(rf"^\[\s*({_DOTTED})\s*\]\s*(?:#.*)?$")
_ASSIGN = re.compile(rf"^({_DOTTED})\s*=")


def _key_parts(dotted: str) -> tuple[str, ...]:
    return tuple(part.strip('"').strip("'") for part in re.findall(_KEY_PART, dotted))


def _locate(text: str, file_path: Path | None, loc: tuple[str, ...]) -> str:
    """`file:line: ` of the key `loc` in the TOML text, as far as a line scan can tell; `file: ` when not found."""
    if file_path is None:
        return ""
    table: tuple[str, ...] = ()
    fallback = ""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = _HEADER.match(stripped)
        if header:
            table = _key_parts(header.group(1))
            if loc[: len(table)] == table and not fallback:
                fallback = f"{file_path}:{number}: "  # the table holding a key that is missing or defaulted
            continue
        assign = _ASSIGN.match(stripped)
        if not assign:
            continue
        full = table + _key_parts(assign.group(1))
        if loc and (full == loc or (len(full) < len(loc) and full == loc[: len(full)])):
            return f"{file_path}:{number}: "
    return fallback or f"{file_path}: "


# -- what the settings open -------------------------------------------------------------------------------------------


def open_signing_key(config: AegisConfig) -> Ed25519PrivateKey:
    """The audit signing key: generated (0600, in a 0700 data dir) on first run; a looser key file is refused."""
    from aegis_proxy.audit.keys import generate_key, load_key

    path = config.audit.key
    if not path.exists() and not path.is_symlink():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return generate_key(path)
    return load_key(path)


def prepare_data_dir(config: AegisConfig) -> None:
    """Create the data directory (0700) if the default SQLite database lives in it."""
    db = config.audit.db
    if db.startswith("sqlite:///"):
        Path(db[len("sqlite:///") :]).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
