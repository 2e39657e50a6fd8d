"""Shell normalisation: see a command string the way a shell would run it.

Exec allowlists of agent runtimes have been bypassed by writing a command the way a shell reads it but a string
matcher does not: `r'm'`, `$'\\x72m'`, `rm${IFS}-rf`, `/usr/bin/../bin/rm`, `{rm,-rf,/}`, `sudo sh -c "..."`,
`rm --no-preserve-r`. This module undoes those tricks once, so that every scanner matches plain argv:

- separators (`;` `&&` `||` `|` `&` newline) and substitutions (`$(...)`, backquotes, `<(...)`): each substitution's
  commands are emitted with `substitution=True`, and the word that used its output keeps a placeholder `$(#N)`;
- quote removal, ANSI-C strings, line continuations, `$IFS`, brace expansion, `$@`/`$1` (empty in an agent's shell),
  variables assigned earlier in the same script, `${x:-default}`, `${PATH:0:1}`, the output of a literal
  `$(echo ...)`/`$(printf ...)`;
- wrappers unwrapped recursively (sudo, env, nohup, timeout, xargs, busybox, `sh -c`, eval, ssh, `python -c` ...),
  each unwrapped command recording its wrappers outermost first; `echo PAYLOAD | [base64 -d |] sh` and heredocs fed
  to a shell are read as the scripts they are;
- GNU long-option abbreviations expanded against the real option names of the commands that matter.

It is a reader, not a shell: no globbing, arithmetic or function calls. It never raises; input length, tokens,
command count and nesting are bounded, and a script that hit a bound is `truncated` and ends with a marker command
(see `TRUNCATED_MARKER`) so that a scanner holding only the commands still knows.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from aegis_proxy.safe_regex import compile_pattern

MAX_PARSE_CHARS = 65_536  # text read from the input; the rest is not parsed (truncated)
MAX_COMMANDS = 256  # commands kept per script
MAX_DEPTH = 8  # nested `sh -c` / eval / substitutions
MAX_WORK_CHARS = 4 * MAX_PARSE_CHARS  # text read across all nested parses (eval, sh -c, decoded payloads)
MAX_BRACE_WORDS = 256  # words one brace expansion may produce
MAX_TOKENS = 8_192  # tokens and word pieces (quotes, expansions) read across all nested parses: bounds CPU time
MAX_WRAPPERS = 32  # prefix wrappers unwrapped around one command (`sudo sudo sudo ...`)
MAX_VARIABLE_CHARS = 4_096  # longer values are not tracked (`a=$a$a` doubling)
MAX_VARIABLES = 256
MAX_CACHED_PARSE_CHARS = 1_024  # texts up to this long are parsed (and judged) once and remembered (bounded LRU)

TRUNCATED_MARKER = "truncated"  # obfuscation tag of the marker command appended when a bound was hit
NESTING_MARKER = "nesting"  # obfuscation tag of a wrapper that was too deeply nested to unwrap


@dataclass(frozen=True, slots=True)
class ShellCommand:
    """One simple command after quote removal, expansion of the tricks attackers use, and unwrapping of wrappers."""

    argv: tuple[str, ...]  # argv[0] is the program's basename ("/usr/bin/rm" -> "rm"); long options expanded
    program_path: str = ""  # argv[0] as written, e.g. "/usr/bin/rm"
    wrappers: tuple[str, ...] = ()  # wrappers unwrapped to reach it, outermost first, e.g. ("sudo", "sh -c")
    pipeline: int = 0  # index of the pipeline within the script
    stage: int = 0  # position inside the pipeline; stage > 0 reads the previous stage's output
    redirects: tuple[tuple[str, str], ...] = ()  # (operator, target), e.g. (">>", "~/.bashrc"); heredoc: body
    substitution: bool = False  # came from $(...) or backticks
    # Which substitution it ran in (0: none); the word that used the output holds the placeholder "$(#N)" or "<(#N)".
    substitution_id: int = 0
    assignments: tuple[str, ...] = ()  # NAME=value before the command (or given to env), e.g. ("HISTFILE=/dev/null",)
    function: str = ""  # name of the shell function whose body holds this command
    # Tricks undone to read the program word ("quotes", "ansi_c", "ifs", "brace", "continuation", "empty_expansion",
    # "variable", "glob", "case", "substitution"), plus NESTING_MARKER / TRUNCATED_MARKER.
    obfuscation: tuple[str, ...] = ()

    @property
    def program(self) -> str:
        return self.argv[0] if self.argv else ""


@dataclass(frozen=True, slots=True)
class ShellScript:
    commands: tuple[ShellCommand, ...]
    truncated: bool = False  # a bound (length, command count, nesting) was hit: possible evasion


def substitution_refs(word: str) -> list[int]:
    """The substitution ids whose output `word` uses (placeholders `$(#N)`, `<(#N)`, `>(#N)`)."""
    refs: list[int] = []
    start = word.find("(#")
    while start > 0:
        end = start + 2
        while end < len(word) and word[end].isdigit():
            end += 1
        if end > start + 2 and end < len(word) and word[end] == ")" and word[start - 1] in "$<>":
            refs.append(int(word[start + 2 : end]))
        start = word.find("(#", end)
    return refs


# --- tables ------------------------------------------------------------------------------------------------------


def _names(text: str) -> frozenset[str]:
    """A readable table: whitespace-separated names."""
    return frozenset(text.split())


# Interpreters whose inline code is kept as argv and searched for embedded shell commands: program -> code options.
CODE_OPTIONS: dict[str, frozenset[str]] = {
    "python": frozenset({"-c"}),
    "perl": frozenset({"-e", "-E"}),
    "ruby": frozenset({"-e"}),
    "node": frozenset({"-e", "--eval", "-p", "--print"}),
    "php": frozenset({"-r"}),
    "lua": frozenset({"-e"}),
    # PowerShell options are case-insensitive prefixes (-c, -Command, -comm); -EncodedCommand is base64 UTF-16LE
    "pwsh": frozenset({"-c", "-command", "-e", "-ec", "-enc", "-encodedcommand"}),
}
AWKS = frozenset({"awk", "gawk", "mawk", "nawk"})
SHELLS = frozenset({"sh", "bash", "zsh", "dash", "ksh", "mksh", "ash", "yash", "posh", "csh", "tcsh", "fish", "rbash"})
_PROGRAM_ALIASES = {
    "python2": "python", "python3": "python", "pypy": "python", "pypy3": "python", "nodejs": "node",
    "powershell": "pwsh", "powershell.exe": "pwsh", "pwsh.exe": "pwsh",
}  # fmt: skip
_PROGRAM_ALIASES.update({f"python3.{minor}": "python" for minor in range(0, 20)})
_PROGRAM_ALIASES.update({f"php{major}": "php" for major in (5, 7, 8)})

# Real long options of the commands whose flags scanners judge. GNU getopt (and git's parse-options) accept any
# unambiguous prefix; rsync (popt) accepts exact names only. Ambiguous prefixes are left as written: the real tool
# refuses them (`curl --outp`: --output or --output-dir; `git push --forc`: --force, --force-with-lease, ...).
LONG_OPTIONS: dict[str, frozenset[str]] = {
    "rm": _names("dir force help interactive no-preserve-root one-file-system preserve-root recursive verbose version"),
    "chmod": _names("changes help no-preserve-root preserve-root quiet recursive reference silent verbose version"),
    "chown": _names(
        "changes dereference from help no-dereference no-preserve-root preserve-root quiet recursive reference "
        "silent verbose version"
    ),
    "chattr": frozenset({"help", "version"}),
    "dd": frozenset({"help", "version"}),
    "shred": _names("exact force help iterations random-source remove size verbose version zero"),
    "mkfs": frozenset({"type", "verbose", "help", "version"}),
    "kill": frozenset({"signal", "queue", "list", "table", "help", "version", "timeout", "verbose"}),
    "git push": _names(
        "all atomic delete dry-run exec follow-tags force force-if-includes force-with-lease ipv4 ipv6 mirror "
        "no-verify verify porcelain progress prune push-option quiet receive-pack recurse-submodules repo "
        "set-upstream signed tags thin no-thin verbose"
    ),
    "git clean": frozenset({"dry-run", "exclude", "force", "interactive", "quiet"}),
    "git reset": _names(
        "hard intent-to-add keep merge mixed no-refresh refresh patch pathspec-file-nul pathspec-from-file quiet "
        "recurse-submodules no-recurse-submodules soft"
    ),
    "curl": _names(
        "append basic cacert capath cert compressed config connect-timeout connect-to continue-at cookie cookie-jar "
        "create-dirs data data-ascii data-binary data-raw data-urlencode digest disable doh-url dump-header fail "
        "fail-early fail-with-body form form-string get globoff head header help http1.1 http2 include insecure "
        "interface ipv4 ipv6 json junk-session-cookies keepalive-time key limit-rate list-only location "
        "location-trusted max-filesize max-redirs max-time negotiate netrc netrc-file netrc-optional next no-buffer "
        "no-clobber no-keepalive no-progress-meter no-sessionid noproxy ntlm oauth2-bearer output output-dir "
        "parallel parallel-max pass path-as-is pinnedpubkey post301 post302 post303 progress-bar proto proto-default "
        "proto-redir proxy proxy-header proxy-insecure proxy-user proxytunnel quote range raw referer "
        "remote-header-name remote-name remote-name-all remote-time remove-on-error request request-target resolve "
        "retry retry-all-errors retry-connrefused retry-delay retry-max-time show-error silent socks4 socks5 "
        "socks5-hostname speed-limit speed-time ssl ssl-reqd stderr tcp-nodelay time-cond tls-max tlsv1.2 tlsv1.3 "
        "trace trace-ascii trace-time unix-socket upload-file url url-query user user-agent verbose version "
        "write-out xattr"
    ),
    "wget": _names(
        "accept adjust-extension append-output background base bind-address body-data body-file ca-certificate "
        "certificate config connect-timeout content-disposition continue cut-dirs debug default-page delete-after "
        "directory-prefix dns-timeout domains execute force-directories force-html header help https-only "
        "ignore-length input-file keep-session-cookies level limit-rate load-cookies max-redirect method mirror "
        "no-cache no-check-certificate no-clobber no-config no-cookies no-directories no-host-directories no-parent "
        "no-proxy no-verbose output-document output-file page-requisites password post-data post-file "
        "private-key progress quiet quota random-wait read-timeout recursive referer reject relative "
        "save-cookies save-headers server-response show-progress span-hosts spider timeout timestamping tries "
        "unlink user user-agent verbose version wait waitretry"
    ),
    "tar": _names(
        "absolute-names append atime-preserve auto-compress backup bzip2 catenate checkpoint checkpoint-action "
        "compare concatenate create delete dereference diff directory exclude exclude-from exclude-vcs extract "
        "file files-from force-local format get group gunzip gzip help ignore-failed-read ignore-zeros "
        "info-script keep-newer-files keep-old-files list lzma mode mtime new-volume-script no-recursion "
        "no-same-owner no-same-permissions null numeric-owner one-file-system overwrite overwrite-dir owner "
        "preserve-permissions recursion recursive-unlink remove-files rmt-command rsh-command same-owner "
        "same-permissions skip-old-files sparse strip-components suffix to-command to-stdout totals transform "
        "unlink-first update use-compress-program verbose verify version wildcards xz zstd"
    ),
    "rsync": _names(
        "archive recursive delete del delete-before delete-during delete-delay delete-after delete-excluded "
        "delete-missing-args remove-source-files force rsh rsync-path dry-run"
    ),
}
_EXACT_ONLY = frozenset({"rsync"})  # popt: no abbreviations
FIND_ACTIONS = frozenset({"delete", "exec", "execdir", "ok", "okdir"})  # `find --delete` read as `-delete`

# Programs scanners look for: a glob (`/???/r?`), a variable-built (`r$x`) or upper-case (`RM`, macOS) program word
# resolves to one of these when it matches exactly one.
KNOWN_PROGRAMS: tuple[str, ...] = (
    "rm", "dd", "mkfs", "shred", "wipefs", "chmod", "chown", "chattr", "find", "curl", "wget", "nc", "ncat",
    "netcat", "socat", "telnet", "bash", "sh", "zsh", "dash", "ksh", "python", "perl", "ruby", "node", "php",
    "crontab", "systemctl", "iptables", "shutdown", "reboot", "halt", "poweroff", "kill", "base64", "eval", "sudo",
    "env", "cat", "passwd", "mv", "cp", "tee", "truncate", "history", "unset", "setenforce", "ufw", "journalctl",
)  # fmt: skip
_KNOWN_PROGRAM_SET = frozenset(KNOWN_PROGRAMS)
# Characters a glob standing for a known program can hold (`*.rs` cannot be one: no known program has a dot).
_GLOB_ALPHABET = frozenset("".join(KNOWN_PROGRAMS)) | frozenset("*?[]!^-")

# Builtins whose NAME=value arguments set shell variables (tracked for later `$name` expansions).
_DECLARE = frozenset({"export", "declare", "typeset", "local", "readonly"})
_KEYWORDS = frozenset(
    {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}", "for", "select", "case",
     "esac", "function", "coproc", "in"}
)  # fmt: skip
_ENV_DEFAULTS = {  # values of variables an agent's shell always has, for `${PATH:0:1}` style slicing
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "PWD": "/",
    "SHELL": "/bin/bash",
    "USER": "root",
}

# Code run by interpreters that hands a string or an argv list to a shell. Captures: 1 list body, 2 string literal.
_EMBEDDED_LIST = compile_pattern(
    r"\b(?:call|run|Popen|check_output|check_call|spawn|spawnSync|execFile|execFileSync|execv|execvp|execve|"
    r"execl|execlp|system|exec)\s*\(\s*(?:[\w.]+\s*,\s*)?\[([^\]]*)\]"
)
_EMBEDDED_STRING = compile_pattern(
    r"\b(?:system|popen|getoutput|getstatusoutput|check_output|check_call|call|run|Popen|exec|execSync|spawn|"
    r"spawnSync|shell_exec|passthru|proc_open|IO\.popen|os\.execute)\s*\(?\s*[rbuRB]{0,2}"
    r"(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')"
)
_BACKTICK_CODE = compile_pattern(r"(?:`([^`]+)`|qx\{([^}]+)\}|%x\(([^)]+)\))")
_STRING_LITERAL = compile_pattern(r"\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)'")
_MAX_EMBEDDED = 32

# Git configuration keys whose value git runs through a shell (`git -c core.pager='sh -c ...' log`).
GIT_EXEC_CONFIG = frozenset(
    {"core.sshcommand", "core.pager", "core.editor", "core.fsmonitor", "core.askpass", "credential.helper",
     "diff.external", "sequence.editor", "uploadpack.packobjectshook", "gpg.program"}
)  # fmt: skip

# --- lexer constants ---------------------------------------------------------------------------------------------

_SPLIT = "\x1c"  # field break from an unquoted expansion ($IFS, a tracked variable's spaces)
_BRACE_OPEN, _BRACE_COMMA, _BRACE_CLOSE = "\x1d", "\x1e", "\x1f"  # unquoted { , } (brace expansion candidates)
_SENTINELS = "\x1c\x1d\x1e\x1f"
_GUARD = str.maketrans({c: "?" for c in _SENTINELS})
_UNBRACE = str.maketrans({_BRACE_OPEN: "{", _BRACE_COMMA: ",", _BRACE_CLOSE: "}"})
_WS_TO_SPLIT = str.maketrans({" ": _SPLIT, "\t": _SPLIT, "\n": _SPLIT})
_BLANKS = frozenset(" \t\r")
_BREAK = frozenset(" \t\r\n;&|()<>")
_WORD_SPECIAL = frozenset(" \t\r\n;&|()<>'\"\\$`{},")
_DQUOTE_SPECIAL = frozenset('"\\$`')
_MASK_STR = str.maketrans(dict.fromkeys(_WORD_SPECIAL, "\0"))
_MASK_BYTES = bytes.maketrans("".join(sorted(_WORD_SPECIAL)).encode(), b"\0" * len(_WORD_SPECIAL))
_IDENT_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_IDENT = _IDENT_START | frozenset("0123456789")
_ANSI_SIMPLE = {"a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
                "v": "\v", "\\": "\\", "'": "'", '"': '"', "?": "?"}  # fmt: skip

_NO_TRICKS: frozenset[str] = frozenset()
_WORD, _OP, _REDIR, _EOF = 0, 1, 2, 3
_EOF_TOKEN = (_EOF,)


class _Stop(Exception):
    """A bound was hit: stop reading, keep what was read."""


class _State:
    """What all nested readers of one script share."""

    __slots__ = ("commands", "pipelines", "substitutions", "tokens", "truncated", "variables", "work")

    def __init__(self) -> None:
        self.commands: list[ShellCommand] = []
        self.pipelines = 0
        self.substitutions = 0
        self.truncated = False
        self.variables: dict[str, str] = {}
        self.work = 0
        self.tokens = 0

    def charge(self, tokens: int = 1) -> None:
        self.tokens += tokens
        if self.tokens > MAX_TOKENS:
            raise _Stop

    def add(self, command: ShellCommand) -> None:
        if len(self.commands) >= MAX_COMMANDS:
            raise _Stop
        self.commands.append(command)

    def assign(self, assignment: str) -> None:
        name, _, value = assignment.partition("=")
        if name.endswith("+"):
            name = name[:-1]
            value = self.variables.get(name, "") + value
        if len(value) > MAX_VARIABLE_CHARS or (name not in self.variables and len(self.variables) >= MAX_VARIABLES):
            self.variables.pop(name, None)  # too big to follow: expansions of it stay `$name`
            return
        self.variables[name] = value


class _Raw:
    """A simple command as read, before unwrapping."""

    __slots__ = ("assignments", "function", "length", "pipeline", "redirects", "stage", "tricks", "word_tricks")

    def __init__(
        self,
        redirects: list[list[str]],
        assignments: list[str],
        pipeline: int,
        stage: int,
        tricks: set[str],
        function: str,
        word_tricks: dict[int, set[str]] | None = None,
        length: int = 0,
    ) -> None:
        self.redirects = redirects
        self.assignments = assignments
        self.pipeline = pipeline
        self.stage = stage
        self.tricks = tricks  # for the whole command ("ifs" anywhere, NESTING_MARKER)
        self.function = function
        # tricks of the argv words as read, by index (a wrapper's program word is found again after unwrapping by its
        # offset from the end: prefix wrappers keep a tail of the words)
        self.word_tricks = word_tricks
        self.length = length


# --- small pure helpers ------------------------------------------------------------------------------------------


def _is_assignment(raw: str) -> bool:
    """`NAME=...` with an unquoted identifier (`raw` is the word as written)."""
    eq = raw.find("=")
    if eq <= 0 or raw[0] not in _IDENT_START:
        return False
    name = raw[:eq]
    if name.endswith("+"):
        name = name[:-1]
    if "[" in name and name.endswith("]"):
        name = name[: name.index("[")]
    return all(c in _IDENT for c in name)


def _glob_match(pattern: str, name: str) -> bool:
    """fnmatch for tiny strings without regexes: `*`, `?` and `[...]` classes (two-pointer walk, no backtracking)."""
    p = n = 0
    star_p, star_n = -1, 0
    while n < len(name):
        if p < len(pattern) and pattern[p] == "*":
            star_p, star_n = p, n
            p += 1
            continue
        if p < len(pattern):
            step = _glob_char(pattern, p, name[n])
            if step:
                p += step
                n += 1
                continue
        if star_p < 0:
            return False
        star_n += 1
        p, n = star_p + 1, star_n
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def _literal_runs(pattern: str) -> list[str]:
    """The literal pieces of a glob, which any name it matches contains (`*guest*wifi*` -> guest, wifi): a substring
    test rules out most names before the walk of _glob_match. Bracket classes are read as _glob_char reads them."""
    runs: list[str] = []
    start = p = 0
    while p < len(pattern):
        c = pattern[p]
        if c in "*?" or (c == "[" and pattern.find("]", p + 2) >= 0):
            if p > start:
                runs.append(pattern[start:p])
            p = pattern.find("]", p + 2) + 1 if c == "[" else p + 1
            start = p
        else:
            p += 1
    if p > start:
        runs.append(pattern[start:p])
    return runs


def _glob_char(pattern: str, p: int, char: str) -> int:
    """Length of the pattern element at `p` if it matches `char`, else 0."""
    c = pattern[p]
    if c == "?":
        return 1
    if c != "[":
        return 1 if c == char else 0
    end = pattern.find("]", p + 2)
    if end < 0:
        return 1 if char == "[" else 0
    body = pattern[p + 1 : end]
    negate = body[:1] in ("!", "^")
    if negate:
        body = body[1:]
    hit = False
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            hit = hit or body[i] <= char <= body[i + 2]
            i += 3
        else:
            hit = hit or body[i] == char
            i += 1
    return end - p + 1 if hit != negate else 0


def _strip_variables(word: str) -> str:
    """`r$x` / `r${x}m` -> `rm`: unknown variables in a program word are empty in an agent's fresh shell."""
    out: list[str] = []
    i = 0
    while i < len(word):
        c = word[i]
        if c == "$" and i + 1 < len(word):
            if word[i + 1] == "{":
                end = word.find("}", i)
                i = len(word) if end < 0 else end + 1
                continue
            j = i + 1
            while j < len(word) and word[j] in _IDENT:
                j += 1
            if j > i + 1:
                i = j
                continue
        out.append(c)
        i += 1
    return "".join(out)


