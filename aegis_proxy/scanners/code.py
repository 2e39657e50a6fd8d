"""Code execution: code an agent runs (or writes) that executes commands, evaluates dynamic code, or deserialises.

Where the code is decides how much it matters:
- *run*: a code tool (`run_python`, `execute_code`, a notebook kernel, a REPL), a code-named argument (`code`, `script`,
  `expression`) of a tool we do not otherwise know, or `python -c` / `node -e` / a heredoc fed to an interpreter in a
  shell command. Findings keep their severity.
- *write*: a file-writing or editing tool. The code is stored, not run: `code.exec` is MEDIUM at most and
  `code.deserialization` LOW at most, because coding agents write subprocess calls and pickle loaders all day. A
  reverse shell or a pickle payload keeps its severity: there is no benign reason to write one.
- *quoted*: code in a message, issue or comment: LOW at most; a reverse shell there is still HIGH.

Analysis works on a *masked* copy of the code: string literals become `"S"` (keeping an `f` prefix, so f-strings stay
recognisably dynamic) and `#` comments disappear, so `print("never call os.system")` and `# TODO: avoid eval(x)` do
not count. A pattern found only in the unmasked text (inside a string or comment) is reported LOW. `exec("...")` of a
literal is judged by what the literal contains. Reverse shells and pickle payloads are looked for in the raw text:
there the strings are the evidence.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aegis_proxy.models import Finding, Severity, ToolCall
from aegis_proxy.safe_regex import Match, compile_pattern
from aegis_proxy.scanners.base import FindingSink, Scanner, ScanSettings, ScanTarget, text_cache
from aegis_proxy.scanners.vocabulary import (
    EDITOR_WORDS,
    FILE_WRITE_VERBS,
    MESSAGE_VERBS,
    SHELL_TOOL_WORDS,
    argument_words,
    name_words,
)
from aegis_proxy.shell import ShellCommand


def _split(words: str) -> frozenset[str]:
    return frozenset(words.split())


# --- where code runs --------------------------------------------------------------------------------------------------

CODE_TOOL_WORDS = _split("""
    python py repl notebook jupyter ipython kernel interpreter sandbox code javascript js node nodejs deno ruby php perl
    cell eval evaluate lambda
