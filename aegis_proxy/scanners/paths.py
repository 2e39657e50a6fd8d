"""Path risk scanner: secrets on disk, traversal, and writes where an agent should not write.

Which strings are paths: a whole argument value that is a path (by argument name, or by shape: one token with a `/`,
`~`, drive letter, ...), the operands and redirect targets of parsed shell commands, path-like tokens of executed code,
and `file://` and `..`-carrying URLs that a fetching tool will open. Prose is not scanned: an email that mentions "the
.env file" names no file to open.

How risky: each path is normalised (`~`, `$HOME`, `%USERPROFILE%`, `\\`, `/proc/self/root`, filter-bypass dot runs) and
looked up in SENSITIVE_PATHS, a first-match table of globs with a severity for reading and one for writing. Whether a
path is read or written comes from the tool and argument names, or from the command (`>`, `cp`'s last operand, `rm`);
a key passed to `ssh -i` or a `.env` given to `source`/`--env-file` is used, not read out. Commands in a script that
is only written down (not run by this call) count one level lower, and their system writes only LOW.

Matching is plain string work against an index of the table (no regular expression per path), because it runs on
every path-shaped argument of every call.
"""

from __future__ import annotations

import enum
import posixpath
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import ClassVar, NamedTuple

from aegis_proxy.models import Finding, Severity, ToolCall
from aegis_proxy.netaddr import find_urls, glob_match, parse_url
from aegis_proxy.scanners.base import FindingSink, Scanner, ScanSettings, ScanTarget
from aegis_proxy.scanners.vocabulary import (
    FETCH_WORDS,
    FILE_CHANGE_VERBS,
    FILE_WRITE_VERBS,
    argument_words,
    name_words,
)
from aegis_proxy.shell import ShellCommand

HIGH, MEDIUM, LOW = Severity.HIGH, Severity.MEDIUM, Severity.LOW

MAX_PATH_CHARS = 4096  # PATH_MAX; a longer string is not a path anyone opens
MAX_PATH_PARTS = 24  # components matched against the table (its rules look at most ~8 deep)
MAX_TOKENS_PER_TEXT = 512  # path-like tokens checked in one executed text (bounds the work on hostile input)
MAX_FINDINGS = 64  # per call: enough to explain a decision, bounded for hostile input
MAX_CACHED_COMMAND_CHARS = 1024  # commands up to this much argv and redirect text have their path uses remembered


class Access(enum.Enum):
    READ = "reads"
    WRITE = "writes"
    META = "lists"  # ls, stat, find: names, not contents
    MODE = "changes permissions of"  # chmod, chown
    NAME = "names"  # git add/rm/diff, checksums: the file is named or hashed, its contents are not shown here
    USE = "uses"  # a key handed to ssh/curl as an identity: used, not disclosed
    REMOTE = "requests"  # a URL path: the file is on someone else's server


class Reach(enum.IntEnum):
    """How directly this call touches a path."""

    # A command in a script that is only written down or sent, not run by this call: one level lower, and writes
    # to system dirs only LOW, because installers and Dockerfiles do exactly that.
    SCRIPT = 1
    DIRECT = 2  # an argument the tool opens, or a command it runs


# --- Knowledge tables -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SensitivePath:
    """A glob over a normalised, lower-case path and what reading or writing it means.

    Glob syntax: `*` and `?` within one component, `**` any number of components, `{a,b}` alternatives,
    a leading `/` anchors at the root, `~/` at any home directory (the user's, `/root`, `/home/*`, `/Users/*`,
    `C:/Users/*`). `dir/**` matches the directory itself and everything under it. `None`: not a finding.
    """

    glob: str
    label: str
    read: Severity | None
    write: Severity | None


_S = SensitivePath