def program_name(word: str) -> tuple[str, tuple[str, ...]]:
    """The program a word runs and the tricks needed to see it (`/usr/bin/../bin/rm` -> `rm`, `python3` -> `python`)."""
    if word in _FAST_PROGRAMS:
        return _FAST_PROGRAMS[word], ()
    base = word.rstrip("/").rsplit("/", 1)[-1] if "/" in word else word
    if not base:
        return word, ()
    tricks: tuple[str, ...] = ()
    if len(base) > 64:  # no program has such a name: nothing to resolve
        return base, ()
    if "$" in base and "(#" not in base:
        stripped = _strip_variables(base)
        if stripped in _KNOWN_PROGRAM_SET:
            base, tricks = stripped, ("empty_expansion",)
    if ("*" in base or "?" in base or "[" in base) and base not in ("[", "[[") and set(base) <= _GLOB_ALPHABET:
        longest = max(_literal_runs(base), key=len, default="")  # a name the glob matches contains it
        matches = [known for known in KNOWN_PROGRAMS if longest in known and _glob_match(base, known)]
        if matches:  # a pattern that could stand for a watched program (`/???/r?`); `*.rs` is just a word
            tricks += ("glob",)
        if len(matches) == 1:
            base = matches[0]
    lowered = base.lower()
    if lowered != base and (lowered in _KNOWN_PROGRAM_SET or lowered in _PROGRAM_ALIASES):
        base, tricks = lowered, (*tricks, "case")
    return _PROGRAM_ALIASES.get(base, base), tricks