""")
WRITE_TOOL_WORDS = FILE_WRITE_VERBS | EDITOR_WORDS | _split("put overwrite")
QUOTING_TOOL_WORDS = MESSAGE_VERBS | _split("gist pr review search")
# Tools where a "code" argument is something else (SQL, a shell line): other scanners judge those.
NOT_CODE_TOOL_WORDS = SHELL_TOOL_WORDS | _split("sql query db database")
CODE_ARG_WORDS = _split("code source script expression expr snippet cell program python javascript js lambda")
# `program -> flags whose next argument is code`.
INTERPRETER_FLAGS: dict[str, tuple[str, ...]] = {
    "python": ("-c",),
    "pypy": ("-c",),
    "node": ("-e", "--eval", "-p", "--print"),
    "nodejs": ("-e", "--eval", "-p", "--print"),
    "bun": ("-e", "--eval", "-p", "--print"),
    "deno": ("eval",),
    "ruby": ("-e",),
    "perl": ("-e", "-E"),
    "php": ("-r",),
}
_INTERPRETER_WORD = compile_pattern(r"\b(?:python[0-9.]*|pypy[0-9]*|node|nodejs|bun|deno|ruby|perl|php)\b")
MAX_CODE_CHARS = 262_144  # masked analysis; beyond, rules run on the raw text (no masking, may over-report)
MAX_ARGS_CHARS = 2_000  # how far a call's argument list is read
MAX_CALL_SITES = 64  # per rule per text
MAX_MASKED = 4_000  # literals and comments masked per text (each costs a callback)
MAX_PAYLOAD_CANDIDATES = 8
MAX_PAYLOAD_BYTES = 65_536


class _Place(enum.Enum):
    RUN = "run"
    WRITE = "write"
    QUOTED = "quoted"
    PROSE = "prose"  # not code at all: only reverse shells and pickle payloads are looked for


# (cap for code.exec, cap for code.deserialization, severity of a reverse shell)
_CAPS: dict[_Place, tuple[Severity, Severity, Severity]] = {
    _Place.RUN: (Severity.CRITICAL, Severity.CRITICAL, Severity.CRITICAL),
    _Place.WRITE: (Severity.MEDIUM, Severity.LOW, Severity.CRITICAL),
    _Place.QUOTED: (Severity.LOW, Severity.LOW, Severity.HIGH),
    _Place.PROSE: (Severity.LOW, Severity.LOW, Severity.HIGH),
}
_WHERE = {_Place.RUN: "", _Place.WRITE: " (written, not run)", _Place.QUOTED: " (quoted)", _Place.PROSE: ""}


# --- rules ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodeRule:
    name: str  # shown in the finding message
    category: str  # code.exec / code.deserialization
    severity: Severity
    pattern: str  # RE2; by default applied to the masked code and ending at the call's "(" when `check` needs args
    check: str = ""  # extra judgement, see _judge
    raw: bool = False  # the evidence is inside string literals (module names): match the unmasked text
    needs: tuple[str, ...] = ()  # literals, one of which the code must contain for the rule to run (a cheap skip)


_EXEC = "code.exec"
_DESER = "code.deserialization"
_NOT_METHOD = r"(?:^|[^.\w$>])"  # a bare call, not `obj.eval(` / `$obj->system(`
_DEFINITION = r"(def\s+|function\s+|fn\s+|func\s+|void\s+|int\s+|sub\s+)?"  # group 1: a definition, not a call

CODE_RULES: tuple[CodeRule, ...] = (
    # --- Python -------------------------------------------------------------------------------------------------------
    CodeRule(
        "os.system/popen/exec",
        _EXEC,
        Severity.HIGH,
        r"\b(?:os|posix|nt)\s*\.\s*(?:system|popen[234]?|exec[lv]p?e?|spawn[lv]p?e?|posix_spawnp?|startfile)\s*\(",
        needs=("system", "popen", "exec", "spawn", "startfile"),
    ),
    CodeRule(
        "subprocess",
        _EXEC,
        Severity.HIGH,
        r"\bsubprocess\s*\.\s*(?:run|call|check_call|check_output|Popen)\s*\(",
        check="subprocess",
        needs=("subprocess",),
    ),
    CodeRule(
        "subprocess via the shell",
        _EXEC,
        Severity.HIGH,
        r"\b(?:subprocess|commands)\s*\.\s*(?:getoutput|getstatusoutput)\s*\(|\bcreate_subprocess_shell\s*\(",
        needs=("getoutput", "getstatusoutput", "create_subprocess_shell"),
    ),
    CodeRule(
        "imported subprocess call",
        _EXEC,
        Severity.HIGH,
        _NOT_METHOD + r"(?:Popen|check_output|check_call|run|call)\s*\(",
        check="shell_true",
        needs=("shell",),
    ),
    CodeRule(
        "eval/exec of dynamic input",
        _EXEC,
        Severity.HIGH,
        _NOT_METHOD + _DEFINITION + r"(?:eval|exec)\s*\(",
        check="dynamic_arg",
        needs=("eval", "exec"),
    ),
    CodeRule("__import__", _EXEC, Severity.HIGH, r"\b__import__\s*\(", check="dunder_import", needs=("__import__",)),
    CodeRule(
        "compile()", _EXEC, Severity.HIGH, _NOT_METHOD + _DEFINITION + r"compile\s*\(", check="call", needs=("compile",)
    ),
    CodeRule(
        "ctypes native call",
        _EXEC,
        Severity.HIGH,
        r"\bctypes\s*\.\s*(?:CDLL|cdll|windll|WinDLL|oledll|CFUNCTYPE|memmove|pythonapi|cast|string_at)\b"
        r"|\bfrom\s+ctypes\s+import\b",
        needs=("ctypes",),
    ),
    CodeRule("import ctypes", _EXEC, Severity.MEDIUM, r"\bimport\s+ctypes\b", needs=("ctypes",)),
    CodeRule("pty.spawn", _EXEC, Severity.HIGH, r"\bpty\s*\.\s*spawn\s*\(", needs=("pty",)),
    CodeRule(
        "sandbox-escape gadget",
        _EXEC,
        Severity.HIGH,
        r"getattr\s*\(\s*(?:__builtins__|builtins|os|subprocess|posix)\s*,|__builtins__\s*(?:\[|\.\s*__dict__)"
        r"|\.__subclasses__\s*\(|\.__globals__\b|\bfunc_globals\b|__class__\s*\.\s*__(?:base|bases|mro)__",
        needs=("getattr", "__builtins__", "__subclasses__", "__globals__", "func_globals", "__class__"),
    ),
    CodeRule(
        "dynamic import",
        _EXEC,
        Severity.MEDIUM,
        r"\bimportlib\s*\.\s*import_module\s*\(|\brunpy\s*\.\s*run_",
        needs=("import_module", "runpy"),
    ),
    CodeRule("pandas eval", _EXEC, Severity.LOW, r"\b(?:pd|pandas|df\w*)\s*\.\s*eval\s*\(", needs=("eval",)),
    # --- JavaScript / TypeScript --------------------------------------------------------------------------------------
    CodeRule(
        "child_process import",
        _EXEC,
        Severity.HIGH,
        r"\brequire\s*\(\s*['\"`](?:node:)?child_process['\"`]\s*\)|\bfrom\s+['\"](?:node:)?child_process['\"]"
        r"|\bimport\s*\(\s*['\"](?:node:)?child_process['\"]",
        raw=True,
        needs=("child_process",),
    ),
    CodeRule(
        "child_process call",
        _EXEC,
        Severity.HIGH,
        r"\b(?:child_process|childProcess|cp)\s*\.\s*(?:exec|execSync|spawn|spawnSync|execFile|execFileSync|fork)"
        r"\s*\(|" + _NOT_METHOD + r"(?:execSync|spawnSync|execFileSync)\s*\(",
        needs=("child_process", "childProcess", "cp", "Sync"),
    ),
    CodeRule(
        "Function constructor",
        _EXEC,
        Severity.HIGH,
        r"\bnew\s+Function\s*\(|" + _NOT_METHOD + r"Function\s*\(\s*[^)\s]",
        needs=("Function",),
    ),
    CodeRule(
        "vm module",
        _EXEC,
        Severity.HIGH,
        r"\bvm\s*\.\s*(?:runInNewContext|runInThisContext|runInContext|compileFunction)\s*\(|\bnew\s+vm\s*\.\s*Script\s*\(",
        needs=("vm",),
    ),
    CodeRule(
        "process.binding/dlopen", _EXEC, Severity.HIGH, r"\bprocess\s*\.\s*(?:binding|dlopen)\s*\(", needs=("process",)
    ),
    CodeRule(
        "Deno/Bun subprocess",
        _EXEC,
        Severity.HIGH,
        r"\bDeno\s*\.\s*(?:run|Command)\b|\bBun\s*\.\s*(?:spawn|spawnSync|\$)",
        needs=("Deno", "Bun"),
    ),
    # --- Ruby / PHP / Java / Go / PowerShell / C ----------------------------------------------------------------------
    CodeRule(
        "system()/popen()/passthru()",
        _EXEC,
        Severity.HIGH,
        _NOT_METHOD + _DEFINITION + r"(?:system|popen|passthru|shell_exec|proc_open|pcntl_exec)\s*\(",
        check="call",
        needs=("system", "popen", "passthru", "shell_exec", "proc_open", "pcntl_exec"),
    ),
    CodeRule(
        "Ruby process call",
        _EXEC,
        Severity.HIGH,
        r"\bIO\s*\.\s*popen\b|\bOpen3\s*\.\s*(?:popen|capture|pipeline)\w*|\bKernel\s*\.\s*(?:system|exec|spawn)\b"
        r"|%x[({\[|]",
        needs=("IO", "Open3", "Kernel", "%x"),
    ),
    CodeRule("backtick command", _EXEC, Severity.HIGH, r"`[SD]`", check="backtick", needs=("`",)),
    CodeRule(
        "PHP code evaluation",
        _EXEC,
        Severity.HIGH,
        r"\bassert\s*\(\s*\$|\bcreate_function\s*\(|\bpreg_replace\s*\(\s*['\"]([^'\"\\\\]{1,64})/[a-z]*e[a-z]*['\"]",
        raw=True,
        needs=("assert", "create_function", "preg_replace"),
    ),
    CodeRule(
        "Runtime.exec",
        _EXEC,
        Severity.HIGH,
        r"\bRuntime\s*\.\s*getRuntime\s*\(\s*\)\s*\.\s*exec\s*\(",
        needs=("Runtime",),
    ),
    CodeRule("ProcessBuilder", _EXEC, Severity.MEDIUM, r"\bnew\s+ProcessBuilder\s*\(", needs=("ProcessBuilder",)),
    CodeRule(
        "shell in an argv list",
        _EXEC,
        Severity.HIGH,
        r"\[\s*['\"](?:/usr)?(?:/bin/)?(?:ba|z|da|k)?sh['\"]\s*,\s*['\"]-[a-z]*c['\"]"
        r"|\bexec\s*\.\s*Command(?:Context)?\s*\(\s*(?:ctx\s*,\s*)?\"(?:/bin/)?(?:ba|z|da)?sh\"\s*,\s*\"-c\"",
        raw=True,
        needs=("sh",),
    ),
    CodeRule(
        "Invoke-Expression",
        _EXEC,
        Severity.HIGH,
        r"\bInvoke-Expression\b|(?:^|[|;(]\s*)iex\b",
        needs=("Invoke-Expression", "iex"),
    ),
    CodeRule(
        "recursive delete of a home or system directory",
        _EXEC,
        Severity.HIGH,
        r"\b(?:rmtree|rmSync|rm_rf|rm_r|remove_dir_all|RemoveAll)\s*\(\s*(?:os\.path\.expanduser\s*\(\s*['\"]~/?['\"]\s*\)"
        r"|(?:pathlib\.)?Path\.home\s*\(\s*\)|os\.homedir\s*\(\s*\)|os\.environ\s*\[\s*['\"]HOME['\"]\s*\]"
        r"|['\"](?:/|~|~/|/home|/root|/etc|/usr|/var|C:\\\\?)['\"])",
        raw=True,
        needs=("rmtree", "rmSync", "rm_rf", "rm_r", "remove_dir_all", "RemoveAll"),
    ),
    # Notebook shell escapes (`!cmd`, `%%bash`): everyday for `!pip install`; judged by what they run.
    CodeRule(
        "notebook shell escape piping a download into a shell",
        _EXEC,
        Severity.HIGH,
        r"(?m:^\s*(?:!|%%?(?:bash|sh|system|sx|script)\b)[\s\S]*?(?:curl|wget)\b[^\n|]*\|\s*(?:sudo\s+)?(?:ba|z|da|k)?sh\b)",
        raw=True,
        needs=("curl", "wget"),
    ),
    CodeRule(
        "notebook shell escape",
        _EXEC,
        Severity.LOW,
        r"(?m:^\s*(?:!\S|%%(?:bash|sh|script)\b|%(?:system|sx)\b))",
        needs=("!", "%"),
    ),
    # --- deserialisation ----------------------------------------------------------------------------------------------
    CodeRule(
        "pickle load",
        _DESER,
        Severity.HIGH,
        r"\b(?:c?[Pp]ickle|_pickle|dill|cloudpickle)\s*\.\s*(?:loads?|Unpickler)\s*\(",
        needs=("ickle", "dill"),
    ),
    CodeRule(
        "joblib.load (pickle)", _DESER, Severity.MEDIUM, r"\bjoblib\s*\.\s*load\s*\(", check="joblib", needs=("joblib",)
    ),
    CodeRule(
        "yaml.load without SafeLoader",
        _DESER,
        Severity.HIGH,
        r"\byaml\s*\.\s*(?:load|load_all)\s*\(",
        check="yaml",
        needs=("yaml",),
    ),
    CodeRule(
        "yaml unsafe load",
        _DESER,
        Severity.HIGH,
        r"\byaml\s*\.\s*(?:unsafe_load|unsafe_load_all)\s*\(",
        needs=("yaml",),
    ),
    CodeRule("yaml.full_load", _DESER, Severity.MEDIUM, r"\byaml\s*\.\s*full_load(?:_all)?\s*\(", needs=("yaml",)),
    CodeRule("marshal load", _DESER, Severity.HIGH, r"\bmarshal\s*\.\s*loads?\s*\(", needs=("marshal",)),
    CodeRule("shelve (pickle)", _DESER, Severity.HIGH, r"\bshelve\s*\.\s*open\s*\(", needs=("shelve",)),
    CodeRule(
        "torch.load without weights_only",
        _DESER,
        Severity.HIGH,
        r"\btorch\s*\.\s*load\s*\(",
        check="torch",
        needs=("torch",),
    ),
    CodeRule(
        "numpy load with allow_pickle",
        _DESER,
        Severity.HIGH,
        r"\b(?:np|numpy)\s*\.\s*load\s*\(",
        check="numpy",
        needs=("allow_pickle",),
    ),
    CodeRule(
        "pandas read_pickle", _DESER, Severity.HIGH, r"\b(?:pd|pandas)\s*\.\s*read_pickle\s*\(", needs=("read_pickle",)
    ),
    CodeRule("jsonpickle decode", _DESER, Severity.HIGH, r"\bjsonpickle\s*\.\s*decode\s*\(", needs=("jsonpickle",)),
    CodeRule(
        "Java/.NET object deserialisation",
        _DESER,
        Severity.HIGH,
        r"\bnew\s+ObjectInputStream\s*\(|\.readObject\s*\(\s*\)|\bXMLDecoder\s*\(|\bBinaryFormatter\b"
        r"|\bLosFormatter\b|\bNetDataContractSerializer\b",
        needs=("ObjectInputStream", "readObject", "XMLDecoder", "Formatter"),
    ),
    CodeRule(
        "unserialize",
        _DESER,
        Severity.HIGH,
        _NOT_METHOD + _DEFINITION + r"unserialize\s*\(",
        check="call",
        needs=("unserialize",),
    ),
    CodeRule("node-serialize", _DESER, Severity.HIGH, r"['\"]node-serialize['\"]", raw=True, needs=("node-serialize",)),
    CodeRule("Ruby Marshal.load", _DESER, Severity.HIGH, r"\bMarshal\s*\.\s*(?:load|restore)\s*\(", needs=("Marshal",)),
    CodeRule(
        "Ruby YAML.load",
        _DESER,
        Severity.MEDIUM,
        r"\b(?:YAML|Psych)\s*\.\s*(?:load|unsafe_load)\s*\(",
        needs=("YAML", "Psych"),
    ),
)
_CODE_RULES = tuple((rule, compile_pattern(rule.pattern)) for rule in CODE_RULES)
# Every rule at once, on the raw text: if none matches there, none matches the masked text either (masking only
# shortens literals and drops comments), and the expensive part is skipped. Backticks are judged after masking.
_ANY_RULE = compile_pattern("|".join(f"(?:{rule.pattern})" for rule in CODE_RULES if rule.check != "backtick"))

# Masking: literals -> "S" ("D" for an f-string or template with placeholders), comments -> nothing.
_LEXEME = compile_pattern(
    r"([rRbBuUfF]{0,2})(\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|\"(?:[^\"\\\n]|\\[\s\S])*\"|'(?:[^'\\\n]|\\[\s\S])*')"
    r"|(`(?:[^`\\]|\\[\s\S])*`)"
    r"|(?m:(^|[ \t])#[^\n]*)"
)
_LITERAL_ARG = compile_pattern(r"\s*[rRbBuU]{0,2}(?:\"S\"|'S')\s*")
# f-strings with placeholders and templates with ${} were masked to "D"; concatenation and formatting are dynamic too.
_DYNAMIC_STRING = compile_pattern(r"[\"'`]D[\"'`]|[\"']S[\"']\s*(?:\+|%|\.\s*format\s*\()|\+\s*[rRbBuU]{0,2}[\"']S")
_SHELL_TRUE = compile_pattern(r"\bshell\s*=\s*(?:True|1)\b")
_SAFE_YAML_LOADER = compile_pattern(
    r"\b(?:Safe|CSafe|Base|CBase)Loader\b|\bLoader\s*=\s*(?:yaml\s*\.\s*)?(?:Safe|CSafe|Base|CBase)"
)
_FULL_YAML_LOADER = compile_pattern(r"\b(?:Full|CFull)Loader\b")
_WEIGHTS_ONLY = compile_pattern(r"\bweights_only\s*=\s*True\b")
_ALLOW_PICKLE = compile_pattern(r"\ballow_pickle\s*=\s*True\b")
_DANGEROUS_IMPORT = compile_pattern(
    r"__import__\s*\(\s*['\"](?:os|subprocess|pty|socket|ctypes|builtins|__builtin__|posix|nt|shutil|sys|importlib)['\"]"
)
_LITERAL_EXEC = compile_pattern(
    r"(?:^|[^.\w])(?:eval|exec)\s*\(\s*[rRbBuU]{0,2}(?:\"\"\"([\s\S]*?)\"\"\"|'''([\s\S]*?)'''"
    r"|\"((?:[^\"\\\n]|\\[\s\S])*)\"|'((?:[^'\\\n]|\\[\s\S])*)')"
)
_RUBY_OR_PHP = compile_pattern(r"<\?php|(?m:^\s*(?:puts|require|require_relative)\s+['\"])|\.rb\b|(?m:^\s*end\s*$)")

# --- reverse shells (raw text; every group of a rule must match) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReverseShellRule:
    name: str
    patterns: tuple[str, ...]


REVERSE_SHELL_RULES: tuple[ReverseShellRule, ...] = (
    ReverseShellRule("socket + dup2", (r"\bsocket\b", r"\.connect(?:_ex)?\s*\(", r"\bdup2\s*\(")),
    ReverseShellRule("socket + pty.spawn", (r"\bsocket\b", r"\.connect\s*\(", r"\bpty\s*\.\s*spawn\s*\(")),
    ReverseShellRule(
        "socket piped into a shell",
        (r"\bsocket\b", r"\.connect\s*\(", r"fileno\s*\(\s*\)", r"/bin/(?:ba|z|da)?sh\b|cmd\.exe|powershell"),
    ),
    ReverseShellRule(
        "PHP fsockopen + shell",
        (r"\bfsockopen\s*\(", r"\b(?:exec|shell_exec|system|passthru|proc_open|popen)\s*\(|/bin/(?:ba)?sh"),
    ),
    ReverseShellRule("Ruby TCPSocket + shell", (r"\bTCPSocket\b", r"/bin/(?:ba|z)?sh|cmd\.exe|\breopen\b|:in\s*=>")),
    ReverseShellRule(
        "Perl socket + STDIN redirect", (r"\bsocket\s*\(", r"open\s*\(\s*STD(?:IN|OUT|ERR)\s*,\s*['\"]?[<>+]*&")
    ),
    ReverseShellRule(
        "Node net socket + shell",
        (
            r"\bnet\s*\.\s*(?:Socket|connect|createConnection)\b|require\s*\(\s*['\"](?:node:)?net['\"]",
            r"child_process|\bspawn\s*\(",
            r"\.pipe\s*\(|/bin/(?:ba)?sh|cmd\.exe",
        ),
    ),
    ReverseShellRule(
        "Java socket + shell",
        (r"\bnew\s+Socket\s*\(", r"Runtime\s*\.\s*getRuntime|ProcessBuilder", r"/bin/(?:ba)?sh|cmd\.exe"),
    ),
    ReverseShellRule(
        "PowerShell TCP client", (r"Net\.Sockets\.TCPClient", r"\bGetStream\s*\(|\biex\b|Invoke-Expression")
    ),
    ReverseShellRule("/dev/tcp redirect", (r"/dev/(?:tcp|udp)/", r"-i\b|0>&1|>&\s*/dev/|<&\s*[0-9]|exec\s+[0-9]")),
    ReverseShellRule("netcat executing a shell", (r"\bn(?:c|cat|etcat)\b[^\n]*\s-[ec]\s*/bin/(?:ba|z)?sh",)),
    ReverseShellRule("mkfifo + netcat", (r"\bmkfifo\b", r"\bn(?:c|cat|etcat)\b", r"/bin/(?:ba|z)?sh")),
)
_REVERSE_SHELL_RULES = tuple((rule, tuple(compile_pattern(p) for p in rule.patterns)) for rule in REVERSE_SHELL_RULES)
_REVERSE_SHELL_PREFILTER = compile_pattern(
    r"socket|Socket|fsockopen|/dev/tcp|/dev/udp|mkfifo|\bnc\b|ncat|netcat|TCPClient|\bnet\s*\.|['\"](?:node:)?net['\"]"
)

# --- pickle payloads --------------------------------------------------------------------------------------------------

# Modules whose callables turn a pickle into code execution.
_PICKLE_MODULES = (
    r"os|posix|nt|subprocess|builtins|__builtin__|commands|pty|socket|runpy|webbrowser|importlib|ctypes|shutil|code"
    r"|pdb|timeit|sys|platform|pickle|_pickle|marshal|types|operator|functools|codecs|eval|exec"
)
# Protocols 0-3 name globals as text: "c<module>\n<name>\n" (GLOBAL) or "i<module>\n<name>\n" (INST).
_PICKLE_TEXT_GLOBAL = compile_pattern(r"(?:^|[^A-Za-z0-9_])[ci](" + _PICKLE_MODULES + r")\n([A-Za-z_][\w.]*)\n")
# Protocol 2+ header (as latin-1 text, or with the high byte replaced by U+FFFD when decoded as UTF-8).
_PICKLE_HEADER = compile_pattern(r"^[\s\S]{0,2}[\x{80}\x{FFFD}][\x02-\x05]")
# Protocol 4+ names globals as two short strings then STACK_GLOBAL: "\x8c\x02os\x94\x8c\x06system\x94\x93".
_PICKLE_STACK_GLOBAL = compile_pattern(
    r"(?:" + _PICKLE_MODULES + r")[\x00-\x1f\x{80}-\x{ff}\x{FFFD}]{1,8}"
    r"(?:system|popen|exec|eval|execv|execve|execl|execlp|spawnv|spawnl|call|run|check_output|check_call|Popen"
    r"|getoutput|__import__|getattr|compile|open|loads|apply|attrgetter|methodcaller|partial)\b"
)
# A global (STACK_GLOBAL, or GLOBAL "c<module>\n<name>\n"), then REDUCE: a pickle that calls something on load.
_PICKLE_CALL = compile_pattern(r"(?:\x{93}|c[A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n)[\s\S]*R")
# Base64 of a pickle: protocol 2-5 headers, or protocol 0 "cos\n", "cposix\n", "cnt\n", "csubprocess\n",
# "c__builtin__\n", "cbuiltins\n".
_PICKLE_BASE64 = compile_pattern(
    r"(?:gASV|gAWV|gAN[A-Za-z0-9+/]|gAJ[A-Za-z0-9+/]|Y29zCn|Y3Bvc2l4Cn|Y250Cn|Y3N1YnByb2Nlc3MK|Y19fYnVpbHRpbl9fCn"
    r"|Y2J1aWx0aW5zCn)[A-Za-z0-9+/_\-]*={0,2}"
)
_PICKLE_PREFILTER = compile_pattern(
    r"[\x{80}\x{FFFD}][\x02-\x05]|[ci](?:"
    + _PICKLE_MODULES
    + r")\n|gA[JNSW]|Y29zCn|Y3Bvc2l4|Y250Cn|Y3N1YnByb2Nlc3|Y19fYnVpbHRpbl9f|Y2J1aWx0aW5z"
)
_PAYLOAD_PREFILTER = compile_pattern(f"{_REVERSE_SHELL_PREFILTER.pattern}|{_PICKLE_PREFILTER.pattern}")
_DANGEROUS_GLOBALS = _split("""
    system popen exec eval execv execve execl execlp spawnv spawnl call run check_output check_call Popen getoutput
    __import__ getattr compile open loads apply attrgetter methodcaller partial