# First match wins, so the benign look-alikes come before the broad rules that would catch them.
SENSITIVE_PATHS: tuple[SensitivePath, ...] = (
    # Benign look-alikes.
    _S("**/.env.{example,sample,template,dist,defaults,schema,tmpl,test.example}", "example .env file", None, None),
    _S("**/.ssh/*.pub", "SSH public key", None, MEDIUM),
    _S("/etc/ssh/*.pub", "SSH host public key", None, None),
    _S("**/*{pub,public,cert,chain,bundle,cacert,fullchain}*.pem", "certificate", None, None),
    _S("**/{ca,cacert,ca-bundle,ca-certificates}.pem", "CA certificate", None, None),
    # SSH.
    _S("**/.ssh/known_hosts*", "SSH known_hosts", LOW, MEDIUM),
    _S("**/.ssh/authorized_keys*", "SSH authorized_keys", LOW, HIGH),
    _S("**/.ssh/{config,rc,environment}", "SSH client configuration", LOW, HIGH),
    _S("**/.ssh/id_*", "SSH private key", HIGH, HIGH),
    _S("**/{id_rsa,id_dsa,id_ecdsa,id_ed25519,id_ecdsa_sk,id_ed25519_sk}", "SSH private key", HIGH, MEDIUM),
    _S("/etc/ssh/ssh_host_*_key", "SSH host private key", HIGH, HIGH),
    _S("**/*.ppk", "PuTTY private key", HIGH, LOW),
    _S("**/.ssh/**", "SSH directory", MEDIUM, HIGH),
    # Cloud and cluster credentials.
    _S("**/.aws/**", "AWS credentials and config", HIGH, HIGH),
    _S("**/.config/gcloud/**", "Google Cloud credentials", HIGH, HIGH),
    _S("**/application_default_credentials.json", "Google Cloud credentials", HIGH, HIGH),
    _S("**/.azure/**", "Azure CLI credentials", HIGH, HIGH),
    _S("**/.kube/config", "Kubernetes kubeconfig", HIGH, HIGH),
    _S("**/.kube/**", "Kubernetes client directory", MEDIUM, MEDIUM),
    _S(
        "/etc/kubernetes/{admin,super-admin,kubelet,controller-manager,scheduler}.conf",
        "Kubernetes kubeconfig",
        HIGH,
        HIGH,
    ),
    _S("/etc/kubernetes/pki/**", "Kubernetes PKI keys", HIGH, HIGH),
    _S("**/run/secrets/**", "container secrets mount (service account token)", HIGH, HIGH),
    _S("**/.docker/config.json", "Docker registry credentials", HIGH, HIGH),
    _S("**/{.oci,.config/doctl,.config/rclone}/**", "cloud CLI credentials", HIGH, HIGH),
    _S("**/{.boto,.s3cfg,.vault-token,.databrickscfg}", "cloud CLI credentials", HIGH, HIGH),
    _S("**/.config/gh/hosts.yml", "GitHub CLI token", HIGH, HIGH),
    _S("**/.config/hub", "GitHub hub token", HIGH, HIGH),
    _S("**/.terraform.d/credentials.tfrc.json", "Terraform Cloud token", HIGH, HIGH),
    _S("**/*.tfstate{,.backup}", "Terraform state (holds secrets)", HIGH, HIGH),
    _S("**/*.tfvars", "Terraform variables", MEDIUM, None),
    # .env files: reading discloses secrets; writing one is everyday project setup (`cp .env.example .env`).
    _S("**/.env", ".env file", HIGH, LOW),
    _S("**/.env.*", ".env file", HIGH, LOW),
    _S("**/.envrc", "direnv file (runs on cd)", MEDIUM, MEDIUM),
    # System accounts and keys.
    _S("/etc/{shadow,gshadow,shadow-,gshadow-,master.passwd,security/opasswd}", "password hashes", HIGH, HIGH),
    _S("/etc/{sudoers,sudoers.d/**}", "sudoers", HIGH, HIGH),
    _S("/etc/passwd", "/etc/passwd", MEDIUM, HIGH),
    _S("/etc/ssl/private/**", "TLS private keys", HIGH, HIGH),
    _S("**/*.keytab", "Kerberos keytab", HIGH, HIGH),
    _S("/proc/*/environ", "process environment (secrets)", HIGH, HIGH),
    _S("/proc/*/{mem,task/*/environ}", "process memory", HIGH, HIGH),
    _S("/proc/kcore", "kernel memory", HIGH, HIGH),
    _S("/dev/{mem,kmem,port}", "physical memory", HIGH, HIGH),
    _S("**/docker.sock", "Docker socket (root on the host)", MEDIUM, HIGH),
    _S("**/windows/system32/config/{sam,system,security}", "Windows account hives", HIGH, HIGH),
    _S("**/ntds.dit", "Active Directory database", HIGH, HIGH),
    _S("~/appdata/{roaming,local}/microsoft/{credentials,protect,vault}/**", "Windows credential store", HIGH, HIGH),
    # Browsers: saved passwords, cookies, and the key that decrypts them.
    _S(
        "**/{google-chrome,google-chrome-beta,chromium,chrome,bravesoftware,edge,microsoft-edge,opera,"
        "opera software,vivaldi,yandexbrowser}/**/{login data,login data for account,cookies,web data,local state}",
        "browser passwords/cookies",
        HIGH,
        HIGH,
    ),
    _S(
        "**/{.mozilla,firefox,thunderbird,.thunderbird}/**/{logins.json,cookies.sqlite,signons.sqlite}",
        "browser passwords/cookies",
        HIGH,
        HIGH,
    ),
    _S("**/{key4.db,key3.db}", "Firefox key database", HIGH, HIGH),
    _S("**/library/cookies/**", "Safari cookies", HIGH, HIGH),
    _S("**/*.binarycookies", "Safari cookies", HIGH, HIGH),
    # Password stores and keyrings.
    _S("**/.password-store/**", "pass password store", HIGH, HIGH),
    _S("**/*.{kdbx,kdb}", "KeePass database", HIGH, HIGH),
    _S("{~/.config/1password,**/library/group containers/*.com.1password}/**", "1Password data", HIGH, HIGH),
    _S("**/library/keychains/**", "macOS keychain", HIGH, HIGH),
    _S("**/*.{keychain,keychain-db}", "macOS keychain", HIGH, HIGH),
    _S("**/.local/share/keyrings/**", "GNOME keyring", HIGH, HIGH),
    _S("**/.gnupg/{private-keys-v1.d/**,secring.gpg}", "GPG private keys", HIGH, HIGH),
    _S("**/.gnupg/**", "GnuPG directory", MEDIUM, MEDIUM),
    # Credential files of tools.
    _S("**/{.netrc,_netrc,.pgpass,.git-credentials,.config/git/credentials}", "stored credentials", HIGH, HIGH),
    _S("~/{.npmrc,.pypirc,.yarnrc.yml}", "package registry token", HIGH, HIGH),
    _S("**/{.npmrc,.pypirc}", "package registry config (may hold a token)", MEDIUM, MEDIUM),
    _S("**/{.gem/credentials,.cargo/credentials,.cargo/credentials.toml}", "package registry token", HIGH, HIGH),
    _S("**/{.my.cnf,.m2/settings.xml,.gradle/gradle.properties}", "tool config with passwords", MEDIUM, MEDIUM),
    _S(
        "~/.{bash,zsh,sh,python,psql,mysql,node_repl,sqlite,rediscli}_history",
        "shell history (often holds secrets)",
        MEDIUM,
        None,
    ),
    # Private keys by file type. Writing one (a test fixture, a generated dev cert) discloses nothing.
    _S("**/*{priv,key}*.pem", "private key", HIGH, LOW),
    _S("**/*.key", "private key", HIGH, LOW),
    _S("**/*.{p12,pfx}", "PKCS#12 key bundle", HIGH, LOW),
    _S("**/*.pem", "PEM file (may be a private key)", MEDIUM, None),
    _S("**/*.{jks,keystore,ovpn}", "keystore", MEDIUM, None),
    # Files that run code later: writing them is persistence or self-escalation; reading them is harmless.
    _S(
        "~/.{bashrc,bash_profile,bash_login,profile,zshrc,zprofile,zshenv,zlogin,cshrc,tcshrc,kshrc,xprofile,"
        "xsessionrc,xinitrc,pam_environment,config/fish/config.fish}",
        "shell startup file",
        None,
        MEDIUM,  # `export PATH=...` in ~/.bashrc is routine setup; the shell scanner judges what is written
    ),
    _S("~/{.config/autostart,.config/systemd/user,library/launchagents}/**", "login autostart entry", None, HIGH),
    _S("**/.git/{hooks/**,config}", "git hook or config (runs commands)", None, MEDIUM),
    _S("~/.gitconfig", "git global config (can run commands)", None, MEDIUM),
    _S(
        "**/{.vscode/settings.json,.vscode/tasks.json,.claude/settings.json,.claude/settings.local.json,"
        ".cursor/mcp.json,.mcp.json}",
        "agent/editor configuration (tool auto-approval, commands)",
        None,
        MEDIUM,
    ),
)

# Writes under these are `paths.system_write` whatever the workspace says (lower case, first components).
SYSTEM_WRITE_DIRS: tuple[tuple[str, ...], ...] = (
    ("etc",),
    ("usr",),
    ("bin",),
    ("sbin",),
    ("boot",),
    ("lib",),
    ("lib32",),
    ("lib64",),
    ("libx32",),
    ("root",),
    ("sys",),
    ("proc",),
    ("dev",),
    ("var", "spool", "cron"),
    ("var", "spool", "anacron"),
    ("system",),
    ("library", "launchdaemons"),
    ("library", "launchagents"),
    ("library", "startupitems"),
)
_SYSTEM_FIRST_PARTS = frozenset(prefix[0] for prefix in SYSTEM_WRITE_DIRS)
WINDOWS_SYSTEM_DIRS = frozenset({"windows", "program files", "program files (x86)"})

