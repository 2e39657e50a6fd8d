from __future__ import annotations

import pytest

from aegis_proxy.scanners.vocabulary import (
    EXEC_TOOL_WORDS,
    FETCH_WORDS,
    FILE_WRITE_VERBS,
    MESSAGE_VERBS,
    SEND_VERBS,
    SHELL_TOOL_WORDS,
    argument_key,
    argument_words,
    name_words,
)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("browser_navigate", {"browser", "navigate"}),
        ("getWebPage", {"get", "web", "page"}),
        ("mcp__fs__write-file", {"mcp", "fs", "write", "file"}),
        ("HTTPRequest", {"http", "request"}),
        ("sendHTMLEmail", {"send", "html", "email"}),
        ("run_query", {"run", "query"}),
        ("slack.chat_postMessage", {"slack", "chat", "post", "message"}),
        ("s3_upload", {"s", "3", "upload"}),
        ("GITHUB_TOKEN", {"github", "token"}),
        ("x" * 300 + "_send", {"x" * 200}),  # only the first 200 characters are read
        ("", set()),
    ],
    ids=["snake", "camel", "mcp-dashes", "acronym", "acronym-inside", "plain", "dotted", "digits", "constant",
         "long-name-cut", "empty"],
)  # fmt: skip
def test_name_words(name: str, words: set[str]) -> None:
    assert name_words(name) == words


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("args", "args"),
        ("args.cmd", "cmd"),
        ("args.steps[2].command", "command"),
        ('args["odd key"]', "odd key"),
        ('args["a[1]"]', "a[1]"),
        ('args["x"][3]', "x"),
        ("args.a[0][1]", "a"),
        ("args.headers{key}", "headers"),
        ("", ""),
    ],
    ids=["root", "member", "nested", "quoted", "quoted-with-bracket", "quoted-then-index", "indices", "key-marker",
         "empty"],
)  # fmt: skip
def test_argument_key(path: str, key: str) -> None:
    assert argument_key(path) == key


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("args.path", {"path"}),
        ("args.files[2].target_path", {"target", "path"}),
        ('args["dest file"]', {"dest", "file"}),
        ("args.attachments[0]", {"attachments"}),
        ("args.headers{key}", {"headers"}),
        ("args.apiKey", {"api", "key"}),
        ("args", {"args"}),
    ],
    ids=["plain", "nested-snake", "quoted", "array-item", "key-marker", "camel", "root"],
)
def test_argument_words(path: str, words: set[str]) -> None:
    assert argument_words(path) == words


@pytest.mark.parametrize(
    ("tool", "family", "expected"),
    [
        ("write_file", FILE_WRITE_VERBS, True),
        ("read_file", FILE_WRITE_VERBS, False),
        ("send_email", MESSAGE_VERBS, True),
        ("create_issue", MESSAGE_VERBS, True),
        ("http_post", SEND_VERBS, True),
        ("fetch_url", FETCH_WORDS, True),
        ("create_pull_request", FETCH_WORDS, False),  # "request" is not a fetch
        ("run_shell", SHELL_TOOL_WORDS, True),
        ("run_python_script", EXEC_TOOL_WORDS, True),
        ("run_python_script", SHELL_TOOL_WORDS, False),
    ],
    ids=["write", "read-is-not-write", "message", "issue-is-a-message", "send", "fetch", "pull-request",
         "shell", "script-is-exec", "script-is-not-shell"],
)  # fmt: skip
def test_verb_families(tool: str, family: frozenset[str], expected: bool) -> None:
    assert bool(name_words(tool) & family) is expected


def test_shell_tools_are_exec_tools() -> None:
    assert SHELL_TOOL_WORDS <= EXEC_TOOL_WORDS


def test_hostile_names_are_bounded() -> None:
    assert name_words("A" * 10_000_000) == {"a" * 200}
    assert argument_key("args" + "[0]" * 100_000) == "args"