""")


# --- analysis ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodeHit:
    category: str
    severity: Severity
    message: str
    kind: str = "rule"  # rule / reverse_shell / payload: payloads and reverse shells keep their severity when written


def _mask(code: str) -> str:
    def replace(match: Match) -> str:
        if match.start(2) >= 0:
            quote = match.group(2)[0]
            prefix = match.group(1)
            dynamic = "f" in prefix.lower() and "{" in match.group(2)
            return f"{prefix}{quote}{'D' if dynamic else 'S'}{quote}"
        if match.start(3) >= 0:
            body = match.group(3)
            return "`D`" if "${" in body or "#{" in body else "`S`"
        return match.group(4) + " "

    # Bounded: past MAX_MASKED literals the rest stays unmasked, which can only add findings, never hide one.
    return _LEXEME.sub(replace, code, count=MAX_MASKED)


def _call_args(text: str, open_paren: int) -> str:
    """The argument list of the call whose "(" is at `open_paren` (bounded; unbalanced input ends it early)."""
    depth = 0
    end = min(len(text), open_paren + MAX_ARGS_CHARS)
    for index in range(open_paren, end):
        char = text[index]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                return text[open_paren + 1 : index]
    return text[open_paren + 1 : end]


def _first_arg(args: str) -> str:
    depth = 0
    for index, char in enumerate(args):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            return args[:index]
    return args


def analyze_code(code: str, *, masked: bool = True) -> list[CodeHit]:
    """Judge `code` as code that will run. `masked=False` when the code came out of shell quoting (no literals left to
    tell apart). Never raises on str input."""
    return _analyze(code, masked=masked, depth=0)


@text_cache
def _code_hits(code: str, masked: bool = True) -> tuple[CodeHit, ...]:
    return tuple(_analyze(code, masked=masked, depth=0))


def _analyze(code: str, *, masked: bool, depth: int) -> list[CodeHit]:
    hits: list[CodeHit] = []
    head, tail = code[:MAX_CODE_CHARS], code[MAX_CODE_CHARS:]
    if _ANY_RULE.search(head) or "`" in head:
        hits.extend(_rule_hits(head, masked=masked, depth=depth))
    if tail and _ANY_RULE.search(tail):
        hits.extend(_rule_hits(tail, masked=False, depth=depth))
    hits.extend(_payload_hits(code))
    return hits


def _rule_hits(raw: str, *, masked: bool, depth: int) -> list[CodeHit]:
    view = _mask(raw) if masked else raw
    hits: list[CodeHit] = []
    seen: set[str] = set()
    for rule, pattern in _CODE_RULES:
        if rule.name in seen:
            continue
        text = raw if rule.raw else view
        if rule.needs and not [needle for needle in rule.needs if needle in raw]:
            continue
        verdict = _worst_verdict(rule, pattern, text, raw)
        if verdict is not None:
            seen.add(rule.name)
            hits.append(CodeHit(rule.category, verdict[0], f"{rule.name}{verdict[1]}"))
        elif masked and not rule.raw and not rule.check and pattern.search(raw):
            # Only inside a string or comment: mentioned, not called (unless something evals that string).
            seen.add(rule.name)
            hits.append(CodeHit(rule.category, min(rule.severity, Severity.LOW), f"{rule.name} in a string or comment"))
    if depth == 0 and ("eval" in raw or "exec" in raw):
        hits.extend(_literal_exec_hits(raw))
    return hits


def _worst_verdict(rule: CodeRule, pattern: object, text: str, raw: str) -> tuple[Severity, str] | None:
    """(severity, message suffix) of the worst call site the rule's check accepts, else None."""
    worst: tuple[Severity, str] | None = None
    for count, match in enumerate(pattern.finditer(text)):  # type: ignore[attr-defined]
        if count >= MAX_CALL_SITES:
            break
        verdict = _judge(rule, match, text, raw)
        if verdict is not None and (worst is None or verdict[0] > worst[0]):
            worst = verdict
            if worst[0] >= rule.severity:
                break
    return worst