# Writable everywhere: scratch space and the pseudo-devices every shell redirect uses (`2>/dev/null`).
SCRATCH_PATHS: tuple[str, ...] = ("/tmp", "/var/tmp", "/private/tmp", "/private/var/folders", "/dev/shm")
HARMLESS_DEVICES = frozenset(
    {"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/stdin", "/dev/tty", "/dev/zero", "/dev/random", "/dev/urandom"}
)
HARMLESS_DEVICE_DIRS = ("/dev/fd/", "/dev/pts/", "/dev/tcp/", "/dev/udp/", "/proc/self/fd/")

# `....//` survives a filter that deletes `../` once; `..;/` is a path parameter to Tomcat/Spring; overlong UTF-8.
TRAVERSAL_BYPASS_MARKERS: tuple[tuple[str, str], ...] = (
    ("....//", "....//"),
    ("....\\", "....\\"),
    ("..;/", "..;/"),
    ("..;\\", "..;\\"),
    ("..\\/", "..\\/"),
    (".../", ".../"),
    ("..\u2215", "division-slash traversal"),
    ("..\u2044", "fraction-slash traversal"),
    ("%c0%af", "overlong UTF-8 slash"),
    ("%c0%ae", "overlong UTF-8 dot"),
    ("%e0%80%ae", "overlong UTF-8 dot"),
    ("%252e", "double-encoded dot"),
    ("%252f", "double-encoded slash"),
)
# Where a relative traversal that climbs two or more levels is headed if it is aiming at the system.
TRAVERSAL_TARGET_DIRS = frozenset({"etc", "proc", "sys", "dev", "root", "boot", "var", "usr", "bin", "sbin", "windows"})

# Vocabulary of tool and argument names (split into lower-case words by scanners.vocabulary).
WRITE_VERBS = FILE_WRITE_VERBS | FILE_CHANGE_VERBS
MOVE_VERBS = frozenset({"move", "rename", "mv", "delete", "remove", "rm", "unlink"})  # the source is gone after
LIST_VERBS = frozenset({"list", "ls", "tree", "glob", "stat", "exists", "info"})
READ_MODES = frozenset({"view", "read", "get", "show", "open", "cat", "list", "ls", "head", "tail"})
MODE_ARGS = frozenset({"command", "action", "mode", "operation", "op"})
PATH_ARGS = frozenset(
    {
        "path", "paths", "file", "files", "filename", "filepath", "dir", "directory", "folder", "dest",
        "destination", "dst", "src", "source", "target", "output", "outfile", "infile", "location", "cwd",
        "workdir", "uri",
    }
)  # fmt: skip
DEST_ARGS = frozenset({"dest", "destination", "dst", "target", "output", "out", "outfile", "to", "new"})
SOURCE_ARGS = frozenset({"src", "source", "from", "old", "origin", "infile"})

# Shell programs by what they do to their operands.
WRITE_PROGRAMS = frozenset(
    {"rm", "rmdir", "unlink", "shred", "truncate", "mkdir", "touch", "tee", "mkfifo", "mknod", "wipe", "srm"}
)
COPY_PROGRAMS = frozenset({"cp", "mv", "install", "ln", "rsync", "scp"})  # the last operand is written
META_PROGRAMS = frozenset(
    {
        "ls", "ll", "dir", "tree", "stat", "file", "test", "[", "[[", "du", "df", "find", "fd", "wc", "realpath",
        "readlink", "lsattr", "exa", "eza", "namei", "basename", "dirname", "getfacl", "cd", "pushd", "lsof",
    }
)  # fmt: skip
MODE_PROGRAMS = frozenset({"chmod", "chown", "chgrp", "chattr", "setfacl"})
NAME_PROGRAMS = frozenset({"git", "md5sum", "sha1sum", "sha256sum", "sha512sum", "cksum", "b2sum"})
TEXT_PROGRAMS = frozenset({"echo", "printf", "export", "alias", "set", "unset", "true", "false", ":", "logger"})
# Loading a file to use it (keys into an agent, `.env` into the environment) does not show its contents.
USE_PROGRAMS = frozenset({"ssh-add", "ssh-keygen", "ssh-copy-id", "source", "."})
USE_OPTIONS = frozenset({"--env-file", "--kubeconfig", "--identity-file", "--private-key", "--key-file"})
# Options whose value is a key or config used to authenticate, not read out.
IDENTITY_OPTIONS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "ssh": frozenset({"-i", "-F"}),
        "scp": frozenset({"-i", "-F"}),
        "sftp": frozenset({"-i", "-F"}),
        "autossh": frozenset({"-i"}),
        "curl": frozenset({"--key", "--cert", "-E", "--cacert", "--netrc-file"}),
        "ansible": frozenset({"--private-key", "--key-file"}),
        "ansible-playbook": frozenset({"--private-key", "--key-file"}),
        "kubectl": frozenset({"--kubeconfig"}),
        "helm": frozenset({"--kubeconfig"}),
        "git": frozenset({"--ssh-key"}),
    }
)
# Options whose value is a pattern or expression, not a file.
PATTERN_OPTIONS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "find": frozenset({"-name", "-iname", "-path", "-ipath", "-regex", "-iregex", "-wholename", "-lname", "-type"}),
        "grep": frozenset({"-e", "--regexp", "-f", "--file"}),
        "egrep": frozenset({"-e", "--regexp"}),
        "fgrep": frozenset({"-e", "--regexp"}),
        "rg": frozenset({"-e", "--regexp", "-g", "--glob", "-t", "--type"}),
        "sed": frozenset({"-e", "--expression", "-f", "--file"}),
        "awk": frozenset({"-f", "-v"}),
        "fd": frozenset({"-e", "--extension", "-g", "--glob"}),
    }
)
# Programs whose first operand is a pattern or a script (unless an option above gave it).
PATTERN_FIRST_PROGRAMS = frozenset({"grep", "egrep", "fgrep", "rg", "ag", "ack", "sed", "awk", "gawk", "fd"})
# Options whose value is a file the program writes.
OUTPUT_OPTIONS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "curl": frozenset({"-o", "--output", "-c", "--cookie-jar", "-D", "--dump-header"}),
        "wget": frozenset({"-O", "--output-document", "-P", "--directory-prefix", "-o", "--output-file"}),
        "sort": frozenset({"-o", "--output"}),
        "unzip": frozenset({"-d"}),
        "tar": frozenset({"-C", "--directory"}),
        "gcc": frozenset({"-o"}),
        "cc": frozenset({"-o"}),
        "go": frozenset({"-o"}),
        "openssl": frozenset({"-out", "-keyout"}),
        "mkcert": frozenset({"-key-file", "-cert-file"}),
    }
)

# An operand holding any of these is code (`python -c ...`), not a path; quotes never appear in a parsed path.
_CODE_CHARS = frozenset(" \t\n'\"()=;,`{}[]")
_QUOTE_CHARS = frozenset("'\"()`;=")
# A value without any of these holds no path we judge (sensitive bare names all have a `.` or `_`).
_NOTHING_PATHLIKE = frozenset("/\\~$%._:\x00").isdisjoint
# A string without any of these is a bare word: only a sensitive file name (`id_rsa`) can make it interesting.
_PATH_CHARS = frozenset("/\\~$%\x00")
# Characters that end a path-like token inside code.
_TOKEN_BREAKS = str.maketrans(dict.fromkeys("\"'`()[]{},;|&<>=\n\r\t", " "))


