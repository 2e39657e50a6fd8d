"""docs/policy-language.md is checked against the implementation: its examples parse and pass the checks, its
mistakes are rejected with the output it shows, its grammar names what grammar.lark defines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aegis_proxy.policy.checks import BUILTIN_NAMES, FUNCTIONS, check_policy
from aegis_proxy.policy.errors import PolicySyntaxError
from aegis_proxy.policy.parser import KEYWORDS, parse_policy
from aegis_proxy.scanners.registry import known_categories

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "policy-language.md").read_text(encoding="utf-8")
GRAMMAR = (ROOT / "aegis_proxy" / "policy" / "grammar.lark").read_text(encoding="utf-8")
BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"^```([\w-]*)\n(.*?)^```", DOC, re.S | re.M)]
EXAMPLES = [body for lang, body in BLOCKS if lang == "aegis"]
MISTAKES = [body for lang, body in BLOCKS if lang == "aegis-error"]


def as_file(body: str) -> str:
    """A complete file as is; a snippet after a `default deny` line."""
    first = next(line for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    return body if first.startswith("default ") else f"default deny\n{body}"


def render(body: str) -> str:
    """What `aegis policy check` prints for one file (taken as written: a mistake may be a missing `default`)."""
    try:
        policy = parse_policy(body, "policies/p.aegis")
    except PolicySyntaxError as error:
        return error.render()
    return "\n".join(d.render() for d in check_policy([policy], known_categories=known_categories()))


def test_the_document_has_examples() -> None:
    assert len(EXAMPLES) >= 12 and len(MISTAKES) >= 4


@pytest.mark.parametrize("body", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
def test_every_example_parses_and_passes_the_checks(body: str) -> None:
    policy = parse_policy(as_file(body), f"docs/example-{EXAMPLES.index(body)}.aegis")
    assert policy.rules
    assert [d.render() for d in check_policy([policy], known_categories=known_categories())] == []


@pytest.mark.parametrize("body", MISTAKES, ids=[f"mistake-{i}" for i in range(len(MISTAKES))])
def test_every_mistake_is_rejected(body: str) -> None:
    assert ": error: " in render(body)


def test_shown_output_is_what_the_checker_prints() -> None:
    shown = [
        (body, BLOCKS[i + 1][1])
        for i, (lang, body) in enumerate(BLOCKS[:-1])
        if lang == "aegis-error" and BLOCKS[i + 1][0] == "text"
    ]
    assert len(shown) >= 2
    for body, output in shown:
        assert render(body) == output.rstrip("\n")


def test_semantics_steps_are_all_there_in_order() -> None:
    steps = re.findall(r"^(\d+)\. \*\*(\w[\w ]*)\.\*\*", DOC, re.M)
    assert [int(n) for n, _ in steps] == list(range(1, 9))
    assert [title for _, title in steps] == [
        "Load",
        "Default",
        "Candidates",
        "Evaluate",
        "Fail closed",
        "Precedence",
        "No match",
        "Digest",
    ]


def test_the_keyword_list_is_the_parsers() -> None:
    listed = re.search(r"Keywords are reserved everywhere: `([^`]+)`", DOC)
    assert listed is not None
    assert set(listed.group(1).split()) == KEYWORDS


def _ebnf() -> str:
    return next(body for lang, body in BLOCKS if lang == "ebnf")


def test_the_ebnf_defines_every_grammar_rule_and_terminal() -> None:
    lark_rules = {name.lstrip("_") for name in re.findall(r"^[?!]?(_?[a-zA-Z][a-zA-Z_]*)(?:\.\d+)?:", GRAMMAR, re.M)}
    lark_rules -= {"WS"}
    ebnf_rules = set(re.findall(r"^([a-zA-Z_]+)\s+::=", _ebnf(), re.M))
    assert lark_rules <= ebnf_rules, lark_rules - ebnf_rules
    assert ebnf_rules - lark_rules <= {"name"}  # `_name` in lark is inlined; named here for reading


def test_the_ebnf_uses_exactly_the_grammars_literals() -> None:
    def literals(text: str) -> set[str]:
        return set(re.findall(r'"((?:[^"\\\n]|\\.)+)"', text))

    # grammar.lark literals, minus those inside token regexes (which the EBNF spells differently)
    rules = re.sub(r"//.*$", "", GRAMMAR, flags=re.M)  # comments
    lark = {lit for lit in literals(re.sub(r"/.*?/", "", rules)) if not lit.startswith("\\")}
    ebnf = literals(re.sub(r"^(STRING|WORD|MEMBER|DURATION|NUMBER|COMMENT)\s.*$", "", _ebnf(), flags=re.M))
    assert lark == ebnf


def _aegis_text() -> str:
    return "\n".join(EXAMPLES)


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_every_function_has_an_example(function: str) -> None:
    assert re.search(rf"\b{function}\(", _aegis_text())


@pytest.mark.parametrize("name", sorted(BUILTIN_NAMES))
def test_every_builtin_name_has_an_example(name: str) -> None:
    assert re.search(rf"\b{name}\b", _aegis_text())


@pytest.mark.parametrize(
    "construct",
    [
        "==",
        "!=",
        " < ",
        "<=",
        " > ",
        ">=",
        " in ",
        " not in ",
        " matches ",
        "=~",
        " startswith ",
        " endswith ",
        " contains ",
        " not contains ",
        " and ",
        " or ",
        "not ",
        "-args",
        "(",
        "[-1]",
        '["',
        "default ",
        "let ",
        "include ",
        "rule ",
        "allow ",
        "deny ",
        "ask ",
        "audit ",
        "priority ",
        "message ",
        "terminate",
        "@",
        "*",
        "test ",
        "call ",
        "context {",
        "history {",
        "expect ",
        "user ",
        "system ",
        "tool ",
        "document ",
        "assistant ",
        "10m",
        "1h",
        "30s",
        "true",
        "false",
        "null",
        "high",
        "medium",
        '{"',
    ],
)
def test_every_construct_has_an_example(construct: str) -> None:
    assert construct in _aegis_text()