def _judge(rule: CodeRule, match: Match, text: str, raw: str) -> tuple[Severity, str] | None:
    check = rule.check
    if not check:
        return rule.severity, ""
    if check in ("call", "dynamic_arg") and match.start(1) >= 0:
        return None  # `def eval(...)`, `function system(...)`: a definition
    if check == "call":
        return rule.severity, ""
    if check == "backtick":
        return (rule.severity, "") if _RUBY_OR_PHP.search(raw[:65_536]) else None
    args = _call_args(text, match.end() - 1)
    first = _first_arg(args)
    if check == "dynamic_arg":
        if not first.strip():
            return None  # `model.eval()`-like empty call reached through an odd spelling
        if _LITERAL_ARG.fullmatch(first):
            return None  # a literal: judged by its content in _literal_exec_hits
        return rule.severity, ""
    if check == "subprocess":
        if _SHELL_TRUE.search(args):
            return Severity.HIGH, " with shell=True"
        if _DYNAMIC_STRING.search(first):
            return Severity.HIGH, " with a command built from a string"
        if first.lstrip().startswith(("[", "(")) or _LITERAL_ARG.fullmatch(first):
            return Severity.INFO, " with a fixed argv"
        return Severity.LOW, " with a computed argv"
    if check == "shell_true":
        return (Severity.HIGH, " with shell=True") if _SHELL_TRUE.search(args) else None
    if check == "dunder_import":
        if _DANGEROUS_IMPORT.search(raw[max(0, match.start() - 2) : match.end() + 64]):
            return rule.severity, " of a command-running module"
        return (Severity.LOW, " of a literal module") if _LITERAL_ARG.fullmatch(first) else (Severity.MEDIUM, "")
    if check == "yaml":
        if _SAFE_YAML_LOADER.search(args):
            return None
        return (Severity.MEDIUM, " (FullLoader)") if _FULL_YAML_LOADER.search(args) else (rule.severity, "")
    if check == "joblib":
        # A literal path is the agent's own artifact far more often than not; a computed one may be downloaded.
        return (Severity.LOW, " of a local file") if _LITERAL_ARG.fullmatch(first) else (rule.severity, "")
    if check == "torch":
        return None if _WEIGHTS_ONLY.search(args) else (rule.severity, "")
    if check == "numpy":
        return (rule.severity, "") if _ALLOW_PICKLE.search(args) else None
    return rule.severity, ""