def expand_long_options(argv: list[str]) -> list[str]:
    """Expand unambiguous GNU long-option abbreviations of LONG_OPTIONS commands (argv[0] already normalised)."""
    program = argv[0]
    start = 1
    key = "mkfs" if program.startswith("mkfs.") else program
    if program == "git":
        start = _git_subcommand_index(argv)
        if start >= len(argv):
            return argv
        key = f"git {argv[start]}"
        start += 1
    if program == "find":
        return [f"-{a[2:]}" if a.startswith("--") and a[2:] in FIND_ACTIONS else a for a in argv]
    options = LONG_OPTIONS.get(key)
    if options is None:
        return argv
    out = argv[:start]
    for index in range(start, len(argv)):
        arg = argv[index]
        if arg == "--":
            out.extend(argv[index:])
            break
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            if name not in options and key not in _EXACT_ONLY:
                candidates = [option for option in options if option.startswith(name)]
                if len(candidates) == 1:
                    arg = f"--{candidates[0]}{eq}{value}"
        out.append(arg)
    return out


def _git_subcommand_index(argv: list[str]) -> int:
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in ("-C", "-c", "--git-dir", "--work-tree", "--namespace", "--exec-path", "--config-env"):
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            return i
    return i


def git_exec_configs(argv: tuple[str, ...] | list[str]) -> list[str]:
    """Values of `git -c key=value` for keys git runs through a shell."""
    values = []
    for i in range(1, min(len(argv) - 1, _git_subcommand_index(list(argv)))):
        if argv[i] == "-c":
            key, _, value = argv[i + 1].partition("=")
            if key.lower() in GIT_EXEC_CONFIG or (key.lower().startswith("alias.") and value.startswith("!")):
                values.append(value[1:] if value.startswith("!") else value)
    return values


def inline_code(command: ShellCommand) -> str:
    """The code an interpreter command runs inline (`python -c CODE`, `perl -e`, awk's program, a heredoc), or ''."""
    program, argv = command.program, command.argv
    if program in AWKS:
        i = 1
        while i < len(argv):
            arg = argv[i]
            if arg in ("-f", "--file"):
                return ""
            if arg in ("-F", "-v", "--assign", "--field-separator"):
                i += 2
                continue
            if arg.startswith("-") and arg != "-":
                i += 1
                continue
            return arg
        return ""
    options = CODE_OPTIONS.get(program)
    if options is None:
        return ""
    if program == "pwsh":
        return _powershell_code(argv)
    for i in range(1, len(argv)):
        arg = argv[i]
        if arg in options:
            return argv[i + 1] if i + 1 < len(argv) else ""
        if arg[:2] in options and arg[1] != "-":  # attached: `ruby -e'CODE'`, `python3 -c"CODE"`
            return arg[2:]
        # clusters: `python3 -Sc CODE`, `perl -lne CODE`; `--eval=CODE`
        if arg.startswith("--") and "=" in arg and arg.split("=", 1)[0] in options:
            return arg.split("=", 1)[1]
        if len(arg) > 2 and arg[0] == "-" and arg[1] != "-" and any(f"-{arg[-1]}" == o for o in options):
            return argv[i + 1] if i + 1 < len(argv) else ""
        if not arg.startswith("-"):
            return ""  # a script file: a heredoc would be its input, not its code
    for op, target in command.redirects:
        if op in ("<<", "<<-", "<<<"):
            return target
    return ""


_POWERSHELL_VALUE_OPTIONS = (
    "windowstyle", "executionpolicy", "ep", "ex", "version", "configurationname", "outputformat", "of",
    "inputformat", "if", "workingdirectory", "wd", "settingsfile",
)  # fmt: skip


def _powershell_code(argv: tuple[str, ...]) -> str:
    """`pwsh -c CODE`, `powershell -Comm CODE`, `-EncodedCommand B64` (UTF-16LE), or the bare command text."""
    i = 1
    while i < len(argv):
        name = argv[i].lower()
        if not name.startswith(("-", "/")):
            return " ".join(argv[i:])  # powershell runs its remaining arguments as a command
        name = name[1:]
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if name in ("e", "ec") or (len(name) >= 2 and "encodedcommand".startswith(name)):
            try:
                return base64.b64decode(value + "=" * (-len(value) % 4)).decode("utf-16-le", errors="replace")
            except (binascii.Error, ValueError):
                return value
        if name and "command".startswith(name):
            return " ".join(argv[i + 1 :])
        if name and "file".startswith(name):
            return ""  # a script file
        valued = name in ("w", "v") or any(option.startswith(name) for option in _POWERSHELL_VALUE_OPTIONS if name)
        i += 2 if valued else 1
    return ""