# --- Compiled index over SENSITIVE_PATHS ----------------------------------------------------------------------------


def _expand_braces(glob: str) -> list[str]:
    """`a{b,c}d` -> [`abd`, `acd`]; nested groups are expanded from the innermost."""
    close = glob.find("}")
    if close == -1:
        return [glob]
    open_ = glob.rfind("{", 0, close)
    if open_ == -1:
        return [glob]
    head, body, tail = glob[:open_], glob[open_ + 1 : close], glob[close + 1 :]
    expanded: list[str] = []
    for option in body.split(","):
        expanded.extend(_expand_braces(head + option + tail))
    return expanded


def _has_wildcard(part: str) -> bool:
    return "*" in part or "?" in part


@dataclass(frozen=True, slots=True)
class _CompiledGlob:
    rule_index: int
    parts: tuple[str, ...]  # "" first = root-anchored, "~" first = home-anchored, "**" = any components


def _compile_index() -> tuple[
    tuple[_CompiledGlob, ...], dict[str, list[int]], dict[str, list[int]], dict[str, list[int]]
]:
    globs: list[_CompiledGlob] = []
    literal: dict[str, list[int]] = {}
    extension: dict[str, list[int]] = {}
    prefix: dict[str, list[int]] = {}
    for rule_index, rule in enumerate(SENSITIVE_PATHS):
        for expanded in _expand_braces(rule.glob.lower()):
            parts = tuple(expanded.split("/"))
            compiled_index = len(globs)
            globs.append(_CompiledGlob(rule_index, parts))
            # Index each glob under its most specific fixed piece: the last literal component, else an extension,
            # else a literal prefix. Looking up a path's components then yields the few globs worth matching.
            literals = [part for part in parts if part not in ("", "~", "**") and not _has_wildcard(part)]
            if literals:
                literal.setdefault(literals[-1], []).append(compiled_index)
                continue
            last = parts[-1] if parts[-1] != "**" else parts[-2]
            if "." in last and not _has_wildcard(last.rsplit(".", 1)[1]):
                extension.setdefault(last.rsplit(".", 1)[1], []).append(compiled_index)
            elif not _has_wildcard(last[:3]):
                prefix.setdefault(last[:3], []).append(compiled_index)
            else:
                raise AssertionError(f"sensitive path glob {rule.glob!r} has nothing to index it by")
    return tuple(globs), literal, extension, prefix


_GLOBS, _BY_LITERAL, _BY_EXTENSION, _BY_PREFIX = _compile_index()
# Every literal component of every glob (for shell-glob paths, where the usual anchor may be the `*`).
_BY_ANY_LITERAL: dict[str, list[int]] = {}
for _index, _glob in enumerate(_GLOBS):
    for _part in _glob.parts:
        if _part not in ("", "~", "**") and not _has_wildcard(_part):
            _BY_ANY_LITERAL.setdefault(_part, []).append(_index)