def _literal_exec_hits(raw: str) -> list[CodeHit]:
    """`exec("import os; os.system('id')")`: the literal is code, judge it."""
    hits: list[CodeHit] = []
    for count, match in enumerate(_LITERAL_EXEC.finditer(raw)):
        if count >= MAX_CALL_SITES:
            break
        body = next((match.group(g) for g in (1, 2, 3, 4) if match.start(g) >= 0), "")
        for hit in _analyze(body, masked=True, depth=1):
            if hit.severity >= Severity.MEDIUM:
                hits.append(CodeHit(hit.category, hit.severity, f"eval/exec of a literal containing {hit.message}"))
    return hits


def reverse_shell_hits(text: str) -> list[CodeHit]:
    """Reverse-shell constructions (a socket wired to a shell), in any language. Severity CRITICAL."""
    if not _REVERSE_SHELL_PREFILTER.search(text):
        return []
    return _reverse_shell_rules(text)


def _reverse_shell_rules(text: str) -> list[CodeHit]:
    for rule, patterns in _REVERSE_SHELL_RULES:
        if all(pattern.search(text) for pattern in patterns):
            return [CodeHit(_EXEC, Severity.CRITICAL, f"reverse shell: {rule.name}", kind="reverse_shell")]
    return []


def pickle_payload_hits(text: str) -> list[CodeHit]:
    """Raw pickle opcodes that import a command-running callable (or base64 of them). CRITICAL; HIGH for a pickle
    that calls some other global."""
    if not _PICKLE_PREFILTER.search(text):
        return []
    return _pickle_checks(text)