def _unescape_literal(body: str) -> str:
    """The value of a Python/JS/Perl-style string literal body (common escapes only)."""
    if "\\" not in body:
        return body
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "x" and i + 4 <= len(body):
                try:
                    out.append(chr(int(body[i + 2 : i + 4], 16)))
                    i += 4
                    continue
                except ValueError:
                    pass
            out.append({"n": "\n", "t": "\t", "r": "\r", "0": "\0"}.get(nxt, nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def embedded_shell(code: str, backticks: bool = False) -> list[str | list[str]]:
    """Shell commands an interpreter's code hands to a shell: a string (parse it) or an argv list (run as is)."""
    found: list[str | list[str]] = []
    for match in _EMBEDDED_LIST.finditer(code):
        items = [_unescape_literal(m.group(1) if m.group(1) is not None else m.group(2) or "") for m in
                 _STRING_LITERAL.finditer(match.group(1))]  # fmt: skip
        if items:
            found.append(items)
        if len(found) >= _MAX_EMBEDDED:
            return found
    for match in _EMBEDDED_STRING.finditer(code):
        literal = match.group(1)
        found.append(_unescape_literal(literal[1:-1]))
        if len(found) >= _MAX_EMBEDDED:
            return found
    if backticks:
        for match in _BACKTICK_CODE.finditer(code):
            found.append(match.group(1) or match.group(2) or match.group(3) or "")
            if len(found) >= _MAX_EMBEDDED:
                break
    return found


def _expand_braces(word: str) -> tuple[list[str], bool]:
    """Bash brace expansion over a word whose unquoted braces are sentinels. Returns (words, bound_hit)."""
    results: list[str] = []
    stack = [word]
    work = 0
    while stack:
        current = stack.pop()
        found = _find_brace(current)
        if found is None:
            results.append(current)
            if len(results) >= MAX_BRACE_WORDS:
                return results, bool(stack)
            continue
        open_, close, alternatives = found
        head, tail = current[:open_], current[close + 1 :]
        work += len(alternatives) * len(current)
        if work > 1 << 20:
            results.append(current)
            return results, True
        stack.extend(head + alt + tail for alt in reversed(alternatives))
    return results, False


def _find_brace(word: str) -> tuple[int, int, list[str]] | None:
    """First expandable `{a,b}` or `{1..3}` group: (open index, close index, alternatives)."""
    start = word.find(_BRACE_OPEN)
    while start >= 0:
        depth, commas, i = 0, [], start
        close = -1
        while i < len(word):
            c = word[i]
            if c == _BRACE_OPEN:
                depth += 1
            elif c == _BRACE_CLOSE:
                depth -= 1
                if depth == 0:
                    close = i
                    break
            elif c == _BRACE_COMMA and depth == 1:
                commas.append(i)
            i += 1
        if close < 0:
            return None
        if commas:
            bounds = [start, *commas, close]
            return start, close, [word[bounds[k] + 1 : bounds[k + 1]] for k in range(len(bounds) - 1)]
        sequence = _brace_sequence(word[start + 1 : close])
        if sequence:
            return start, close, sequence
        start = word.find(_BRACE_OPEN, start + 1)
    return None


def _brace_sequence(body: str) -> list[str] | None:
    """`1..5`, `a..e`, `1..10..2` -> the items (bounded)."""
    parts = body.split("..")
    if len(parts) not in (2, 3):
        return None
    try:
        step = abs(int(parts[2])) if len(parts) == 3 else 1
        first, last = int(parts[0]), int(parts[1])
    except ValueError:
        if len(parts[0]) == 1 and len(parts[1]) == 1 and len(parts) == 2:
            first, last, step = ord(parts[0]), ord(parts[1]), 1
            direction = 1 if last >= first else -1
            items = range(first, last + direction, direction)
            return [chr(c) for c in items[:MAX_BRACE_WORDS]]
        return None
    step = step or 1
    direction = step if last >= first else -step
    return [str(v) for v in range(first, last + (1 if direction > 0 else -1), direction)[:MAX_BRACE_WORDS]]


def _ansi_c(text: str, i: int, stop: str | None = "'") -> tuple[int, str]:
    """Decode a `$'...'` body starting at `i`; returns (index after the closing quote, value).

    With `stop=None` it decodes the whole rest of `text` (the escapes of `echo -e` and `printf`)."""
    out: list[str] = []
    n = len(text)
    while i < n:
        c = text[i]
        if c == stop:
            return i + 1, "".join(out).translate(_GUARD)
        if c != "\\" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        e = text[i + 1]
        i += 2
        if e in _ANSI_SIMPLE:
            out.append(_ANSI_SIMPLE[e])
        elif e in "xuU":
            limit = {"x": 2, "u": 4, "U": 8}[e]
            j = i
            while j < n and j - i < limit and text[j] in "0123456789abcdefABCDEF":
                j += 1
            if j == i:
                out.append("\\" + e)
            else:
                value = int(text[i:j], 16)
                out.append(chr(value) if value <= 0x10FFFF else "?")
                i = j
        elif e in "01234567":
            j = i - 1
            while j < n and j - (i - 1) < 3 and text[j] in "01234567":
                j += 1
            out.append(chr(int(text[i - 1 : j], 8) & 0xFF))
            i = j
        elif e == "c" and i < n:
            out.append(chr(ord(text[i]) & 0x1F))
            i += 1
        else:
            out.append("\\" + e)
    return n, "".join(out).translate(_GUARD)


def _skip_parens(text: str, i: int, depth: int = 1) -> int:
    """Index after the `)` that closes `depth` open parentheses; len(text) if none.

    Only reached past the nesting bound and for arithmetic: it ignores quoting, and it uses find/count (C) so that a
    hostile run of `$((` or `$(` costs one pass, not one Python step per character.
    """
    n = len(text)
    while True:
        close = text.find(")", i)
        if close < 0:
            return n
        depth += text.count("(", i, close) - 1
        if depth <= 0:
            return close + 1
        i = close + 1


def _matching_brace(text: str, i: int) -> int:
    """Index of the `}` closing a `${` whose body starts at i (nested braces counted); len(text) if none."""
    depth = 1
    while True:
        close = text.find("}", i)
        if close < 0:
            return len(text)
        depth += text.count("{", i, close) - 1
        if depth <= 0:
            return close
        i = close + 1


def _decode_payload(decoder: ShellCommand, payload: str) -> str | None:
    """What `echo PAYLOAD | <decoder>` prints, for base64/base32/hex decoders; None if not decodable."""
    compact = "".join(payload.split())
    try:
        if decoder.program in ("base64", "openssl"):
            raw = base64.b64decode(compact + "=" * (-len(compact) % 4))
        elif decoder.program == "base32":
            raw = base64.b32decode(compact + "=" * (-len(compact) % 8), casefold=True)
        else:  # xxd -r -p
            raw = binascii.unhexlify(compact)
    except (binascii.Error, ValueError):
        return None
    return raw.decode("utf-8", errors="replace")


def is_decoder(command: ShellCommand) -> bool:
    """base64 -d, base32 -d, `openssl base64 -d`, `openssl enc -d -base64`, `xxd -r`: turns an encoded payload back."""
    program, args = command.program, command.argv[1:]
    if program in ("base64", "base32", "basenc"):
        return any(a in ("-d", "--decode", "-D") or (a[:1] == "-" and a[1:2] != "-" and "d" in a) for a in args)
    if program == "openssl":
        return "-d" in args and any(a in ("base64", "-base64", "-a") for a in args)
    if program == "xxd":
        return any(a.startswith("-r") or a == "-revert" for a in args)
    return program in ("uudecode",)


def literal_output(command: ShellCommand) -> str | None:
    """What `echo ARGS` / `printf FORMAT ARGS` prints when every argument is literal; None otherwise."""
    argv = command.argv
    if command.program not in ("echo", "printf") or command.redirects or command.stage:
        return None
    if any("$" in arg or "`" in arg for arg in argv[1:]):
        return None
    args = list(argv[1:])
    if command.program == "echo":
        escapes, newline = False, True
        while args and len(args[0]) > 1 and args[0][0] == "-" and set(args[0][1:]) <= set("neE"):
            escapes = "e" in args[0] or (escapes and "E" not in args[0])
            newline = newline and "n" not in args[0]
            args.pop(0)
        text = " ".join(args)
        return (_ansi_c(text, 0, None)[1] if escapes else text) + ("\n" if newline else "")
    if args and args[0] == "--":
        args.pop(0)
    if not args:
        return None
    return _printf(args[0], args[1:])


def _printf(template: str, values: list[str]) -> str | None:
    """bash printf for %s %b %d %c %% with escapes; the format is reused while values remain (bounded)."""
    template = _ansi_c(template, 0, None)[1]
    out: list[str] = []
    index = 0
    for _ in range(len(values) + 1):
        i = 0
        while i < len(template):
            c = template[i]
            if c != "%":
                out.append(c)
                i += 1
                continue
            j = i + 1
            while j < len(template) and template[j] in "-+ #0123456789.":
                j += 1
            if j >= len(template):
                return None
            spec = template[j]
            if spec == "%":
                out.append("%")
            elif spec in "sbdic":
                value = values[index] if index < len(values) else ""
                index += 1
                if spec == "b":
                    value = _ansi_c(value, 0, None)[1]
                out.append(value[:1] if spec == "c" else value)
            else:
                return None
            i = j + 1
        if index >= len(values) or sum(map(len, out)) > MAX_PARSE_CHARS:
            break
    return "".join(out)


def reads_code_from_stdin(command: ShellCommand) -> bool:
    """The program runs as code what arrives on its standard input (`sh`, `bash -s`, `python3 -`, `perl`)."""
    program, argv = command.program, command.argv
    if program in SHELLS:
        flags, operands = shell_options(argv)
        if "c" in flags:
            return not operands and "xargs" in command.wrappers  # `xargs sh -c`: the code is the input
        return not operands or operands[0] == "-" or "s" in flags
    options = CODE_OPTIONS.get(program)
    if options is not None:
        for arg in argv[1:]:
            # inline code or a module (`-c`, `-e`, `-m`, `-r`, also ending a cluster like `-lne`): stdin is data
            if arg in options or arg in ("-m", "-M") or (arg.startswith("-") and arg[-1:] in "cemr" and arg != "-"):
                return False
            if not arg.startswith("-") or arg == "-":
                return arg == "-"
        return True
    if program in ("source", "."):
        return len(argv) > 1 and argv[1] in ("/dev/stdin", "-", "/proc/self/fd/0", "/dev/fd/0")
    return False


def shell_options(argv: tuple[str, ...] | list[str]) -> tuple[str, list[str]]:
    """A shell's option letters and its operands (`bash -lc CODE a b` -> ("lc", ["CODE", "a", "b"]))."""
    flags: list[str] = []
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if arg in ("-o", "+o", "-O", "+O", "--rcfile", "--init-file"):
            i += 2
            continue
        if arg.startswith("--"):
            i += 1
            continue
        if len(arg) > 1 and arg[0] in "-+":
            flags.append(arg[1:])
            i += 1
            continue
        break
    return "".join(flags), list(argv[i:])


# --- wrappers ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Options:
    """How a prefix wrapper's options are read before the command it runs."""

    with_arg: str = ""  # short options that take an argument (`sudo -u USER`)
    long_with_arg: frozenset[str] = frozenset()  # long options that take an argument when written without `=`
    stop: str = ""  # short options meaning "runs no command" (`command -v`, `sudo -l`)
    long_stop: frozenset[str] = frozenset()
    operands: int = 0  # operands before the command (`timeout DURATION`, `chroot NEWROOT`)
    default: tuple[str, ...] = ()  # command run when none is given (`xargs` -> echo)


# Prefix wrappers: they run the rest of their argv as a command.
PREFIX_WRAPPERS: dict[str, _Options] = {
    "sudo": _Options(
        with_arg="CDghprtTUu",
        long_with_arg=_names("user group host prompt close-from chdir role type other-user command-timeout chroot"),
        stop="lveKV",  # list, validate, edit (sudoedit), remove timestamp, version: no command runs
        long_stop=frozenset({"list", "edit", "validate", "version", "help", "remove-timestamp"}),
    ),
    "doas": _Options(with_arg="uC", stop="C"),
    "env": _Options(),  # read by _Reader._unwrap_env: NAME=value, -u NAME, -S "split string"
    "nohup": _Options(long_stop=frozenset({"help", "version"})),
    "nice": _Options(with_arg="n", long_with_arg=frozenset({"adjustment"})),
    "timeout": _Options(with_arg="sk", long_with_arg=frozenset({"signal", "kill-after"}), operands=1),
    "time": _Options(with_arg="fo", long_with_arg=frozenset({"format", "output"})),
    "command": _Options(stop="vV"),
    "exec": _Options(with_arg="a"),
    "builtin": _Options(),
    "stdbuf": _Options(with_arg="ioe", long_with_arg=frozenset({"input", "output", "error"})),
    "setsid": _Options(),
    "xargs": _Options(
        with_arg="adEILnPs",
        long_with_arg=frozenset({"arg-file", "delimiter", "max-args", "max-procs", "max-chars", "process-slot-var"}),
        default=("echo",),
    ),
    "chroot": _Options(long_with_arg=frozenset({"userspec", "groups"}), operands=1, default=("sh", "-i")),
    "ionice": _Options(with_arg="cn", stop="pPu"),
    "taskset": _Options(stop="p", operands=1),
    "pkexec": _Options(long_with_arg=frozenset({"user"})),
    "unbuffer": _Options(),
    "fakeroot": _Options(),
    "torsocks": _Options(),
    "proxychains": _Options(with_arg="f"),
    "proxychains4": _Options(with_arg="f"),
    "caffeinate": _Options(with_arg="tw"),
}
_SSH_WITH_ARG = "BbcDEeFIiJLlmOopQRSWw"
_FLOCK_OPTIONS = _Options(with_arg="wEc", long_with_arg=frozenset({"timeout", "conflict-exit-code"}))
_WATCH_OPTIONS = _Options(with_arg="nq", long_with_arg=frozenset({"interval", "differences"}))
_SCRIPT_OPTIONS = _Options(with_arg="cEIOBTm", long_with_arg=frozenset({"command", "log-io", "log-out", "log-in"}))


def _option_end(argv: list[str], spec: _Options) -> tuple[int, dict[str, str]] | None:
    """Index of the first operand after `spec`'s options, and the option values seen; None if a stop option."""
    values: dict[str, str] = {}
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return i + 1, values
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if name in spec.long_stop:
                return None
            if not eq and name in spec.long_with_arg:
                values[name] = argv[i + 1] if i + 1 < len(argv) else ""
                i += 2
            else:
                values[name] = value
                i += 1
            continue
        if len(arg) > 1 and arg[0] == "-":
            for j in range(1, len(arg)):
                letter = arg[j]
                if letter in spec.stop:
                    return None
                if letter in spec.with_arg:
                    if j == len(arg) - 1:
                        values[letter] = argv[i + 1] if i + 1 < len(argv) else ""
                        i += 1
                    else:
                        values[letter] = arg[j + 1 :]
                    break
                values[letter] = ""
            i += 1
            continue
        break
    return i, values


# --- the reader --------------------------------------------------------------------------------------------------


class _Reader:
    """Reads one text (a script, a `sh -c` string, a substitution body) into commands on the shared state."""

    __slots__ = (
        "braces",
        "closing",
        "depth",
        "functions",
        "heredocs",
        "mask",
        "n",
        "parens",
        "pending",
        "pending_function",
        "pos",
        "positional",
        "st",
        "subst_id",
        "text",
        "word_tricks",
        "wrappers",
        "zero",
    )

    def __init__(
        self,
        st: _State,
        text: str,
        depth: int,
        wrappers: tuple[str, ...] = (),
        positional: list[str] | None = None,
        subst_id: int = 0,
        pos: int = 0,
        closing: bool = False,
        functions: list[tuple[str, int]] | None = None,
        mask: tuple[bytes | str, bytes | str] | None = None,
    ) -> None:
        self.st = st
        self.text = text
        # `text` with every character that can end or change a word replaced by NUL: `mask.find(zero, i)` jumps over
        # a run of ordinary characters in C instead of a Python loop (bytes when ASCII: translate is much cheaper).
        # A `$(...)` body is read in place, so it shares its parent's mask.
        if mask is not None:
            self.mask, self.zero = mask
        elif text.isascii():
            self.mask: bytes | str = text.encode().translate(_MASK_BYTES)
            self.zero: bytes | str = b"\0"
        else:
            self.mask, self.zero = text.translate(_MASK_STR), "\0"
        self.pos = pos
        self.n = len(text)
        self.depth = depth
        self.wrappers = wrappers
        self.positional = positional if positional is not None else []
        self.subst_id = subst_id
        self.closing = closing  # a `$(...)` body: stop at the unmatched `)`
        self.heredocs: list[tuple[list[str], str, bool]] = []  # (redirect, delimiter, strip tabs) awaiting a newline
        self.pending: list[tuple[list[str], _Raw]] = []  # commands of the current line, emitted at its end
        self.functions = functions if functions is not None else []  # (name, brace depth) of open function bodies
        self.pending_function: str | None = None
        self.braces = 0
        self.parens = 0
        self.word_tricks: set[str] = set()

    # tokens ---------------------------------------------------------------------------------------------------

    def next_token(self, at_start: bool) -> tuple:
        text, n = self.text, self.n
        i = self.pos
        self.st.charge()
        while i < n:
            c = text[i]
            if c in _BLANKS:
                i += 1
            elif c == "\\" and i + 1 < n and text[i + 1] == "\n":
                i += 2
            elif c == "#":
                end = text.find("\n", i)
                i = n if end < 0 else end
            else:
                break
        else:
            self.pos = n
            return _EOF_TOKEN
        if c not in _WORD_SPECIAL:
            # fast path: a run of ordinary characters ending at a break is a word with nothing to expand or remove
            j = self.mask.find(self.zero, i + 1)  # from i + 1: text[i] may be a NUL, ordinary but masked
            if j < 0:
                j = n
            if j == n or text[j] in _BREAK:
                word = text[i:j]
                if j < n and text[j] in "<>" and word.isdigit() and not text.startswith("(", j + 1):
                    return self._read_redirect(j, word)  # `2>file`, `0<&3`
                self.pos = j
                return (_WORD, [word], word, True, _NO_TRICKS)
            self.pos = i
            return self._read_word_token()
        if c == "\n":
            self.pos = i + 1
            if self.heredocs:
                self._read_heredocs()
            return (_OP, "\n")
        if c == ";":
            for op in (";;&", ";;", ";&"):
                if text.startswith(op, i):
                    self.pos = i + len(op)
                    return (_OP, op)
            self.pos = i + 1
            return (_OP, ";")
        if c == "&":
            if text.startswith("&&", i):
                self.pos = i + 2
                return (_OP, "&&")
            if text.startswith("&>", i):
                return self._read_redirect(i, "")
            self.pos = i + 1
            return (_OP, "&")
        if c == "|":
            op = text[i : i + 2] if text.startswith(("||", "|&"), i) else "|"
            self.pos = i + len(op)
            return (_OP, op)
        if c == "(":
            if at_start and text.startswith("((", i):  # arithmetic command: no commands inside
                self.pos = _skip_parens(text, i + 2, 2)
                return (_OP, ";")
            self.pos = i + 1
            return (_OP, "(")
        if c == ")":
            self.pos = i + 1
            return (_OP, ")")
        if c in "<>" and not text.startswith("(", i + 1):
            return self._read_redirect(i, "")
        self.pos = i
        return self._read_word_token()

    def _read_word_token(self) -> tuple:
        start = self.pos
        self.word_tricks = set()
        fields, quoted, parts = self._read_word()
        raw = self.text[start : self.pos]
        tricks = self.word_tricks
        if quoted and parts > 1:
            tricks.add("quotes")
        if "tracked" in tricks:
            tricks.discard("tracked")
            if parts > 1:
                tricks.add("variable")
        plain = not quoted and len(fields) == 1 and fields[0] == raw
        return (_WORD, fields, raw, plain, tricks)

    def _read_redirect(self, i: int, fd: str) -> tuple:
        text = self.text
        self.st.charge()
        for op in ("&>>", "&>", ">>", ">&", ">|", "<<<", "<<-", "<<", "<>", "<&", ">", "<"):
            if text.startswith(op, i):
                break
        i += len(op)
        while i < self.n and text[i] in _BLANKS:
            i += 1
        target = ""
        if i < self.n and text[i] not in _BREAK:
            self.pos = i
            self.word_tricks = set()
            fields, _, _ = self._read_word()
            target = " ".join(fields)
        else:
            self.pos = i
        redirect = [fd + op, target]
        if op in ("<<", "<<-"):
            self.heredocs.append((redirect, target, op == "<<-"))
        return (_REDIR, redirect)

    def _read_heredocs(self) -> None:
        text, n = self.text, self.n
        for redirect, delimiter, strip_tabs in self.heredocs:
            lines: list[str] = []
            while self.pos < n:
                end = text.find("\n", self.pos)
                end = n if end < 0 else end
                line = text[self.pos : end]
                self.pos = end + 1
                if strip_tabs:
                    line = line.lstrip("\t")
                if line == delimiter:
                    break
                lines.append(line)
            redirect[1] = "\n".join(lines)
        self.pos = min(self.pos, n)
        self.heredocs = []

    # words ----------------------------------------------------------------------------------------------------

    def _read_word(self) -> tuple[list[str], bool, int]:
        """Read one word at self.pos: (fields after expansion and splitting, had quoting, number of pieces)."""
        text, n = self.text, self.n
        i = start = self.pos
        buf: list[str] = []
        quoted = False
        parts = 0
        budget = MAX_TOKENS - self.st.tokens  # a single word of 64 KiB of `$`, quotes or braces must stop too
        while i < n:
            if parts > budget:
                raise _Stop
            c = text[i]
            if c not in _WORD_SPECIAL:
                j = self.mask.find(self.zero, i + 1)
                if j < 0:
                    j = n
                buf.append(text[i:j])
                parts += 1
                i = j
                continue
            if c in _BREAK:
                if c in "<>" and i == start and i + 1 < n and text[i + 1] == "(":
                    i, piece = self._substitute(i + 2, c)
                    buf.append(piece)
                    parts += 1
                    continue
                break
            if c == "'":
                end = text.find("'", i + 1)
                end = n if end < 0 else end
                buf.append(text[i + 1 : end])
                i = end + 1
                quoted = True
                parts += 1
            elif c == '"':
                i = self._read_dquote(i + 1, buf)
                quoted = True
                parts += 1
            elif c == "\\":
                if i + 1 >= n:
                    buf.append("\\")
                    i += 1
                elif text[i + 1] == "\n":
                    i += 2
                    if buf and i < n and text[i] not in _BREAK:
                        self.word_tricks.add("continuation")
                else:
                    buf.append(text[i + 1])
                    i += 2
                    quoted = True
                    parts += 1
            elif c == "$":
                i, piece, was_quoted = self._read_dollar(i, False)
                quoted = quoted or was_quoted
                if piece:
                    buf.append(piece)
                    parts += 1
            elif c == "`":
                i, piece = self._read_backtick(i + 1)
                buf.append(piece)
                parts += 1
            elif c == "{":
                buf.append(_BRACE_OPEN)
                i += 1
                parts += 1
            elif c == ",":
                buf.append(_BRACE_COMMA)
                i += 1
            else:  # "}"
                buf.append(_BRACE_CLOSE)
                i += 1
                parts += 1
        self.pos = i
        self.st.tokens += parts
        return self._fields("".join(buf), quoted), quoted, parts

    def _fields(self, word: str, quoted: bool) -> list[str]:
        if _BRACE_OPEN in word and len(word) <= 4096:
            words, bound = _expand_braces(word)
            if bound:
                self.st.truncated = True
            if len(words) > 1:
                self.word_tricks.add("brace")
        else:
            words = [word]
        fields: list[str] = []
        for w in words:
            if _BRACE_OPEN in w or _BRACE_COMMA in w or _BRACE_CLOSE in w:
                w = w.translate(_UNBRACE)
            if _SPLIT in w:
                fields.extend(f for f in w.split(_SPLIT) if f)
            elif w or quoted:
                fields.append(w)
        return fields

    def _read_dquote(self, i: int, buf: list[str]) -> int:
        text, n = self.text, self.n
        while i < n:
            c = text[i]
            if c == '"':
                return i + 1
            if c == "\\" and i + 1 < n:
                nxt = text[i + 1]
                if nxt == "\n":
                    i += 2
                elif nxt in '$`"\\':
                    buf.append(nxt)
                    i += 2
                else:
                    buf.append("\\")
                    i += 1
            elif c == "$":
                self.st.charge()
                i, piece, _ = self._read_dollar(i, True)
                buf.append(piece)
            elif c == "`":
                self.st.charge()
                i, piece = self._read_backtick(i + 1, quoted=True)
                buf.append(piece)
            else:
                j = i + 1
                while j < n and text[j] not in _DQUOTE_SPECIAL:
                    j += 1
                buf.append(text[i:j])
                i = j
        return n  # unterminated: bash would wait for more input; we read to the end

    def _read_dollar(self, i: int, quoted: bool) -> tuple[int, str, bool]:
        """Expand the `$...` at i. Returns (next index, text, whether it was a quoting form like $'...')."""
        text, n = self.text, self.n
        nxt = text[i + 1] if i + 1 < n else ""
        if nxt == "(":
            if text.startswith("$((", i):
                end = _skip_parens(text, i + 3, 2)
                return end, text[i:end], False
            j = i + 3
            while j < n and text[j].isdigit():
                j += 1
            if text.startswith("$(#", i) and j > i + 3 and j < n and text[j] == ")":  # our own placeholder
                return j + 1, text[i : j + 1], False
            end, piece = self._substitute(i + 2, "$", quoted)
            return end, piece, False
        if nxt == "{":
            return self._read_braced(i + 2, quoted)
        if nxt == "'" and not quoted:
            end, value = _ansi_c(text, i + 2)
            self.st.charge((end - i) // 8)  # decoding escapes costs more than a plain piece
            self.word_tricks.add("ansi_c")
            return end, value, True
        if nxt == '"' and not quoted:
            buf: list[str] = []
            end = self._read_dquote(i + 2, buf)
            return end, "".join(buf), True
        if nxt in _IDENT_START:
            j = i + 2
            while j < n and text[j] in _IDENT:
                j += 1
            return j, self._variable(text[i + 1 : j], quoted), False
        if nxt in "@*":
            value = " ".join(self.positional[1:])
            if not value:
                self.word_tricks.add("empty_expansion")
            return i + 2, value if quoted else value.translate(_WS_TO_SPLIT), False
        if nxt.isdigit():
            return i + 2, self._positional(int(nxt)), False
        if nxt == "#":
            return i + 2, str(max(0, len(self.positional) - 1)), False
        if nxt and nxt in "?$!-":
            return i + 2, "$" + nxt, False
        return i + 1, "$", False

    def _positional(self, index: int) -> str:
        if index < len(self.positional):
            return self.positional[index]
        if index == 0:
            return "sh"
        self.word_tricks.add("empty_expansion")
        return ""

    def _variable(self, name: str, quoted: bool) -> str:
        if name == "IFS":
            self.word_tricks.add("ifs")
            return " " if quoted else _SPLIT
        value = self.st.variables.get(name)
        if value is None:
            return "$" + name
        self.word_tricks.add("tracked")
        return value if quoted else value.translate(_WS_TO_SPLIT)

    def _read_braced(self, i: int, quoted: bool) -> tuple[int, str, bool]:
        """`${...}` starting after the brace."""
        text = self.text
        end = _matching_brace(text, i)
        body = text[i:end]
        after = min(end + 1, self.n)
        j = 0
        while j < len(body) and (body[j] in _IDENT or (j == 0 and body[j] in "@*")):
            j += 1
            if j == 1 and body[0] in "@*":
                break
        name, rest = body[:j], body[j:]
        if not name:
            return after, "${" + body + "}", False
        if name == "IFS":
            self.word_tricks.add("ifs")
            return after, " " if quoted else _SPLIT, False
        value: str | None
        if name.isdigit():
            value = self._positional(int(name))
        elif name in ("@", "*"):
            value = " ".join(self.positional[1:])
        else:
            value = self.st.variables.get(name)
            if value is not None:
                self.word_tricks.add("tracked")
        known = value is not None or name in _ENV_DEFAULTS
        shown = value if value is not None else "$" + name
        if not rest:
            return after, shown if quoted else shown.translate(_WS_TO_SPLIT), False
        if rest[0] == ":" and rest[1:2] not in ("-", "=", "+", "?"):  # ${NAME:offset:length}
            base = value if value is not None else _ENV_DEFAULTS.get(name)
            sliced = _slice(base, rest[1:]) if base is not None else None
            return after, sliced if sliced is not None else "${" + body + "}", False
        operator = rest[:2] if rest[:1] == ":" else rest[:1]
        word = rest[len(operator) :]
        if operator in (":-", "-", ":=", "="):
            if known and (value != "" or operator in ("-", "=")):
                return after, shown if quoted else shown.translate(_WS_TO_SPLIT), False
            return after, self._cook_fragment(word, quoted), False
        if operator in (":+", "+"):
            return after, self._cook_fragment(word, quoted) if known else "", False
        return after, shown, False

    def _cook_fragment(self, fragment: str, quoted: bool) -> str:
        """The value of a word fragment such as the default in `${x:-r'm'}` (expansions included)."""
        if self.depth >= MAX_DEPTH:
            self.st.truncated = True
            return fragment
        child = _Reader(self.st, fragment, self.depth + 1, self.wrappers, self.positional, self.subst_id)
        pieces: list[str] = []
        while child.pos < child.n:
            c = fragment[child.pos]
            if c in _BREAK:
                pieces.append(c)
                child.pos += 1
                continue
            fields, _, _ = child._read_word()
            pieces.append(" ".join(fields))
        self.word_tricks |= child.word_tricks
        value = "".join(pieces)
        return value if quoted else value.translate(_WS_TO_SPLIT)

    def _read_backtick(self, i: int, quoted: bool = False) -> tuple[int, str]:
        text, n = self.text, self.n
        inner: list[str] = []
        while i < n:
            c = text[i]
            if c == "`":
                i += 1
                break
            if c == "\\" and i + 1 < n and text[i + 1] in "`\\$":
                inner.append(text[i + 1])
                i += 2
                continue
            j = i + 1
            while j < n and text[j] not in "`\\":
                j += 1
            inner.append(text[i:j])
            i = j
        body = "".join(inner)
        if not body.strip():
            return i, ""
        if self.depth >= MAX_DEPTH:
            self.st.truncated = True
            return i, "`" + body + "`"
        sid = self._new_substitution()
        before = len(self.st.commands)
        self._charge(len(body))
        _Reader(self.st, body.translate(_GUARD), self.depth + 1, self.wrappers, self.positional, sid).parse()
        return i, self._substitution_value(before, sid, "$", quoted)

    def _substitute(self, i: int, kind: str, quoted: bool = False) -> tuple[int, str]:
        """`$(` / `<(` / `>(` body starting at i, read in place. Returns (index after `)`, placeholder or value)."""
        if self.depth >= MAX_DEPTH:
            self.st.truncated = True
            end = _skip_parens(self.text, i)
            return end, self.text[i - 2 : end]
        sid = self._new_substitution()
        before = len(self.st.commands)
        child = _Reader(
            self.st, self.text, self.depth + 1, self.wrappers, self.positional, sid, pos=i, closing=True,
            mask=(self.mask, self.zero),
        )  # fmt: skip
        child.parse()
        return child.pos, self._substitution_value(before, sid, kind, quoted)

    def _substitution_value(self, before: int, sid: int, kind: str, quoted: bool) -> str:
        """The word text a substitution leaves: its output when that is known (`$(printf 'r%s' m)`, `r$()m`), else a
        placeholder naming it."""
        if kind != "$":
            return f"{kind}(#{sid})"
        added = self.st.commands[before:]
        if not added:
            return ""  # `r$()m` is `rm`
        output = literal_output(added[0]) if len(added) == 1 else None
        if output is None or len(output) > MAX_VARIABLE_CHARS:
            return f"$(#{sid})"
        self.word_tricks.add("substitution")
        output = output.rstrip("\n")
        return output if quoted else output.translate(_WS_TO_SPLIT)

    def _new_substitution(self) -> int:
        self.st.substitutions += 1
        return self.st.substitutions

    def _charge(self, chars: int) -> None:
        self.st.work += chars
        if self.st.work > MAX_WORK_CHARS:
            raise _Stop

    # commands -------------------------------------------------------------------------------------------------

    def parse(self) -> None:
        """Read commands until the end of the text (or the `)` closing a substitution)."""
        try:
            self._parse_list()
        finally:
            if self.pending:
                self._flush()

    def _parse_list(self) -> None:
        st = self.st
        words: list[str] = []
        redirects: list[list[str]] = []
        assignments: list[str] = []
        tricks: set[str] = set()
        word_tricks: dict[int, set[str]] = {}
        stage = 0
        pipeline = self._new_pipeline()
        mode = ""  # "header": for/select list; "case": before `in`; "pattern": case pattern before `)`
        case_depth = 0
        while True:
            at_start = not words and not assignments and not redirects
            token = self.next_token(at_start and not mode)
            kind = token[0]
            if kind == _WORD:
                _, fields, raw, plain, _ = token
                if mode:
                    if mode == "case" and raw == "in":
                        mode = "pattern"
                    elif mode == "pattern" and raw == "esac":
                        mode = ""
                        case_depth = max(0, case_depth - 1)
                    continue
                if self.pending_function == "":
                    self.pending_function = raw  # `function NAME`
                    continue
                if at_start and plain and raw in _KEYWORDS:
                    mode = self._keyword(raw)
                    if mode == "case":
                        case_depth += 1
                    continue
                if not words and _is_assignment(raw):
                    if raw.endswith("=") and self.text.startswith("(", self.pos):  # array: a=(x y)
                        end = _skip_parens(self.text, self.pos + 1)
                        fields = [raw + self.text[self.pos : end]]
                        self.pos = end
                    assignments.append(" ".join(fields))
                    continue
                word_tricks_here = token[4]
                if word_tricks_here:
                    if "ifs" in word_tricks_here:
                        tricks.add("ifs")
                    for k in range(len(words), len(words) + len(fields)):
                        word_tricks[k] = word_tricks_here
                words.extend(fields)
                continue
            if kind == _REDIR:
                if not mode:
                    redirects.append(token[1])
                continue
            if kind == _EOF:
                self._finish(words, redirects, assignments, tricks, word_tricks, pipeline, stage)
                return
            op = token[1]
            if mode == "pattern":
                if op == ")":
                    mode = ""
                continue
            if mode == "case" or (mode == "header" and op not in (";", "\n", "&")):
                continue
            if op in ("|", "|&"):
                self._finish(words, redirects, assignments, tricks, word_tricks, pipeline, stage)
                words, redirects, assignments, tricks, word_tricks = [], [], [], set(), {}
                stage += 1
                continue
            if op == "(":
                if len(words) == 1 and not assignments and self._next_is_close_paren():
                    self.pending_function = words[0]  # `name() { ...; }`
                    words, word_tricks = [], {}
                else:
                    self.parens += 1
                continue
            if op == ")":
                if self.closing and self.parens == 0:
                    self._finish(words, redirects, assignments, tricks, word_tricks, pipeline, stage)
                    return
                self.parens = max(0, self.parens - 1)
                if words or redirects or assignments:
                    self._finish(words, redirects, assignments, tricks, word_tricks, pipeline, stage)
                    words, redirects, assignments, tricks, word_tricks = [], [], [], set(), {}
                continue
            # ; & && || newline ;; ;& ;;&
            if words or redirects or assignments or stage:
                self._finish(words, redirects, assignments, tricks, word_tricks, pipeline, stage)
                words, redirects, assignments, tricks, word_tricks = [], [], [], set(), {}
                pipeline, stage = self._new_pipeline(), 0
                if len(st.commands) >= MAX_COMMANDS:
                    raise _Stop
            mode = "pattern" if op in (";;", ";&", ";;&") and case_depth else ""
            if op == "\n" and self.pending:
                self._flush()

    def _keyword(self, word: str) -> str:
        """Handle a reserved word at a command start; returns the new reading mode."""
        if word in ("for", "select"):
            return "header"
        if word == "case":
            return "case"
        if word == "function":
            self.pending_function = ""
        elif word == "{":
            self.braces += 1
            if self.pending_function:
                self.functions.append((self.pending_function, self.braces))
                self.pending_function = None
        elif word == "}":
            if self.functions and self.functions[-1][1] == self.braces:
                self.functions.pop()
            self.braces = max(0, self.braces - 1)
        return ""

    def _next_is_close_paren(self) -> bool:
        i = self.pos
        while i < self.n and self.text[i] in _BLANKS:
            i += 1
        if i < self.n and self.text[i] == ")":
            self.pos = i + 1
            return True
        return False

    def _new_pipeline(self) -> int:
        self.st.pipelines += 1
        return self.st.pipelines - 1

    def _finish(
        self,
        words: list[str],
        redirects: list[list[str]],
        assignments: list[str],
        tricks: set[str],
        word_tricks: dict[int, set[str]],
        pipeline: int,
        stage: int,
    ) -> None:
        if not words and not redirects and not assignments:
            return
        if not words:
            for assignment in assignments:
                self.st.assign(assignment)
        elif words[0] in _DECLARE:
            for arg in words[1:]:
                if _is_assignment(arg):
                    self.st.assign(arg)
        function = self.functions[-1][0] if self.functions else ""
        raw = _Raw(redirects, assignments, pipeline, stage, tricks, function, word_tricks, len(words))
        self.pending.append((words, raw))
        if len(self.pending) >= MAX_COMMANDS:
            self._flush()

    def _flush(self) -> None:
        pending, self.pending = self.pending, []
        first = len(self.st.commands)
        for words, raw in pending:
            self._emit(list(words), raw, self.wrappers, self.depth)
        self._decode_pipelines(first)

    # unwrapping -----------------------------------------------------------------------------------------------

    def _emit(self, argv: list[str], raw: _Raw, wrappers: tuple[str, ...], depth: int) -> None:
        """Unwrap prefix wrappers and code wrappers, then record the command (and the commands it embeds)."""
        hops = 0
        while argv:
            name = program_name(argv[0])[0]
            spec = PREFIX_WRAPPERS.get(name)
            if spec is not None:
                hops += 1
                if hops > MAX_WRAPPERS:
                    self.st.truncated = True
                    raw.tricks = raw.tricks | {NESTING_MARKER}
                    break
                inner = self._unwrap_prefix(name, argv, spec, raw)
                if inner is None:
                    break
                argv, wrappers = inner, (*wrappers, name)
                continue
            unwrap = _CODE_WRAPPERS.get(name) or (_shell_code if name in SHELLS else None)
            if unwrap is None:
                break
            found = unwrap(argv)
            if found is None:
                break
            label, code, positional = found
            if isinstance(code, list):  # busybox, env -S, runuser -u: another argv
                argv, wrappers = code, (*wrappers, label)
                continue
            if depth + 1 > MAX_DEPTH:
                self.st.truncated = True
                raw.tricks = raw.tricks | {NESTING_MARKER}
                break
            self._charge(len(code))
            reader = _Reader(
                self.st, code.translate(_GUARD), depth + 1, (*wrappers, label), positional, self.subst_id,
                functions=list(self.functions),
            )  # fmt: skip
            reader.parse()
            return
        if argv or raw.redirects or raw.assignments:
            self._record(argv, raw, wrappers, depth)

    def _unwrap_prefix(self, name: str, argv: list[str], spec: _Options, raw: _Raw) -> list[str] | None:
        if name == "env":
            return self._unwrap_env(argv, raw)
        found = _option_end(argv, spec)
        if found is None:
            return None
        index, values = found
        index += spec.operands
        inner = argv[index:] if index < len(argv) else list(spec.default)
        if not inner and name in ("sudo", "doas") and ("s" in values or "i" in values):
            inner = ["sh"]  # `sudo -s` / `sudo -i` with no command: a root shell reading standard input
        if name == "xargs" and inner and raw.stage > 0:
            inner = self._xargs_input(inner, raw, values.get("I") or values.get("replace") or "")
        return inner or None

    def _xargs_input(self, inner: list[str], raw: _Raw, replace: str) -> list[str]:
        """`echo / | xargs rm -rf` runs `rm -rf /`: add the words a literal echo/printf stage feeds xargs."""
        for command in reversed(self.st.commands):
            if command.pipeline == raw.pipeline and command.stage == raw.stage - 1:
                if command.program not in ("echo", "printf"):
                    break
                words = [w for a in command.argv[1:] if not a.startswith("-") for w in a.split()]
                if replace:
                    return [arg.replace(replace, " ".join(words)) for arg in inner]
                return [*inner, *words]
            if command.pipeline != raw.pipeline:
                break
        return inner

    def _unwrap_env(self, argv: list[str], raw: _Raw) -> list[str] | None:
        i = 1
        while i < len(argv):
            arg = argv[i]
            if arg in ("-u", "--unset", "-C", "--chdir"):
                i += 2
            elif arg in ("-S", "--split-string") or arg.startswith(("-S", "--split-string=")):
                separate = arg in ("-S", "--split-string")
                if separate:
                    value = argv[i + 1] if i + 1 < len(argv) else ""
                elif arg.startswith("--"):
                    value = arg.split("=", 1)[1]
                else:
                    value = arg[2:]
                split = _Reader(self.st, value.translate(_GUARD), self.depth)
                words: list[str] = []
                while True:
                    token = split.next_token(False)
                    if token[0] == _EOF:
                        break
                    if token[0] == _WORD:
                        words.extend(token[1])
                rest = argv[i + (2 if separate else 1) :]
                return self._unwrap_env(["env", *words, *rest], raw)
            elif arg == "--":
                i += 1
                break
            elif arg.startswith("-"):
                i += 1
            elif "=" in arg and _is_assignment(arg):
                raw.assignments = [*raw.assignments, arg]
                i += 1
            else:
                break
        return argv[i:] if i < len(argv) else None

    def _record(self, argv: list[str], raw: _Raw, wrappers: tuple[str, ...], depth: int) -> None:
        tricks = raw.tricks
        if raw.word_tricks and argv:
            word_tricks = raw.word_tricks.get(raw.length - len(argv))  # prefix wrappers keep a tail of the words
            if word_tricks:
                tricks = tricks | word_tricks
        path = ""
        if argv:
            path = argv[0]
            name, name_tricks = program_name(path)
            if name_tricks:
                tricks = tricks | set(name_tricks)
            argv[0] = name
            if (name in _EXPANDABLE or name.startswith("mkfs.")) and "--" in " ".join(argv):
                argv = expand_long_options(argv)
        command = ShellCommand(
            tuple(argv),
            path,
            wrappers,
            raw.pipeline,
            raw.stage,
            tuple([(r[0], r[1]) for r in raw.redirects]) if raw.redirects else (),
            self.subst_id > 0,
            self.subst_id,
            tuple(raw.assignments) if raw.assignments else (),
            raw.function,
            tuple(sorted(tricks)) if tricks else (),
        )
        self.st.add(command)
        if argv and argv[0] in _EMBEDDING:
            self._embedded(command, raw, wrappers, depth)

    def _embedded(self, command: ShellCommand, raw: _Raw, wrappers: tuple[str, ...], depth: int) -> None:
        """Commands a recorded command runs in turn: find -exec, tar/rsync/git hooks, interpreter code, heredocs."""
        program, argv = command.program, command.argv
        if program == "find":
            for segment in _find_exec_segments(argv):
                sub = _Raw([], [], raw.pipeline, raw.stage, set(), raw.function)
                self._emit(segment, sub, (*wrappers, "find -exec"), depth)
            return
        codes: list[str | list[str]] = []
        label = program
        if program == "tar":
            codes = _tar_commands(argv)
        elif program == "rsync":
            codes = _rsync_commands(argv)
        elif program == "git":
            codes = list(git_exec_configs(argv)) if "-c" in argv else []
            label = "git -c"
        elif program in CODE_OPTIONS or program in AWKS:
            code = inline_code(command)
            if code:
                codes = embedded_shell(code, backticks=program in ("perl", "ruby", "php"))
                label = f"{program} -c"
        elif program in SHELLS and not shell_options(argv)[1]:
            codes = [target for op, target in command.redirects if op in ("<<", "<<-", "<<<")]
            label = f"{program} <<"
        for code in codes[:_MAX_EMBEDDED]:
            if depth + 1 > MAX_DEPTH:
                self.st.truncated = True
                return
            sub = _Raw([], [], raw.pipeline, raw.stage, set(), raw.function)
            if isinstance(code, list):
                self._emit(code, sub, (*wrappers, label), depth + 1)
            elif code.strip():
                self._charge(len(code))
                reader = _Reader(self.st, code.translate(_GUARD), depth + 1, (*wrappers, label), None, self.subst_id)
                reader.parse()

    def _decode_pipelines(self, first: int) -> None:
        """`echo PAYLOAD | sh`, `echo PAYLOAD | base64 -d | sh`: read the (decoded) payload as the script it is."""
        commands = self.st.commands
        index = first
        while index < len(commands):
            sink = commands[index]
            index += 1
            if sink.stage not in (1, 2) or not reads_code_from_stdin(sink):
                continue
            stages = {c.stage: c for c in commands[first:index] if c.pipeline == sink.pipeline}
            source = stages.get(0)
            payload = literal_output(source) if source is not None else None
            if payload is None:
                continue
            if sink.stage == 2:
                decoder = stages.get(1)
                if decoder is None or not is_decoder(decoder):
                    continue
                payload = _decode_payload(decoder, payload)
                label = f"{decoder.program} -d | {sink.program}"
            else:
                label = f"{source.program} | {sink.program}"  # type: ignore[union-attr]
            if not payload or not payload.strip():
                continue
            if self.depth + 1 > MAX_DEPTH:
                self.st.truncated = True
                return
            self._charge(len(payload))
            _Reader(self.st, payload.translate(_GUARD), self.depth + 1, (*sink.wrappers, label)).parse()


def _shell_code(argv: list[str]) -> tuple[str, str, list[str]] | None:
    """`bash -lc CODE $0 $1...` -> ("bash -c", CODE, [$0, $1...]); None without -c or without code."""
    flags, operands = shell_options(argv)
    if "c" not in flags or not operands:
        return None
    return f"{program_name(argv[0])[0]} -c", operands[0], operands[1:]


def _eval_code(argv: list[str]) -> tuple[str, str, list[str]] | None:
    return ("eval", " ".join(argv[1:]), []) if len(argv) > 1 else None


def _busybox(argv: list[str]) -> tuple[str, list[str], list[str]] | None:
    return ("busybox", argv[1:], []) if len(argv) > 1 and not argv[1].startswith("-") else None


def _ssh_code(argv: list[str]) -> tuple[str, str, list[str]] | None:
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if len(arg) > 1 and arg[0] == "-":
            letters = arg[1:]
            for j, letter in enumerate(letters):
                if letter in _SSH_WITH_ARG:
                    i += 1 if j < len(letters) - 1 else 2
                    break
            else:
                i += 1
            continue
        break
    if i + 1 >= len(argv):
        return None
    return "ssh", " ".join(argv[i + 1 :]), []


def _su_code(argv: list[str]) -> tuple[str, str | list[str], list[str]] | None:
    """`su [-] [user] -c CODE`, `runuser -u user -- cmd`: options may follow the user name."""
    code = None
    user_flag = False
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in ("-c", "--command", "--session-command") and i + 1 < len(argv):
            code = argv[i + 1]
            i += 2
            continue
        if arg.startswith(("--command=", "--session-command=")):
            code = arg.split("=", 1)[1]
        elif arg in ("-u", "--user"):
            user_flag = True
            i += 2
            continue
        elif arg == "--":
            if user_flag and i + 1 < len(argv):
                return "runuser", argv[i + 1 :], []
            break
        elif len(arg) > 2 and arg[0] == "-" and arg[1] != "-" and "c" in arg and i + 1 < len(argv):
            code = argv[i + 1]
            i += 2
            continue
        i += 1
    if code is not None:
        return f"{program_name(argv[0])[0]} -c", code, []
    return program_name(argv[0])[0], ["sh"], []  # no command: a login shell reading standard input


def _flock_code(argv: list[str]) -> tuple[str, str | list[str], list[str]] | None:
    found = _option_end(argv, _FLOCK_OPTIONS)
    if found is None:
        return None
    index, _ = found
    rest = argv[index + 1 :]  # after the lock file
    if len(rest) >= 2 and rest[0] in ("-c", "--command"):
        return "flock -c", rest[1], []
    return ("flock", rest, []) if rest else None


def _watch_code(argv: list[str]) -> tuple[str, str | list[str], list[str]] | None:
    found = _option_end(argv, _WATCH_OPTIONS)
    if found is None or found[0] >= len(argv):
        return None
    index, values = found
    if "x" in values or "exec" in values:
        return "watch", argv[index:], []
    return "watch", " ".join(argv[index:]), []


def _script_code(argv: list[str]) -> tuple[str, str, list[str]] | None:
    found = _option_end(argv, _SCRIPT_OPTIONS)
    if found is None:
        return None
    values = found[1]
    code = values.get("c") or values.get("command")
    return ("script -c", code, []) if code else None


_CODE_WRAPPERS: dict[str, Callable[[list[str]], tuple[str, str | list[str], list[str]] | None]] = {
    "eval": _eval_code,
    "busybox": _busybox,
    "ssh": _ssh_code,
    "su": _su_code,
    "runuser": _su_code,
    "flock": _flock_code,
    "watch": _watch_code,
    "script": _script_code,
}


# Programs whose command runs further commands (find -exec, tar/rsync/git hooks, interpreter code, shell heredocs).
_EMBEDDING = frozenset({"find", "tar", "rsync", "git", *CODE_OPTIONS, *AWKS, *SHELLS})
_EXPANDABLE = frozenset({"find", "git", *(key for key in LONG_OPTIONS if " " not in key)})
# Program words that need no normalisation (the common case), mapped to their program name.
_FAST_PROGRAMS: dict[str, str] = {
    name: _PROGRAM_ALIASES.get(name, name)
    for name in (*KNOWN_PROGRAMS, *_PROGRAM_ALIASES, "ls", "git", "echo", "printf", "cd", "grep", "sed", "npm",
                 "pip", "pip3", "docker", "kubectl", "make", "cargo", "go", "jq", "head", "tail", "mkdir", "touch",
                 "python3", "node", "npx", "yarn", "pytest", "awk", "xargs", "sort", "wc", "true", "false", "test")
}  # fmt: skip


def _find_exec_segments(argv: tuple[str, ...]) -> list[list[str]]:
    """The commands `find ... -exec CMD {} ;` runs."""
    segments: list[list[str]] = []
    i = 1
    while i < len(argv):
        if argv[i] in ("-exec", "-execdir", "-ok", "-okdir"):
            j = i + 1
            while j < len(argv) and argv[j] not in (";", "+"):
                j += 1
            if j > i + 1:
                segments.append(list(argv[i + 1 : j]))
            i = j
        i += 1
    return segments


def _tar_commands(argv: tuple[str, ...]) -> list[str | list[str]]:
    """tar runs `--checkpoint-action=exec=CMD`, `--to-command=CMD`, `-I CMD` / `--use-compress-program=CMD`."""
    found: list[str | list[str]] = []
    for i, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name == "--checkpoint-action" and value.startswith("exec="):
            found.append(value[5:])
        elif name in ("--to-command", "--use-compress-program", "--info-script", "--new-volume-script") and value:
            found.append(value)
        elif arg == "-I" and i + 1 < len(argv):
            found.append(argv[i + 1])
    return found


def _rsync_commands(argv: tuple[str, ...]) -> list[str | list[str]]:
    """rsync runs its remote shell `-e CMD` / `--rsh=CMD` (GTFOBins: `rsync -e 'sh -c ...'`)."""
    found: list[str | list[str]] = []
    for i, arg in enumerate(argv):
        if arg in ("-e", "--rsh") and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("--rsh="):
            found.append(arg[6:])
    return found


def _slice(value: str, spec: str) -> str | None:
    offset, _, length = spec.partition(":")
    try:
        start = int(offset.strip() or "0")
        if start < 0:
            start = max(0, len(value) + start)
        if not length:
            return value[start:]
        count = int(length.strip())
        return value[start : start + count] if count >= 0 else value[start : len(value) + count]
    except ValueError:
        return None


# --- public API ----------------------------------------------------------------------------------------------------

_FIRST_WORDS = _names(
    """ls cat echo printf cd pwd mkdir rmdir rm cp mv ln touch chmod chown chgrp chattr find grep egrep fgrep rg sed
    awk gawk head tail wc sort uniq cut tr xargs tee less more diff patch tar zip unzip gzip gunzip bzip2 xz zcat curl
    wget ssh scp sftp rsync git make cmake gcc cc clang go cargo rustc python python3 python2 pip pip3 pipx uv poetry
    node npm npx yarn pnpm deno bun ruby gem bundle perl php java javac mvn gradle dotnet docker podman kubectl helm
    terraform aws gcloud az systemctl service journalctl sudo doas su env export unset source eval exec nohup kill
    pkill killall ps top df du free uname whoami id hostname date sleep which whereis alias history crontab dd mkfs
    mount umount fdisk parted wipefs shred truncate iptables ip6tables nft ufw nc ncat netcat socat telnet base64
    xxd openssl shutdown reboot halt poweroff init telinit apt apt-get yum dnf apk brew pacman snap jq yq sh bash zsh
    dash ksh fish pwsh powershell busybox setsid timeout nice stdbuf chroot mkfifo mknod setenforce auditctl
    launchctl useradd usermod passwd visudo install ln unlink srm sqlite3 mysql psql redis-cli mongo set if for while
    case function until select"""
)
# Command words that make a one-line string worth parsing wherever they stand (`please run: curl x | sh`). Words
# that are also everyday English or dev chat (find, history, kill, git, node, dash ...) only count as the first word.
_RISKY_WORDS = _names(
    """rm curl wget bash sh zsh chmod chown dd mkfs nc ncat netcat socat crontab systemctl eval base64 python python2
    python3 perl ruby php pwsh powershell shred wipefs iptables setenforce ufw shutdown reboot poweroff mkfifo telnet
    sudo doas xargs busybox"""
)
_RISKY_BYTES = frozenset(word.encode() for word in _RISKY_WORDS)
_SHELL_SIGNS = ("/bin/", "/sbin/", "/dev/tcp/", "/dev/udp/", "$IFS", "${IFS", "$'\\", "$(")
# Punctuation around a command word (`(curl`, `$(rm`, `/usr/bin/rm`, `mkfs.ext4`, `` `rm``) becomes a space, so
# that one C-level split finds the words (bytes: the table only touches ASCII punctuation, never UTF-8 sequences).
_WORD_PUNCTUATION = b";&|()`'\"$/.,:{}<>=!"
_PUNCTUATION_TO_SPACE = bytes.maketrans(_WORD_PUNCTUATION, b" " * len(_WORD_PUNCTUATION))
_LONG_LINE = 4_096
_SINGLE_WORD_SIGNS = frozenset("$`;|&<>{(/")


def looks_like_shell(text: str) -> bool:
    """Cheap test: is this string worth parsing as a shell script?

    Meant for strings outside an exec position (file contents, JSON fields, messages): the firewall parses strings in
    an exec position (`ScanTarget.exec_position`) regardless of this answer. True when the first word is a known
    command, a path or a shebang; or, for a single line (up to 4 KiB), when a risky command word stands anywhere in it
    or the line holds a binary path, `/dev/tcp/`, `$IFS`, `$'\\..'` or `$(`. Separators alone do not qualify: prose
    is full of `;`. A multi-line text that merely mentions a command (a README, source code, an email) is not a
    script: scripts start with a command or a shebang. Strings of 64 KiB or more are not parsed (False).
    """
    if not isinstance(text, str) or not text or len(text) >= MAX_PARSE_CHARS:
        return False
    return _looks_like_shell_cached(text) if len(text) <= MAX_CACHED_PARSE_CHARS else _looks_like_shell(text)


@lru_cache(maxsize=4096)
def _looks_like_shell_cached(text: str) -> bool:
    return _looks_like_shell(text)


def _looks_like_shell(text: str) -> bool:
    stripped = text.strip()
    first = stripped[:256].split(None, 1)[0] if stripped else ""
    if not first:
        return False
    if (first.startswith(("/", "./", "../", "~/", "$(", "#!")) and not first.startswith("//")) or _is_assignment(first):
        return True  # a path to a program, a substitution, a shebang, an assignment (not `//` comments, `.env`)
    if program_name(first.rstrip(";|&"))[0] in _FIRST_WORDS:
        return True
    if first == stripped and _SINGLE_WORD_SIGNS.isdisjoint(first):
        return False  # one plain word (a date, a file name, an address) that is not a command
    if "\n" in stripped or len(stripped) > _LONG_LINE:
        return False
    for sign in _SHELL_SIGNS:
        if sign in stripped:
            return True
    words = stripped.encode("utf-8", "surrogatepass").translate(_PUNCTUATION_TO_SPACE).split()
    return not _RISKY_BYTES.isdisjoint(words)


def parse_shell(text: str) -> ShellScript:
    """Parse `text` into commands. Never raises; unparseable input yields what could be read, `truncated` if cut.

    At most MAX_PARSE_CHARS characters are read, MAX_COMMANDS commands kept and MAX_DEPTH levels of `sh -c`, eval and
    substitutions unwrapped. When a bound was hit, the script is `truncated` and its last command is a marker with no
    argv and `obfuscation=(TRUNCATED_MARKER,)`, so that code holding only the commands still sees the cut.
    """
    if isinstance(text, str) and len(text) <= MAX_CACHED_PARSE_CHARS:
        return _parse_cached(text)
    return _parse(text)


@lru_cache(maxsize=4096)
def _parse_cached(text: str) -> ShellScript:
    # A pure function of the text, and the result is immutable: agents run the same commands over and over.
    return _parse(text)


def _parse(text: str) -> ShellScript:
    st = _State()
    try:
        if not isinstance(text, str):
            return ShellScript((), False)
        if len(text) > MAX_PARSE_CHARS:
            st.truncated = True
            text = text[:MAX_PARSE_CHARS]
        if "\x1c" in text or "\x1d" in text or "\x1e" in text or "\x1f" in text:
            text = text.translate(_GUARD)
        st.work = len(text)
        _Reader(st, text, 0).parse()
    except _Stop:
        st.truncated = True
    except Exception:  # a reader bug must not take the firewall down: keep what was read, mark the cut
        st.truncated = True
    commands = st.commands[:MAX_COMMANDS]
    if st.truncated:
        commands.append(ShellCommand(argv=(), obfuscation=(TRUNCATED_MARKER,)))
    return ShellScript(tuple(commands), st.truncated)