def _match_parts(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Component-wise glob match; `**` matches zero or more components.

    Run as a set of pattern positions advanced part by part (no backtracking): O(len(pattern) * len(parts)).
    """
    states = _skip_globstars({0}, pattern)
    for part in parts:
        advanced = set()
        for position in states:
            if position < len(pattern):
                if pattern[position] == "**":
                    advanced.add(position)
                elif _part_matches(pattern[position], part):
                    advanced.add(position + 1)
        if not advanced:
            return False
        states = _skip_globstars(advanced, pattern)
    return len(pattern) in states


def _skip_globstars(states: set[int], pattern: tuple[str, ...]) -> set[int]:
    """A `**` may also match nothing: a position at one can move past it."""
    pending = [position for position in states if position < len(pattern) and pattern[position] == "**"]
    while pending:
        position = pending.pop() + 1
        if position not in states:
            states.add(position)
            if position < len(pattern) and pattern[position] == "**":
                pending.append(position)
    return states


def _part_matches(pattern: str, part: str) -> bool:
    if _is_shell_glob(part):
        # The path is itself a shell glob (`~/.a*/cred*`, `/etc/sh[a]dow`): could it name this file?
        simple = _simple_glob(part)
        if simple[:1] in ("*", "?") and pattern.startswith("."):
            return False  # the shell's `*` does not match dot files
        if _has_wildcard(pattern):  # two globs (`id_*` and `*`): do they share a name?
            return glob_match(_skeleton(pattern), simple) or glob_match(_skeleton(simple), pattern)
        return glob_match(pattern, simple)
    if pattern == "~" or not _has_wildcard(pattern):
        return pattern == part
    return glob_match(part, pattern)


def _skeleton(glob: str) -> str:
    return glob.replace("*", "").replace("?", "")


def _is_shell_glob(part: str) -> bool:
    return "*" in part or "?" in part or "[" in part


def _simple_glob(part: str) -> str:
    """`sh[a]dow` -> `sh?dow`: our glob matcher has no character classes; one class matches one character."""
    while "[" in part and "]" in part[part.find("[") :]:
        start = part.find("[")
        end = part.find("]", start + 2 if part[start + 1 : start + 2] in ("!", "^", "]") else start + 1)
        if end == -1:
            break
        part = part[:start] + "?" + part[end + 1 :]
    return part


def match_sensitive(parts: tuple[str, ...], *, shell_glob: bool = False) -> SensitivePath | None:
    """The first SENSITIVE_PATHS rule matching a normalised, lower-case, home-folded path split on `/`.

    `shell_glob`: some component holds `*`, `?` or `[...]`; every rule is then a candidate (rare and slower).
    """
    if shell_glob:
        return _worst_glob_match(parts)
    candidates: set[int] = set()
    for part in parts:
        hits = _BY_LITERAL.get(part)
        if hits:
            candidates.update(hits)
        if "." in part:
            hits = _BY_EXTENSION.get(part.rsplit(".", 1)[1])
            if hits:
                candidates.update(hits)
        hits = _BY_PREFIX.get(part[:3])
        if hits:
            candidates.update(hits)
    if not candidates:
        return None
    return _first_match(sorted(candidates), parts)


def _worst_glob_match(parts: tuple[str, ...]) -> SensitivePath | None:
    """A shell glob names every file it matches: `~/.ssh/*` is the private key too, not just the `.pub`."""
    candidates: set[int] = set()
    for part in parts:
        if not _is_shell_glob(part):
            candidates.update(_BY_ANY_LITERAL.get(part, ()))
        elif len(_skeleton(_simple_glob(part))) >= 2:
            # `cred*`, `sh*`, `*.kdbx`: every rule with a component this glob can name. A bare `*` is judged by
            # the literal directories around it (`~/.ssh/*`, `/etc/*`), so `cat *` in a project is not a read
            # of secrets.
            candidates.update(_glob_candidates(_simple_glob(part)))
    return _worst_of(sorted(candidates), parts) if candidates else None


@lru_cache(maxsize=1024)
def _glob_candidates(part: str) -> frozenset[int]:
    found: set[int] = set()
    for key, indexes in _BY_ANY_LITERAL.items():
        if _part_matches(key, part):
            found.update(indexes)
    for extension, indexes in _BY_EXTENSION.items():
        if glob_match("x." + extension, part):
            found.update(indexes)
    for prefix, indexes in _BY_PREFIX.items():
        if glob_match(prefix, _skeleton(part)[:3]) or part[:1] in ("*", "?"):
            found.update(indexes)
    return frozenset(found)


def _worst_of(indexes: Iterable[int], parts: tuple[str, ...]) -> SensitivePath | None:
    worst: SensitivePath | None = None
    for index in indexes:
        rule = _first_match((index,), parts)
        if rule is None:
            continue
        if worst is None or (rule.read or 0) > (worst.read or 0):
            worst = rule
        if _GLOBS[index].parts[-1] == parts[-1]:
            break  # this row names exactly the files the glob names (`~/.ssh/*.pub`): later rows cannot apply
    return worst


def _first_match(indexes: Iterable[int], parts: tuple[str, ...]) -> SensitivePath | None:
    for index in indexes:  # globs are stored in table order, so ascending index is first-match-wins
        glob = _GLOBS[index]
        pattern = glob.parts
        # Unanchored globs (`**/x`, `x`) may start at any component; `/x` only at the root, `~/x` only at a home.
        if pattern[0] not in ("", "~", "**"):
            pattern = ("**", *pattern)
        if pattern[-1] == "**" and _match_parts(pattern[:-1], parts):  # `dir/**` also matches `dir` itself
            return SENSITIVE_PATHS[glob.rule_index]
        if _match_parts(pattern, parts):
            return SENSITIVE_PATHS[glob.rule_index]
    return None


# --- Path normalisation ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathView:
    """A path as the filesystem will see it, plus the tricks used to write it."""

    raw: str
    normal: str  # posixpath.normpath'd, home expanded, `\\` as `/`, original case
    parts: tuple[str, ...]  # lower-case components of `normal`, a home directory folded to "~"
    absolute: bool
    dotdots: int  # `..` segments as written (after reading `..;x` and `....` as `..`)
    climbs: int  # leading `..` left after normalisation of a relative path: levels above the starting directory
    bypass: str  # a filter-bypass traversal form that was used, if any
    null_byte: bool
    shell_glob: bool = False  # holds `*`, `?` or `[`: the shell would expand it to whatever matches

    def rooted_remainder(self) -> tuple[str, ...]:
        """What `../../etc/shadow` reaches when it climbs to the root: ("", "etc", "shadow")."""
        return ("", *self.parts[self.climbs :])


def _expand_home(path: str, home: str) -> str:
    lowered = path[:24].lower()
    if not path or path[0] not in "~$%":
        return path
    if path == "~" or path.startswith("~/"):
        return home + path[1:]
    if path.startswith("~"):  # ~user/...: another user's home
        user, _, rest = path[1:].partition("/")
        return ("/root" if user == "root" else f"/home/{user}") + ("/" + rest if rest else "")
    for variable in ("${HOME}", "$HOME", "%USERPROFILE%", "%HOMEPATH%", "$env:USERPROFILE", "$env:HOME"):
        if lowered.startswith(variable.lower()):
            return home + path[len(variable) :]
    for variable, under in (
        ("%APPDATA%", "/AppData/Roaming"),
        ("%LOCALAPPDATA%", "/AppData/Local"),
        ("$XDG_CONFIG_HOME", "/.config"),
        ("${XDG_CONFIG_HOME}", "/.config"),
    ):
        if lowered.startswith(variable.lower()):
            return home + under + path[len(variable) :]
    return path


def _fold_home(parts: list[str], home_parts: tuple[str, ...]) -> tuple[str, ...]:
    """Replace a home directory prefix with "~" so that `~/` globs match every user's home."""
    if home_parts and tuple(parts[: len(home_parts)]) == home_parts:
        return ("~", *parts[len(home_parts) :])
    if len(parts) >= 3 and parts[0] == "" and parts[1] in ("home", "users") and parts[2]:
        return ("~", *parts[3:])
    if len(parts) >= 2 and parts[0] == "" and parts[1] == "root":
        return ("~", *parts[2:])
    if len(parts) >= 3 and len(parts[0]) == 2 and parts[0][1] == ":" and parts[1] == "users" and parts[2]:
        return ("~", *parts[3:])
    return tuple(parts)


@lru_cache(maxsize=64)
def _home_parts(home: str) -> tuple[str, ...]:
    return tuple(posixpath.normpath(home).lower().split("/")) if home.startswith("/") else ()


def resolve_path(raw: str, home: str) -> PathView | None:
    """Normalise `raw` the way the filesystem will read it. None if it cannot be a path. Never raises."""
    text = raw.strip()
    if not text or len(text) > MAX_PATH_CHARS:
        return None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    null_byte = False
    if "\x00" in text or "%00" in text:
        for marker in ("\x00", "%00"):
            cut = text.find(marker)
            if cut != -1:
                null_byte, text = True, text[:cut]  # C file APIs stop at the NUL: `a.txt\0.png` opens a.txt
    if text[:5].lower() == "file:":
        url = parse_url(text)
        text = url.path if url is not None else text[5:].lstrip("/")
        if not text.startswith("/"):
            text = "/" + text
    climbing = ".." in text
    bypass = ""
    if climbing or "%" in text:
        lowered = text.lower()
        bypass = next((name for marker, name in TRAVERSAL_BYPASS_MARKERS if marker in lowered), "")
    if "\\" in text:
        text = text.replace("\\", "/")
    if text[:1] in ("~", "$", "%"):
        text = _expand_home(text, home)
    if text.startswith("/proc/"):
        for prefix in ("/proc/self/root/", "/proc/thread-self/root/"):
            if text.startswith(prefix):
                text = text[len(prefix) - 1 :]
        if text.startswith("/proc/self/cwd/"):
            text = text[len("/proc/self/cwd/") :]
    dotdots = 0
    if climbing:
        segments = text.split("/")
        for index, segment in enumerate(segments):
            # `..;jsessionid=x` is `..` to a servlet container; `....` is `..` once a naive filter strips `../`.
            if segment.startswith("..") and (segment.startswith("..;") or set(segment) == {"."}):
                segments[index] = ".."
                dotdots += 1
        text = "/".join(segments)
    absolute = text.startswith("/") or (len(text) >= 3 and text[1] == ":" and text[2] == "/" and text[0].isalpha())
    normal = posixpath.normpath(text) if text else "."
    if normal.startswith("//"):
        normal = normal[1:]
    parts = normal.lower().split("/")
    climbs = 0
    if not absolute and dotdots:
        while climbs < len(parts) and parts[climbs] == "..":
            climbs += 1
    if len(parts) > MAX_PATH_PARTS:
        # Keep the start (root, home, or the climb) and the end, where the name is: what the rules look at.
        head = min(max(3, climbs + 1), MAX_PATH_PARTS // 2)
        parts = parts[:head] + parts[-(MAX_PATH_PARTS - head) :]
    folded = _fold_home(parts, _home_parts(home)) if absolute else tuple(parts)
    glob = "*" in normal or "?" in normal or "[" in normal
    return PathView(raw, normal, folded, absolute, dotdots, climbs, bypass, null_byte, glob)


def sensitive_path(raw: str, home: str) -> tuple[PathView, SensitivePath] | None:
    """Convenience for other scanners: the sensitive rule `raw` falls under (also after climbing to the root)."""
    if _PATH_CHARS.isdisjoint(raw) and ".." not in raw and not _is_sensitive_name(raw):
        return None
    view = resolve_path(raw, home)
    if view is None:
        return None
    rule = _sensitive_rule(view)
    return (view, rule) if rule is not None else None


def _sensitive_rule(view: PathView) -> SensitivePath | None:
    rule = match_sensitive(view.parts, shell_glob=view.shell_glob)
    if rule is None and view.climbs >= 2:
        rule = match_sensitive(view.rooted_remainder(), shell_glob=view.shell_glob)
    return rule


# --- The scanner ----------------------------------------------------------------------------------------------------


class _PathUse(NamedTuple):  # a NamedTuple: hashable (judgements are cached) and cheap to make, many per call
    raw: str
    access: Access
    reach: Reach


@dataclass(slots=True)
class _CallView:
    tool_words: frozenset[str]
    mode: Access | None  # from a `command: "view"`-style argument
    roots: tuple[str, ...]
    home: str
    fetching: bool


@lru_cache(maxsize=64)
def _normalise_roots(roots: tuple[str, ...], home: str) -> tuple[str, ...]:
    normalised = []
    for root in roots:
        expanded = _expand_home(root.strip(), home)
        if expanded.startswith("/"):
            normalised.append(posixpath.normpath(expanded).rstrip("/") or "/")
    return tuple(normalised)


class PathScanner(Scanner):
    name: ClassVar[str] = "paths"
    categories: ClassVar[frozenset[str]] = frozenset(
        {"paths.traversal", "paths.sensitive", "paths.outside_workspace", "paths.system_write"}
    )

    def scan(self, call: ToolCall, targets: Sequence[ScanTarget], settings: ScanSettings) -> Iterable[Finding]:
        tool_words = name_words(call.tool)
        call_view = _CallView(
            tool_words=tool_words,
            mode=_call_mode(targets),
            roots=_normalise_roots(settings.workspace_roots, settings.home),
            home=settings.home,
            fetching=bool(tool_words & FETCH_WORDS),
        )
        sink: FindingSink | None = None
        seen: set[tuple[str, str, str]] = set()
        for target in targets:
            if not target.commands and not target.exec_position and _NOTHING_PATHLIKE(target.text):
                continue  # `hiking trip`, `recipients`: no separator, dot, home or variable: no path in it
            for use in _path_uses(target, call_view):
                for category, severity, message in _judgement(use, call_view.roots, call_view.home):
                    key = (category, target.path, message)
                    if key in seen or len(seen) >= MAX_FINDINGS:
                        continue
                    seen.add(key)
                    sink = sink or FindingSink(self.name)
                    sink.add(target, category, severity, message)
        return sink.findings if sink is not None else []


def _call_mode(targets: Sequence[ScanTarget]) -> Access | None:
    """`{"command": "view", "path": ...}`: editor-style tools say in an argument whether they read or write."""
    for target in targets:
        if len(target.text) <= 16 and not target.is_key and argument_words(target.path) & MODE_ARGS:
            value = target.text.strip().lower()
            if value in READ_MODES:
                return Access.READ
            if value in WRITE_VERBS or name_words(value) & WRITE_VERBS:
                return Access.WRITE
    return None


def _looks_like_path(text: str) -> bool:
    """One token shaped like a path: `src/a.py`, `~/.ssh`, `C:\\x`, `.env`. Not a URL, not prose."""
    if not text or len(text) > MAX_PATH_CHARS or "\n" in text:
        return False
    if "://" in text and not text[:7].lower().startswith("file://"):
        return False
    first = text[0]
    if first in "/~$%\\" or text[:5].lower() == "file:" or (len(text) > 2 and text[1] == ":" and text[2] in "/\\"):
        if " " not in text:
            return True
        # `~/Library/Application Support/.../Login Data` has spaces; `/etc/shadow is where...` is a sentence.
        return text.count(" ") <= 4 and ", " not in text and ". " not in text and "\t" not in text
    if " " in text or "\t" in text:
        return False
    return "/" in text or "\\" in text or first == "." or _is_sensitive_name(text)


def _is_sensitive_name(token: str) -> bool:
    """A bare file name that is sensitive wherever it is: `id_rsa`, `prod.tfstate`, `key4.db`."""
    # Every such name in the table has a `.` or `_` (`.env`, `id_rsa`, `x.pem`): skip plain words cheaply.
    return ("." in token or "_" in token) and len(token) <= 255 and _sensitive_name(token.lower())


@lru_cache(maxsize=4096)
def _sensitive_name(lowered: str) -> bool:
    # Cached: argument keys and file names (`file_path`, `README.md`) come back call after call.
    return match_sensitive((lowered,)) is not None


def _whole_value_access(words: frozenset[str], call: _CallView) -> Access:
    tool = call.tool_words
    if words & SOURCE_ARGS:
        return Access.WRITE if tool & MOVE_VERBS else Access.READ
    if call.mode is not None:
        return call.mode
    if tool & WRITE_VERBS and (words & PATH_ARGS or words & DEST_ARGS or not words):
        return Access.WRITE
    if tool & LIST_VERBS:
        return Access.META
    return Access.READ


def _path_uses(target: ScanTarget, call: _CallView) -> Iterator[_PathUse]:
    text = target.text
    if target.commands:
        reach = Reach.DIRECT if target.exec_position else Reach.SCRIPT
        for command in target.commands:
            yield from _command_path_uses(command, reach)
    elif target.exec_position:
        for token in path_tokens(text):
            yield _PathUse(token, Access.READ, Reach.DIRECT)
    if target.exec_position:
        return
    words = argument_words(target.path)
    path_shaped = (words & PATH_ARGS and "\n" not in text and len(text) <= MAX_PATH_CHARS) or _looks_like_path(text)
    if path_shaped and ("://" not in text or text[:5].lower() == "file:"):
        yield _PathUse(text, _whole_value_access(words, call), Reach.DIRECT)
        return
    # A fetching tool (or a URL argument) opens the URL: `file://` reads a local file, `..` probes the server.
    if (call.fetching or words & {"url", "uri", "href", "link"}) and ("file:" in text or ".." in text):
        for url in find_urls(text, limit=16):
            if url[:5].lower() == "file:":
                yield _PathUse(url, Access.READ, Reach.DIRECT)
            elif ".." in url:
                parsed = parse_url(url)
                if parsed is not None and ".." in parsed.path:
                    yield _PathUse(_url_path_as_relative(parsed.path), Access.REMOTE, Reach.DIRECT)


def _url_path_as_relative(path: str) -> str:
    """A URL path judged as a path relative to the web root: `/static/../../etc/passwd` climbs above it."""
    return path.lstrip("/") or "."


def shell_path_uses(command: ShellCommand) -> list[tuple[str, Access]]:
    """Every path a parsed shell command touches, and how (for scanners that follow data, like the network one)."""
    return [(use.raw, use.access) for use in _command_path_uses(command, Reach.DIRECT)]


def path_tokens(text: str) -> Iterator[str]:
    """Path-like tokens of code or a command line that was not parsed: quoted strings and rooted words."""
    count = 0
    for token in text.translate(_TOKEN_BREAKS).split():
        if token[0] == "@" and len(token) > 1:
            token = token[1:]  # `-F f=@/path`, `--data @file`: the file is what is read
        first = token[0]
        if first in "/~$%." or "/" in token or "\\" in token or _is_sensitive_name(token):
            if token.startswith("//") or "://" in token:
                continue  # a URL or a comment, not a file
            yield token
            count += 1
            if count >= MAX_TOKENS_PER_TEXT:
                return


def walk_options(
    argv: Sequence[str], value_options: frozenset[str], *, fold_case: bool = False
) -> Iterator[tuple[str, str | None]]:
    """Yield (option, value) and ("", operand) pairs of argv[1:], getopt-style: `-dVALUE`, `-sSLo file`, `--opt=v`.

    `value_options` are the options that take a value; any other option is a flag (value None), so an unknown
    option never swallows the operand after it. `fold_case` reads `-Uri` like `-uri` (PowerShell).
    """
    index = 1
    operands_only = False
    while index < len(argv):
        arg = argv[index]
        index += 1
        if operands_only or not arg.startswith("-") or arg == "-":
            yield "", arg
            continue
        if arg == "--":
            operands_only = True
            continue
        name = arg.lower() if fold_case else arg
        if name in value_options and len(name) > 2:  # `-keyout x` (openssl, find, java): one option, not a cluster
            yield name, argv[index] if index < len(argv) else ""
            index += 1
            continue
        if name.startswith("--") or (fold_case and len(name) > 2):
            option, equals, _ = name.partition("=")
            if equals:
                yield option, arg[len(option) + 1 :]
            elif option in value_options:
                yield option, argv[index] if index < len(argv) else ""
                index += 1
            else:
                yield option, None
            continue
        for position in range(1, len(arg)):
            option = "-" + arg[position]
            if option in value_options:
                rest = arg[position + 1 :]
                if rest:
                    yield option, rest
                else:
                    yield option, argv[index] if index < len(argv) else ""
                    index += 1
                break
            yield option, None


@lru_cache(maxsize=512)
def _program_options(program: str) -> tuple[frozenset[str], frozenset[str], frozenset[str], frozenset[str]]:
    """(identity, output, pattern, all value-taking) options of a program, from the tables above."""
    identity = IDENTITY_OPTIONS.get(program, frozenset()) | USE_OPTIONS
    outputs = OUTPUT_OPTIONS.get(program, frozenset())
    patterns = PATTERN_OPTIONS.get(program, frozenset())
    return identity, outputs, patterns, identity | outputs | patterns


def _command_path_uses(command: ShellCommand, reach: Reach) -> tuple[_PathUse, ...]:
    size = sum(map(len, command.argv)) + sum(len(target) for _, target in command.redirects)
    if size <= MAX_CACHED_COMMAND_CHARS:
        return _cached_command_uses(command, reach)
    return tuple(_command_uses(command, reach))


@lru_cache(maxsize=4096)
def _cached_command_uses(command: ShellCommand, reach: Reach) -> tuple[_PathUse, ...]:
    # A pure function of the parsed command (frozen, hashable), and agents run the same commands over and over.
    return tuple(_command_uses(command, reach))


def _command_uses(command: ShellCommand, reach: Reach) -> Iterator[_PathUse]:
    program = command.program.lower()
    for operator, target in command.redirects:
        if not target or target.isdigit() or target.startswith("&") or target == "-" or "<<" in operator:
            continue  # fd duplication, or a here-document (whose "target" is its body)
        yield _PathUse(target, Access.WRITE if ">" in operator else Access.READ, reach)
    if program in TEXT_PROGRAMS or not command.argv:
        return
    identity, outputs, patterns, value_options = _program_options(program)
    operands: list[str] = []
    in_place = False
    pattern_given = False
    for option, value in walk_options(command.argv, value_options):
        if option in patterns:
            pattern_given |= option in ("-e", "--regexp", "-f", "--file", "--expression")
            continue  # `find -name '*.pem'`, `grep -e id_rsa`: a pattern, not a file
        if not option:
            if program == "dd" and value and "=" in value:
                key, _, path = value.partition("=")
                yield _PathUse(path, Access.WRITE if key == "of" else Access.READ, reach)
            elif value:
                operands.append(value)
            continue
        if program in ("sed", "perl") and option in ("-i", "--in-place"):
            in_place = True
        if value:
            access = Access.USE if option in identity else Access.WRITE if option in outputs else Access.READ
            yield _PathUse(value[1:] if value.startswith("@") else value, access, reach)
    if program in PATTERN_FIRST_PROGRAMS and not pattern_given:
        operands = operands[1:]  # `grep -rn id_rsa src/`: the first operand is what is searched for
    yield from _operand_uses(program, operands, in_place, reach)


def _operand_uses(program: str, operands: list[str], in_place: bool, reach: Reach) -> Iterator[_PathUse]:
    if program in USE_PROGRAMS:
        access_all: Access = Access.USE
    elif program in WRITE_PROGRAMS or in_place:
        access_all = Access.WRITE
    elif program in MODE_PROGRAMS:
        access_all = Access.MODE
    elif program in NAME_PROGRAMS:
        access_all = Access.NAME
    elif program in META_PROGRAMS:
        access_all = Access.META
    else:
        access_all = Access.READ
    for index, raw in enumerate(operands):
        if "://" in raw or (program in ("scp", "rsync") and _is_remote(raw)):
            continue  # URLs and remote specs are the network scanner's
        operand = raw[1:] if raw.startswith("@") and len(raw) > 1 else raw  # curl/httpie `@file`: the file's content
        access = access_all
        if program in COPY_PROGRAMS and len(operands) >= 2:
            if index == len(operands) - 1:
                access = Access.WRITE
            elif program == "mv":
                access = Access.WRITE  # moved away: gone from where it was
        if not _CODE_CHARS.isdisjoint(operand) and not (
            operand.startswith(("/", "~")) and _QUOTE_CHARS.isdisjoint(operand)  # `~/Library/Application Support`
        ):
            # A code string (`python -c "open('/etc/shadow')"`): look for paths inside it.
            for token in path_tokens(operand):
                yield _PathUse(token, Access.READ, reach)
            continue
        yield _PathUse(operand, access, reach)


def _is_remote(operand: str) -> bool:
    colon = operand.find(":")
    return colon > 1 and "/" not in operand[:colon]


# --- Judging one path -----------------------------------------------------------------------------------------------


def _judgement(use: _PathUse, roots: tuple[str, ...], home: str) -> tuple[tuple[str, Severity, str], ...]:
    """The findings for one path use."""
    raw = use.raw
    if len(raw) > MAX_PATH_CHARS or (_PATH_CHARS.isdisjoint(raw) and ".." not in raw and not _is_sensitive_name(raw)):
        return ()  # a bare name (`status`, `app.py`): not sensitive, cannot climb, lands inside the workspace
    return _cached_judgement(use, roots, home)


@lru_cache(maxsize=4096)
def _cached_judgement(use: _PathUse, roots: tuple[str, ...], home: str) -> tuple[tuple[str, Severity, str], ...]:
    # A pure function of its inputs, and agents touch the same paths over and over (keys are <= PATH_MAX).
    return tuple(_judge(use, roots, home))


def _judge(use: _PathUse, roots: tuple[str, ...], home: str) -> Iterator[tuple[str, Severity, str]]:
    raw = use.raw
    view = resolve_path(raw, home)
    if view is None:
        return
    script = use.reach == Reach.SCRIPT
    shown = view.normal if len(view.normal) <= 120 else "..." + view.normal[-117:]
    rule = _sensitive_rule(view)
    if rule is None and view.climbs and roots:  # `../../.npmrc` from the workspace may reach `~/.npmrc`
        rule = match_sensitive(_fold_home(_split(_join(roots[0], view.normal)), _home_parts(home)))
    if rule is not None:
        severity = _sensitive_severity(rule, use.access)
        if severity is not None:
            yield (
                "paths.sensitive",
                _lower(severity) if script else severity,
                f"{use.access.value} {rule.label}: {shown}",
            )
    traversal = _traversal(view, rule, roots)
    if traversal is not None:
        severity, reason = traversal
        yield "paths.traversal", _lower(severity) if script else severity, f"{reason}: {view.raw[:120]!r}"
    if use.access in (Access.WRITE, Access.MODE):
        resolved = _resolved_absolute(view, roots)
        system = _system_location(resolved) if resolved is not None else None
        # A script that is only written down is often an installer or a Dockerfile step: note it, do not stop it.
        if system is not None and use.access is Access.WRITE:
            yield "paths.system_write", LOW if script else HIGH, f"writes to system location {system}: {resolved}"
        elif system is not None:
            yield "paths.system_write", LOW if script else MEDIUM, f"changes permissions in {system}: {resolved}"
        elif use.access is Access.WRITE and resolved is not None and _outside_roots(resolved, roots):
            yield "paths.outside_workspace", LOW if script else HIGH, f"writes outside the workspace: {resolved}"


def _lower(severity: Severity) -> Severity:
    """One level less (not below LOW): for a script that is written down, not run by this call."""
    return Severity(max(LOW, severity - 1))


def _sensitive_severity(rule: SensitivePath, access: Access) -> Severity | None:
    if access is Access.READ:
        return rule.read
    if access is Access.WRITE:
        return rule.write
    if access is Access.META:  # listing a credential store is reconnaissance: a look, not a block
        return _lower(rule.read) if rule.read is not None and rule.read >= MEDIUM else None
    worst = max((s for s in (rule.read, rule.write) if s is not None), default=None)
    if access in (Access.MODE, Access.NAME) and worst is not None and worst >= MEDIUM:
        return LOW  # `chmod 600 ~/.ssh/id_rsa`, `git rm --cached .env`: routine
    return None  # USE: a key passed to `ssh -i` authenticates, it is not disclosed; REMOTE: not our disk


def _traversal(view: PathView, rule: SensitivePath | None, roots: tuple[str, ...]) -> tuple[Severity, str] | None:
    if view.bypass:
        return HIGH, f"filter-bypass traversal {view.bypass!r}"
    if view.null_byte:
        return MEDIUM, "null byte in path (truncation trick)"
    if view.dotdots == 0:
        return None
    worst = max((s for s in (rule.read, rule.write) if s is not None), default=LOW) if rule is not None else None
    if worst is not None and worst >= MEDIUM:
        return HIGH, f"traversal reaches {rule.label}"  # type: ignore[union-attr]
    top = view.parts[1] if view.absolute and len(view.parts) > 1 else None
    if not view.absolute and view.climbs < len(view.parts):
        top = view.parts[view.climbs] if view.climbs >= 2 else None
    if top in TRAVERSAL_TARGET_DIRS:
        return HIGH, f"traversal into /{top}"
    if roots and not view.absolute and view.climbs and _outside_roots(_join(roots[0], view.normal), roots):
        return MEDIUM, "climbs out of the workspace"
    if view.climbs >= 4:
        return LOW, f"climbs {view.climbs} directories up"
    return None


def _join(root: str, relative: str) -> str:
    return posixpath.normpath(posixpath.join(root, relative))


def _split(path: str) -> list[str]:
    return path.lower().split("/")[: MAX_PATH_PARTS * 4]


def _resolved_absolute(view: PathView, roots: tuple[str, ...]) -> str | None:
    """Where a write lands: absolute as written, relative against the first workspace root, else unknown."""
    if view.absolute:
        return view.normal
    if not view.climbs:
        return None  # relative and not climbing: inside the workspace (or wherever the agent already is)
    if roots:
        return _join(roots[0], view.normal)
    if view.climbs >= 2:
        return "/" + "/".join(view.normal.split("/")[view.climbs :])  # aiming at the root from somewhere unknown
    return None


def _system_location(resolved: str) -> str | None:
    lowered = resolved.lower()
    if lowered in HARMLESS_DEVICES or lowered.startswith(HARMLESS_DEVICE_DIRS):
        return None
    parts = lowered.split("/")
    if len(parts) >= 2 and len(parts[0]) == 2 and parts[0][1] == ":" and parts[1] in WINDOWS_SYSTEM_DIRS:
        return f"{parts[0]}/{parts[1]}"
    if parts[0] != "" or len(parts) < 2 or parts[1] not in _SYSTEM_FIRST_PARTS:
        return None
    for prefix in SYSTEM_WRITE_DIRS:
        if tuple(parts[1 : 1 + len(prefix)]) == prefix:
            return "/" + "/".join(prefix)
    return None


def _outside_roots(resolved: str, roots: tuple[str, ...]) -> bool:
    if not roots:
        return False
    lowered = resolved.lower()
    if lowered in HARMLESS_DEVICES or lowered.startswith(HARMLESS_DEVICE_DIRS):
        return False
    for allowed in (*roots, *SCRATCH_PATHS):
        if resolved == allowed or resolved.startswith(allowed.rstrip("/") + "/"):
            return False
    return True
