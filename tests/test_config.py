"""Configuration: defaults, aegis.toml, flags on top; every bad value is a ConfigError naming file:line; never fail open."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from aegis_proxy.audit.errors import AuditError
from aegis_proxy.audit.keys import key_id
from aegis_proxy.audit.writer import SYNC_INTERVAL
from aegis_proxy.config import AegisConfig, AuditSettings, load_config, open_signing_key, prepare_data_dir
from aegis_proxy.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_POLICY = ROOT / "policies" / "default.aegis"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file(workdir: Path) -> None:
    config = load_config()
    assert config.source is None
    assert (config.listen_host, config.listen_port, config.mode) == ("127.0.0.1", 8080, "reverse")
    assert config.admin == "127.0.0.1:9464" and "admin" not in config.model_fields_set
    assert config.data_dir == workdir / ".aegis"
    assert config.audit.db == f"sqlite:///{workdir / '.aegis' / 'audit.db'}"
    assert config.audit.key == workdir / ".aegis" / "audit.key"
    assert config.policies == (SHIPPED_POLICY,)
    assert (config.approval_timeout, config.fail_mode, config.routes) == (300.0, "closed", {})
    assert config.audit.origin.startswith("aegis-proxy/") and config.replica


def test_project_policy_wins_over_the_shipped_one(workdir: Path) -> None:
    local = write(workdir / "policies" / "default.aegis", SHIPPED_POLICY.read_text())
    assert load_config().policies == (local,)


def test_aegis_toml_in_the_working_directory_is_read(workdir: Path) -> None:
    write(workdir / "aegis.toml", 'listen = "0.0.0.0:9000"\n')
    config = load_config()
    assert config.source == workdir / "aegis.toml" and config.listen_port == 9000


def test_file_paths_are_relative_to_the_file(workdir: Path) -> None:
    conf_dir = workdir / "etc"
    write(conf_dir / "p.aegis", SHIPPED_POLICY.read_text())
    path = write(
        conf_dir / "aegis.toml",
        'data_dir = "state"\npolicies = ["p.aegis"]\n[audit]\ndb = "sqlite:///logs/audit.db"\nkey = "k/audit.key"\n',
    )
    config = load_config(path)
    assert config.data_dir == conf_dir / "state"
    assert config.policies == (conf_dir / "p.aegis",)
    assert config.audit.db == f"sqlite:///{conf_dir / 'logs' / 'audit.db'}"
    assert config.audit.key == conf_dir / "k" / "audit.key"


def test_data_dir_moves_the_default_database_and_key(workdir: Path) -> None:
    config = load_config(None, {"data_dir": "var"})
    assert config.audit.db == f"sqlite:///{workdir / 'var' / 'audit.db'}"
    assert config.audit.key == workdir / "var" / "audit.key"


FILE = """
listen = "127.0.0.1:7000"
mode = "forward"
approval_timeout = 60
[routes]
openai = "https://api.openai.com"
anthropic = "https://api.anthropic.com"
[audit]
db = "postgresql+psycopg2://db.example/aegis"
origin = "proxy.example/prod"
"""


@pytest.mark.parametrize(
    ("overrides", "attribute", "expected"),
    [
        ({}, "listen", "127.0.0.1:7000"),  # file beats default
        ({"listen": "0.0.0.0:8443"}, "listen", "0.0.0.0:8443"),  # flag beats file
        ({"listen": None}, "listen", "127.0.0.1:7000"),  # a flag not given changes nothing
        ({"mode": "reverse"}, "mode", "reverse"),
        ({"approval_timeout": 5}, "approval_timeout", 5.0),
        ({}, "approval_timeout", 60.0),
        ({"audit.db": "sqlite:////var/aegis.db"}, "audit.db", "sqlite:////var/aegis.db"),
        ({}, "audit.origin", "proxy.example/prod"),
        ({"audit.origin": "other/log"}, "audit.origin", "other/log"),
        (
            {"routes": {"openai": "http://127.0.0.1:9999"}},
            "routes",
            {"openai": "http://127.0.0.1:9999", "anthropic": "https://api.anthropic.com"},
        ),  # mappings merge per key
        ({"replica": "r2"}, "replica", "r2"),
        ({"admin": "off"}, "admin", "off"),
        ({"admin": "[::1]:9465"}, "admin", "[::1]:9465"),
    ],
)
def test_flags_beat_file_beats_defaults(
    workdir: Path, overrides: dict[str, object], attribute: str, expected: object
) -> None:
    config = load_config(write(workdir / "aegis.toml", FILE), overrides)
    value: object = config
    for part in attribute.split("."):
        value = getattr(value, part)
    assert value == expected


def test_policy_flags_replace_the_files_list(workdir: Path) -> None:
    one, two = (write(workdir / f"{n}.aegis", SHIPPED_POLICY.read_text()) for n in ("one", "two"))
    path = write(workdir / "aegis.toml", 'policies = ["one.aegis"]\n')
    assert load_config(path).policies == (one,)
    assert load_config(path, {"policies": ["two.aegis"]}).policies == (two,)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ('listen = "127.0.0.1:8080"\nlisen = "x"\n', 2, "lisen: Extra inputs are not permitted"),
        ('listen = "localhost"\n', 1, "is not HOST:PORT"),
        ('admin = "on"\n', 1, "admin: 'on' is not HOST:PORT"),
        ('admin = "127.0.0.1:0"\n', 1, "outside 1-65535"),
        ('listen = "127.0.0.1:70000"\n', 1, "outside 1-65535"),
        ("listen = 8080\n", 1, "listen: Input should be a valid string"),
        ('mode = "sideways"\n', 1, "mode: Input should be 'reverse', 'forward' or 'transparent'"),
        ('\n[routes]\nopenai = "ftp://x"\n', 3, "is not an http(s) URL"),
        ('[routes]\n"bad name" = "https://x"\n', 2, "must be NAME or mcp/NAME"),
        ('[routes]\nx = "https://user:pw@host"\n', 2, "credentials"),
        ('[routes]\nx = "https://host:99999"\n', 2, "route x"),
        ("approval_timeout = -1\n", 1, "approval_timeout: Input should be greater than 0"),
        ("approval_timeout = true\n", 1, "approval_timeout"),
        ('approval_timeout = "30"\n', 1, "approval_timeout"),
        ('policies = ["missing.aegis"]\n', 0, "policy file(s) not found"),
        ("policies = []\n", 1, "at least one policy file"),
        ('[audit]\ndb = "audit.db"\n', 2, "must be an SQLAlchemy URL"),
        ('[audit]\norigin = "has space"\n', 2, "printable ASCII"),
        ('[audit]\nkye = "x"\n', 2, "audit.kye: Extra inputs are not permitted"),
        ("[audit]\ncheckpoint_records = 0\n", 2, "checkpoint_records"),
        ('audit.db = "nope"\n', 1, "must be an SQLAlchemy URL"),
        ('replica = "a\\u0007b"\n', 1, "replica"),
        ("listen = \n", 1, "invalid TOML"),
        ('[audit]\ndb = "x://"\n[audit]\n', 3, "invalid TOML"),
    ],
)
def test_bad_values_name_file_and_line(workdir: Path, text: str, line: int, fragment: str) -> None:
    path = write(workdir / "aegis.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = caught.value.message
    assert fragment in message, message
    assert message.startswith(f"{path}:{line}:" if line else f"{path}"), message
    assert caught.value.hint


@pytest.mark.parametrize(
    ("source", "value"), [("file", "open"), ("file", "OPEN"), ("flag", "open"), ("file", "fail-open"), ("file", 1)]
)
def test_fail_open_is_refused_with_an_explanation(workdir: Path, source: str, value: object) -> None:
    shown = f'"{value}"' if isinstance(value, str) else str(value)
    path = write(workdir / "aegis.toml", f"fail_mode = {shown}\n" if source == "file" else "")
    overrides = {"fail_mode": value} if source == "flag" else {}
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    assert "nothing in aegis-proxy fails open" in caught.value.message
    assert "only fails closed" in caught.value.hint
    if source == "file":
        assert caught.value.message.startswith(f"{path}:1:")


def test_fail_mode_closed_is_accepted(workdir: Path) -> None:
    assert load_config(write(workdir / "aegis.toml", 'fail_mode = "closed"\n')).fail_mode == "closed"


@pytest.mark.parametrize("problem", ["missing", "directory", "not utf-8", "too large"])
def test_unreadable_files(workdir: Path, problem: str) -> None:
    path = workdir / "aegis.toml"
    if problem == "directory":
        path.mkdir()
    elif problem == "not utf-8":
        path.write_bytes(b"listen = '\xff'\n")
    elif problem == "too large":
        path.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigError):
        load_config(path)


def test_example_file_loads_and_documents_every_key(workdir: Path) -> None:
    example = ROOT / "aegis.example.toml"
    config = load_config(example)
    assert isinstance(config, AegisConfig)
    text = example.read_text()
    for name in AegisConfig.model_fields:
        if name != "source":
            assert f"{name} =" in text or f"[{name}]" in text, f"aegis.example.toml does not document {name}"
    for name in AuditSettings.model_fields:
        assert f"{name} =" in text, f"aegis.example.toml does not document audit.{name}"


def test_signing_key_is_generated_owner_only_then_reused(workdir: Path) -> None:
    config = load_config()
    prepare_data_dir(config)
    first = open_signing_key(config)
    mode = stat.S_IMODE(os.stat(config.audit.key).st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(config.data_dir).st_mode) == 0o700
    assert key_id(open_signing_key(config).public_key()) == key_id(first.public_key())


def test_a_readable_key_is_refused(workdir: Path) -> None:
    config = load_config()
    open_signing_key(config)
    os.chmod(config.audit.key, 0o644)
    with pytest.raises(AuditError, match="others can read it"):
        open_signing_key(config)


def test_missing_config_file_is_an_error(workdir: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(workdir / "nope.toml")


def test_config_is_frozen(workdir: Path) -> None:
    config = load_config()
    with pytest.raises(ValueError):
        config.listen = "0.0.0.0:1"  # type: ignore[misc]


def test_audit_commands_take_db_and_origin_from_the_config(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aegis_proxy.audit.store import AppendEntry, AuditStore
    from aegis_proxy.cli import main

    write(workdir / "aegis.toml", '[audit]\ndb = "sqlite:///logs/a.db"\norigin = "cfg.example/log"\n')
    config = load_config()
    prepare_data_dir(config)
    store = AuditStore(config.audit.db, origin="cfg.example/log", signer_key=open_signing_key(config), replica="r")
    store.append([AppendEntry(type="decision", decision="deny", tool="wipe_disk", arguments={})])
    store.close()
    assert main(["audit", "list"]) == 0
    assert "wipe_disk" in capsys.readouterr().out
    assert main(["audit", "list", "--origin", "someone.else/log"]) == 2  # a flag beats the file
    assert "someone.else/log" in capsys.readouterr().err


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_audit_sync_mode(tmp_path: Path, sync: str) -> None:
    config = load_config(None, {"data_dir": str(tmp_path), "audit.sync": sync})
    assert config.audit.sync == sync


def test_audit_sync_interval_defaults_to_the_writers_and_is_bounded(tmp_path: Path) -> None:
    assert load_config(None, {"data_dir": str(tmp_path)}).audit.sync_interval == SYNC_INTERVAL
    assert load_config(None, {"data_dir": str(tmp_path), "audit.sync_interval": 1.5}).audit.sync_interval == 1.5
    for bad in (0, -1.0, 61.0):
        with pytest.raises(ConfigError, match="sync_interval"):
            load_config(None, {"data_dir": str(tmp_path), "audit.sync_interval": bad})


def test_audit_sync_mode_unknown_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sync"):
        load_config(None, {"data_dir": str(tmp_path), "audit.sync": "off"})
