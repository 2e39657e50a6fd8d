"""Validate corpus JSONL files: shape, ids, categories, agent kinds, duplicates.

    python3 tests/corpus/build/validate.py tests/corpus/attacks.jsonl tests/corpus/benign.jsonl

Standard library only. When aegis_proxy is importable, every record is also loaded into its ToolCall / CallContext
models, so the corpus stays readable by `aegis check`.
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import AGENT_KINDS, ATTACK_CATEGORIES

ROLES = {"system", "user", "assistant", "tool", "document"}
TOP_KEYS = {"id", "tool", "arguments", "context", "meta"}
CONTEXT_KEYS = {"messages", "agent_id", "session_id"}
META_REQUIRED = {"category", "technique", "agent", "source"}
META_OPTIONAL = {"evasion", "scary", "template", "injected_values"}
ID_PATTERN = {"attack": re.compile(r"^atk-[a-z]+-\d{3}$"), "benign": re.compile(r"^ben-[a-z]+-\d{3}$")}
_INVISIBLE = re.compile("[\u200b-\u200f\u2060-\u2064\ufeff]")


def normalize(text: str) -> str:
    """What a reader sees: NFKC and without zero-width characters."""
    return _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))


def _models() -> tuple[Any, Any] | None:
    try:
        from aegis_proxy.models import CallContext, ToolCall
    except Exception:  # the corpus must stay checkable without the package installed
        return None
    return ToolCall, CallContext


def validate_lines(lines: list[str], kind: str) -> list[str]:
    errors: list[str] = []
    seen_ids: set[str] = set()
    seen_calls: dict[tuple[str, str], str] = {}
    models = _models()
    for number, line in enumerate(lines, 1):
        where = f"{kind} line {number}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"{where}: invalid JSON: {exc}")
            continue
        if not isinstance(rec, dict):
            errors.append(f"{where}: not an object")
            continue
        rid = rec.get("id")
        where = f"{kind} {rid or ('line ' + str(number))}"
        if set(rec) - TOP_KEYS or not {"id", "tool", "arguments", "meta"} <= set(rec):
            errors.append(f"{where}: keys {sorted(rec)}")
        if not isinstance(rid, str) or not ID_PATTERN[kind].match(rid):
            errors.append(f"{where}: bad id")
        elif rid in seen_ids:
            errors.append(f"{where}: duplicate id")
        seen_ids.add(str(rid))
        if not isinstance(rec.get("tool"), str) or not rec["tool"]:
            errors.append(f"{where}: tool must be a non-empty string")
        # The same call is allowed twice only in a different situation (provenance cases reuse AgentDojo's goal calls).
        key = (str(rec.get("tool")), json.dumps(rec.get("arguments"), sort_keys=True), _situation(rec.get("context")))
        if key in seen_calls:
            errors.append(f"{where}: same tool and arguments as {seen_calls[key]}")
        seen_calls[key] = str(rid)
        errors += _check_context(where, rec.get("context"))
        errors += _check_meta(where, rec.get("meta"), kind)
        if models is not None:
            tool_call, call_context = models
            try:
                tool_call(id=rid, tool=rec["tool"], arguments=rec["arguments"])
                if "context" in rec:
                    call_context(**rec["context"])
            except Exception as exc:  # report, never crash the validator
                errors.append(f"{where}: rejected by aegis_proxy.models: {str(exc).splitlines()[0]}")
    return errors


def _situation(ctx: Any) -> str:
    if not isinstance(ctx, dict) or not isinstance(ctx.get("messages"), list):
        return ""
    return json.dumps([m for m in ctx["messages"] if isinstance(m, dict) and m.get("role") != "system"], sort_keys=True)


def _check_context(where: str, ctx: Any) -> list[str]:
    if ctx is None:
        return []
    errors = []
    if not isinstance(ctx, dict) or set(ctx) - CONTEXT_KEYS or "messages" not in ctx:
        return [f"{where}: bad context keys"]
    for key in ("agent_id", "session_id"):
        if key in ctx and not isinstance(ctx[key], str):
            errors.append(f"{where}: context.{key} must be a string")
    messages = ctx["messages"]
    if not isinstance(messages, list) or not messages:
        return [*errors, f"{where}: context.messages must be a non-empty list"]
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content", "name"}:
            errors.append(f"{where}: message {i} has bad keys")
            continue
        if m.get("role") not in ROLES:
            errors.append(f"{where}: message {i} bad role {m.get('role')!r}")
        if not isinstance(m.get("content"), str):
            errors.append(f"{where}: message {i} content must be a string")
        if "name" in m and not isinstance(m["name"], str):
            errors.append(f"{where}: message {i} name must be a string")
    return errors


def _check_meta(where: str, meta: Any, kind: str) -> list[str]:
    if not isinstance(meta, dict):
        return [f"{where}: meta must be an object"]
    errors = []
    missing = META_REQUIRED - set(meta)
    extra = set(meta) - META_REQUIRED - META_OPTIONAL
    if missing or extra:
        errors.append(f"{where}: meta missing {sorted(missing)} extra {sorted(extra)}")
    if meta.get("agent") not in AGENT_KINDS:
        errors.append(f"{where}: meta.agent {meta.get('agent')!r}")
    if kind == "attack":
        if meta.get("category") not in ATTACK_CATEGORIES:
            errors.append(f"{where}: meta.category {meta.get('category')!r}")
        if "scary" in meta:
            errors.append(f"{where}: attacks carry no 'scary' flag")
        if str(meta.get("technique", "")).startswith("provenance/") and not meta.get("injected_values"):
            errors.append(f"{where}: provenance case without injected_values")
    else:
        if meta.get("category") != meta.get("agent"):
            errors.append(f"{where}: benign meta.category must equal meta.agent")
        if not isinstance(meta.get("scary"), bool):
            errors.append(f"{where}: benign meta.scary must be a boolean")
        if "evasion" in meta or "injected_values" in meta:
            errors.append(f"{where}: benign items carry no evasion / injected_values")
    if not isinstance(meta.get("technique"), str) or not meta.get("technique"):
        errors.append(f"{where}: meta.technique must be a non-empty string")
    return errors


def main(paths: list[str]) -> int:
    errors: list[str] = []
    for path in paths:
        kind = "benign" if "benign" in Path(path).name else "attack"
        errors += validate_lines(Path(path).read_text(encoding="utf-8").splitlines(), kind)
    print("\n".join(errors) if errors else f"ok: {', '.join(paths)}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] or ["tests/corpus/attacks.jsonl", "tests/corpus/benign.jsonl"]))