def _pickle_checks(text: str) -> list[CodeHit]:
    verdict = _pickle_verdict(text)
    if verdict is None:
        for count, match in enumerate(_PICKLE_BASE64.finditer(text)):
            if count >= MAX_PAYLOAD_CANDIDATES:
                break
            decoded = _b64decode(match.group()[:MAX_PAYLOAD_BYTES])
            if decoded is not None:
                verdict = _pickle_verdict(decoded)
                if verdict is not None:
                    verdict = (verdict[0], verdict[1] + " (base64)")
                    break
    if verdict is None:
        return []
    return [CodeHit(_DESER, verdict[0], verdict[1], kind="payload")]


def _pickle_verdict(text: str) -> tuple[Severity, str] | None:
    for count, match in enumerate(_PICKLE_TEXT_GLOBAL.finditer(text)):
        if count >= MAX_CALL_SITES:
            break
        module, name = match.group(1), match.group(2)
        if name.split(".")[-1] in _DANGEROUS_GLOBALS or module in ("os", "posix", "nt", "subprocess", "pty"):
            return Severity.CRITICAL, f"pickle payload calling {module}.{name[:40]}"
    if _PICKLE_HEADER.search(text[:8]):
        if _PICKLE_STACK_GLOBAL.search(text):
            return Severity.CRITICAL, "pickle payload importing a command-running callable"
        if _PICKLE_CALL.search(text):
            return Severity.HIGH, "pickle that imports and calls a global"
    return None


