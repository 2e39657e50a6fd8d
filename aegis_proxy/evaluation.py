"""Measure a firewall on a labelled corpus: attacks stopped per category, benign calls wrongly stopped per agent kind.

A corpus is a folder with `attacks.jsonl` and `benign.jsonl` in the `aegis check` line format; each line's
`meta.category` (attacks) or `meta.agent` (benign) groups the table. "Stopped" means denied or held for a human: both
keep the call from running unseen.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aegis_proxy.check import CheckRun
from aegis_proxy.errors import InputError
from aegis_proxy.firewall import Firewall

STOPPING = frozenset({"deny", "ask"})


@dataclass
class Row:
    total: int = 0
    denied: int = 0
    held: int = 0
    misses: list[str] = field(default_factory=list)  # ids of attacks allowed, or benign calls stopped

    @property
    def stopped(self) -> int:
        return self.denied + self.held


@dataclass
class CorpusReport:
    attacks: dict[str, Row]
    benign: dict[str, Row]

    @staticmethod
    def _sum(rows: Iterable[Row]) -> Row:
        total = Row()
        for row in rows:
            total.total += row.total
            total.denied += row.denied
            total.held += row.held
            total.misses.extend(row.misses)
        return total

    @property
    def attack_total(self) -> Row:
        return self._sum(self.attacks.values())

    @property
    def benign_total(self) -> Row:
        return self._sum(self.benign.values())

    def render(self, *, show_misses: bool = False) -> str:
        lines = ["| attacks: category | calls | denied | held | stopped |", "|---|---:|---:|---:|---:|"]
        for name, row in [*sorted(self.attacks.items()), ("**all**", self.attack_total)]:
            lines.append(f"| {name} | {row.total} | {row.denied} | {row.held} | {_pct(row.stopped, row.total)} |")
        lines += ["", "| benign: agent | calls | denied | held | false positives |", "|---|---:|---:|---:|---:|"]
        for name, row in [*sorted(self.benign.items()), ("**all**", self.benign_total)]:
            lines.append(f"| {name} | {row.total} | {row.denied} | {row.held} | {_pct(row.stopped, row.total)} |")
        if show_misses:
            lines += ["", "attacks allowed: " + (", ".join(self.attack_total.misses) or "none")]
            lines += ["benign stopped: " + (", ".join(self.benign_total.misses) or "none")]
        return "\n".join(lines)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _judge(path: Path, firewall: Firewall, group_key: str, *, attack: bool) -> dict[str, Row]:
    rows: dict[str, Row] = defaultdict(Row)
    for line, result in CheckRun(firewall).judge(path.read_text(encoding="utf-8").splitlines()):
        if line is None:  # a corpus that cannot be read exactly measures nothing
            raise InputError(
                f"{path}:{result['line']}: {result['error']}", hint="every corpus line must be a valid check line"
            )
        row = rows[str((line.meta or {}).get(group_key, "unlabelled"))]
        row.total += 1
        row.denied += result["effect"] == "deny"
        row.held += result["effect"] == "ask"
        if (result["effect"] in STOPPING) != attack:
            row.misses.append(result["id"])
    return dict(rows)


def evaluate(corpus: Path, firewall: Firewall | None = None) -> CorpusReport:
    firewall = firewall or Firewall()
    return CorpusReport(
        attacks=_judge(corpus / "attacks.jsonl", firewall, "category", attack=True),
        benign=_judge(corpus / "benign.jsonl", firewall, "agent", attack=False),
    )