@text_cache
def _payload_hits(text: str) -> tuple[CodeHit, ...]:
    """Reverse shells and pickle payloads, for strings that are not code: one prefilter pass for both."""
    if not _may_hold_payload(text) or not _PAYLOAD_PREFILTER.search(text):
        return ()
    hits = _reverse_shell_rules(text) if _REVERSE_SHELL_PREFILTER.search(text) else []
    return tuple(hits + (_pickle_checks(text) if _PICKLE_PREFILTER.search(text) else []))


# Substrings that every reverse-shell rule, or every pickle rule, needs (a cheap test before any regex).
_REVERSE_SHELL_MARKS = ("ocket", "fsockopen", "/dev/", "mkfifo", "nc ", "ncat", "netcat", "TCPClient", "net")
_PICKLE_MARKS = ("\x80", "\ufffd", "gA", "Y29z", "Y3Bv", "Y250", "Y3N1", "Y19f", "Y2J1")  # raw bytes, base64 starts
_PAYLOAD_MARKS = _REVERSE_SHELL_MARKS + _PICKLE_MARKS
_PICKLE_TEXT_MODULES = tuple(_PICKLE_MODULES.split("|"))


_PICKLE_TEXT_NEEDLES = tuple(f"{opcode}{module}\n" for module in _PICKLE_TEXT_MODULES for opcode in "ci")
# Any of those needles, in one pass: 56 substring scans cost ten times more on a multi-line text (a file, an email).
if not all(module.isidentifier() for module in _PICKLE_TEXT_MODULES):  # written into the pattern as they are
    raise AssertionError("pickle module names must be plain identifiers")
_PICKLE_TEXT_OPCODE = compile_pattern(r"[ci](?:" + _PICKLE_MODULES + r")\n")


def _may_hold_payload(text: str) -> bool:
    """Substring tests that every reverse-shell or pickle rule needs; most strings fail them without a regex call."""
    for mark in _PAYLOAD_MARKS:
        if mark in text:
            return True
    # Protocol 0-3 GLOBAL / INST opcodes: "cos\n", "isubprocess\n", ... (all need a line break).
    return "\n" in text and _PICKLE_TEXT_OPCODE.search(text) is not None


def _b64decode(candidate: str) -> str | None:
    candidate = candidate.replace("-", "+").replace("_", "/").rstrip("=")
    try:
        return base64.b64decode(candidate + "=" * (-len(candidate) % 4)).decode("latin-1")
    except (binascii.Error, ValueError):
        return None


# --- the scanner ------------------------------------------------------------------------------------------------------


def _tool_kind(tool: str) -> tuple[bool, bool, bool]:
    """(quoting, write, code) tool, from the tool name's words."""
    words = name_words(tool)
    quoting_tool = bool(words & QUOTING_TOOL_WORDS)  # create_issue, post_comment: a message, even if "created"
    write_tool = bool(words & WRITE_TOOL_WORDS) and not quoting_tool
    code_tool = bool(words & CODE_TOOL_WORDS) and not words & NOT_CODE_TOOL_WORDS and not quoting_tool
    return quoting_tool, write_tool, code_tool


class CodeScanner(Scanner):
    name = "code"
    categories = frozenset({"code.exec", "code.deserialization"})

    def scan(self, call: ToolCall, targets: Sequence[ScanTarget], settings: ScanSettings) -> Iterable[Finding]:
        sink = FindingSink(self.name)
        quoting_tool, write_tool, code_tool = _tool_kind(call.tool)
        for target in targets:
            if not target.text.strip():
                continue
            if target.is_key:
                place = _Place.PROSE
            else:
                arg = argument_words(target.path)
                place = self._place(target, arg, code_tool=code_tool, write_tool=write_tool, quoting_tool=quoting_tool)
            if place is _Place.PROSE and target.exec_position:
                for code, masked in _interpreter_code(target):
                    self._report(sink, target, _code_hits(code, masked), _Place.RUN, " (via interpreter)")
                # The shell scanner judges the command line itself; still look for payloads carried in it.
                if _may_hold_payload(target.text) and _PICKLE_PREFILTER.search(target.text):
                    self._report(sink, target, _pickle_checks(target.text), _Place.PROSE, "")
                continue
            code_like = place is not _Place.PROSE
            hits = _code_hits(target.text) if code_like else _payload_hits(target.text)
            if hits:
                self._report(sink, target, hits, place, "")
        return sink.findings

    @staticmethod
    def _place(
        target: ScanTarget, arg: frozenset[str], *, code_tool: bool, write_tool: bool, quoting_tool: bool
    ) -> _Place:
        if target.is_key:
            return _Place.PROSE
        if quoting_tool:
            return _Place.QUOTED if arg & CODE_ARG_WORDS else _Place.PROSE
        if write_tool:
            return _Place.WRITE
        if code_tool or arg & CODE_ARG_WORDS:
            return _Place.RUN
        return _Place.PROSE

    @staticmethod
    def _report(sink: FindingSink, target: ScanTarget, hits: Sequence[CodeHit], place: _Place, origin: str) -> None:
        exec_cap, deser_cap, reverse_shell = _CAPS[place]
        reported: set[str] = set()
        for hit in hits:
            if hit.message in reported:
                continue
            reported.add(hit.message)
            if hit.kind == "payload":
                severity = hit.severity
            elif hit.kind == "reverse_shell":
                severity = reverse_shell
            else:
                severity = min(hit.severity, exec_cap if hit.category == _EXEC else deser_cap)
            sink.add(target, hit.category, severity, f"{hit.message}{origin}{_WHERE[place]}")


def _interpreter_code(target: ScanTarget) -> list[tuple[str, bool]]:
    """Code handed to an interpreter on a command line: `python -c CODE`, `node -e CODE`, heredocs.
    Returns (code, masked): code from parsed argv is real code (mask it); code guessed from unparsed text is not."""
    found: list[tuple[str, bool]] = []
    for command in target.commands:
        flags = _interpreter_flags(command)
        if flags is None:
            continue
        argv = command.argv
        for index, arg in enumerate(argv[1:], 1):
            if arg in flags and index + 1 < len(argv):
                found.append((argv[index + 1], True))
            elif len(arg) > 2 and arg[:2] in flags and not arg.startswith("--"):
                found.append((arg[2:], True))  # `python -c"code"`
        for operator, body in command.redirects:
            if operator.startswith("<<"):
                found.append((body, True))
    if not target.commands and _INTERPRETER_WORD.search(target.text[:65_536]):
        # Parser unavailable or gave up: judge the whole line with quotes left in (so literals are not masked away).
        found.append((target.text, False))
    return found


def _interpreter_flags(command: ShellCommand) -> tuple[str, ...] | None:
    program = command.program.lower()
    for name, flags in INTERPRETER_FLAGS.items():
        if program == name or (program.startswith(name) and program[len(name) :].replace(".", "").isdigit()):
            return flags
    return None
